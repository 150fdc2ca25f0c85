//! Qwen3 (`Qwen3ForCausalLM`): Llama's decoder with an RMSNorm over each query head and each
//! key head before RoPE, no biases, a head size of its own (`head_dim`, 128 in the released
//! models whatever the width). Hugging Face folders (`model_type` "qwen3") and GGUF files
//! (`general.architecture` "qwen3": `attn_q_norm` / `attn_k_norm`, query and key rows in
//! Hugging Face's order).

use crate::model::llama::{self, Family};
use crate::model::registry::Arch;

/// Qwen3 in the registry.
pub static ARCH: Arch = Arch {
    name: "qwen3",
    class_name: "Qwen3ForCausalLM",
    model_types: &["qwen3"],
    gguf_archs: &["qwen3"],
    load_folder: |folder, q, progress| llama::load_folder(&QWEN3, folder, q, progress),
    load_gguf: Some(|g, q, progress| llama::load_gguf(&QWEN3, g, q, progress)),
    save: None,
};

static QWEN3: Family = Family {
    arch: &ARCH,
    model_type: "qwen3",
    gguf: "qwen3",
    permuted_qk: false,
    qkv_bias: false,
    qk_norm: true,
    sliding_window: false,
};
