//! Gemma 3 text models (`Gemma3ForCausalLM`, `model_type` "gemma3_text"): RMSNorm with the gain
//! `1 + w`, a GeGLU MLP (tanh GELU), norms after the attention and after the MLP as well as
//! before, per-head q/k norms, embeddings scaled by √hidden_size, a head size of its own (256),
//! attention scaled by `query_pre_attn_scalar^-1/2`, sliding-window ("local") layers
//! interleaved with global ones (every sixth, or as `layer_types` says), each kind with its own
//! RoPE (local: base 10000; global: base 1e6 and the config's scaling), the head tied to the
//! embedding. Hugging Face folders (f32 / f16 / bf16 or `quantize=`) and GGUF files (whose
//! norms hold `1 + w` already, as llama.cpp's converter writes them).
//!
//! ```text
//! x = embed[ids] · √d
//! for each layer:
//!     x = x + post_attn_norm(attention(input_norm(x)))      (q, k: per-head norm, then RoPE)
//!     x = x + post_ffn_norm(gelu_tanh(h @ Wgate) * (h @ Wup)) @ Wdown,  h = pre_ffn_norm(x)
//! logits = norm(x) @ embedᵀ  (soft-capped if final_logit_softcapping is set)
//! ```

use std::path::Path;

use serde_json::{Map, Value};

use crate::io::gguf::{self, Gguf};
use crate::io::safetensors::{Checkpoint, F32Data, F32Tensor};
use crate::model::act::Activation;
use crate::model::decoder::{
    gain, Decoder, DecoderConfig, Layer, MlpKind, NormKind, Positions, Rope,
};
use crate::model::gguf_weights::{same_row, GgufWeights};
use crate::model::linear::Proj;
use crate::model::registry::Arch;
use crate::model::rope::RopeScaling;
use crate::model::weights::{self, Layout, Linear, Progress, Quant, Weights};
use crate::quant::QType;
use crate::{Error, Result};

/// Gemma 3 in the registry.
pub static ARCH: Arch = Arch {
    name: "gemma3_text",
    class_name: "Gemma3ForCausalLM",
    model_types: &["gemma3_text", "gemma3"],
    gguf_archs: &["gemma3"],
    load_folder,
    load_gguf: Some(load_gguf),
    save: None,
};

/// A config field as a float, or `default`.
fn float(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}

/// One layer kind's RoPE from a `rope_parameters` entry or the older top-level fields.
fn rope_of(
    what: &str,
    params: Option<&Value>,
    theta: f64,
    scaling: Option<&Value>,
) -> Result<Rope> {
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(theta);
    let spec = params.or(scaling).filter(|s| s.is_object());
    let kind = spec
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: spec.map_or(1.0, |s| float(s, "factor", 1.0)) as f32,
        }),
        other => {
            return Err(Error::Unsupported(format!(
                "rope scaling type {other:?} ({what}); ferrolm runs Gemma 3's default and linear"
            )))
        }
    };
    Ok(Rope::new(theta as f32, scaling, None))
}

/// The fields of a Gemma 3 text `config.json` (`Gemma3TextConfig`'s defaults where absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Config {
    pub decoder: DecoderConfig,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

impl Gemma3Config {
    pub fn from_json(what: &str, data: &[u8]) -> Result<Self> {
        Self::from_value(what, &weights::parse_config(what, data, "gemma3_text")?)
    }

    fn from_value(what: &str, v: &Value) -> Result<Self> {
        let num = |key: &str, default: usize| weights::positive(v, what, key, Some(default));
        let hidden = num("hidden_size", 2304)?;
        let heads = num("num_attention_heads", 8)?;
        let kv_heads = num("num_key_value_heads", 4)?;
        if heads % kv_heads != 0 {
            return Err(Error::format(
                what,
                format!(
                    "num_attention_heads {heads} is not a multiple of num_key_value_heads \
                     {kv_heads}"
                ),
            ));
        }
        let head_dim = num("head_dim", 256)?;
        if head_dim % 2 != 0 {
            return Err(Error::format(
                what,
                format!("head_dim {head_dim} must be even"),
            ));
        }
        let act = v
            .get("hidden_activation")
            .or_else(|| v.get("hidden_act"))
            .and_then(Value::as_str)
            .unwrap_or("gelu_pytorch_tanh");
        let act = Activation::parse(act)
            .ok_or_else(|| Error::Unsupported(format!("hidden_activation {act:?} ({what})")))?;
        for key in ["attn_logit_softcapping"] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(Error::Unsupported(format!(
                    "{key} ({what}); Gemma 3 has none (Gemma 2 is not run yet)"
                )));
            }
        }
        if v.get("use_bidirectional_attention") == Some(&Value::Bool(true)) {
            return Err(Error::Unsupported(format!(
                "use_bidirectional_attention ({what}): an embedding model, not a decoder"
            )));
        }
        let layers = num("num_hidden_layers", 26)?;
        let max_positions = num("max_position_embeddings", 131_072)?;
        let window = num("sliding_window", 4096)?;
        if window > max_positions {
            return Err(Error::format(
                what,
                format!(
                    "sliding_window {window} is larger than the context, \
                     max_position_embeddings = {max_positions}"
                ),
            ));
        }
        // Which layers are local: `layer_types`, or every layer but each `pattern`-th.
        let local: Vec<bool> = match v.get("layer_types") {
            Some(Value::Array(types)) => {
                if types.len() != layers {
                    return Err(Error::format(
                        what,
                        format!(
                            "layer_types lists {} layers, num_hidden_layers is {layers}",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(Error::format(
                            what,
                            format!("layer_types: {t} is not sliding_attention or full_attention"),
                        )),
                    })
                    .collect::<Result<_>>()?
            }
            _ => {
                let pattern = num("sliding_window_pattern", 6)?;
                (0..layers).map(|i| (i + 1) % pattern != 0).collect()
            }
        };
        // transformers 5: `rope_parameters` per layer kind; 4.x: `rope_theta`,
        // `rope_local_base_freq` and `rope_scaling` (the global layers' only).
        let params = v.get("rope_parameters").filter(|p| p.is_object());
        let global = rope_of(
            what,
            params.and_then(|p| p.get("full_attention")),
            float(v, "rope_theta", 1_000_000.0),
            v.get("rope_scaling"),
        )?;
        let local_rope = rope_of(
            what,
            params.and_then(|p| p.get("sliding_attention")),
            float(v, "rope_local_base_freq", 10_000.0),
            None,
        )?;
        let scalar = float(v, "query_pre_attn_scalar", 256.0);
        if scalar.is_nan() || scalar <= 0.0 {
            return Err(Error::format(
                what,
                "query_pre_attn_scalar must be positive",
            ));
        }
        let softcap = v
            .get("final_logit_softcapping")
            .and_then(Value::as_f64)
            .map(|c| c as f32);
        let tie = !matches!(v.get("tie_word_embeddings"), Some(Value::Bool(false)));
        Ok(Gemma3Config {
            decoder: DecoderConfig {
                vocab_size: num("vocab_size", 262_208)?,
                hidden_size: hidden,
                num_layers: layers,
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim,
                intermediate_size: num("intermediate_size", 9216)?,
                max_positions,
                max_positions_key: "max_position_embeddings",
                norm: NormKind::RmsNorm,
                norm_eps: float(v, "rms_norm_eps", 1e-6) as f32,
                mlp: MlpKind::Gated(act),
                positions: Positions::Rope(global),
                attn_scale: scalar.powf(-0.5) as f32,
                attn_scale_by_layer: false,
                windows: local.iter().map(|&l| l.then_some(window)).collect(),
                local_rope: Some(local_rope),
                embed_scale: Some((hidden as f64).sqrt() as f32),
                final_softcap: softcap,
                tie_word_embeddings: tie,
            },
            bos_token_id: weights::token_ids(v.get("bos_token_id")).first().copied(),
            eos_token_id: weights::token_ids(v.get("eos_token_id")),
        })
    }

    /// The config a GGUF file's `gemma3.*` metadata describes. The file does not say
    /// `query_pre_attn_scalar`: as llama.cpp does, the attention scale is `head_dim^-1/2`,
    /// but for the 62-layer model (Gemma 3 27B) whose scalar is `hidden_size / heads`. Nor
    /// does it list the layer kinds: every sixth layer is global unless
    /// `sliding_window_pattern` says otherwise.
    fn from_gguf(w: &GgufWeights<'_>) -> Result<Self> {
        let g = w.g;
        let what = g.what();
        let key = |k: &str| format!("gemma3.{k}");
        let opt = |k: &str| -> Result<Option<usize>> {
            match g.meta(&key(k)) {
                Some(_) => Ok(Some(w.num(&key(k))?)),
                None => Ok(None),
            }
        };
        let hidden = w.num(&key("embedding_length"))?;
        let heads = w.num(&key("attention.head_count"))?;
        let kv_heads = opt("attention.head_count_kv")?.unwrap_or(heads);
        let head_dim =
            match opt("attention.key_length")? {
                Some(n) => n,
                None if hidden.is_multiple_of(heads) => hidden / heads,
                None => return Err(Error::format(
                    &what,
                    "gemma3.attention.key_length is missing and the heads do not divide the width",
                )),
            };
        if !heads.is_multiple_of(kv_heads) || !head_dim.is_multiple_of(2) {
            return Err(Error::format(
                &what,
                format!("{heads} heads of {head_dim} over {kv_heads} key/value heads"),
            ));
        }
        let layers = w.num(&key("block_count"))?;
        let max_positions = w.num(&key("context_length"))?;
        let window = g
            .meta(&key("attention.sliding_window"))
            .and_then(gguf::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0);
        let local: Vec<bool> = match g.meta(&key("attention.sliding_window_pattern")) {
            _ if window.is_none() => vec![false; layers],
            Some(gguf::Value::Array(flags)) => {
                let flags: Vec<bool> = flags.iter().filter_map(gguf::Value::as_bool).collect();
                if flags.len() != layers {
                    return Err(Error::format(
                        &what,
                        format!(
                            "gemma3.attention.sliding_window_pattern has {} layers of {layers}",
                            flags.len()
                        ),
                    ));
                }
                flags
            }
            Some(_) => {
                let n = w.num(&key("attention.sliding_window_pattern"))?;
                (0..layers).map(|i| i % n < n - 1).collect()
            }
            None => (0..layers).map(|i| (i + 1) % 6 != 0).collect(),
        };
        let scaling = match g
            .meta(&key("rope.scaling.type"))
            .and_then(gguf::Value::as_str)
        {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: w.float(&key("rope.scaling.factor")).unwrap_or(1.0) as f32,
            }),
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "rope scaling type {other:?} ({what}); ferrolm runs Gemma 3's linear"
                )))
            }
        };
        let global = Rope::new(
            w.float(&key("rope.freq_base")).unwrap_or(1_000_000.0) as f32,
            scaling,
            None,
        );
        let local_rope = Rope::new(
            w.float(&key("rope.freq_base_swa")).unwrap_or(10_000.0) as f32,
            None,
            None,
        );
        let scalar = if layers == 62 {
            (hidden / heads) as f64
        } else {
            head_dim as f64
        };
        let vocab = match g.dims("token_embd.weight") {
            Some([_, rows]) => *rows,
            _ => {
                return Err(Error::format(
                    &what,
                    "tensor \"token_embd.weight\" is missing",
                ))
            }
        };
        Ok(Gemma3Config {
            decoder: DecoderConfig {
                vocab_size: vocab,
                hidden_size: hidden,
                num_layers: layers,
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim,
                intermediate_size: w.num(&key("feed_forward_length"))?,
                max_positions,
                max_positions_key: "max_position_embeddings",
                norm: NormKind::RmsNorm,
                norm_eps: w
                    .float(&key("attention.layer_norm_rms_epsilon"))
                    .unwrap_or(1e-6) as f32,
                mlp: MlpKind::Gated(Activation::GeluTanh),
                positions: Positions::Rope(global),
                attn_scale: scalar.powf(-0.5) as f32,
                attn_scale_by_layer: false,
                windows: local
                    .iter()
                    .map(|&l| if l { window } else { None })
                    .collect(),
                local_rope: Some(local_rope),
                embed_scale: Some((hidden as f64).sqrt() as f32),
                final_softcap: w.float(&key("final_logit_softcapping")).map(|c| c as f32),
                tie_word_embeddings: !g.contains("output.weight"),
            },
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
        let types: Vec<Value> = c
            .windows
            .iter()
            .map(|w| {
                Value::from(if w.is_some() {
                    "sliding_attention"
                } else {
                    "full_attention"
                })
            })
            .collect();
        m.insert("layer_types".into(), types.into());
        let window = c.windows.iter().flatten().next().copied();
        m.insert("sliding_window".into(), window.into());
        m.insert("bos_token_id".into(), self.bos_token_id.into());
        m.insert("eos_token_id".into(), self.eos_token_id.clone().into());
        m.insert("tie_word_embeddings".into(), c.tie_word_embeddings.into());
        m
    }
}

/// A norm's gain as Gemma applies it: `1 + w`.
fn plus_one(mut w: Vec<f32>) -> Vec<f32> {
    w.iter_mut().for_each(|x| *x += 1.0);
    w
}

/// Loads a Hugging Face `Gemma3ForCausalLM` folder, the matrices quantized to `quantize` if
/// given.
pub fn load_folder(
    folder: &Path,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let (what, v) = weights::read_config_any(folder)?;
    let quant = weights::resolve_quant(weights::stored_quant(&v, &what)?, quantize)?;
    if matches!(quant, Quant::Stored(_)) {
        return Err(Error::Unsupported(
            "a quantized Gemma 3 folder saved by ferrolm (quantize from the f32 folder)".into(),
        ));
    }
    let ck = Checkpoint::open_folder(folder)?;
    // A multimodal folder (`Gemma3ForConditionalGeneration`, model_type "gemma3"): its
    // language model, under `text_config` and `language_model.model.` (or
    // `model.language_model.`); the vision tower and projector are not read.
    let (text, prefix) = match v.get("model_type").and_then(Value::as_str) {
        Some("gemma3") => {
            let text = v
                .get("text_config")
                .filter(|t| t.is_object())
                .ok_or_else(|| Error::format(&what, "`text_config` is missing"))?;
            let newer = ck.contains("model.language_model.embed_tokens.weight");
            let prefix = if newer {
                "model.language_model."
            } else {
                "language_model.model."
            };
            (text, prefix)
        }
        _ => {
            weights::check_model_type(&v, &what, "gemma3_text")?;
            (&v, "model.")
        }
    };
    let mut config = Gemma3Config::from_value(&what, text)?;
    if prefix != "model." {
        // transformers' Gemma3ForConditionalGeneration does not soft-cap its logits (the
        // released configs set no cap).
        config.decoder.final_softcap = None;
    }
    let c = &config.decoder;
    let total = 7 * c.num_layers + 1 + usize::from(!c.tie_word_embeddings);
    let w = Weights::new(&ck, prefix, "embed_tokens.weight").with_quant(quant, total, progress);
    let (d, inner, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let lin = |name: &str, n_in: usize, n_out: usize| -> Result<Linear> {
        Ok(Linear {
            w: w.matrix(name, n_in, n_out, Layout::OutIn)?,
            b: F32Tensor {
                data: F32Data::Owned(vec![0.0; n_out]),
                shape: vec![n_out],
            },
            n_in,
            n_out,
        })
    };
    let norm = |name: &str, n: usize| -> Result<_> {
        Ok(gain(plus_one(
            w.get(&format!("{name}.weight"), &[n])?.values().to_vec(),
        )))
    };
    let mut layers = Vec::new(); // not sized by the file: its count is untrusted
    for l in 0..c.num_layers {
        let p = format!("layers.{l}");
        layers.push(Layer {
            attn_norm: norm(&format!("{p}.input_layernorm"), d)?,
            qkv: Proj::join(vec![
                lin(&format!("{p}.self_attn.q_proj"), d, c.q_dim())?,
                lin(&format!("{p}.self_attn.k_proj"), d, c.kv_dim())?,
                lin(&format!("{p}.self_attn.v_proj"), d, c.kv_dim())?,
            ]),
            qk_norm: Some((
                norm(&format!("{p}.self_attn.q_norm"), hd)?,
                norm(&format!("{p}.self_attn.k_norm"), hd)?,
            )),
            o: Proj::Fused(lin(&format!("{p}.self_attn.o_proj"), c.q_dim(), d)?),
            post_attn_norm: Some(norm(&format!("{p}.post_attention_layernorm"), d)?),
            ffn_norm: norm(&format!("{p}.pre_feedforward_layernorm"), d)?,
            up: Proj::join(vec![
                lin(&format!("{p}.mlp.gate_proj"), d, inner)?,
                lin(&format!("{p}.mlp.up_proj"), d, inner)?,
            ]),
            down: Proj::Fused(lin(&format!("{p}.mlp.down_proj"), inner, d)?),
            post_ffn_norm: Some(norm(&format!("{p}.post_feedforward_layernorm"), d)?),
        });
    }
    let final_norm = norm("norm", d)?;
    w.decoder(&ARCH, config.info(), config.decoder, layers, final_norm)
}

/// Loads a GGUF file of architecture `gemma3` (its norms are `1 + w` already).
pub fn load_gguf(
    g: &Gguf,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let config = Gemma3Config::from_gguf(&GgufWeights::new(g, quantize, 0, None))?;
    let c = &config.decoder;
    let total = 7 * c.num_layers + 1 + usize::from(!c.tie_word_embeddings);
    let w = GgufWeights::new(g, quantize, total, progress);
    let (d, inner, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let norm =
        |name: &str, n: usize| -> Result<_> { Ok(gain(w.vec(&format!("{name}.weight"), n)?)) };
    let lin = |name: &str, n_in: usize, n_out: usize| w.linear(name, n_in, n_out, &same_row);
    let mut layers = Vec::new(); // not sized by the file: its count is untrusted
    for l in 0..c.num_layers {
        let p = format!("blk.{l}");
        let qkv = if g.contains(&format!("{p}.attn_qkv.weight")) {
            Proj::Fused(lin(
                &format!("{p}.attn_qkv"),
                d,
                c.q_dim() + 2 * c.kv_dim(),
            )?)
        } else {
            Proj::join(vec![
                lin(&format!("{p}.attn_q"), d, c.q_dim())?,
                lin(&format!("{p}.attn_k"), d, c.kv_dim())?,
                lin(&format!("{p}.attn_v"), d, c.kv_dim())?,
            ])
        };
        layers.push(Layer {
            attn_norm: norm(&format!("{p}.attn_norm"), d)?,
            qkv,
            qk_norm: Some((
                norm(&format!("{p}.attn_q_norm"), hd)?,
                norm(&format!("{p}.attn_k_norm"), hd)?,
            )),
            o: Proj::Fused(lin(&format!("{p}.attn_output"), c.q_dim(), d)?),
            post_attn_norm: Some(norm(&format!("{p}.post_attention_norm"), d)?),
            ffn_norm: norm(&format!("{p}.ffn_norm"), d)?,
            up: Proj::join(vec![
                lin(&format!("{p}.ffn_gate"), d, inner)?,
                lin(&format!("{p}.ffn_up"), d, inner)?,
            ]),
            down: Proj::Fused(lin(&format!("{p}.ffn_down"), inner, d)?),
            post_ffn_norm: Some(norm(&format!("{p}.post_ffw_norm"), d)?),
        });
    }
    w.decoder(&ARCH, config.info(), config.decoder, layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_kinds_and_ropes_from_both_config_layouts() {
        // transformers 4.x: every sixth layer global, one scaling for the global layers.
        let v4 = br#"{"model_type": "gemma3_text", "num_hidden_layers": 12, "sliding_window": 512,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}"#;
        let c = Gemma3Config::from_json("c", v4).unwrap().decoder;
        let globals: Vec<usize> = (0..12).filter(|&i| c.windows[i].is_none()).collect();
        assert_eq!(globals, [5, 11]);
        assert_eq!(c.windows[0], Some(512));
        let Positions::Rope(g) = &c.positions else {
            panic!()
        };
        assert_eq!(
            (g.theta, g.scaling),
            (1e6, Some(RopeScaling::Linear { factor: 8.0 }))
        );
        let l = c.local_rope.as_ref().unwrap();
        assert_eq!((l.theta, l.scaling), (1e4, None));
        assert!((c.attn_scale - 1.0 / 16.0).abs() < 1e-9);
        // transformers 5: layer_types and rope_parameters per kind.
        let v5 = br#"{"model_type": "gemma3_text", "num_hidden_layers": 3,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "query_pre_attn_scalar": 168,
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}"#;
        let c = Gemma3Config::from_json("c", v5).unwrap().decoder;
        assert_eq!(c.windows, [Some(4096), None, Some(4096)]);
        let Positions::Rope(g) = &c.positions else {
            panic!()
        };
        assert_eq!(g.theta, 5e5);
        assert!((c.attn_scale - 168f32.powf(-0.5)).abs() < 1e-9);
        let bad = br#"{"model_type": "gemma3_text", "num_hidden_layers": 2,
            "layer_types": ["full_attention"]}"#;
        let err = Gemma3Config::from_json("c", bad).unwrap_err().to_string();
        assert!(err.contains("layer_types"), "{err}");
    }
}
