//! Phi-3 (`Phi3ForCausalLM`, `model_type` "phi3": Phi-3 / 3.5 mini and medium, Phi-4-mini):
//! a Llama-like decoder with the query, key and value projections in one matrix (`qkv_proj`)
//! and the gate and up projections in one (`gate_up_proj`, gate first), RoPE on part of each
//! head (`partial_rotary_factor`), LongRoPE for the 128k-context models (`longrope`, once `su`:
//! short factors, long ones past the original context, cos and sin scaled by an attention
//! factor), and a sliding window over every layer where the config sets one shorter than the
//! context. Hugging Face folders (f32 / f16 / bf16, or `quantize=`) and GGUF files.
//!
//! ```text
//! x = embed[ids]
//! for each layer:
//!     q, k, v = rms_norm(x) @ Wqkv             (split q | k | v; rope on the first rot dims)
//!     x = x + attention(q, k, v) @ Wo
//!     g, u = rms_norm(x) @ Wgate_up            (split g | u)
//!     x = x + (silu(g) * u) @ Wdown
//! logits = rms_norm(x) @ headᵀ
//! ```

use std::path::Path;

use serde_json::{Map, Value};

use crate::io::gguf::{self, Gguf};
use crate::io::safetensors::{F32Data, F32Tensor};
use crate::model::act::Activation;
use crate::model::decoder::{
    gain, Decoder, DecoderConfig, Layer, LongRope, MlpKind, NormKind, Positions, Rope,
};
use crate::model::gguf_weights::{same_row, GgufWeights};
use crate::model::linear::Proj;
use crate::model::registry::Arch;
use crate::model::weights::{self, Layout, Linear, Progress, Quant, Weights};
use crate::quant::QType;
use crate::{Error, Result};

/// Phi-3 in the registry.
pub static ARCH: Arch = Arch {
    name: "phi3",
    class_name: "Phi3ForCausalLM",
    model_types: &["phi3"],
    gguf_archs: &["phi3"],
    load_folder,
    load_gguf: Some(load_gguf),
    save: None,
};

/// A Phi-3 config: the decoder's shape and the ids the tokenizer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Phi3Config {
    pub decoder: DecoderConfig,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

/// LongRoPE's attention factor where the config gives none: `√(1 + ln s / ln orig)` for a
/// context `s` times the original (1 when not longer), as `transformers` and llama.cpp's
/// converter compute it.
fn longrope_attention_factor(max_positions: usize, original: usize) -> f32 {
    let s = max_positions as f64 / original as f64;
    if s <= 1.0 {
        1.0
    } else {
        (1.0 + s.ln() / (original as f64).ln()).sqrt() as f32
    }
}

fn factors(what: &str, spec: &Value, key: &str, n: usize) -> Result<Vec<f32>> {
    let list = spec
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| Error::format(what, format!("rope scaling `longrope` needs `{key}`")))?;
    let values: Vec<f32> = list
        .iter()
        .filter_map(Value::as_f64)
        .map(|x| x as f32)
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    if values.len() != list.len() || values.len() != n {
        return Err(Error::format(
            what,
            format!(
                "`{key}` must be {n} positive numbers (half the {} rotary dims), it has {}",
                2 * n,
                list.len()
            ),
        ));
    }
    Ok(values)
}

/// The decoder config both sources share once their keys are read.
struct Shape {
    vocab: usize,
    hidden: usize,
    inner: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    max_positions: usize,
    eps: f32,
    rope: Rope,
    window: Option<usize>,
    tie: bool,
}

impl Shape {
    fn check(&self, what: &str) -> Result<()> {
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::format(
                what,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.heads, self.kv_heads
                ),
            ));
        }
        let rot = self.rope.dims.unwrap_or(self.head_dim);
        if !self.head_dim.is_multiple_of(2)
            || !rot.is_multiple_of(2)
            || rot == 0
            || rot > self.head_dim
        {
            return Err(Error::format(
                what,
                format!(
                    "{rot} rotary dims of a head of {} (partial_rotary_factor) must be even and \
                     at most the head",
                    self.head_dim
                ),
            ));
        }
        Ok(())
    }

    fn decoder(self) -> DecoderConfig {
        DecoderConfig {
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            intermediate_size: self.inner,
            max_positions: self.max_positions,
            max_positions_key: "max_position_embeddings",
            norm: NormKind::RmsNorm,
            norm_eps: self.eps,
            mlp: MlpKind::Gated(Activation::Silu),
            positions: Positions::Rope(self.rope),
            attn_scale: 1.0 / (self.head_dim as f32).sqrt(),
            attn_scale_by_layer: false,
            // A window as long as the context changes nothing (Phi-3.5-mini's 262144 over a
            // context of 131072): no window.
            windows: match self.window {
                Some(w) if w < self.max_positions => vec![Some(w); self.layers],
                _ => Vec::new(),
            },
            local_rope: None,
            embed_scale: None,
            final_softcap: None,
            tie_word_embeddings: self.tie,
        }
    }
}

impl Phi3Config {
    pub fn from_json(what: &str, data: &[u8]) -> Result<Self> {
        Self::from_value(what, &weights::parse_config(what, data, "phi3")?)
    }

    fn from_value(what: &str, v: &Value) -> Result<Self> {
        let num = |key: &str, default: Option<usize>| weights::positive(v, what, key, default);
        let hidden = num("hidden_size", None)?;
        let heads = num("num_attention_heads", None)?;
        let kv_heads = num("num_key_value_heads", Some(heads))?;
        if v.get("head_dim").is_none() && hidden % heads != 0 {
            return Err(Error::format(
                what,
                format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        let head_dim = num("head_dim", Some(hidden / heads))?;
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(Error::Unsupported(format!(
                "hidden_act {act:?} ({what}); Phi-3 runs silu"
            )));
        }
        let max_positions = num("max_position_embeddings", Some(4096))?;
        // transformers 4: `rope_theta`, `partial_rotary_factor` at the top, the scaling in
        // `rope_scaling` (which wins); 5: all of it in `rope_parameters`.
        let params = v.get("rope_parameters").filter(|p| p.is_object());
        let spec = v.get("rope_scaling").filter(|p| p.is_object()).or(params);
        let field = |key: &str| {
            spec.and_then(|s| s.get(key))
                .or_else(|| params.and_then(|p| p.get(key)))
                .or_else(|| v.get(key))
                .and_then(Value::as_f64)
        };
        let theta = field("rope_theta").unwrap_or(10_000.0);
        let partial = field("partial_rotary_factor").unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(Error::format(
                what,
                format!("partial_rotary_factor {partial} must be in (0, 1]"),
            ));
        }
        let rot = (head_dim as f64 * partial) as usize;
        let kind = spec
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let mut rope = Rope::new(theta as f32, None, None);
        rope.dims = Some(rot);
        match (kind, spec) {
            ("default", _) => {}
            ("longrope" | "su" | "yarn", Some(s)) => {
                // The top-level key wins over the scaling's, as in transformers.
                let original = match v.get("original_max_position_embeddings") {
                    Some(_) => num("original_max_position_embeddings", None)?,
                    None => weights::positive(s, what, "original_max_position_embeddings", None)?,
                };
                let factor = s.get("factor").and_then(Value::as_f64);
                let attention = s.get("attention_factor").and_then(Value::as_f64);
                rope.mscale = match (attention, factor) {
                    (Some(a), _) => a as f32,
                    (None, Some(f)) if f <= 1.0 => 1.0,
                    (None, Some(f)) => (1.0 + f.ln() / (original as f64).ln()).sqrt() as f32,
                    (None, None) => longrope_attention_factor(max_positions, original),
                };
                rope.factors = Some(factors(what, s, "short_factor", rot / 2)?);
                rope.long = Some(LongRope {
                    factors: factors(what, s, "long_factor", rot / 2)?,
                    original_max_positions: original,
                });
            }
            (other, _) => {
                return Err(Error::Unsupported(format!(
                    "rope scaling type {other:?} ({what}); Phi-3 runs default and longrope"
                )))
            }
        }
        let window = match v.get("sliding_window") {
            None | Some(Value::Null) => None,
            Some(_) => Some(num("sliding_window", None)?),
        };
        let tie = matches!(v.get("tie_word_embeddings"), Some(Value::Bool(true)));
        let shape = Shape {
            vocab: num("vocab_size", Some(32_064))?,
            hidden,
            inner: num("intermediate_size", None)?,
            layers: num("num_hidden_layers", None)?,
            heads,
            kv_heads,
            head_dim,
            max_positions,
            eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5) as f32,
            rope,
            window,
            tie,
        };
        shape.check(what)?;
        Ok(Phi3Config {
            decoder: shape.decoder(),
            bos_token_id: weights::token_ids(v.get("bos_token_id")).first().copied(),
            eos_token_id: weights::token_ids(v.get("eos_token_id")),
        })
    }

    /// The config a GGUF file's `phi3.*` metadata and its `rope_factors_*` tensors describe.
    fn from_gguf(w: &GgufWeights<'_>) -> Result<Self> {
        let g = w.g;
        let what = g.what();
        let key = |k: &str| format!("phi3.{k}");
        let hidden = w.num(&key("embedding_length"))?;
        let heads = w.num(&key("attention.head_count"))?;
        let kv_heads = match g.meta(&key("attention.head_count_kv")) {
            Some(_) => w.num(&key("attention.head_count_kv"))?,
            None => heads,
        };
        if hidden % heads != 0 {
            return Err(Error::format(
                &what,
                format!("{heads} heads do not divide the width {hidden}"),
            ));
        }
        let head_dim = hidden / heads;
        let rot = match g.meta(&key("rope.dimension_count")) {
            Some(_) => w.num(&key("rope.dimension_count"))?,
            None => head_dim,
        };
        let max_positions = w.num(&key("context_length"))?;
        let mut rope = Rope::new(
            w.float(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            None,
            None,
        );
        rope.dims = Some(rot);
        if g.contains("rope_factors_long.weight") {
            let original = w.num(&key("rope.scaling.original_context_length"))?;
            rope.mscale = w.float(&key("rope.scaling.attn_factor")).map_or_else(
                || longrope_attention_factor(max_positions, original),
                |a| a as f32,
            );
            rope.factors = Some(w.vec("rope_factors_short.weight", rot / 2)?);
            rope.long = Some(LongRope {
                factors: w.vec("rope_factors_long.weight", rot / 2)?,
                original_max_positions: original,
            });
        }
        let window = g
            .meta(&key("attention.sliding_window"))
            .and_then(gguf::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0);
        let vocab = g
            .meta("tokenizer.ggml.tokens")
            .and_then(gguf::Value::as_array)
            .map(<[_]>::len)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::format(&what, "the vocabulary (tokenizer.ggml.tokens) is missing")
            })?;
        let shape = Shape {
            vocab,
            hidden,
            inner: w.num(&key("feed_forward_length"))?,
            layers: w.num(&key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            max_positions,
            eps: w
                .float(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            rope,
            window,
            tie: !g.contains("output.weight"),
        };
        shape.check(&what)?;
        Ok(Phi3Config {
            decoder: shape.decoder(),
            bos_token_id: w.token_id("tokenizer.ggml.bos_token_id"),
            eos_token_id: w
                .token_id("tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
        })
    }

    /// The fields Python's `config` reports.
    fn info(&self) -> Map<String, Value> {
        let c = &self.decoder;
        let mut m = c.rms_info();
        if let Positions::Rope(r) = &c.positions {
            m.insert("rope_theta".into(), f64::from(r.theta).into());
            let rot = r.dims.unwrap_or(c.head_dim);
            let partial = rot as f64 / c.head_dim as f64;
            m.insert("partial_rotary_factor".into(), partial.into());
            if let Some(l) = &r.long {
                m.insert("rope_type".into(), "longrope".into());
                m.insert(
                    "original_max_position_embeddings".into(),
                    l.original_max_positions.into(),
                );
            }
        }
        let window = c.windows.iter().flatten().next().copied();
        m.insert("sliding_window".into(), window.into());
        m.insert("bos_token_id".into(), self.bos_token_id.into());
        m.insert("eos_token_id".into(), self.eos_token_id.clone().into());
        m.insert("tie_word_embeddings".into(), c.tie_word_embeddings.into());
        m
    }
}

fn no_bias(n: usize) -> F32Tensor {
    F32Tensor {
        data: F32Data::Owned(vec![0.0; n]),
        shape: vec![n],
    }
}

/// Loads a Hugging Face `Phi3ForCausalLM` folder, the matrices quantized to `quantize` if
/// given.
pub fn load_folder(
    folder: &Path,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let (what, v, quant, ck) = weights::open_folder(folder, "phi3", quantize)?;
    if matches!(quant, Quant::Stored(_)) {
        return Err(Error::Unsupported(
            "a quantized Phi-3 folder saved by ferrolm (quantize from the f32 folder, or use a \
             GGUF file)"
                .into(),
        ));
    }
    let config = Phi3Config::from_value(&what, &v)?;
    let c = &config.decoder;
    let total = 4 * c.num_layers + 1 + usize::from(!c.tie_word_embeddings);
    let w = Weights::new(&ck, "model.", "embed_tokens.weight").with_quant(quant, total, progress);
    let (d, inner) = (c.hidden_size, c.intermediate_size);
    let lin = |name: &str, n_in: usize, n_out: usize| -> Result<Linear> {
        Ok(Linear {
            w: w.matrix(name, n_in, n_out, Layout::OutIn)?,
            b: no_bias(n_out),
            n_in,
            n_out,
        })
    };
    let norm = |name: &str| -> Result<_> { Ok(gain(w.get(name, &[d])?.values().to_vec())) };
    let mut layers = Vec::new(); // not sized by the file: its count is untrusted
    for l in 0..c.num_layers {
        let p = format!("layers.{l}");
        let qkv_out = c.q_dim() + 2 * c.kv_dim();
        layers.push(Layer {
            attn_norm: norm(&format!("{p}.input_layernorm.weight"))?,
            qkv: Proj::Fused(lin(&format!("{p}.self_attn.qkv_proj"), d, qkv_out)?),
            qk_norm: None,
            o: Proj::Fused(lin(&format!("{p}.self_attn.o_proj"), c.q_dim(), d)?),
            post_attn_norm: None,
            ffn_norm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
            up: Proj::Fused(lin(&format!("{p}.mlp.gate_up_proj"), d, 2 * inner)?),
            down: Proj::Fused(lin(&format!("{p}.mlp.down_proj"), inner, d)?),
            post_ffn_norm: None,
        });
    }
    let final_norm = norm("norm.weight")?;
    w.decoder(&ARCH, config.info(), config.decoder, layers, final_norm)
}

/// Loads a GGUF file of architecture `phi3` (`attn_qkv` fused, or `attn_q` / `attn_k` /
/// `attn_v` apart; `ffn_up` holding the gate and up rows).
pub fn load_gguf(
    g: &Gguf,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let probe = GgufWeights::new(g, quantize, 0, None);
    let config = Phi3Config::from_gguf(&probe)?;
    let c = &config.decoder;
    let total = 4 * c.num_layers + 1 + usize::from(!c.tie_word_embeddings);
    let w = GgufWeights::new(g, quantize, total, progress);
    let (d, inner) = (c.hidden_size, c.intermediate_size);
    let mut layers = Vec::new(); // not sized by the file: its count is untrusted
    for l in 0..c.num_layers {
        let p = format!("blk.{l}");
        let qkv = if g.contains(&format!("{p}.attn_qkv.weight")) {
            let out = c.q_dim() + 2 * c.kv_dim();
            Proj::Fused(w.linear(&format!("{p}.attn_qkv"), d, out, &same_row)?)
        } else {
            Proj::join(vec![
                w.linear(&format!("{p}.attn_q"), d, c.q_dim(), &same_row)?,
                w.linear(&format!("{p}.attn_k"), d, c.kv_dim(), &same_row)?,
                w.linear(&format!("{p}.attn_v"), d, c.kv_dim(), &same_row)?,
            ])
        };
        layers.push(Layer {
            attn_norm: gain(w.vec(&format!("{p}.attn_norm.weight"), d)?),
            qkv,
            qk_norm: None,
            o: Proj::Fused(w.linear(&format!("{p}.attn_output"), c.q_dim(), d, &same_row)?),
            post_attn_norm: None,
            ffn_norm: gain(w.vec(&format!("{p}.ffn_norm.weight"), d)?),
            up: Proj::Fused(w.linear(&format!("{p}.ffn_up"), d, 2 * inner, &same_row)?),
            down: Proj::Fused(w.linear(&format!("{p}.ffn_down"), inner, d, &same_row)?),
            post_ffn_norm: None,
        });
    }
    w.decoder(&ARCH, config.info(), config.decoder, layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""model_type": "phi3", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100"#;

    #[test]
    fn longrope_partial_rotary_and_windows_from_both_config_layouts() {
        // transformers 4: top-level rope_theta / partial_rotary_factor, `su` scaling.
        let factors = |x: f32| format!("[{x}, {x}, {x}, {x}, {x}, {x}]");
        let v4 = format!(
            r#"{{{BASE}, "max_position_embeddings": 1024, "original_max_position_embeddings": 64,
            "rope_theta": 5000.0, "partial_rotary_factor": 0.75, "sliding_window": 2048,
            "rope_scaling": {{"type": "su", "short_factor": {}, "long_factor": {}}}}}"#,
            factors(1.0),
            factors(2.0)
        );
        let c = Phi3Config::from_json("c", v4.as_bytes()).unwrap().decoder;
        let Positions::Rope(r) = &c.positions else {
            panic!()
        };
        assert_eq!((r.theta, r.dims), (5000.0, Some(12)));
        let long = r.long.as_ref().unwrap();
        assert_eq!(long.original_max_positions, 64);
        assert_eq!(long.factors, vec![2.0; 6]);
        let want = (1.0 + (16f64).ln() / (64f64).ln()).sqrt() as f32;
        assert!((r.mscale - want).abs() < 1e-6);
        assert!(c.windows.is_empty(), "a window past the context is none");
        // transformers 5: rope_parameters; a window shorter than the context on every layer.
        let v5 = format!(
            r#"{{{BASE}, "max_position_embeddings": 256, "sliding_window": 32,
            "rope_parameters": {{"rope_type": "default", "rope_theta": 100.0}}}}"#
        );
        let c = Phi3Config::from_json("c", v5.as_bytes()).unwrap().decoder;
        assert_eq!(c.windows, vec![Some(32); 2]);
        let Positions::Rope(r) = &c.positions else {
            panic!()
        };
        assert!(r.long.is_none() && r.dims == Some(16) && r.mscale == 1.0);
        // Factors of the wrong length name the key.
        let bad = format!(
            r#"{{{BASE}, "original_max_position_embeddings": 64,
            "rope_scaling": {{"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}}}"#
        );
        let err = Phi3Config::from_json("c", bad.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("short_factor"), "{err}");
    }
}
