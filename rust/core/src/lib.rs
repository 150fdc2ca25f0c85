//! ferrolm's core: everything that does work, in plain Rust with no Python in sight.
//!
//! `cargo test -p ferrolm-core` and the criterion benches run against this crate alone; the PyO3
//! extension in `rust/py` only converts arguments, releases the GIL and maps [`Error`] to Python
//! exceptions.
//!
//! Modules:
//! - [`error`]: the one error type every fallible function returns.
//! - [`runtime`]: CPU feature detection and the global thread pool (fork-safe).
//! - [`tokenizer`]: byte-level BPE (tiktoken rank files), split patterns, special tokens.
//! - [`io`]: model files (safetensors, memory-mapped).
//! - [`kernels`]: the f32 matmul / dot kernels, one dispatch point chosen at run time.
//! - [`model`]: forward passes (GPT-2), the KV cache, sampling and generation.

pub mod error;
pub mod io;
pub mod kernels;
pub mod model;
pub mod runtime;
pub mod tokenizer;

pub use error::{Error, Result};
