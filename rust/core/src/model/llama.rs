//! Llama-family decoders (Llama 2 / 3, SmolLM, TinyLlama, ...): the config and the weights of a
//! Hugging Face folder (safetensors) or a GGUF file (quantized tensors used in ferrolm's tiles)
//! as a [`Decoder`]: RMSNorm, RoPE, grouped-query attention, a SwiGLU MLP.
//!
//! ```text
//! x = embed[ids]                                                   # [rows, d]
//! for each layer:
//!     h = rms_norm(x) · g1
//!     q, k, v = h @ [Wq | Wk | Wv]          (one fused matmul)     # heads nh, nkv (GQA)
//!     q, k = rope(q, pos), rope(k, pos)     (rotate_half pairs i, i + hd/2)
//!     x = x + softmax(q kᵀ / √hd + causal mask) v @ Wo
//!     h = rms_norm(x) · g2
//!     g, u = h @ [Wgate | Wup]              (one fused matmul)
//!     x = x + (silu(g) * u) @ Wdown
//! logits = rms_norm(x) · g @ headᵀ                                 # head tied to embed, or not
//! ```
//!
//! GGUF files store `attn_q` / `attn_k` with rows permuted for ggml's interleaved RoPE;
//! they are put back in Hugging Face's order as they load, so one RoPE serves both sources.

use std::path::Path;

use serde_json::{Map, Value};

use crate::io::gguf::{self, Gguf};
use crate::io::safetensors::{F32Data, F32Tensor};
use crate::model::act::Activation;
use crate::model::decoder::{
    gain, Decoder, DecoderConfig, Layer, MlpKind, NormKind, Positions, Rope,
};
use crate::model::gguf_weights::{same_row, GgufWeights, RowOf};
use crate::model::linear::Proj;
use crate::model::registry::Arch;
pub use crate::model::rope::RopeScaling;
use crate::model::weights::{self, Layout, Linear, Progress, Quant, Weights};
use crate::quant::QType;
use crate::{Error, Result};

/// The fields of a Llama `config.json` (or a GGUF file's `llama.*` metadata) the forward pass
/// uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Biases on the attention's projections (all four, or see `qkv_bias_only`).
    pub attention_bias: bool,
    /// Biases on the query, key and value projections only (Qwen2), whatever
    /// `attention_bias` says.
    pub qkv_bias_only: bool,
    pub mlp_bias: bool,
    /// Each query sees this many positions up to its own (Mistral's `sliding_window`).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

impl LlamaConfig {
    /// Reads a `config.json` of `model_type` "llama".
    pub fn from_json(what: &str, data: &[u8]) -> Result<Self> {
        Self::from_value(what, &weights::parse_config(what, data, "llama")?)
    }

    fn from_value(what: &str, v: &Value) -> Result<Self> {
        let usize_of = |key: &str, default: Option<usize>| weights::positive(v, what, key, default);
        let f64_of = |obj: &Value, key: &str| obj.get(key).and_then(Value::as_f64);
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
        let hidden = usize_of("hidden_size", None)?;
        let heads = usize_of("num_attention_heads", None)?;
        let kv_heads = usize_of("num_key_value_heads", Some(heads))?;
        if heads % kv_heads != 0 {
            return Err(Error::format(
                what,
                format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"),
            ));
        }
        let head_dim = usize_of("head_dim", Some(hidden / heads))?;
        if head_dim % 2 != 0 || (v.get("head_dim").is_none() && hidden % heads != 0) {
            return Err(Error::format(
                what,
                format!("head size {head_dim} (hidden_size {hidden} / {heads} heads) must be even and exact"),
            ));
        }
        if v.get("use_sliding_window") == Some(&Value::Bool(true)) {
            return Err(Error::Unsupported(format!(
                "sliding-window attention (use_sliding_window: true, {what})"
            )));
        }
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(Error::Unsupported(format!(
                "hidden_act {act:?} ({what}); ferrolm runs Llama's silu"
            )));
        }
        // transformers 5 keeps rope_theta and the scaling in `rope_parameters`; 4.x at the top
        // level and in `rope_scaling`.
        let params = v.get("rope_parameters").filter(|p| p.is_object());
        let scaling = params
            .filter(|p| p.get("rope_type").is_some() || p.get("type").is_some())
            .or_else(|| v.get("rope_scaling").filter(|p| p.is_object()));
        let rope_theta = params
            .and_then(|p| f64_of(p, "rope_theta"))
            .or_else(|| f64_of(v, "rope_theta"))
            .unwrap_or(10_000.0) as f32;
        let rope_scaling = match scaling {
            None => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let factor = f64_of(s, "factor").unwrap_or(1.0) as f32;
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear { factor }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: f64_of(s, "low_freq_factor").unwrap_or(1.0) as f32,
                        high_freq_factor: f64_of(s, "high_freq_factor").unwrap_or(4.0) as f32,
                        original_max_position_embeddings: f64_of(
                            s,
                            "original_max_position_embeddings",
                        )
                        .unwrap_or(8192.0)
                            as f32,
                    }),
                    other => {
                        return Err(Error::Unsupported(format!(
                            "rope scaling type {other:?} ({what}); ferrolm runs default, linear \
                             and llama3"
                        )))
                    }
                }
            }
        };
        Ok(LlamaConfig {
            vocab_size: usize_of("vocab_size", None)?,
            hidden_size: hidden,
            intermediate_size: usize_of("intermediate_size", None)?,
            num_hidden_layers: usize_of("num_hidden_layers", None)?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: usize_of("max_position_embeddings", Some(2048))?,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: bool_of("tie_word_embeddings", false)?,
            attention_bias: bool_of("attention_bias", false)?,
            qkv_bias_only: false,
            mlp_bias: bool_of("mlp_bias", false)?,
            sliding_window: match v.get("sliding_window") {
                None | Some(Value::Null) => None,
                Some(_) => Some(usize_of("sliding_window", None)?),
            },
            bos_token_id: weights::token_ids(v.get("bos_token_id")).first().copied(),
            eos_token_id: weights::token_ids(v.get("eos_token_id")),
        })
    }

    /// The config a GGUF file's `<arch>.*` metadata describes (`arch`: the family's GGUF
    /// architecture, `llama` for Llama).
    fn from_gguf(g: &Gguf, fam: &Family) -> Result<Self> {
        let what = g.what();
        let pre = fam.gguf;
        let arch = g
            .meta("general.architecture")
            .and_then(gguf::Value::as_str)
            .unwrap_or("");
        if arch != pre {
            return Err(Error::Unsupported(format!(
                "architecture {arch:?} ({what}); this loader reads GGUF files of architecture \
                 {pre:?}"
            )));
        }
        let num = |key: &str| -> Result<usize> {
            g.meta(&format!("{pre}.{key}"))
                .and_then(gguf::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0 && n < (1 << 30))
                .ok_or_else(|| Error::format(&what, format!("{pre}.{key} is missing or invalid")))
        };
        let float = |key: &str| {
            g.meta(&format!("{pre}.{key}"))
                .and_then(gguf::Value::as_f64)
        };
        let hidden = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let kv_heads = g
            .meta(&format!("{pre}.attention.head_count_kv"))
            .map(|_| num("attention.head_count_kv"))
            .transpose()?
            .unwrap_or(heads);
        if heads % kv_heads != 0 || hidden % heads != 0 || (hidden / heads) % 2 != 0 {
            return Err(Error::format(
                &what,
                format!("{heads} heads over {kv_heads} key/value heads of width {hidden}"),
            ));
        }
        let head_dim = match g.meta(&format!("{pre}.attention.key_length")) {
            Some(_) => num("attention.key_length")?,
            None => hidden / heads,
        };
        if let Some(rot) = g
            .meta(&format!("{pre}.rope.dimension_count"))
            .and_then(gguf::Value::as_u64)
        {
            if rot as usize != head_dim {
                return Err(Error::Unsupported(format!(
                    "partial rotary embeddings ({rot} of {head_dim} dims, {what})"
                )));
            }
        }
        let vocab = match g.meta(&format!("{pre}.vocab_size")) {
            Some(_) => num("vocab_size")?,
            None => g
                .meta("tokenizer.ggml.tokens")
                .and_then(gguf::Value::as_array)
                .map(<[_]>::len)
                .filter(|&n| n > 0)
                .ok_or_else(|| Error::format(&what, "the vocabulary size is missing"))?,
        };
        let rope_scaling = match g
            .meta(&format!("{pre}.rope.scaling.type"))
            .and_then(gguf::Value::as_str)
        {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: float("rope.scaling.factor").unwrap_or(1.0) as f32,
            }),
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "rope scaling type {other:?} ({what})"
                )))
            }
        };
        let id = |key: &str| {
            g.meta(key)
                .and_then(gguf::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        Ok(LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: num("feed_forward_length")?,
            num_hidden_layers: num("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: num("context_length")?,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0) as f32,
            rope_scaling,
            tie_word_embeddings: !g.contains("output.weight"),
            attention_bias: g.contains("blk.0.attn_q.bias"),
            qkv_bias_only: false,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_id: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        })
    }

    /// Query columns: heads × head size.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Key (and value) columns.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

impl LlamaConfig {
    /// The config as the family reads it (`what` names its source in errors).
    fn for_family(mut self, fam: &Family, what: &str) -> Result<Self> {
        self.qkv_bias_only = fam.qkv_bias;
        if !fam.sliding_window {
            self.sliding_window = None; // (Qwen2 writes one it does not use)
        }
        if let Some(w) = self.sliding_window {
            if w > self.max_position_embeddings {
                return Err(Error::format(
                    what,
                    format!(
                        "sliding_window {w} is larger than the context, \
                         max_position_embeddings = {}",
                        self.max_position_embeddings
                    ),
                ));
            }
        }
        Ok(self)
    }

    /// Whether the (query, key, value) and the output projections have biases.
    fn biases(&self) -> (bool, bool) {
        if self.qkv_bias_only {
            (true, false)
        } else {
            (self.attention_bias, self.attention_bias)
        }
    }

    /// The fields Python's `config` reports.
    fn info(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("vocab_size".into(), self.vocab_size.into());
        m.insert("hidden_size".into(), self.hidden_size.into());
        m.insert("intermediate_size".into(), self.intermediate_size.into());
        m.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
        m.insert(
            "num_attention_heads".into(),
            self.num_attention_heads.into(),
        );
        m.insert(
            "num_key_value_heads".into(),
            self.num_key_value_heads.into(),
        );
        m.insert("head_dim".into(), self.head_dim.into());
        let max_pos = self.max_position_embeddings;
        m.insert("max_position_embeddings".into(), max_pos.into());
        m.insert("rms_norm_eps".into(), f64::from(self.rms_norm_eps).into());
        m.insert("rope_theta".into(), f64::from(self.rope_theta).into());
        m.insert("bos_token_id".into(), self.bos_token_id.into());
        m.insert("eos_token_id".into(), self.eos_token_id.clone().into());
        m.insert(
            "tie_word_embeddings".into(),
            self.tie_word_embeddings.into(),
        );
        m
    }

    /// The decoder this config describes (`factors`: a GGUF file's `rope_freqs`).
    fn decoder_config(&self, factors: Option<Vec<f32>>) -> DecoderConfig {
        DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            intermediate_size: self.intermediate_size,
            max_positions: self.max_position_embeddings,
            max_positions_key: "max_position_embeddings",
            norm: NormKind::RmsNorm,
            norm_eps: self.rms_norm_eps,
            mlp: MlpKind::Gated(Activation::Silu),
            positions: Positions::Rope(Rope::new(self.rope_theta, self.rope_scaling, factors)),
            attn_scale: 1.0 / (self.head_dim as f32).sqrt(),
            attn_scale_by_layer: false,
            windows: match self.sliding_window {
                Some(w) => vec![Some(w); self.num_hidden_layers],
                None => Vec::new(),
            },
            local_rope: None,
            embed_scale: None,
            final_softcap: None,
            tie_word_embeddings: self.tie_word_embeddings,
        }
    }
}

/// What sets a Llama-like architecture apart from Llama in its files: its names, where its
/// GGUF metadata lives, how its GGUF stores the query and key rows, and which biases it has.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) arch: &'static Arch,
    /// `config.json`'s `model_type`.
    pub(crate) model_type: &'static str,
    /// `general.architecture`, the prefix of the GGUF metadata keys.
    pub(crate) gguf: &'static str,
    /// The GGUF file's `attn_q` / `attn_k` rows are permuted for ggml's interleaved RoPE
    /// (convert_hf_to_gguf does this for Llama, not for the NeoX-RoPE families).
    pub(crate) permuted_qk: bool,
    /// Biases on the query, key and value projections and none on the output, whatever the
    /// config says (Qwen2).
    pub(crate) qkv_bias: bool,
    /// RMSNorm of each query and key head before RoPE (Qwen3).
    pub(crate) qk_norm: bool,
    /// `config.json`'s `sliding_window` applies to every layer (Mistral).
    pub(crate) sliding_window: bool,
}

/// Llama in the registry: Hugging Face folders and GGUF files.
pub static ARCH: Arch = Arch {
    name: "llama",
    class_name: "LlamaForCausalLM",
    model_types: &["llama"],
    gguf_archs: &["llama"],
    load_folder: |folder, q, progress| load_folder(&LLAMA, folder, q, progress),
    load_gguf: Some(|g, q, progress| load_gguf(&LLAMA, g, q, progress)),
    save: None,
};

static LLAMA: Family = Family {
    arch: &ARCH,
    model_type: "llama",
    gguf: "llama",
    permuted_qk: true,
    qkv_bias: false,
    qk_norm: false,
    sliding_window: false,
};

fn zeros(n: usize) -> F32Tensor {
    F32Tensor {
        data: F32Data::Owned(vec![0.0; n]),
        shape: vec![n],
    }
}

/// GGUF's `attn_q` / `attn_k` row for Hugging Face's row `j`: within each head of `hd` rows,
/// HF row `half·hd/2 + i` is the file's row `2i + half` (convert_hf_to_gguf's permutation,
/// undone).
fn unpermute(hd: usize) -> impl Fn(usize) -> usize + Sync {
    move |j| {
        let (h, r) = (j / hd, j % hd);
        let (half, i) = (r / (hd / 2), r % (hd / 2));
        h * hd + 2 * i + half
    }
}

/// Loads a Hugging Face folder of the family (`config.json` + safetensors), the matrices
/// quantized to `quantize` if given.
pub(crate) fn load_folder(
    fam: &Family,
    folder: &Path,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let (what, v, quant, ck) = weights::open_folder(folder, fam.model_type, quantize)?;
    if matches!(quant, Quant::Stored(_)) {
        return Err(Error::Unsupported(format!(
            "a quantized {} folder saved by ferrolm (quantize from the f32 folder, or use a \
             GGUF file)",
            fam.arch.name
        )));
    }
    let c = LlamaConfig::from_value(&what, &v)?.for_family(fam, &what)?;
    let total = 7 * c.num_hidden_layers + 1 + usize::from(!c.tie_word_embeddings);
    let w = Weights::new(&ck, "model.", "embed_tokens.weight").with_quant(quant, total, progress);
    let (d, inner, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let lin = |name: &str, n_in: usize, n_out: usize, bias: bool| -> Result<Linear> {
        Ok(Linear {
            w: w.matrix(name, n_in, n_out, Layout::OutIn)?,
            b: if bias {
                w.get(&format!("{name}.bias"), &[n_out])?
            } else {
                zeros(n_out)
            },
            n_in,
            n_out,
        })
    };
    let vec_of =
        |name: &str, n: usize| -> Result<Vec<f32>> { Ok(w.get(name, &[n])?.values().to_vec()) };
    let mut blocks = Vec::new(); // not sized by the file: its count is untrusted
    for l in 0..c.num_hidden_layers {
        let p = format!("layers.{l}");
        let (qkv_b, o_b) = c.biases();
        blocks.push(Layer {
            attn_norm: gain(vec_of(&format!("{p}.input_layernorm.weight"), d)?),
            qkv: Proj::join(vec![
                lin(&format!("{p}.self_attn.q_proj"), d, c.q_dim(), qkv_b)?,
                lin(&format!("{p}.self_attn.k_proj"), d, c.kv_dim(), qkv_b)?,
                lin(&format!("{p}.self_attn.v_proj"), d, c.kv_dim(), qkv_b)?,
            ]),
            qk_norm: if fam.qk_norm {
                Some((
                    gain(vec_of(&format!("{p}.self_attn.q_norm.weight"), hd)?),
                    gain(vec_of(&format!("{p}.self_attn.k_norm.weight"), hd)?),
                ))
            } else {
                None
            },
            o: Proj::Fused(lin(&format!("{p}.self_attn.o_proj"), c.q_dim(), d, o_b)?),
            ffn_norm: gain(vec_of(&format!("{p}.post_attention_layernorm.weight"), d)?),
            up: Proj::join(vec![
                lin(&format!("{p}.mlp.gate_proj"), d, inner, c.mlp_bias)?,
                lin(&format!("{p}.mlp.up_proj"), d, inner, c.mlp_bias)?,
            ]),
            down: Proj::Fused(lin(&format!("{p}.mlp.down_proj"), inner, d, c.mlp_bias)?),
            post_attn_norm: None,
            post_ffn_norm: None,
        });
    }
    let norm = vec_of("norm.weight", d)?;
    w.decoder(
        fam.arch,
        c.info(),
        c.decoder_config(None),
        blocks,
        gain(norm),
    )
}

/// Loads a GGUF file of the family: quantized tensors repacked losslessly into ferrolm's
/// tiles, f32 / f16 / bf16 ones as f32 (or quantized to `quantize`).
pub(crate) fn load_gguf(
    fam: &Family,
    g: &Gguf,
    quantize: Option<QType>,
    progress: Option<Progress<'_>>,
) -> Result<Decoder> {
    let c = LlamaConfig::from_gguf(g, fam)?.for_family(fam, &g.what())?;
    let (d, inner, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let total = 7 * c.num_hidden_layers + 1 + usize::from(!c.tie_word_embeddings);
    let w = GgufWeights::new(g, quantize, total, progress);
    let unperm = unpermute(hd);
    let qk_rows: RowOf<'_> = if fam.permuted_qk { &unperm } else { &same_row };
    let mut blocks = Vec::new(); // not sized by the file: its count is untrusted
    for l in 0..c.num_hidden_layers {
        let p = format!("blk.{l}");
        blocks.push(Layer {
            attn_norm: gain(w.vec(&format!("{p}.attn_norm.weight"), d)?),
            qkv: Proj::join(vec![
                w.linear(&format!("{p}.attn_q"), d, c.q_dim(), qk_rows)?,
                w.linear(&format!("{p}.attn_k"), d, c.kv_dim(), qk_rows)?,
                w.linear(&format!("{p}.attn_v"), d, c.kv_dim(), &same_row)?,
            ]),
            qk_norm: if fam.qk_norm {
                Some((
                    gain(w.vec(&format!("{p}.attn_q_norm.weight"), hd)?),
                    gain(w.vec(&format!("{p}.attn_k_norm.weight"), hd)?),
                ))
            } else {
                None
            },
            o: Proj::Fused(w.linear(&format!("{p}.attn_output"), c.q_dim(), d, &same_row)?),
            ffn_norm: gain(w.vec(&format!("{p}.ffn_norm.weight"), d)?),
            up: Proj::join(vec![
                w.linear(&format!("{p}.ffn_gate"), d, inner, &same_row)?,
                w.linear(&format!("{p}.ffn_up"), d, inner, &same_row)?,
            ]),
            down: Proj::Fused(w.linear(&format!("{p}.ffn_down"), inner, d, &same_row)?),
            post_attn_norm: None,
            post_ffn_norm: None,
        });
    }
    let factors = if g.contains("rope_freqs.weight") {
        Some(w.vec("rope_freqs.weight", hd / 2)?)
    } else {
        None
    };
    w.decoder(fam.arch, c.info(), c.decoder_config(factors), blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_gguf_permutation() {
        // convert_hf_to_gguf: reshape(heads, 2, hd/2, ..).swapaxes(1, 2): file row h·hd + 2i + j
        // holds HF row h·hd + j·hd/2 + i.
        let hd = 8;
        let f = unpermute(hd);
        for h in 0..2 {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    assert_eq!(f(h * hd + j * hd / 2 + i), h * hd + 2 * i + j);
                }
            }
        }
    }

    #[test]
    fn config_reads_transformers_4_and_5_rope_fields() {
        let v4 = br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}"#;
        let c = LlamaConfig::from_json("c", v4).unwrap();
        assert_eq!((c.head_dim, c.kv_dim(), c.rope_theta), (16, 32, 500_000.0));
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        let v5 = br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}}"#;
        let c = LlamaConfig::from_json("c", v5).unwrap();
        assert_eq!(c.rope_theta, 1000.0);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        let f = crate::model::rope::inv_freq(c.rope_theta, c.head_dim, c.rope_scaling, None);
        assert!((f[1] - 0.5 / 1000f32.powf(2.0 / 16.0)).abs() < 1e-7);
        let bad = br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3,
            "vocab_size": 100}"#;
        assert!(LlamaConfig::from_json("c", bad).is_err());
        let gpt2 = br#"{"model_type": "gpt2"}"#;
        assert!(LlamaConfig::from_json("c", gpt2).is_err());
    }
}
