//! Reading model files: safetensors and GGUF (memory-mapped, tensors used in place when they
//! can be), and the number formats stored in them; writing them atomically ([`atomic`]).

pub mod atomic;
pub mod gguf;
pub mod half;
pub mod safetensors;
