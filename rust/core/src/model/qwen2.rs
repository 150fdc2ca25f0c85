//! Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`): Llama's decoder with biases on the query, key and
//! value projections (none on the output), a large RoPE base, the head tied or not. Hugging
//! Face folders (`model_type` "qwen2") and GGUF files (`general.architecture` "qwen2", whose
//! query and key rows convert_hf_to_gguf keeps in Hugging Face's order: NeoX-style RoPE).
//!
//! Sliding-window attention (`use_sliding_window`, off in every released Qwen2 / Qwen2.5
//! config) is refused by name.

use crate::model::llama::{self, Family};
use crate::model::registry::Arch;

/// Qwen2 in the registry.
pub static ARCH: Arch = Arch {
    name: "qwen2",
    class_name: "Qwen2ForCausalLM",
    model_types: &["qwen2"],
    gguf_archs: &["qwen2"],
    load_folder: |folder, q, progress| llama::load_folder(&QWEN2, folder, q, progress),
    load_gguf: Some(|g, q, progress| llama::load_gguf(&QWEN2, g, q, progress)),
    save: None,
};

static QWEN2: Family = Family {
    arch: &ARCH,
    model_type: "qwen2",
    gguf: "qwen2",
    permuted_qk: false,
    qkv_bias: true,
    qk_norm: false,
    sliding_window: false,
};
