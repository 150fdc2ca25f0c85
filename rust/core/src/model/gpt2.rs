//! GPT-2: config, weights (memory-mapped safetensors, used in place), and the forward pass over
//! a KV cache, batched over several sequences ("slots").
//!
//! One forward call advances every slot by the same number of tokens `t` (a left-padded prompt,
//! or one decoded token each); a mask says which of them are real. Positions count real tokens
//! only (as `transformers`' generate computes `position_ids` from the attention mask), so a
//! left-padded sequence gets exactly the logits it gets alone.
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

use rayon::prelude::*;
use serde_json::Value;

use crate::io::safetensors::{Checkpoint, F32Tensor};
use crate::kernels::{self, SendPtr};
use crate::model::weights::{
    self, f32_entry, mat_entry, norm_entries, table_entry, Layout, Mat, Named, Progress, Quant,
    Table, Weights,
};
pub(crate) use crate::model::weights::{Linear, Norm};
use crate::quant::{QActs, QMatrix, QType, ROWS};
use crate::runtime::pool;
use crate::{Error, Result};

/// The activation of the MLP (`activation_function` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact one, with erf.
    Gelu,
    Relu,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            "quick_gelu" => Activation::QuickGelu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }

    #[inline]
    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            Activation::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
            Activation::Relu => x.max(0.0),
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// erf to f32 precision (Abramowitz–Stegun 7.1.26 is too coarse; this is a minimax rational
/// approximation evaluated in f64).
fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    // Numerical Recipes' erfc, |error| < 1.2e-7.
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (if x >= 0.0 { 1.0 - y } else { y - 1.0 }) as f32
}

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

#[derive(Debug, Clone)]
struct Block {
    ln_1: Norm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    mlp_proj: Linear,
}

/// A loaded GPT-2: immutable, shared across threads.
#[derive(Debug)]
pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: Table,
    wpe: F32Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// `None`: tied to `wte`.
    lm_head: Option<Table>,
    /// The matrices' format, if quantized.
    quant: Option<QType>,
    /// The element type of new KV caches.
    kv_dtype: KvDtype,
    weight_bytes: usize,
}

/// The element type of a KV cache: f32, or f16 (half the memory, attention reads converted
/// on the fly; keys and values rounded to nearest even as they are stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    /// `float32` / `f32`, `float16` / `f16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "float32" | "f32" => Some(KvDtype::F32),
            "float16" | "f16" => Some(KvDtype::F16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "float32",
            KvDtype::F16 => "float16",
        }
    }
}

/// The keys or the values of a KV cache.
#[derive(Debug, Clone)]
enum Kv {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Kv {
    fn zeros(dtype: KvDtype, n: usize) -> Self {
        match dtype {
            KvDtype::F32 => Kv::F32(vec![0.0; n]),
            KvDtype::F16 => Kv::F16(vec![0; n]),
        }
    }

    fn dtype(&self) -> KvDtype {
        match self {
            Kv::F32(_) => KvDtype::F32,
            Kv::F16(_) => KvDtype::F16,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Kv::F32(v) => v.len() * 4,
            Kv::F16(v) => v.len() * 2,
        }
    }

    /// Stores `x` at `at`.
    #[inline]
    fn put(&mut self, kern: &kernels::Kernels, at: usize, x: &[f32]) {
        match self {
            Kv::F32(v) => v[at..at + x.len()].copy_from_slice(x),
            Kv::F16(v) => (kern.to_f16)(x, &mut v[at..at + x.len()]),
        }
    }

    /// `q · self[at..at + q.len()]`.
    #[inline]
    fn dot(&self, kern: &kernels::Kernels, q: &[f32], at: usize) -> f32 {
        match self {
            Kv::F32(v) => (kern.dot)(q, &v[at..at + q.len()]),
            Kv::F16(v) => (kern.dot_f16)(q, &v[at..at + q.len()]),
        }
    }

    /// `out += w · self[at..at + out.len()]`.
    #[inline]
    fn axpy(&self, kern: &kernels::Kernels, w: f32, at: usize, out: &mut [f32]) {
        match self {
            Kv::F32(v) => (kern.axpy)(w, &v[at..at + out.len()], out),
            Kv::F16(v) => (kern.axpy_f16)(w, &v[at..at + out.len()], out),
        }
    }

    /// `out = self[at..at + out.len()]` as f32.
    #[inline]
    fn read(&self, kern: &kernels::Kernels, at: usize, out: &mut [f32]) {
        match self {
            Kv::F32(v) => out.copy_from_slice(&v[at..at + out.len()]),
            Kv::F16(v) => {
                out.fill(0.0);
                (kern.axpy_f16)(1.0, &v[at..at + out.len()], out);
            }
        }
    }

    /// `self[dst..dst + n] = src[from..from + n]` (the same dtype).
    fn copy_from(&mut self, dst: usize, src: &Kv, from: usize, n: usize) {
        match (self, src) {
            (Kv::F32(a), Kv::F32(b)) => a[dst..dst + n].copy_from_slice(&b[from..from + n]),
            (Kv::F16(a), Kv::F16(b)) => a[dst..dst + n].copy_from_slice(&b[from..from + n]),
            _ => unreachable!("caches are expanded into their own dtype"),
        }
    }
}

impl Gpt2 {
    /// Loads `config.json` and the safetensors checkpoint of a model folder.
    pub fn load(folder: &Path) -> Result<Self> {
        Self::load_with(folder, None, None)
    }

    /// [`Gpt2::load`], the weight matrices (and the token embedding, which doubles as the
    /// head) quantized to `quantize` as they are read; `progress` hears `(done, total)` per
    /// matrix. A folder saved quantized loads as it is, mapped in place.
    pub fn load_with(
        folder: &Path,
        quantize: Option<QType>,
        progress: Option<Progress<'_>>,
    ) -> Result<Self> {
        let (what, v, quant, ck) = weights::open_folder(folder, "gpt2", quantize)?;
        Self::from_checkpoint_with(Gpt2Config::from_value(&what, &v)?, &ck, quant, progress)
    }

    /// Takes the weights from `ck`, checking every name and shape against `config`. Names may
    /// carry the `transformer.` prefix (`GPT2LMHeadModel.save_pretrained`) or not (the original
    /// checkpoints).
    pub fn from_checkpoint(config: Gpt2Config, ck: &Checkpoint) -> Result<Self> {
        Self::from_checkpoint_with(config, ck, Quant::None, None)
    }

    /// [`Gpt2::from_checkpoint`] with the matrices handled as `quant` says.
    pub fn from_checkpoint_with(
        config: Gpt2Config,
        ck: &Checkpoint,
        quant: Quant,
        progress: Option<Progress<'_>>,
    ) -> Result<Self> {
        let total = 4 * config.n_layer + 1 + usize::from(!config.tie_word_embeddings);
        let w = Weights::new(ck, "transformer.", "wte.weight").with_quant(quant, total, progress);
        let (d, inner, vocab) = (config.n_embd, config.n_inner, config.vocab_size);
        let norm = |name: &str| w.norm(name, d);
        let linear = |name: &str, n_in, n_out| w.linear(name, n_in, n_out, Layout::InOut);
        let mut blocks = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let p = format!("h.{l}");
            blocks.push(Block {
                ln_1: norm(&format!("{p}.ln_1"))?,
                c_attn: linear(&format!("{p}.attn.c_attn"), d, 3 * d)?,
                attn_proj: linear(&format!("{p}.attn.c_proj"), d, d)?,
                ln_2: norm(&format!("{p}.ln_2"))?,
                c_fc: linear(&format!("{p}.mlp.c_fc"), d, inner)?,
                mlp_proj: linear(&format!("{p}.mlp.c_proj"), inner, d)?,
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
        let mut model = Gpt2 {
            wte,
            wpe: w.get("wpe.weight", &[config.n_positions, d])?,
            blocks,
            ln_f: norm("ln_f")?,
            lm_head,
            quant: quant.qtype(),
            kv_dtype: KvDtype::F32,
            weight_bytes: 0,
            config,
        };
        model.weight_bytes = model.tensors().iter().map(|(_, _, t)| t.len_bytes()).sum();
        Ok(model)
    }

    /// The matrices' quantized format, if any.
    pub fn quantization(&self) -> Option<QType> {
        self.quant
    }

    /// Every tensor under the name `GPT2LMHeadModel.save_pretrained` gives it (quantized
    /// matrices as `{name}.qweight`, U8 tiles), for saving.
    pub fn tensors(&self) -> Vec<Named<'_>> {
        let mut out = vec![
            table_entry("transformer.wte", &self.wte),
            f32_entry("transformer.wpe.weight", &self.wpe),
        ];
        for (l, b) in self.blocks.iter().enumerate() {
            let p = format!("transformer.h.{l}");
            norm_entries(&mut out, &format!("{p}.ln_1"), &b.ln_1);
            norm_entries(&mut out, &format!("{p}.ln_2"), &b.ln_2);
            for (name, lin) in [
                ("attn.c_attn", &b.c_attn),
                ("attn.c_proj", &b.attn_proj),
                ("mlp.c_fc", &b.c_fc),
                ("mlp.c_proj", &b.mlp_proj),
            ] {
                out.push(mat_entry(&format!("{p}.{name}"), &lin.w));
                out.push(f32_entry(&format!("{p}.{name}.bias"), &lin.b));
            }
        }
        norm_entries(&mut out, "transformer.ln_f", &self.ln_f);
        if let Some(h) = &self.lm_head {
            out.push(table_entry("lm_head", h));
        }
        out
    }

    /// Writes the weights as `model.safetensors` in `folder` (f32, or the quantized tiles,
    /// which load back mapped in place). `config.json` and the tokenizer are the caller's.
    pub fn save(&self, folder: &Path) -> Result<()> {
        weights::save(folder, &self.tensors(), self.quant)
    }

    /// Bytes of weights read per decoded token (every matrix once, the embeddings' rows aside).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// An empty KV cache for `slots` sequences of up to `n_positions` tokens.
    pub fn new_cache(&self, slots: usize) -> Cache {
        Cache::new(&self.config, slots, self.kv_dtype)
    }

    /// The element type of the KV caches this model makes from now on.
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Advances every slot of `cache` by `t` tokens: `tokens` and `mask` are `[slots × t]`
    /// (mask 1 = a real token, 0 = padding). Returns the logits `[slots × t × vocab]`, or with
    /// `last_only` those of each slot's last position `[slots × vocab]`.
    pub fn forward(
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

    /// [`Gpt2::forward`] writing into `logits` (resized), reusing the cache's work buffers:
    /// decoding allocates nothing per token once they have grown.
    pub fn forward_into(
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
        if tokens.len() != slots * t || mask.len() != slots * t {
            return Err(Error::invalid(format!(
                "forward: {} tokens and {} mask values for {slots} sequences of {t}",
                tokens.len(),
                mask.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::OutOfRange(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        for s in 0..slots {
            if cache.len[s] + t > c.n_positions {
                return Err(Error::invalid(format!(
                    "sequence of {} tokens is longer than the model's n_positions = {}",
                    cache.len[s] + t,
                    c.n_positions
                )));
            }
        }
        let kern = kernels::get();
        let (d, hd, nh) = (c.n_embd, c.head_dim(), c.n_head);
        let rows = slots * t;
        let ws = &mut cache.work;
        ws.ensure(rows, c);
        // Positions: real tokens count from the slot's next position; padding gets position 0.
        let positions = &mut ws.positions;
        positions.clear();
        for s in 0..slots {
            let mut p = cache.next_pos[s];
            for i in 0..t {
                if mask[s * t + i] != 0 {
                    positions.push(p);
                    p += 1;
                } else {
                    positions.push(0);
                }
            }
        }
        pool::install(|| -> Result<()> {
            // x = wte[ids] + wpe[pos]                                  [rows, d]
            let wpe = self.wpe.values();
            for (r, row) in ws.x[..rows * d].chunks_exact_mut(d).enumerate() {
                let (tok, pos) = (tokens[r] as usize, ws.positions[r]);
                self.wte.row_into(tok, row);
                add_in(row, &wpe[pos * d..(pos + 1) * d]);
            }
            for (l, blk) in self.blocks.iter().enumerate() {
                // h = ln_1(x)                                           [rows, d]
                layer_norm(&ws.x[..rows * d], &mut ws.h[..rows * d], &blk.ln_1, c);
                // qkv = h @ c_attn + b                                  [rows, 3d]
                linear(
                    kern,
                    &ws.h[..rows * d],
                    rows,
                    &blk.c_attn,
                    &mut ws.qkv[..rows * 3 * d],
                    &mut ws.scratch,
                );
                // k, v appended to the cache; attention per (slot, head)   [rows, d]
                cache_append(
                    kern,
                    (&mut cache.k, &mut cache.v),
                    &cache.geom,
                    l,
                    &cache.len,
                    &ws.qkv,
                    t,
                    d,
                );
                let scale = {
                    let mut s = if c.scale_attn_weights {
                        1.0 / (hd as f32).sqrt()
                    } else {
                        1.0
                    };
                    if c.scale_attn_by_inverse_layer_idx {
                        s /= (l + 1) as f32;
                    }
                    s
                };
                attention(
                    kern,
                    &AttnArgs {
                        qkv: &ws.qkv[..rows * 3 * d],
                        k: &cache.k,
                        v: &cache.v,
                        geom: &cache.geom,
                        layer: l,
                        len: &cache.len,
                        valid: &cache.valid,
                        mask,
                        t,
                        d,
                        hd,
                        nh,
                        scale,
                    },
                    &mut ws.att[..rows * d],
                    &mut ws.scores,
                );
                // x = x + att @ c_proj + b
                linear(
                    kern,
                    &ws.att[..rows * d],
                    rows,
                    &blk.attn_proj,
                    &mut ws.h[..rows * d],
                    &mut ws.scratch,
                );
                add_in(&mut ws.x[..rows * d], &ws.h[..rows * d]);
                // x = x + act(ln_2(x) @ c_fc + b) @ c_proj + b
                layer_norm(&ws.x[..rows * d], &mut ws.h[..rows * d], &blk.ln_2, c);
                let inner = c.n_inner;
                linear(
                    kern,
                    &ws.h[..rows * d],
                    rows,
                    &blk.c_fc,
                    &mut ws.mlp[..rows * inner],
                    &mut ws.scratch,
                );
                activate(kern, c.activation, &mut ws.mlp[..rows * inner]);
                linear(
                    kern,
                    &ws.mlp[..rows * inner],
                    rows,
                    &blk.mlp_proj,
                    &mut ws.h[..rows * d],
                    &mut ws.scratch,
                );
                add_in(&mut ws.x[..rows * d], &ws.h[..rows * d]);
            }
            // logits = ln_f(x) @ wteᵀ
            // The rows whose logits are wanted (each slot's last, or all), gathered into `att`.
            let m = if last_only { slots } else { rows };
            for i in 0..m {
                let r = if last_only { i * t + t - 1 } else { i };
                ws.att[i * d..(i + 1) * d].copy_from_slice(&ws.x[r * d..(r + 1) * d]);
            }
            layer_norm(&ws.att[..m * d], &mut ws.h[..m * d], &self.ln_f, c);
            logits.clear();
            logits.resize(m * c.vocab_size, 0.0);
            match self.lm_head.as_ref().unwrap_or(&self.wte) {
                Table::F32(head) => {
                    let head = head.values();
                    gemm_nt_parallel(kern, &ws.h[..m * d], m, d, head, c.vocab_size, logits);
                }
                Table::Q(head) => {
                    qmatmul(kern, &ws.h[..m * d], m, head, logits, &mut ws.scratch.qa)
                }
            }
            Ok(())
        })??;
        // The new positions are now part of each slot's history.
        for s in 0..slots {
            for i in 0..t {
                let real = mask[s * t + i] != 0;
                let at = s * c.n_positions + cache.len[s] + i;
                cache.valid[at] = u8::from(real);
                if real {
                    cache.next_pos[s] += 1;
                }
            }
            cache.len[s] += t;
        }
        Ok(())
    }
}

/// Where slot `s`, layer `l`, position `p` starts in the cache's `k` / `v` buffers.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n_ctx: usize,
    n_layer: usize,
    d: usize,
}

impl Geom {
    #[inline]
    fn at(&self, s: usize, l: usize, p: usize) -> usize {
        ((s * self.n_layer + l) * self.n_ctx + p) * self.d
    }
}

/// Copies the new keys and values (columns d..2d and 2d..3d of `qkv`) into the cache.
#[allow(clippy::too_many_arguments)]
fn cache_append(
    kern: &kernels::Kernels,
    (k, v): (&mut Kv, &mut Kv),
    geom: &Geom,
    l: usize,
    len: &[usize],
    qkv: &[f32],
    t: usize,
    d: usize,
) {
    for (s, &start) in len.iter().enumerate() {
        for i in 0..t {
            let row = &qkv[(s * t + i) * 3 * d..(s * t + i + 1) * 3 * d];
            let at = geom.at(s, l, start + i);
            k.put(kern, at, &row[d..2 * d]);
            v.put(kern, at, &row[2 * d..3 * d]);
        }
    }
}

struct AttnArgs<'a> {
    qkv: &'a [f32],
    k: &'a Kv,
    v: &'a Kv,
    geom: &'a Geom,
    layer: usize,
    len: &'a [usize],
    valid: &'a [u8],
    mask: &'a [u8],
    t: usize,
    d: usize,
    hd: usize,
    nh: usize,
    scale: f32,
}

/// Causal attention of the `t` new positions of every slot over that slot's cache, in parallel
/// over (slot, head) pairs. `out` is `[rows, d]`; `scores` a scratch of at least
/// `slots × heads × n_ctx`.
fn attention(kern: &kernels::Kernels, a: &AttnArgs<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    if a.t >= BLOCKED_ATTN_ROWS {
        attention_blocked(kern, a, out);
        return;
    }
    let slots = a.len.len();
    let n_ctx = a.geom.n_ctx;
    scores.resize(slots * a.nh * n_ctx, 0.0);
    let out_ptr = SendPtr(out.as_mut_ptr());
    // Work in multiply-adds: small (a decoded token over a short context) runs on this thread,
    // since waking the pool costs more than it saves.
    let work: usize = a.len.iter().map(|&l| (l + a.t) * a.t).sum::<usize>() * a.nh * a.hd;
    let job = |(job, sc): (usize, &mut [f32])| {
        let (s, h) = (job / a.nh, job % a.nh);
        let base = a.len[s];
        for i in 0..a.t {
            let row = s * a.t + i;
            let q = &a.qkv[row * 3 * a.d + h * a.hd..row * 3 * a.d + (h + 1) * a.hd];
            let upto = base + i + 1; // positions 0..=base+i
            let mut max = f32::NEG_INFINITY;
            let mut any_masked = false;
            for (p, slot) in sc.iter_mut().enumerate().take(upto) {
                // A position is seen if it is a real token (the query's own always is, so
                // a padded query has something to attend to; its output is never used).
                let seen = if p < base {
                    a.valid[s * n_ctx + p] != 0
                } else {
                    p == base + i || a.mask[s * a.t + (p - base)] != 0
                };
                if seen {
                    let at = a.geom.at(s, a.layer, p) + h * a.hd;
                    let x = a.k.dot(kern, q, at) * a.scale;
                    *slot = x;
                    max = max.max(x);
                } else {
                    *slot = f32::NEG_INFINITY;
                    any_masked = true;
                }
            }
            // softmax: exp(x - max) vectorized; masked positions weigh exactly 0.
            for x in sc[..upto].iter_mut() {
                *x -= max;
            }
            let probs = &mut sc[..upto];
            if any_masked {
                let masked: Vec<bool> = probs.iter().map(|x| *x == f32::NEG_INFINITY).collect();
                (kern.exp)(probs);
                for (x, m) in probs.iter_mut().zip(masked) {
                    if m {
                        *x = 0.0;
                    }
                }
            } else {
                (kern.exp)(probs);
            }
            let sum: f32 = probs.iter().sum();
            // SAFETY: each (slot, head) job writes only row `row`'s columns of head `h`,
            // disjoint from every other job's; `out` outlives the parallel loop.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(row * a.d + h * a.hd), a.hd)
            };
            o.fill(0.0);
            let inv = 1.0 / sum;
            for (p, &w) in sc[..upto].iter().enumerate() {
                if w != 0.0 {
                    let at = a.geom.at(s, a.layer, p) + h * a.hd;
                    a.v.axpy(kern, w * inv, at, o);
                }
            }
        }
    };
    if work <= SERIAL_ELEMS * 16 {
        scores.chunks_mut(n_ctx).enumerate().for_each(job);
    } else {
        scores.par_chunks_mut(n_ctx).enumerate().for_each(job);
    }
}

/// From this many new tokens per slot on (a prompt), attention runs as matmuls per query tile.
const BLOCKED_ATTN_ROWS: usize = 16;
/// Queries per tile of the blocked attention.
const ATTN_TILE: usize = 64;

/// Attention for a prompt: per (slot, head, tile of [`ATTN_TILE`] queries) the head's keys and
/// values up to the tile's last query are gathered, scores = Q Kᵀ by `gemm_nt`, masked and
/// softmaxed per row (as [`attention`] does), and the output = P V by `gemm` — instead of one
/// dot product per (query, key) pair.
fn attention_blocked(kern: &kernels::Kernels, a: &AttnArgs<'_>, out: &mut [f32]) {
    let (n_ctx, hd, d, t) = (a.geom.n_ctx, a.hd, a.d, a.t);
    let tiles = t.div_ceil(ATTN_TILE);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let jobs = a.len.len() * a.nh * tiles;
    type Bufs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<bool>);
    let job = |(kb, vb, qb, sc, seen): &mut Bufs, job: usize| {
        let (s, h, tile) = (job / (a.nh * tiles), (job / tiles) % a.nh, job % tiles);
        let base = a.len[s];
        let (i0, i1) = (tile * ATTN_TILE, ((tile + 1) * ATTN_TILE).min(t));
        let (m, keys) = (i1 - i0, base + i1);
        kb.resize(keys * hd, 0.0);
        vb.resize(keys * hd, 0.0);
        for p in 0..keys {
            let at = a.geom.at(s, a.layer, p) + h * hd;
            a.k.read(kern, at, &mut kb[p * hd..(p + 1) * hd]);
            a.v.read(kern, at, &mut vb[p * hd..(p + 1) * hd]);
        }
        qb.clear();
        for i in i0..i1 {
            let row = (s * t + i) * 3 * d + h * hd;
            qb.extend_from_slice(&a.qkv[row..row + hd]);
        }
        sc.resize(m * keys, 0.0);
        // SAFETY: `sc` is m × keys.
        unsafe { (kern.gemm_nt)(m, keys, hd, qb, kb, sc.as_mut_ptr(), keys) };
        for (ii, row) in sc.chunks_exact_mut(keys).enumerate() {
            let i = i0 + ii;
            let upto = base + i + 1;
            let mut max = f32::NEG_INFINITY;
            for (p, x) in row.iter_mut().enumerate() {
                let seen = p < upto
                    && if p < base {
                        a.valid[s * n_ctx + p] != 0
                    } else {
                        p == base + i || a.mask[s * t + (p - base)] != 0
                    };
                if seen {
                    *x *= a.scale;
                    max = max.max(*x);
                } else {
                    *x = f32::NEG_INFINITY;
                }
            }
            for x in row.iter_mut() {
                *x -= max;
            }
            let probs = &mut row[..upto];
            seen.clear();
            seen.extend(probs.iter().map(|x| *x != f32::NEG_INFINITY));
            (kern.exp)(probs);
            let mut sum = 0.0f32;
            for (x, &keep) in probs.iter_mut().zip(seen.iter()) {
                if keep {
                    sum += *x;
                } else {
                    *x = 0.0;
                }
            }
            let inv = 1.0 / sum;
            for x in probs.iter_mut() {
                *x *= inv;
            }
            row[upto..].fill(0.0);
        }
        // SAFETY: rows i0..i1 of slot s, head h's columns: this job's alone; `out` outlives
        // the parallel loop.
        unsafe {
            let o = out_ptr.get().add((s * t + i0) * d + h * hd);
            (kern.gemm)(m, hd, keys, sc, vb, hd, o, d);
        }
    };
    (0..jobs)
        .into_par_iter()
        .for_each_init(Bufs::default, |bufs, j| job(bufs, j));
}

fn layer_norm(x: &[f32], out: &mut [f32], n: &Norm, c: &Gpt2Config) {
    let d = c.n_embd;
    let (w, b) = (n.w.values(), n.b.values());
    let eps = c.layer_norm_epsilon;
    if x.len() <= SERIAL_ELEMS {
        for (o, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            norm_row(row, o, w, b, eps);
        }
    } else {
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(o, row)| norm_row(row, o, w, b, eps));
    }
}

/// `x = act(x)` element-wise: the vectorized kernels for the GELUs, on the pool when large.
pub(crate) fn activate(kern: &kernels::Kernels, act: Activation, x: &mut [f32]) {
    let apply = |ch: &mut [f32]| match act {
        Activation::GeluTanh => (kern.gelu_tanh)(ch),
        Activation::Gelu => (kern.gelu_erf)(ch),
        _ => ch.iter_mut().for_each(|v| *v = act.apply(*v)),
    };
    if x.len() <= SERIAL_ELEMS {
        apply(x);
    } else {
        x.par_chunks_mut(4096).for_each(apply);
    }
}

/// Element-wise work up to this size runs on the calling thread: waking the pool's other
/// threads (a futex wake and a steal, tens of microseconds) costs more than it saves, and a
/// decoded token has a dozen such steps per layer.
pub(crate) const SERIAL_ELEMS: usize = 1 << 14;

#[inline]
fn norm_row(row: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &g), &bb) in out.iter_mut().zip(row).zip(w).zip(b) {
        *o = (v - mean) * inv * g + bb;
    }
}

pub(crate) fn add_in(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Columns per parallel task of a matmul: a multiple of 64 (the widest register tile).
fn column_chunk(n: usize, threads: usize) -> usize {
    let per = n.div_ceil(threads.max(1) * 2);
    per.div_ceil(64).max(1) * 64
}

/// `out[m × n_out] = x[m × n_in] @ w + b`, on the pool. A few rows (decoded tokens): the weight
/// rows are split across threads, each streaming a contiguous block into its own partial sum
/// (`part`, reused), then summed. A few rows: split by columns (each weight read once). Many
/// rows: split by rows of `x`, each task running the cache-blocked `gemm`.
pub(crate) fn linear(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    lin: &Linear,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let (k, n) = (lin.n_in, lin.n_out);
    let w = match &lin.w {
        Mat::F32(w) => w.values(),
        Mat::Q(q) => {
            qmatmul(kern, &x[..m * k], m, q, &mut out[..m * n], &mut scratch.qa);
            for row in out[..m * n].chunks_exact_mut(n) {
                add_in(row, lin.b.values());
            }
            return;
        }
    };
    let part = &mut scratch.part;
    let threads = rayon::current_num_threads();
    if m <= GEMV_ROWS {
        let tasks = threads.min(k.div_ceil(64)).max(1);
        let rows = k.div_ceil(tasks).div_ceil(4) * 4;
        let size = m * n;
        if part.len() < tasks * size {
            part.resize(tasks * size, 0.0);
        }
        let part = &mut part[..tasks * size];
        let run = |(t, acc): (usize, &mut [f32])| {
            acc.fill(0.0);
            let (p0, p1) = ((t * rows).min(k), ((t + 1) * rows).min(k));
            if p0 < p1 {
                (kern.gemv_acc)(m, &x[p0..], k, &w[p0 * n..p1 * n], acc);
            }
        };
        if tasks == 1 {
            part.chunks_mut(size).enumerate().for_each(run);
        } else {
            part.par_chunks_mut(size).enumerate().for_each(run);
        }
        for row in out[..size].chunks_exact_mut(n) {
            row.copy_from_slice(lin.b.values());
        }
        for acc in part.chunks_exact(size) {
            add_in(&mut out[..size], acc);
        }
        return;
    }
    if m >= ROW_SPLIT_ROWS.max(4 * threads) {
        let per = m.div_ceil(threads * 2).max(4);
        out.par_chunks_mut(per * n)
            .zip(x.par_chunks(per * k))
            .for_each(|(o, a)| {
                let rows = o.len() / n;
                // SAFETY: `o` is exactly `rows × n`, owned by this task.
                unsafe { (kern.gemm)(rows, n, k, a, w, n, o.as_mut_ptr(), n) };
            });
    } else {
        let chunk = column_chunk(n, threads);
        let ptr = SendPtr(out.as_mut_ptr());
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|ci| {
            let j0 = ci * chunk;
            let wid = chunk.min(n - j0);
            // SAFETY: each task writes columns j0..j0+wid of the m rows, disjoint from the
            // others'; `out` is m × n and outlives the loop.
            unsafe { (kern.gemm)(m, wid, k, x, &w[j0..], n, ptr.get().add(j0), n) };
        });
    }
    let b = lin.b.values();
    for row in out.chunks_exact_mut(n) {
        add_in(row, b);
    }
}

/// Reusable buffers of the matmuls: per-thread partial sums (f32 decode) and the quantized
/// activations (quantized matmuls).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) part: Vec<f32>,
    pub(crate) qa: QActs,
}

/// Activation rows per parallel task of a quantized matmul over many rows.
const Q_ROW_CHUNK: usize = 64;

/// `out[m × n] = x[m × k] · Wᵀ` for a quantized `W` `[n × k]`: the rows of `x` quantized once
/// (into `qa`), then the weight row groups split across the pool — for a few rows into one
/// contiguous range per thread (each streams its part of the weights once), for many into
/// [`Q_ROW_CHUNK`]-row × row-group tasks.
pub(crate) fn qmatmul(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    w: &QMatrix,
    out: &mut [f32],
    qa: &mut QActs,
) {
    let (k, n) = (w.k, w.n);
    assert!(x.len() >= m * k && out.len() >= m * n);
    qa.quantize(kern, x, m, k);
    let qa = &*qa;
    let groups = w.groups();
    let threads = rayon::current_num_threads();
    let ptr = SendPtr(out.as_mut_ptr());
    let row_chunks = m.div_ceil(Q_ROW_CHUNK);
    let group_tasks = if row_chunks >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(row_chunks).min(groups)
    }
    .max(1);
    let per = groups.div_ceil(group_tasks);
    let run = |t: usize| {
        let (rc, gt) = (t / group_tasks, t % group_tasks);
        let (g0, g1) = (gt * per, ((gt + 1) * per).min(groups));
        let (i0, i1) = (rc * Q_ROW_CHUNK, ((rc + 1) * Q_ROW_CHUNK).min(m));
        if g0 < g1 {
            // SAFETY: task t writes rows i0..i1 × the columns of groups g0..g1 of `out`
            // (m × n), disjoint from every other task's; `out` outlives the loop.
            unsafe { kern.qgemm(w, g0, g1, qa, i0, i1, ptr.get(), n) };
        }
    };
    let tasks = row_chunks * group_tasks;
    if tasks == 1 || groups * ROWS * k * m < SERIAL_ELEMS * 16 {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// `out[m × n] = x[m × k] · bᵀ` with `b` `[n × k]`, split by rows of `b` across the pool.
///
/// For up to [`NT_PACKED_ROWS`] rows each output is a dot product (tiles of 6 rows × 4 rows of
/// `b`). For many rows
/// (a prompt's logits) each task transposes blocks of [`NT_BLOCK`] rows of `b` into a `[k ×
/// NT_BLOCK]` panel and runs the register-tiled `gemm` on it: the packing is paid once per
/// block and amortized over all `m` rows.
pub(crate) fn gemm_nt_parallel(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let chunk = column_chunk(n, rayon::current_num_threads()).max(256);
    let ptr = SendPtr(out.as_mut_ptr());
    let packed = m >= NT_PACKED_ROWS;
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|ci| {
        let j0 = ci * chunk;
        let wid = chunk.min(n - j0);
        if !packed {
            // SAFETY: columns j0..j0+wid of the m rows of `out` (m × n), disjoint per task.
            unsafe {
                (kern.gemm_nt)(
                    m,
                    wid,
                    k,
                    x,
                    &b[j0 * k..(j0 + wid) * k],
                    ptr.get().add(j0),
                    n,
                )
            };
            return;
        }
        let mut panel = vec![0.0f32; k * NT_BLOCK];
        let mut j = j0;
        while j < j0 + wid {
            let w = NT_BLOCK.min(j0 + wid - j);
            for (r, row) in b[j * k..(j + w) * k].chunks_exact(k).enumerate() {
                for (p, &v) in row.iter().enumerate() {
                    panel[p * w + r] = v;
                }
            }
            // SAFETY: columns j..j+w of the m rows of `out`, within this task's block.
            unsafe { (kern.gemm)(m, w, k, x, &panel[..k * w], w, ptr.get().add(j), n) };
            j += w;
        }
    });
}

/// From this many rows on, a matmul splits its rows across threads (each streaming all the
/// weights, amortized over its rows); below, its columns (each weight read once).
const ROW_SPLIT_ROWS: usize = 64;

/// Up to this many rows (tokens decoded together), a matmul streams the weights by rows.
const GEMV_ROWS: usize = 8;

/// From this many rows on, `gemm_nt_parallel` packs transposed panels of `b` (paid once per
/// call) for the register-tiled `gemm`; below, the dot-product tiles re-read `b` per 6 rows,
/// cheaper for the small matrices of an encoder called on one sentence.
const NT_PACKED_ROWS: usize = 48;

/// Rows of the LM head transposed per packed panel.
const NT_BLOCK: usize = 128;

/// Work buffers of the forward pass, grown to the largest call and reused.
#[derive(Debug, Default)]
struct Work {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    mlp: Vec<f32>,
    scores: Vec<f32>,
    /// Partial sums and quantized activations of the matmuls.
    scratch: Scratch,
    /// The position id of each row.
    positions: Vec<usize>,
}

impl Work {
    fn ensure(&mut self, rows: usize, c: &Gpt2Config) {
        let d = c.n_embd;
        let grow = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        };
        grow(&mut self.x, rows * d);
        grow(&mut self.h, rows * d);
        grow(&mut self.qkv, rows * 3 * d);
        grow(&mut self.att, rows * d);
        grow(&mut self.mlp, rows * c.n_inner);
    }
}

/// The KV cache of `slots` sequences: keys and values of every layer at every position so far,
/// `[slot][layer][n_positions][d]` (heads side by side within `d`), preallocated.
#[derive(Debug)]
pub struct Cache {
    slots: usize,
    geom: Geom,
    k: Kv,
    v: Kv,
    /// Positions filled per slot (padding included).
    len: Vec<usize>,
    /// `[slot][n_positions]`: 1 where the position holds a real token.
    valid: Vec<u8>,
    /// The position id of each slot's next real token.
    next_pos: Vec<usize>,
    work: Work,
}

impl Cache {
    fn new(c: &Gpt2Config, slots: usize, dtype: KvDtype) -> Self {
        let geom = Geom {
            n_ctx: c.n_positions,
            n_layer: c.n_layer,
            d: c.n_embd,
        };
        let size = slots * c.n_layer * c.n_positions * c.n_embd;
        Cache {
            slots,
            geom,
            k: Kv::zeros(dtype, size),
            v: Kv::zeros(dtype, size),
            len: vec![0; slots],
            valid: vec![0; slots * c.n_positions],
            next_pos: vec![0; slots],
            work: Work::default(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Positions filled in slot `s` (padding included).
    pub fn len(&self, s: usize) -> usize {
        self.len[s]
    }

    pub fn is_empty(&self) -> bool {
        self.len.iter().all(|&l| l == 0)
    }

    /// The element type of the keys and values.
    pub fn dtype(&self) -> KvDtype {
        self.k.dtype()
    }

    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// A cache of `sources.len()` slots, slot `i` a copy of this cache's slot `sources[i]`: a
    /// prompt prefilled once, shared by several sampled continuations.
    pub fn expand(&self, sources: &[usize]) -> Result<Cache> {
        if let Some(&bad) = sources.iter().find(|&&s| s >= self.slots) {
            return Err(Error::OutOfRange(format!(
                "slot {bad} of a cache of {}",
                self.slots
            )));
        }
        let g = self.geom;
        let per = g.n_layer * g.n_ctx * g.d;
        let n = sources.len();
        let mut k = Kv::zeros(self.k.dtype(), n * per);
        let mut v = Kv::zeros(self.v.dtype(), n * per);
        let mut valid = vec![0; n * g.n_ctx];
        for (i, &s) in sources.iter().enumerate() {
            // Only the filled positions of each layer need copying.
            for l in 0..g.n_layer {
                let (src, dst) = (g.at(s, l, 0), g.at(i, l, 0));
                let used = self.len[s] * g.d;
                k.copy_from(dst, &self.k, src, used);
                v.copy_from(dst, &self.v, src, used);
            }
            valid[i * g.n_ctx..(i + 1) * g.n_ctx]
                .copy_from_slice(&self.valid[s * g.n_ctx..(s + 1) * g.n_ctx]);
        }
        Ok(Cache {
            slots: n,
            geom: g,
            k,
            v,
            len: sources.iter().map(|&s| self.len[s]).collect(),
            valid,
            next_pos: sources.iter().map(|&s| self.next_pos[s]).collect(),
            work: Work::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_activations() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x})");
        }
        assert!((Activation::GeluTanh.apply(1.0) - 0.841_192).abs() < 1e-5);
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert_eq!(Activation::Relu.apply(-3.0), 0.0);
    }

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
