//! The decoder architectures ferrolm runs, each one file: its config reader (a Hugging Face
//! `config.json` and a GGUF file's metadata), its tensor names in both formats, and how it fills
//! the [`DecoderConfig`](crate::model::decoder::DecoderConfig). Loading a folder or a GGUF file
//! looks the architecture up here by `model_type` or `general.architecture`; nothing else
//! matches on architectures.
//!
//! Adding one: write `model/<name>.rs` with a `pub static ARCH: Arch`, and add it to [`ARCHS`].

use std::path::Path;

use serde_json::Value;

use crate::io::gguf::{self, Gguf};
use crate::model::decoder::Decoder;
use crate::model::weights::{self, Progress};
use crate::model::{gemma3, gpt2, llama, mistral, phi3, qwen2, qwen3};
use crate::quant::QType;
use crate::{Error, Result};

/// Loads a Hugging Face folder (`config.json` + safetensors) as a decoder, the matrices
/// quantized to the given type if any.
pub type LoadFolder = fn(&Path, Option<QType>, Option<Progress<'_>>) -> Result<Decoder>;
/// Loads an opened GGUF file as a decoder (f32 / f16 / bf16 matrices quantized to the given
/// type if any; quantized ones used as they are).
pub type LoadGguf = fn(&Gguf, Option<QType>, Option<Progress<'_>>) -> Result<Decoder>;
/// Writes a decoder's weights into a folder, as `model.safetensors`.
pub type Save = fn(&Decoder, &Path) -> Result<()>;

/// One architecture.
#[derive(Debug)]
pub struct Arch {
    /// Its name (`Decoder::arch().name`, the Python `model_type`).
    pub name: &'static str,
    /// The `transformers` class of its models (`Qwen2ForCausalLM`), the Python class's name.
    pub class_name: &'static str,
    /// The `model_type` values of a `config.json` it reads.
    pub model_types: &'static [&'static str],
    /// The `general.architecture` values of a GGUF file it reads.
    pub gguf_archs: &'static [&'static str],
    pub load_folder: LoadFolder,
    pub load_gguf: Option<LoadGguf>,
    pub save: Option<Save>,
}

/// Every decoder architecture, one registration line each.
pub static ARCHS: &[&Arch] = &[
    &gpt2::ARCH,
    &llama::ARCH,
    &qwen2::ARCH,
    &qwen3::ARCH,
    &mistral::ARCH,
    &gemma3::ARCH,
    &phi3::ARCH,
];

/// The architecture that reads `config.json`'s `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static Arch> {
    ARCHS
        .iter()
        .copied()
        .find(|a| a.model_types.contains(&model_type))
}

/// The architecture that reads a GGUF file of `general.architecture` `name`.
pub fn by_gguf_arch(name: &str) -> Option<&'static Arch> {
    ARCHS
        .iter()
        .copied()
        .find(|a| a.load_gguf.is_some() && a.gguf_archs.contains(&name))
}

/// The `model_type` values ferrolm's decoders read, in registration order.
pub fn model_types() -> Vec<&'static str> {
    ARCHS
        .iter()
        .flat_map(|a| a.model_types.iter().copied())
        .collect()
}

fn names(list: impl Iterator<Item = &'static str>) -> String {
    list.map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads a Hugging Face folder with the architecture its `config.json` names.
pub fn load_folder(
    folder: &Path,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let (what, v) = weights::read_config_any(folder)?;
    let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let arch = by_model_type(model_type).ok_or_else(|| {
        Error::Unsupported(format!(
            "architecture model_type={model_type:?} ({what}); ferrolm's decoders run {}",
            names(model_types().into_iter())
        ))
    })?;
    (arch.load_folder)(folder, quantize, progress)
}

/// The architecture of an opened GGUF file, or what it is and which ferrolm runs.
fn arch_of(g: &Gguf) -> Result<&'static Arch> {
    let name = g
        .meta("general.architecture")
        .and_then(gguf::Value::as_str)
        .unwrap_or("");
    by_gguf_arch(name).ok_or_else(|| {
        Error::Unsupported(format!(
            "architecture {name:?} ({}); ferrolm runs GGUF files of architecture {}",
            g.what(),
            names(
                ARCHS
                    .iter()
                    .filter(|a| a.load_gguf.is_some())
                    .flat_map(|a| a.gguf_archs.iter().copied())
            )
        ))
    })
}

/// The architecture a GGUF file's `general.architecture` names (its header read, no tensor).
pub fn gguf_arch(path: &Path) -> Result<&'static Arch> {
    arch_of(&Gguf::open(path)?)
}

/// Loads a GGUF file with the architecture its `general.architecture` names.
pub fn load_gguf(
    path: &Path,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    crate::runtime::pool::install(|| {
        let g = Gguf::open(path)?;
        let arch = arch_of(&g)?;
        let load = arch.load_gguf.ok_or_else(|| {
            Error::Unsupported(format!("GGUF files of architecture {:?}", arch.name))
        })?;
        load(&g, quantize, progress)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_one_architecture() {
        let mut seen = std::collections::HashSet::new();
        for a in ARCHS {
            assert!(seen.insert(a.name), "{} registered twice", a.name);
            for t in a.model_types {
                assert_eq!(by_model_type(t).map(|x| x.name), Some(a.name), "{t}");
            }
            for g in a.gguf_archs {
                assert_eq!(by_gguf_arch(g).map(|x| x.name), Some(a.name), "{g}");
            }
        }
        assert!(by_model_type("bert").is_none());
    }
}
