//! Forward passes and generation.

pub(crate) mod act;
pub(crate) mod attention;
pub mod bert;
pub mod decoder;
pub mod gemma3;
pub mod generate;
pub(crate) mod gguf_weights;
pub mod gpt2;
pub(crate) mod head;
pub mod kv;
pub(crate) mod linear;
pub mod llama;
pub mod lstm;
pub mod mistral;
pub(crate) mod norm;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod registry;
pub(crate) mod rope;
pub mod sampling;
pub(crate) mod state;
pub(crate) mod weights;

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use crate::quant::QType;
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
    /// The architecture's name (`"gpt2"`, `"llama"`, `"lstm"`, ...).
    fn model_type(&self) -> &'static str;

    /// The config fields the model reports, under `config.json`'s names (`model_type` first).
    fn info(&self) -> Map<String, Value>;

    /// The matrices' quantized format, if any.
    fn quantization(&self) -> Option<QType>;

    /// Bytes of weights read per generated token.
    fn weight_bytes(&self) -> usize;

    /// The config key that names [`CausalLm::n_ctx`] (in errors).
    fn ctx_key(&self) -> &'static str {
        "n_ctx"
    }

    /// The element type of the caches it makes.
    fn kv_dtype(&self) -> KvDtype {
        KvDtype::F32
    }

    /// Whether [`CausalLm::save`] can write it.
    fn can_save(&self) -> bool {
        false
    }

    /// Writes the weights into `folder` as `model.safetensors`, where the architecture can.
    fn save(&self, _folder: &std::path::Path) -> Result<()> {
        Err(crate::Error::Unsupported(format!(
            "saving a {} model (it loads from its own folder or file)",
            self.model_type()
        )))
    }

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
