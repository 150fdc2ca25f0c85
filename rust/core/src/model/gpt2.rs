//! GPT-2: its config and its weights (memory-mapped safetensors, used in place) as a
//! [`Decoder`]: LayerNorm, learned positions, a fused `c_attn`, a plain GELU MLP, the head tied
//! to `wte`. Names follow `GPT2LMHeadModel.save_pretrained` (with or without `transformer.`).
//!
//! ```text
//! x = wte[ids] + wpe[pos]                                 # [rows, d]
//! for each layer:
//!     h = ln_1(x); q, k, v = split(h @ c_attn + b)        # [rows, 3d]
//!     a = softmax(q kᵀ / √hd + mask) v  (per head)        # [rows, d]
//!     x = x + a @ c_proj + b
//!     h = ln_2(x); x = x + gelu(h @ c_fc + b) @ mlp.c_proj + b
//! logits = ln_f(x) @ wteᵀ                                 # [rows, vocab]
//! ```

use std::path::Path;

use serde_json::{Map, Value};

use crate::io::safetensors::Checkpoint;
pub use crate::model::act::Activation;
use crate::model::decoder::{Decoder, DecoderConfig, Layer, MlpKind, NormKind, Positions};
use crate::model::linear::Proj;
use crate::model::registry::Arch;
use crate::model::weights::{
    self, f32_entry, mat_entry, norm_entries, table_entry, Layout, Named, Progress, Quant, Weights,
};
use crate::model::CausalLm;
use crate::quant::QType;
use crate::{Error, Result};

/// The fields of a GPT-2 `config.json` that the forward pass uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    pub n_inner: usize,
    pub layer_norm_epsilon: f32,
    pub activation: Activation,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    /// Reads a `config.json`; anything but GPT-2 is refused naming its `model_type`.
    pub fn from_json(what: &str, data: &[u8]) -> Result<Self> {
        Self::from_value(what, &weights::parse_config(what, data, "gpt2")?)
    }

    /// The fields of a parsed `config.json` (already checked to be GPT-2's).
    fn from_value(what: &str, v: &Value) -> Result<Self> {
        let usize_of = |key: &str, default: Option<usize>| weights::positive(v, what, key, default);
        let bool_of = |key: &str, default: bool| -> Result<bool> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(Error::format(
                    what,
                    format!("`{key}` must be true or false"),
                )),
            }
        };
        let id_of = |key: &str| -> Option<u32> {
            match v.get(key) {
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                Some(Value::Array(a)) => a
                    .first()
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok()),
                _ => None,
            }
        };
        let n_embd = usize_of("n_embd", Some(768))?;
        let n_head = usize_of("n_head", Some(12))?;
        if n_embd % n_head != 0 {
            return Err(Error::format(
                what,
                format!("n_embd {n_embd} is not a multiple of n_head {n_head}"),
            ));
        }
        let act = v
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        let activation = Activation::parse(act)
            .ok_or_else(|| Error::Unsupported(format!("activation_function {act:?}")))?;
        let eps = v
            .get("layer_norm_epsilon")
            .and_then(Value::as_f64)
            .unwrap_or(1e-5);
        Ok(Gpt2Config {
            vocab_size: usize_of("vocab_size", Some(50257))?,
            n_embd,
            n_layer: usize_of("n_layer", Some(12))?,
            n_head,
            n_positions: usize_of("n_positions", Some(1024))?,
            n_inner: usize_of("n_inner", Some(4 * n_embd))?,
            layer_norm_epsilon: eps as f32,
            activation,
            scale_attn_weights: bool_of("scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: bool_of("scale_attn_by_inverse_layer_idx", false)?,
            tie_word_embeddings: bool_of("tie_word_embeddings", true)?,
            bos_token_id: id_of("bos_token_id"),
            eos_token_id: id_of("eos_token_id"),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

impl Gpt2Config {
    /// The fields Python's `config` reports.
    fn info(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("vocab_size".into(), self.vocab_size.into());
        m.insert("n_embd".into(), self.n_embd.into());
        m.insert("n_layer".into(), self.n_layer.into());
        m.insert("n_head".into(), self.n_head.into());
        m.insert("n_positions".into(), self.n_positions.into());
        m.insert("n_inner".into(), self.n_inner.into());
        m.insert("bos_token_id".into(), self.bos_token_id.into());
        m.insert("eos_token_id".into(), self.eos_token_id.into());
        m.insert(
            "tie_word_embeddings".into(),
            self.tie_word_embeddings.into(),
        );
        m
    }

    /// The decoder this config describes.
    fn decoder_config(&self) -> DecoderConfig {
        let hd = self.head_dim();
        DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.n_embd,
            num_layers: self.n_layer,
            num_heads: self.n_head,
            num_kv_heads: self.n_head,
            head_dim: hd,
            intermediate_size: self.n_inner,
            max_positions: self.n_positions,
            max_positions_key: "n_positions",
            norm: NormKind::LayerNorm,
            norm_eps: self.layer_norm_epsilon,
            mlp: MlpKind::Plain(self.activation),
            positions: Positions::Learned,
            attn_scale: if self.scale_attn_weights {
                1.0 / (hd as f32).sqrt()
            } else {
                1.0
            },
            attn_scale_by_layer: self.scale_attn_by_inverse_layer_idx,
            windows: Vec::new(),
            local_rope: None,
            embed_scale: None,
            final_softcap: None,
            tie_word_embeddings: self.tie_word_embeddings,
        }
    }
}

/// GPT-2 in the registry: Hugging Face folders (f32, or saved quantized by ferrolm), saved by
/// [`save`].
pub static ARCH: Arch = Arch {
    name: "gpt2",
    class_name: "GPT2LMHeadModel",
    model_types: &["gpt2"],
    gguf_archs: &[],
    load_folder: load_with,
    load_gguf: None,
    save: Some(save),
};

/// Loads `config.json` and the safetensors checkpoint of a model folder.
pub fn load(folder: &Path) -> Result<Decoder> {
    load_with(folder, None, None)
}

/// [`load`], the weight matrices (and the token embedding, which doubles as the head)
/// quantized to `quantize` as they are read; `progress` hears `(done, total)` per matrix. A
/// folder saved quantized loads as it is, mapped in place.
pub fn load_with(
    folder: &Path,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let (what, v, quant, ck) = weights::open_folder(folder, "gpt2", quantize)?;
    from_checkpoint_with(Gpt2Config::from_value(&what, &v)?, &ck, quant, progress)
}

/// Takes the weights from `ck`, checking every name and shape against `config`. Names may
/// carry the `transformer.` prefix (`GPT2LMHeadModel.save_pretrained`) or not (the original
/// checkpoints).
pub fn from_checkpoint(config: Gpt2Config, ck: &Checkpoint) -> Result<Decoder> {
    from_checkpoint_with(config, ck, Quant::None, None)
}

/// [`from_checkpoint`] with the matrices handled as `quant` says.
pub fn from_checkpoint_with(
    config: Gpt2Config,
    ck: &Checkpoint,
    quant: Quant,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let total = 4 * config.n_layer + 1 + usize::from(!config.tie_word_embeddings);
    let w = Weights::new(ck, "transformer.", "wte.weight").with_quant(quant, total, progress);
    let (d, inner, vocab) = (config.n_embd, config.n_inner, config.vocab_size);
    let norm = |name: &str| w.norm(name, d);
    let linear = |name: &str, n_in, n_out| -> Result<Proj> {
        Ok(Proj::Fused(w.linear(name, n_in, n_out, Layout::InOut)?))
    };
    let mut layers = Vec::new(); // not sized by the config: its count is untrusted
    for l in 0..config.n_layer {
        let p = format!("h.{l}");
        layers.push(Layer {
            attn_norm: norm(&format!("{p}.ln_1"))?,
            qkv: linear(&format!("{p}.attn.c_attn"), d, 3 * d)?,
            qk_norm: None,
            o: linear(&format!("{p}.attn.c_proj"), d, d)?,
            ffn_norm: norm(&format!("{p}.ln_2"))?,
            up: linear(&format!("{p}.mlp.c_fc"), d, inner)?,
            down: linear(&format!("{p}.mlp.c_proj"), inner, d)?,
            post_attn_norm: None,
            post_ffn_norm: None,
        });
    }
    if w.contains(&format!("h.{}.ln_1.weight", config.n_layer)) {
        return Err(Error::format(
            "checkpoint",
            format!(
                "it has more layers than the config's n_layer = {}",
                config.n_layer
            ),
        ));
    }
    let wte = w.table("wte", vocab, d, false)?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(w.table("lm_head", vocab, d, true)?)
    };
    let wpe = w.get("wpe.weight", &[config.n_positions, d])?;
    Ok(Decoder::new(
        &ARCH,
        config.info(),
        config.decoder_config(),
        wte,
        Some(wpe),
        layers,
        norm("ln_f")?,
        lm_head,
        quant.qtype(),
    ))
}

/// Every tensor of `dec` (a GPT-2) under the name `GPT2LMHeadModel.save_pretrained` gives it
/// (quantized matrices as `{name}.qweight`, U8 tiles), for saving.
pub fn tensors(dec: &Decoder) -> Result<Vec<Named<'_>>> {
    let Some(wpe) = &dec.pos_embed else {
        return Err(Error::invalid("a GPT-2 without its position table"));
    };
    let mut out = vec![
        table_entry("transformer.wte", &dec.embed),
        f32_entry("transformer.wpe.weight", wpe),
    ];
    for (l, b) in dec.layers.iter().enumerate() {
        let p = format!("transformer.h.{l}");
        norm_entries(&mut out, &format!("{p}.ln_1"), &b.attn_norm);
        norm_entries(&mut out, &format!("{p}.ln_2"), &b.ffn_norm);
        for (name, proj) in [
            ("attn.c_attn", &b.qkv),
            ("attn.c_proj", &b.o),
            ("mlp.c_fc", &b.up),
            ("mlp.c_proj", &b.down),
        ] {
            let Proj::Fused(lin) = proj else {
                return Err(Error::invalid(format!("{p}.{name} is not one matrix")));
            };
            out.push(mat_entry(&format!("{p}.{name}"), &lin.w)?);
            out.push(f32_entry(&format!("{p}.{name}.bias"), &lin.b));
        }
    }
    norm_entries(&mut out, "transformer.ln_f", &dec.final_norm);
    if let Some(h) = &dec.head {
        out.push(table_entry("lm_head", h));
    }
    Ok(out)
}

/// Writes a GPT-2's weights as `model.safetensors` in `folder` (f32, or the quantized tiles,
/// which load back mapped in place). `config.json` and the tokenizer are the caller's.
pub fn save(dec: &Decoder, folder: &Path) -> Result<()> {
    weights::save(folder, &tensors(dec)?, CausalLm::quantization(dec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let ok = br#"{"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2,
                      "n_positions": 128, "vocab_size": 100}"#;
        let c = Gpt2Config::from_json("config.json", ok).unwrap();
        assert_eq!(
            (c.n_inner, c.head_dim(), c.activation),
            (256, 16, Activation::GeluTanh)
        );
        let llama = br#"{"model_type": "llama"}"#;
        assert!(Gpt2Config::from_json("c", llama)
            .unwrap_err()
            .to_string()
            .contains("\"llama\""));
        let bad = br#"{"model_type": "gpt2", "n_embd": 65, "n_head": 4}"#;
        assert!(Gpt2Config::from_json("c", bad).is_err());
        let act = br#"{"model_type": "gpt2", "activation_function": "mish"}"#;
        assert!(Gpt2Config::from_json("c", act).is_err());
    }
}
