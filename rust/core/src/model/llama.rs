//! Llama-family decoders (Llama 2 / 3, SmolLM, TinyLlama, ...): config, weights from a Hugging
//! Face folder (safetensors) or a GGUF file (quantized tensors used in ferrolm's tiles), and the
//! forward pass over the shared KV cache ([`crate::model::kv`]).
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

use rayon::prelude::*;
use serde_json::Value;

use crate::io::gguf::{self, Gguf};
use crate::io::safetensors::{F32Data, F32Tensor};
use crate::kernels;
use crate::model::gpt2::{add_in, check_logits, head_logits, linear, SERIAL_ELEMS};
use crate::model::kv::{attention, check_cancel, Cache, KvDtype, QkvLayout};
use crate::model::weights::{self, Layout, Linear, Mat, Progress, Quant, Table, Weights};
use crate::model::{CausalLm, ModelId};
use crate::quant::{QMatrix, QType, ROWS};
use crate::runtime::pool;
use crate::{Error, Result};

/// How RoPE frequencies are rescaled for contexts longer than the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

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
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    let one = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
        Some(x) => one(x).into_iter().collect(),
        None => Vec::new(),
    }
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
            mlp_bias: bool_of("mlp_bias", false)?,
            bos_token_id: ids_of(v.get("bos_token_id")).first().copied(),
            eos_token_id: ids_of(v.get("eos_token_id")),
        })
    }

    /// The config a GGUF file's `llama.*` metadata describes.
    fn from_gguf(g: &Gguf) -> Result<Self> {
        let what = g.what();
        let arch = g
            .meta("general.architecture")
            .and_then(gguf::Value::as_str)
            .unwrap_or("");
        if arch != "llama" {
            return Err(Error::Unsupported(format!(
                "architecture {arch:?} ({what}); ferrolm runs GGUF files of architecture \"llama\""
            )));
        }
        let num = |key: &str| -> Result<usize> {
            g.meta(&format!("llama.{key}"))
                .and_then(gguf::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0 && n < (1 << 30))
                .ok_or_else(|| Error::format(&what, format!("llama.{key} is missing or invalid")))
        };
        let float = |key: &str| {
            g.meta(&format!("llama.{key}"))
                .and_then(gguf::Value::as_f64)
        };
        let hidden = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let kv_heads = g
            .meta("llama.attention.head_count_kv")
            .map(|_| num("attention.head_count_kv"))
            .transpose()?
            .unwrap_or(heads);
        if heads % kv_heads != 0 || hidden % heads != 0 || (hidden / heads) % 2 != 0 {
            return Err(Error::format(
                &what,
                format!("{heads} heads over {kv_heads} key/value heads of width {hidden}"),
            ));
        }
        let head_dim = match g.meta("llama.attention.key_length") {
            Some(_) => num("attention.key_length")?,
            None => hidden / heads,
        };
        if let Some(rot) = g
            .meta("llama.rope.dimension_count")
            .and_then(gguf::Value::as_u64)
        {
            if rot as usize != head_dim {
                return Err(Error::Unsupported(format!(
                    "partial rotary embeddings ({rot} of {head_dim} dims, {what})"
                )));
            }
        }
        let vocab = match g.meta("llama.vocab_size") {
            Some(_) => num("vocab_size")?,
            None => g
                .meta("tokenizer.ggml.tokens")
                .and_then(gguf::Value::as_array)
                .map(<[_]>::len)
                .filter(|&n| n > 0)
                .ok_or_else(|| Error::format(&what, "the vocabulary size is missing"))?,
        };
        let rope_scaling = match g
            .meta("llama.rope.scaling.type")
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
            mlp_bias: false,
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

    /// RoPE's inverse frequencies, `head_dim / 2` of them, rescaled as the config says and
    /// divided by `factors` (a GGUF file's `rope_freqs`) when given.
    fn inv_freq(&self, factors: Option<&[f32]>) -> Vec<f32> {
        let hd = self.head_dim;
        (0..hd / 2)
            .map(|i| {
                let base = 1.0 / f64::from(self.rope_theta).powf((2 * i) as f64 / hd as f64);
                let mut f = base as f32;
                match self.rope_scaling {
                    None => {}
                    Some(RopeScaling::Linear { factor }) => f /= factor,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: lo,
                        high_freq_factor: hi,
                        original_max_position_embeddings: old,
                    }) => {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let (lo_wav, hi_wav) = (old / lo, old / hi);
                        if wavelen > lo_wav {
                            f /= factor;
                        } else if wavelen >= hi_wav {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            f = (1.0 - smooth) * f / factor + smooth * f;
                        }
                    }
                }
                if let Some(fs) = factors {
                    f /= fs[i];
                }
                f
            })
            .collect()
    }
}

/// A projection whose outputs are several matrices' side by side (`[Wq | Wk | Wv]`, `[Wgate |
/// Wup]`): one fused matrix where they could be joined, else the parts run one by one.
#[derive(Debug)]
enum Proj {
    Fused(Linear),
    Parts(Vec<Linear>),
}

impl Proj {
    /// Joins `parts` (the same input width) into one matrix when they share a format (f32
    /// always; quantized ones of one type whose rows fill whole tiles).
    fn join(parts: Vec<Linear>) -> Proj {
        let n_in = parts[0].n_in;
        let n_out: usize = parts.iter().map(|p| p.n_out).sum();
        let bias = || -> F32Tensor {
            let b: Vec<f32> = parts.iter().flat_map(|p| p.b.values().to_vec()).collect();
            F32Tensor {
                data: F32Data::Owned(b),
                shape: vec![n_out],
            }
        };
        let all_f32 = parts.iter().all(|p| matches!(p.w, Mat::F32(_)));
        if all_f32 {
            let mut w = vec![0.0f32; n_in * n_out];
            let mut col = 0;
            for p in &parts {
                let Mat::F32(t) = &p.w else { unreachable!() };
                for (i, row) in t.values().chunks_exact(p.n_out).enumerate() {
                    w[i * n_out + col..i * n_out + col + p.n_out].copy_from_slice(row);
                }
                col += p.n_out;
            }
            let w = Mat::F32(F32Tensor {
                data: F32Data::Owned(w),
                shape: vec![n_in, n_out],
            });
            return Proj::Fused(Linear {
                w,
                b: bias(),
                n_in,
                n_out,
            });
        }
        let qs: Vec<&QMatrix> = parts
            .iter()
            .filter_map(|p| match &p.w {
                Mat::Q(q) => Some(q),
                Mat::F32(_) | Mat::Packed(_) => None,
            })
            .collect();
        let ty = qs[0].ty;
        if qs.len() == parts.len() && qs.iter().all(|q| q.ty == ty && q.n.is_multiple_of(ROWS)) {
            let bytes: Vec<u8> = qs.iter().flat_map(|q| q.bytes().to_vec()).collect();
            if let Ok(q) = QMatrix::from_bytes(
                ty,
                n_out,
                n_in,
                crate::io::safetensors::ByteData::Owned(bytes),
                "fused projection",
            ) {
                return Proj::Fused(Linear {
                    w: Mat::Q(q),
                    b: bias(),
                    n_in,
                    n_out,
                });
            }
        }
        Proj::Parts(parts)
    }

    /// `out[m × Σ n_out] = x @ [W₀ | W₁ | ...] + b`.
    fn run(
        &self,
        kern: &kernels::Kernels,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        tmp: &mut Vec<f32>,
        scratch: &mut crate::model::gpt2::Scratch,
    ) {
        match self {
            Proj::Fused(lin) => linear(kern, x, m, lin, out, scratch),
            Proj::Parts(parts) => {
                let n: usize = parts.iter().map(|p| p.n_out).sum();
                let mut col = 0;
                for p in parts {
                    tmp.resize(m * p.n_out, 0.0);
                    linear(kern, x, m, p, tmp, scratch);
                    for (r, row) in tmp.chunks_exact(p.n_out).enumerate() {
                        out[r * n + col..r * n + col + p.n_out].copy_from_slice(row);
                    }
                    col += p.n_out;
                }
            }
        }
    }

    fn bytes(&self) -> usize {
        let one = |l: &Linear| l.w.bytes();
        match self {
            Proj::Fused(l) => one(l),
            Proj::Parts(ps) => ps.iter().map(one).sum(),
        }
    }

    fn qtype(&self) -> Option<QType> {
        let one = |l: &Linear| l.w.qtype();
        match self {
            Proj::Fused(l) => one(l),
            Proj::Parts(ps) => ps.iter().find_map(one),
        }
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: Vec<f32>,
    qkv: Proj,
    o: Proj,
    ffn_norm: Vec<f32>,
    gate_up: Proj,
    down: Proj,
}

/// A loaded Llama-family model: immutable, shared across threads.
#[derive(Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    embed: Table,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    /// `None`: tied to `embed`.
    head: Option<Table>,
    inv_freq: Vec<f32>,
    kv_dtype: KvDtype,
    quant: Option<QType>,
    weight_bytes: usize,
    /// Marks the caches it makes.
    id: ModelId,
}

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

impl Llama {
    /// Loads a Hugging Face `LlamaForCausalLM` folder (`config.json` + safetensors), the
    /// matrices quantized to `quantize` if given.
    pub fn load(
        folder: &Path,
        quantize: Option<QType>,
        progress: Option<Progress<'_>>,
    ) -> Result<Self> {
        let (what, v, quant, ck) = weights::open_folder(folder, "llama", quantize)?;
        if matches!(quant, Quant::Stored(_)) {
            return Err(Error::Unsupported(
                "a quantized Llama folder saved by ferrolm (quantize from the f32 folder, or use a GGUF file)".into(),
            ));
        }
        let c = LlamaConfig::from_value(&what, &v)?;
        let total = 7 * c.num_hidden_layers + 1 + usize::from(!c.tie_word_embeddings);
        let w =
            Weights::new(&ck, "model.", "embed_tokens.weight").with_quant(quant, total, progress);
        let (d, inner) = (c.hidden_size, c.intermediate_size);
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
            let ab = c.attention_bias;
            blocks.push(Block {
                attn_norm: vec_of(&format!("{p}.input_layernorm.weight"), d)?,
                qkv: Proj::join(vec![
                    lin(&format!("{p}.self_attn.q_proj"), d, c.q_dim(), ab)?,
                    lin(&format!("{p}.self_attn.k_proj"), d, c.kv_dim(), ab)?,
                    lin(&format!("{p}.self_attn.v_proj"), d, c.kv_dim(), ab)?,
                ]),
                o: Proj::Fused(lin(&format!("{p}.self_attn.o_proj"), c.q_dim(), d, ab)?),
                ffn_norm: vec_of(&format!("{p}.post_attention_layernorm.weight"), d)?,
                gate_up: Proj::join(vec![
                    lin(&format!("{p}.mlp.gate_proj"), d, inner, c.mlp_bias)?,
                    lin(&format!("{p}.mlp.up_proj"), d, inner, c.mlp_bias)?,
                ]),
                down: Proj::Fused(lin(&format!("{p}.mlp.down_proj"), inner, d, c.mlp_bias)?),
            });
        }
        if w.contains(&format!(
            "layers.{}.input_layernorm.weight",
            c.num_hidden_layers
        )) {
            return Err(Error::format(
                "checkpoint",
                format!(
                    "it has more layers than the config's num_hidden_layers = {}",
                    c.num_hidden_layers
                ),
            ));
        }
        let embed = w.table("embed_tokens", c.vocab_size, d, false)?;
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some(w.table("lm_head", c.vocab_size, d, true)?)
        };
        let norm = vec_of("norm.weight", d)?;
        Ok(Self::assemble(
            c,
            embed,
            blocks,
            norm,
            head,
            None,
            quant.qtype(),
        ))
    }

    /// Loads a GGUF file of architecture `llama`: quantized tensors repacked losslessly into
    /// ferrolm's tiles, f32 / f16 / bf16 ones as f32 (or quantized to `quantize`).
    pub fn load_gguf(
        path: &Path,
        quantize: Option<QType>,
        progress: Option<Progress<'_>>,
    ) -> Result<Self> {
        pool::install(|| Self::read_gguf(path, quantize, progress))?
    }

    fn read_gguf(
        path: &Path,
        quantize: Option<QType>,
        progress: Option<Progress<'_>>,
    ) -> Result<Self> {
        let g = Gguf::open(path)?;
        let c = LlamaConfig::from_gguf(&g)?;
        let (d, inner, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let total = 7 * c.num_hidden_layers + 1;
        let done = std::cell::Cell::new(0usize);
        let tick = || {
            done.set(done.get() + 1);
            if let Some(p) = progress {
                p(done.get(), total);
            }
        };
        let mat = |name: &str,
                   n_in: usize,
                   n_out: usize,
                   row_of: &(dyn Fn(usize) -> usize + Sync)|
         -> Result<Mat> {
            let (_, ty) = g.tensor(name, &[n_in, n_out])?;
            let m = match (ty.qtype(), quantize) {
                (Some(_), _) => Mat::Q(g.qmatrix_rows(name, n_in, n_out, QType::Q8_0, row_of)?),
                (None, Some(q)) if n_in.is_multiple_of(32) => {
                    Mat::Q(g.qmatrix_rows(name, n_in, n_out, q, row_of)?)
                }
                (None, _) => {
                    let w = gguf::permute_rows(&g.f32(name, &[n_in, n_out])?, n_in, row_of);
                    Mat::F32(weights::transposed(&w, n_out, n_in))
                }
            };
            tick();
            Ok(m)
        };
        let bias =
            |name: &str, n: usize, row_of: &(dyn Fn(usize) -> usize + Sync)| -> Result<F32Tensor> {
                if !g.contains(name) {
                    return Ok(zeros(n));
                }
                let b = g.f32(name, &[n])?;
                Ok(F32Tensor {
                    data: F32Data::Owned((0..n).map(|j| b[row_of(j)]).collect()),
                    shape: vec![n],
                })
            };
        let id = |j: usize| j;
        let lin = |p: &str,
                   n_in: usize,
                   n_out: usize,
                   row_of: &(dyn Fn(usize) -> usize + Sync)|
         -> Result<Linear> {
            Ok(Linear {
                w: mat(&format!("{p}.weight"), n_in, n_out, row_of)?,
                b: bias(&format!("{p}.bias"), n_out, row_of)?,
                n_in,
                n_out,
            })
        };
        let unperm = unpermute(hd);
        let mut blocks = Vec::new(); // not sized by the file: its count is untrusted
        for l in 0..c.num_hidden_layers {
            let p = format!("blk.{l}");
            blocks.push(Block {
                attn_norm: g.f32(&format!("{p}.attn_norm.weight"), &[d])?,
                qkv: Proj::join(vec![
                    lin(&format!("{p}.attn_q"), d, c.q_dim(), &unperm)?,
                    lin(&format!("{p}.attn_k"), d, c.kv_dim(), &unperm)?,
                    lin(&format!("{p}.attn_v"), d, c.kv_dim(), &id)?,
                ]),
                o: Proj::Fused(lin(&format!("{p}.attn_output"), c.q_dim(), d, &id)?),
                ffn_norm: g.f32(&format!("{p}.ffn_norm.weight"), &[d])?,
                gate_up: Proj::join(vec![
                    lin(&format!("{p}.ffn_gate"), d, inner, &id)?,
                    lin(&format!("{p}.ffn_up"), d, inner, &id)?,
                ]),
                down: Proj::Fused(lin(&format!("{p}.ffn_down"), inner, d, &id)?),
            });
        }
        if g.contains(&format!("blk.{}.attn_norm.weight", c.num_hidden_layers)) {
            return Err(Error::format(
                g.what(),
                format!(
                    "it has more layers than llama.block_count = {}",
                    c.num_hidden_layers
                ),
            ));
        }
        let table = |name: &str| -> Result<Table> {
            let (_, ty) = g.tensor(name, &[d, c.vocab_size])?;
            Ok(match (ty.qtype(), quantize) {
                (Some(_), _) => Table::Q(g.qmatrix(name, d, c.vocab_size, QType::Q8_0)?),
                (None, Some(q)) if d.is_multiple_of(32) => {
                    Table::Q(g.qmatrix(name, d, c.vocab_size, q)?)
                }
                (None, _) => Table::F32(F32Tensor {
                    data: F32Data::Owned(g.f32(name, &[d, c.vocab_size])?),
                    shape: vec![c.vocab_size, d],
                }),
            })
        };
        let embed = table("token_embd.weight")?;
        tick();
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some(table("output.weight")?)
        };
        let norm = g.f32("output_norm.weight", &[d])?;
        let factors = if g.contains("rope_freqs.weight") {
            Some(g.f32("rope_freqs.weight", &[hd / 2])?)
        } else {
            None
        };
        let qtype = blocks[0].gate_up.qtype();
        Ok(Self::assemble(
            c,
            embed,
            blocks,
            norm,
            head,
            factors.as_deref(),
            qtype,
        ))
    }

    fn assemble(
        config: LlamaConfig,
        embed: Table,
        blocks: Vec<Block>,
        norm: Vec<f32>,
        head: Option<Table>,
        factors: Option<&[f32]>,
        quant: Option<QType>,
    ) -> Self {
        let table_bytes = |t: &Table| match t {
            Table::F32(t) => t.values().len() * 4,
            Table::Q(q) => q.bytes().len(),
        };
        let weight_bytes = blocks
            .iter()
            .map(|b| b.qkv.bytes() + b.o.bytes() + b.gate_up.bytes() + b.down.bytes())
            .sum::<usize>()
            + table_bytes(head.as_ref().unwrap_or(&embed));
        Llama {
            inv_freq: config.inv_freq(factors),
            config,
            embed,
            blocks,
            norm,
            head,
            kv_dtype: KvDtype::F32,
            quant,
            weight_bytes,
            id: ModelId::fresh(),
        }
    }

    /// The matrices' quantized format, if any (a GGUF file's main type).
    pub fn quantization(&self) -> Option<QType> {
        self.quant
    }

    /// Bytes of weights read per decoded token.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn n_ctx(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn new_cache(&self, slots: usize, capacity: Option<usize>) -> Result<Cache> {
        let c = &self.config;
        let n = c.max_position_embeddings;
        let cap = capacity.unwrap_or_else(|| Cache::default_capacity(n));
        Ok(Cache::new(
            c.num_hidden_layers,
            c.kv_dim(),
            n,
            slots,
            self.kv_dtype,
            cap,
        )?
        .owned_by(self.id))
    }

    fn forward_into(
        &self,
        cache: &mut Cache,
        tokens: &[u32],
        mask: &[u8],
        t: usize,
        last_only: bool,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let c = &self.config;
        let slots = cache.slots;
        check_logits(slots, t, c.vocab_size, last_only)?;
        cache.begin(
            self.id,
            tokens,
            mask,
            t,
            c.vocab_size,
            "max_position_embeddings",
        )?;
        let kern = kernels::get();
        let (d, hd, nh, nkv) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
        );
        let (qd, kvd, inner) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        let rows = slots * t;
        let lay = QkvLayout {
            stride: qd + 2 * kvd,
            k_off: qd,
            v_off: qd + kvd,
            kv_d: kvd,
        };
        cache.work.ensure(rows, d, lay.stride, qd, 3 * inner)?;
        let mut ws = std::mem::take(&mut cache.work);
        let cancel = cache.cancel.clone();
        let mut tmp = Vec::new();
        let result = pool::install(|| -> Result<()> {
            // RoPE's cos / sin per row, computed once for every layer.       [rows, hd/2]
            let half = hd / 2;
            ws.rope.resize(2 * rows * half, 0.0);
            let (cos, sin) = ws.rope.split_at_mut(rows * half);
            for (r, &p) in ws.positions.iter().enumerate() {
                for (i, &f) in self.inv_freq.iter().enumerate() {
                    let a = p as f32 * f;
                    cos[r * half + i] = a.cos();
                    sin[r * half + i] = a.sin();
                }
            }
            for (r, row) in ws.x[..rows * d].chunks_exact_mut(d).enumerate() {
                self.embed.row_into(tokens[r] as usize, row);
            }
            let scale = 1.0 / (hd as f32).sqrt();
            for (l, blk) in self.blocks.iter().enumerate() {
                check_cancel(&cancel)?;
                rms_norm(
                    &ws.x[..rows * d],
                    &mut ws.h[..rows * d],
                    &blk.attn_norm,
                    c.rms_norm_eps,
                );
                let qkv = &mut ws.qkv[..rows * lay.stride];
                blk.qkv.run(
                    kern,
                    &ws.h[..rows * d],
                    rows,
                    qkv,
                    &mut tmp,
                    &mut ws.scratch,
                );
                rope(qkv, lay.stride, nh + nkv, hd, cos, sin);
                cache.append(kern, l, qkv, t, &lay);
                let args = cache.attn_args(qkv, mask, l, t, (nh, nkv, hd), &lay, scale);
                check_cancel(&cancel)?;
                attention(kern, &args, &mut ws.att[..rows * qd], &mut ws.scores);
                blk.o.run(
                    kern,
                    &ws.att[..rows * qd],
                    rows,
                    &mut ws.h[..rows * d],
                    &mut tmp,
                    &mut ws.scratch,
                );
                add_in(&mut ws.x[..rows * d], &ws.h[..rows * d]);
                rms_norm(
                    &ws.x[..rows * d],
                    &mut ws.h[..rows * d],
                    &blk.ffn_norm,
                    c.rms_norm_eps,
                );
                check_cancel(&cancel)?;
                let (gu, act) = ws.mlp[..rows * 3 * inner].split_at_mut(rows * 2 * inner);
                blk.gate_up
                    .run(kern, &ws.h[..rows * d], rows, gu, &mut tmp, &mut ws.scratch);
                swiglu(kern, gu, act, inner);
                blk.down.run(
                    kern,
                    act,
                    rows,
                    &mut ws.h[..rows * d],
                    &mut tmp,
                    &mut ws.scratch,
                );
                add_in(&mut ws.x[..rows * d], &ws.h[..rows * d]);
            }
            let head = self.head.as_ref().unwrap_or(&self.embed);
            let norm = |x: &[f32], out: &mut [f32]| rms_norm(x, out, &self.norm, c.rms_norm_eps);
            head_logits(kern, &mut ws, (slots, t, d, last_only), norm, head, logits)
        });
        cache.work = ws;
        result??;
        cache.commit(mask, t);
        Ok(())
    }
}

/// `out = x / rms(x) · g` per row of `g.len()`.
fn rms_norm(x: &[f32], out: &mut [f32], g: &[f32], eps: f32) {
    let d = g.len();
    let row = |(o, x): (&mut [f32], &[f32])| {
        let ss: f32 = x.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(x).zip(g) {
            *o = w * (v * inv);
        }
    };
    if x.len() <= SERIAL_ELEMS {
        out.chunks_exact_mut(d).zip(x.chunks_exact(d)).for_each(row);
    } else {
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(row);
    }
}

/// Rotates the first `heads` heads of every row (the queries', then the keys') by the row's
/// angles: pairs `(i, i + hd/2)`, as Hugging Face's `rotate_half`.
fn rope(qkv: &mut [f32], stride: usize, heads: usize, hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    let run = |(r, row): (usize, &mut [f32])| {
        let (c, s) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        for h in 0..heads {
            let x = &mut row[h * hd..(h + 1) * hd];
            let (a, b) = x.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    };
    if qkv.len() <= SERIAL_ELEMS {
        qkv.chunks_exact_mut(stride).enumerate().for_each(run);
    } else {
        qkv.par_chunks_mut(stride).enumerate().for_each(run);
    }
}

/// `act[r] = silu(gate[r]) * up[r]` for rows `gu[r] = [gate | up]` of `2 × inner`.
fn swiglu(kern: &kernels::Kernels, gu: &[f32], act: &mut [f32], inner: usize) {
    let run = |(a, g): (&mut [f32], &[f32])| {
        let (gate, up) = g.split_at(inner);
        for (o, &x) in a.iter_mut().zip(gate) {
            *o = -x;
        }
        (kern.exp)(a);
        for ((o, &x), &u) in a.iter_mut().zip(gate).zip(up) {
            *o = x / (1.0 + *o) * u;
        }
    };
    if act.len() <= SERIAL_ELEMS {
        act.chunks_exact_mut(inner)
            .zip(gu.chunks_exact(2 * inner))
            .for_each(run);
    } else {
        act.par_chunks_mut(inner)
            .zip(gu.par_chunks(2 * inner))
            .for_each(run);
    }
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
        let f = c.inv_freq(None);
        assert!((f[1] - 0.5 / 1000f32.powf(2.0 / 16.0)).abs() < 1e-7);
        let bad = br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3,
            "vocab_size": 100}"#;
        assert!(LlamaConfig::from_json("c", bad).is_err());
        let gpt2 = br#"{"model_type": "gpt2"}"#;
        assert!(LlamaConfig::from_json("c", gpt2).is_err());
    }
}
