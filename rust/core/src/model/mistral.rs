//! Mistral (`MistralForCausalLM`): Llama's decoder with sliding-window attention where the
//! config sets `sliding_window` (Mistral 7B v0.1: each token sees the 4096 up to its own;
//! null in later versions, where it is Llama). Hugging Face folders (`model_type` "mistral");
//! llama.cpp converts these models to GGUF architecture "llama" (without the window), which
//! the Llama file reads.

use crate::model::llama::{self, Family};
use crate::model::registry::Arch;

/// Mistral in the registry.
pub static ARCH: Arch = Arch {
    name: "mistral",
    class_name: "MistralForCausalLM",
    model_types: &["mistral"],
    gguf_archs: &[],
    load_folder: |folder, q, progress| llama::load_folder(&MISTRAL, folder, q, progress),
    load_gguf: None,
    save: None,
};

static MISTRAL: Family = Family {
    arch: &ARCH,
    model_type: "mistral",
    gguf: "llama",
    permuted_qk: true,
    qkv_bias: false,
    qk_norm: false,
    sliding_window: true,
};
