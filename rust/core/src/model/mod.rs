//! Forward passes and generation.

pub mod bert;
pub mod generate;
pub mod gpt2;
pub mod kv;
pub mod llama;
pub mod lstm;
pub mod sampling;
pub(crate) mod weights;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Result;
pub use kv::{Cache, KvDtype};

/// Which loaded model made a KV cache: a number no other model of this process gets, so a
/// cache passed to another model (another architecture, another size, or the same shape with
/// other weights) is refused instead of read with the wrong layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelId(u64);

impl ModelId {
    /// A number not given before (0 is "no model").
    pub(crate) fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ModelId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id of no model: a cache made outside a model is refused by every one.
    pub(crate) const NONE: ModelId = ModelId(0);
}

/// A decoder-only language model: what generation, the Python bindings and perplexity need.
pub trait CausalLm: Send + Sync + std::fmt::Debug {
    /// Tokens in the vocabulary (the width of the logits).
    fn vocab_size(&self) -> usize;

    /// The longest sequence (prompt and generated tokens) the model runs.
    fn n_ctx(&self) -> usize;

    /// An empty KV cache for `slots` sequences (room for `capacity` positions to start with;
    /// it grows as needed, up to [`CausalLm::n_ctx`]).
    /// Refused with [`crate::Error::OutOfMemory`] when it would not fit in memory.
    fn new_cache(&self, slots: usize, capacity: Option<usize>) -> Result<Cache>;

    /// Advances every slot of `cache` by `t` tokens: `tokens` and `mask` are `[slots × t]`
    /// (mask 1 = a real token, 0 = padding). Writes the logits `[slots × t × vocab]` into
    /// `logits` (resized), or with `last_only` those of each slot's last position `[slots ×
    /// vocab]`.
    fn forward_into(
        &self,
        cache: &mut Cache,
        tokens: &[u32],
        mask: &[u8],
        t: usize,
        last_only: bool,
        logits: &mut Vec<f32>,
    ) -> Result<()>;

    /// [`CausalLm::forward_into`] into a new vector.
    fn forward(
        &self,
        cache: &mut Cache,
        tokens: &[u32],
        mask: &[u8],
        t: usize,
        last_only: bool,
    ) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.forward_into(cache, tokens, mask, t, last_only, &mut logits)?;
        Ok(logits)
    }
}
