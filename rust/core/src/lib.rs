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
//! - [`quant`]: int8 / int4 weight formats (blocks of 32 with f16 scales, 16-row tiles).
//! - [`model`]: forward passes (GPT-2), the KV cache, sampling and generation.

pub mod error;
pub mod io;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod runtime;
pub mod tokenizer;

pub use error::{Error, Result};

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// `n` deterministic pseudo-random values in [-0.5, 0.5).
    pub(crate) fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }
}
