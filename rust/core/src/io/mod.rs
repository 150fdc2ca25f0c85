//! Reading model files: safetensors (memory-mapped, tensors used in place when they can be),
//! and the number formats stored in them.

pub mod half;
pub mod safetensors;
