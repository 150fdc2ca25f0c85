//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, as the Hugging Face
//! `tokenizer.json` document it amounts to (then read by [`super::hf_json`], so one pipeline
//! runs both).
//!
//! `tokenizer.ggml.model` `gpt2` is byte-level BPE: `tokens` (byte-level strings, the id is the
//! index), `merges` (`"a b"`), `token_type` (1 normal, 3 control, 4 user-defined: the latter
//! two are matched whole, before the split, as added tokens), and `tokenizer.ggml.pre` naming
//! the split: the regular expressions are the ones llama.cpp's `llama-vocab.cpp` and the
//! models' own `tokenizer.json` files use for each name.

use serde_json::{json, Value};

use crate::io::gguf::{self, Gguf};
use crate::{Error, Result};

/// GPT-2's split, which `ByteLevel` with `use_regex` applies itself.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token types of `tokenizer.ggml.token_type`.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
           "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
           "invert": false})
}

/// The pre-tokenizer `tokenizer.ggml.pre` names, and whether merges are skipped for words that
/// are tokens themselves (Llama 3's `ignore_merges`).
fn pre_tokenizer(name: &str) -> Result<(Value, bool)> {
    Ok(match name {
        "default" | "gpt2" | "gpt-2" => (byte_level(true), false),
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]}),
            true,
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
            false,
        ),
        other => {
            return Err(Error::Unsupported(format!(
                "tokenizer.ggml.pre {other:?}; ferrolm reads default / gpt2, smollm, \
                 llama3 / llama-bpe and qwen2"
            )))
        }
    })
}

/// The `tokenizer.json` document equivalent to `g`'s tokenizer metadata.
pub fn to_hf_json(g: &Gguf) -> Result<Value> {
    let what = g.what();
    let err = |msg: &str| Error::format(&what, msg.to_owned());
    let model = g
        .meta("tokenizer.ggml.model")
        .and_then(gguf::Value::as_str)
        .ok_or_else(|| err("tokenizer.ggml.model is missing: the file carries no tokenizer"))?;
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "tokenizer.ggml.model {model:?} ({what}); ferrolm reads byte-level BPE (\"gpt2\")"
        )));
    }
    let strings = |key: &str| -> Result<Vec<&str>> {
        g.meta(key)
            .and_then(gguf::Value::as_array)
            .ok_or_else(|| err(&format!("{key} is missing or not a list")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| err(&format!("{key} holds a non-string")))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = match g.meta("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => {
            let list = v
                .as_array()
                .filter(|a| a.len() == tokens.len())
                .ok_or_else(|| err("tokenizer.ggml.token_type does not list every token"))?;
            list.iter().map(|t| t.as_u64().unwrap_or(1)).collect()
        }
    };
    let pre = g
        .meta("tokenizer.ggml.pre")
        .and_then(gguf::Value::as_str)
        .unwrap_or("default");
    let (pre_tok, ignore_merges) = pre_tokenizer(pre)?;
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(tok.to_owned(), json!(id)).is_some() {
            return Err(err(&format!("token {tok:?} is listed twice")));
        }
        if ty == CONTROL || ty == USER_DEFINED {
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": ty == USER_DEFINED,
                              "special": ty == CONTROL}),
            );
        }
    }
    let id = |key: &str| -> Option<usize> {
        g.meta(key)
            .and_then(gguf::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n < tokens.len())
    };
    let add_bos = g
        .meta("tokenizer.ggml.add_bos_token")
        .and_then(gguf::Value::as_bool)
        .unwrap_or(false);
    let post = match id("tokenizer.ggml.bos_token_id").filter(|_| add_bos) {
        Some(bos) => {
            let tok = tokens[bos];
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": tok, "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": tok, "type_id": 0}},
                            {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": tok, "type_id": 1}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {tok: {"id": tok, "ids": [bos], "tokens": [tok]}}})
        }
        None => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tok,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges},
    }))
}

/// The special tokens a GGUF file names: `(role, token)` for bos, eos, unk, pad (those present).
pub fn special_tokens(g: &Gguf) -> Vec<(&'static str, String)> {
    let tokens = g
        .meta("tokenizer.ggml.tokens")
        .and_then(gguf::Value::as_array)
        .unwrap_or(&[]);
    let mut out = Vec::new();
    for (role, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        let tok = g
            .meta(key)
            .and_then(gguf::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| tokens.get(n))
            .and_then(gguf::Value::as_str);
        if let Some(t) = tok {
            out.push((role, t.to_owned()));
        }
    }
    out
}
