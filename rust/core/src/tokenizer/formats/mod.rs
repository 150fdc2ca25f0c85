//! Readers for tokenizer files, kept apart from the algorithms: each turns a file's bytes into
//! the inputs of a model constructor and reports malformed input as `Error::Format` naming the
//! file (and line or JSON section).

pub mod gguf;
pub mod gpt2_files;
pub mod hf_json;
pub mod tiktoken;
pub mod vocab_txt;
