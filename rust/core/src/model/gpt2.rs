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
use crate::kernels::{self, PackedB, SendPtr, PANEL};
use crate::model::kv::{attention, check_cancel, QkvLayout, Work};
pub use crate::model::kv::{Cache, KvDtype};
use crate::model::weights::{
    self, f32_entry, mat_entry, norm_entries, table_entry, Layout, Mat, Named, Progress, Quant,
    Table, Weights,
};
pub(crate) use crate::model::weights::{Linear, Norm};
use crate::model::{CausalLm, ModelId};
use crate::quant::{QActs, QMatrix, QType, ROWS};
use crate::runtime::{mem, pool};
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
    /// Marks the caches it makes.
    id: ModelId,
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
        let mut blocks = Vec::new(); // not sized by the config: its count is untrusted
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
            id: ModelId::fresh(),
            config,
        };
        model.weight_bytes = model.tensors()?.iter().map(|(_, _, t)| t.len_bytes()).sum();
        Ok(model)
    }

    /// The matrices' quantized format, if any.
    pub fn quantization(&self) -> Option<QType> {
        self.quant
    }

    /// Every tensor under the name `GPT2LMHeadModel.save_pretrained` gives it (quantized
    /// matrices as `{name}.qweight`, U8 tiles), for saving.
    pub fn tensors(&self) -> Result<Vec<Named<'_>>> {
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
                out.push(mat_entry(&format!("{p}.{name}"), &lin.w)?);
                out.push(f32_entry(&format!("{p}.{name}.bias"), &lin.b));
            }
        }
        norm_entries(&mut out, "transformer.ln_f", &self.ln_f);
        if let Some(h) = &self.lm_head {
            out.push(table_entry("lm_head", h));
        }
        Ok(out)
    }

    /// Writes the weights as `model.safetensors` in `folder` (f32, or the quantized tiles,
    /// which load back mapped in place). `config.json` and the tokenizer are the caller's.
    pub fn save(&self, folder: &Path) -> Result<()> {
        weights::save(folder, &self.tensors()?, self.quant)
    }

    /// Bytes of weights read per decoded token (every matrix once, the embeddings' rows aside).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// An empty KV cache for `slots` sequences of up to `n_positions` tokens (room for
    /// `capacity` to start with; it grows as needed).
    pub fn new_cache(&self, slots: usize, capacity: Option<usize>) -> Result<Cache> {
        let c = &self.config;
        let n = c.n_positions;
        let cap = capacity.unwrap_or_else(|| Cache::default_capacity(n));
        Ok(Cache::new(c.n_layer, c.n_embd, n, slots, self.kv_dtype, cap)?.owned_by(self.id))
    }

    /// The element type of the KV caches this model makes from now on.
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }
}

impl CausalLm for Gpt2 {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn n_ctx(&self) -> usize {
        self.config.n_positions
    }

    fn new_cache(&self, slots: usize, capacity: Option<usize>) -> Result<Cache> {
        Gpt2::new_cache(self, slots, capacity)
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
        cache.begin(self.id, tokens, mask, t, c.vocab_size, "n_positions")?;
        let kern = kernels::get();
        let (d, hd, nh) = (c.n_embd, c.head_dim(), c.n_head);
        let rows = slots * t;
        cache.work.ensure(rows, d, 3 * d, d, c.n_inner)?;
        let lay = QkvLayout {
            stride: 3 * d,
            k_off: d,
            v_off: 2 * d,
            kv_d: d,
        };
        let mut ws = std::mem::take(&mut cache.work);
        let cancel = cache.cancel.clone();
        let result = pool::install(|| -> Result<()> {
            // x = wte[ids] + wpe[pos]                                  [rows, d]
            let wpe = self.wpe.values();
            for (r, row) in ws.x[..rows * d].chunks_exact_mut(d).enumerate() {
                let (tok, pos) = (tokens[r] as usize, ws.positions[r]);
                self.wte.row_into(tok, row);
                add_in(row, &wpe[pos * d..(pos + 1) * d]);
            }
            for (l, blk) in self.blocks.iter().enumerate() {
                check_cancel(&cancel)?;
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
                check_cancel(&cancel)?;
                // k, v appended to the cache; attention per (slot, head)   [rows, d]
                cache.append(kern, l, &ws.qkv, t, &lay);
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
                let args = cache.attn_args(
                    &ws.qkv[..rows * 3 * d],
                    mask,
                    l,
                    t,
                    (nh, nh, hd),
                    &lay,
                    scale,
                );
                attention(kern, &args, &mut ws.att[..rows * d], &mut ws.scores);
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
                check_cancel(&cancel)?;
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
            let head = self.lm_head.as_ref().unwrap_or(&self.wte);
            let norm = |x: &[f32], out: &mut [f32]| layer_norm(x, out, &self.ln_f, c);
            head_logits(kern, &mut ws, (slots, t, d, last_only), norm, head, logits)
        });
        cache.work = ws;
        result??;
        cache.commit(mask, t);
        Ok(())
    }
}

/// Refuses a forward call whose logits would not fit in memory, before any work.
pub(crate) fn check_logits(slots: usize, t: usize, vocab: usize, last_only: bool) -> Result<()> {
    let rows = if last_only {
        slots
    } else {
        slots.saturating_mul(t)
    };
    mem::check(rows.saturating_mul(vocab), 4, "the logits of this input").map(|_| ())
}

/// The logits of each slot's last row (`last_only`) or of every row: the rows of `ws.x`
/// gathered, normalized by `norm`, times `headᵀ` (`[vocab × d]`).
pub(crate) fn head_logits(
    kern: &kernels::Kernels,
    ws: &mut Work,
    (slots, t, d, last_only): (usize, usize, usize, bool),
    norm: impl Fn(&[f32], &mut [f32]),
    head: &Table,
    logits: &mut Vec<f32>,
) -> Result<()> {
    let m = if last_only { slots } else { slots * t };
    for i in 0..m {
        let r = if last_only { i * t + t - 1 } else { i };
        ws.att[i * d..(i + 1) * d].copy_from_slice(&ws.x[r * d..(r + 1) * d]);
    }
    norm(&ws.att[..m * d], &mut ws.h[..m * d]);
    let (x, vocab) = (&ws.h[..m * d], head.rows());
    logits.clear();
    mem::grow(logits, m.saturating_mul(vocab), "the logits")?;
    match head {
        Table::F32(w) => gemm_nt_parallel(kern, x, m, d, w.values(), vocab, logits),
        Table::Q(w) => qmatmul(kern, x, m, w, logits, &mut ws.scratch.qa),
    }
    Ok(())
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
    let apply = |ch: &mut [f32]| act_in_place(kern, act, ch);
    if x.len() <= SERIAL_ELEMS {
        apply(x);
    } else {
        x.par_chunks_mut(4096).for_each(apply);
    }
}

/// `x = act(x)` element-wise on this thread (each value's result does not depend on where it
/// falls in `x`: the kernels run a slice's last values through their vector code too).
fn act_in_place(kern: &kernels::Kernels, act: Activation, x: &mut [f32]) {
    match act {
        Activation::GeluTanh => (kern.gelu_tanh)(x),
        Activation::Gelu => (kern.gelu_erf)(x),
        _ => x.iter_mut().for_each(|v| *v = act.apply(*v)),
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

/// `out[m × n_out] = x[m × n_in] @ w + b`, on the pool: [`linears`] with one matrix.
pub(crate) fn linear(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    lin: &Linear,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    linears(kern, x, m, &mut [(lin, out)], scratch);
}

/// `out = act(x @ w + b)`: [`linear`] with the activation applied by each task to the block it
/// computed (one parallel region, not two; the same values as [`activate`] afterwards).
pub(crate) fn linear_act(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    lin: &Linear,
    act: Activation,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    assert!(out.len() >= m * lin.n_out);
    let job = MatJob {
        w: mat_ref(lin),
        bias: Some(lin.b.values()),
        act: Some(act),
        out: SendPtr(out.as_mut_ptr()),
    };
    matmuls(kern, x, m, lin.n_in, &[job], &mut scratch.qa);
}

/// Reusable buffers of the matmuls: the quantized activations (quantized matmuls).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) qa: QActs,
}

/// Activation rows per parallel task of a quantized matmul over many rows.
const Q_ROW_CHUNK: usize = 64;

/// Columns per unit of work of an f32 matmul split by columns (the widest register tile).
const F32_UNIT: usize = 64;

/// One matrix of [`matmuls`]: `out[m × n] = x · W (+ bias)`.
struct MatJob<'a> {
    w: MatRef<'a>,
    bias: Option<&'a [f32]>,
    /// Applied after the bias.
    act: Option<Activation>,
    out: SendPtr,
}

fn mat_ref(lin: &Linear) -> MatRef<'_> {
    match &lin.w {
        Mat::F32(w) => MatRef::F32(w.values(), lin.n_out),
        Mat::Packed(w) => MatRef::Packed(w),
        Mat::Q(q) => MatRef::Q(q),
    }
}

#[derive(Clone, Copy)]
enum MatRef<'a> {
    /// `[k × n]` f32.
    F32(&'a [f32], usize),
    /// `[k × n]` f32 in panels.
    Packed(&'a PackedB),
    Q(&'a QMatrix),
}

impl MatRef<'_> {
    fn n(&self) -> usize {
        match self {
            MatRef::F32(_, n) => *n,
            MatRef::Packed(w) => w.n(),
            MatRef::Q(w) => w.n,
        }
    }

    /// Columns per unit of work: a quantized row group, a panel, or [`F32_UNIT`].
    fn unit(&self) -> usize {
        match self {
            MatRef::F32(..) => F32_UNIT,
            MatRef::Packed(_) => PANEL,
            MatRef::Q(_) => ROWS,
        }
    }
}

impl MatJob<'_> {
    /// Units of work in the matrix's columns.
    fn units(&self) -> usize {
        self.w.n().div_ceil(self.w.unit())
    }
}

/// `out = x @ w + b` for several matrices that read the same `x` (`m × n_in`, every `n_in`
/// equal) — a layer's query, key and value — in one parallel region: their columns, cut into
/// units of [`F32_UNIT`] columns (f32), a panel (f32 packed) or 16 (a quantized row group),
/// are laid end to end and split into equal runs across the pool (each weight read once); many
/// rows are split by rows as well. A quantized `x` is quantized once for all. Matrices of mixed
/// kinds run one after the other.
///
/// Each output is the same chain of multiply-adds over `n_in` (see the kernels' `gemm` and
/// `qgemm`) whatever the split, then the bias: a row's result does not depend on the other
/// rows of the call or on the number of threads, which makes generation reproducible across
/// batch sizes and thread counts.
pub(crate) fn linears(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    jobs: &mut [(&Linear, &mut [f32])],
    scratch: &mut Scratch,
) {
    let Some((first, _)) = jobs.first() else {
        return;
    };
    let k = first.n_in;
    let kind = |l: &Linear| std::mem::discriminant(&l.w);
    let same = jobs
        .iter()
        .all(|(l, _)| l.n_in == k && kind(l) == kind(first));
    if !same {
        for (lin, out) in jobs.iter_mut() {
            linears(kern, x, m, &mut [(*lin, &mut **out)], scratch);
        }
        return;
    }
    let list: Vec<MatJob> = jobs
        .iter_mut()
        .map(|(lin, out)| {
            assert!(out.len() >= m * lin.n_out);
            MatJob {
                w: mat_ref(lin),
                bias: Some(lin.b.values()),
                act: None,
                out: SendPtr(out.as_mut_ptr()),
            }
        })
        .collect();
    matmuls(kern, x, m, k, &list, &mut scratch.qa);
}

/// The parallel region of [`linears`] and [`qmatmul`] (see there): every job's matrix is
/// `k` inputs wide and of one kind (all f32, all packed or all quantized), each `out` is
/// `m × n`.
fn matmuls(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    k: usize,
    jobs: &[MatJob],
    qa: &mut QActs,
) {
    assert!(x.len() >= m * k);
    let q = matches!(jobs.first().map(|j| j.w), Some(MatRef::Q(_)));
    if q {
        qa.quantize(kern, x, m, k);
    }
    let qa = &*qa;
    let threads = rayon::current_num_threads();
    for j in jobs {
        let w_ok = match j.w {
            MatRef::F32(w, n) => k == 0 || w.len() >= k * n,
            MatRef::Packed(w) => w.k() == k,
            MatRef::Q(w) => w.k == k,
        };
        assert!(w_ok);
    }
    // The jobs' units, end to end: each job owns the next `units()` of them.
    let units: usize = jobs.iter().map(MatJob::units).sum();
    let cols: usize = jobs.iter().map(|j| j.w.n()).sum();
    // (rows per task, unit runs)
    let (row_chunk, runs) = if q {
        let row_chunks = m.div_ceil(Q_ROW_CHUNK);
        let runs = if row_chunks >= 2 * threads {
            1
        } else {
            (2 * threads).div_ceil(row_chunks)
        };
        (Q_ROW_CHUNK, runs)
    } else if m >= ROW_SPLIT_ROWS.max(4 * threads) {
        (m.div_ceil(threads * 2).max(4), 1)
    } else {
        (m.max(1), 2 * threads)
    };
    let runs = runs.clamp(1, units.max(1));
    let row_chunks = m.div_ceil(row_chunk).max(1);
    let run = |t: usize| {
        let (rc, r) = (t / runs, t % runs);
        let (u0, u1) = (units * r / runs, units * (r + 1) / runs);
        let (i0, i1) = (rc * row_chunk, ((rc + 1) * row_chunk).min(m));
        // SAFETY: the tasks' (rows, units) blocks are disjoint; the jobs were checked above.
        unsafe { run_units(kern, x, k, qa, jobs, (u0, u1), (i0, i1)) };
    };
    let tasks = row_chunks * runs;
    if tasks == 1 || (q && cols * k * m < SERIAL_ELEMS * 16) {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Units `u0..u1` of `jobs` (their units laid end to end, as in [`matmuls`]) for rows
/// `i0..i1` of `x` (`m × k`; quantized jobs read `qa`, `x` quantized): the matmul, then the
/// bias and the activation of each job.
///
/// # Safety
/// Each job's `out` holds `m × n` floats that no other thread touches at these rows and
/// columns during the call; `x` holds rows up to `i1`; every job's matrix is `k` inputs wide.
unsafe fn run_units(
    kern: &kernels::Kernels,
    x: &[f32],
    k: usize,
    qa: &QActs,
    jobs: &[MatJob],
    (u0, u1): (usize, usize),
    (i0, i1): (usize, usize),
) {
    let mut start = 0;
    for job in jobs {
        let end = start + job.units();
        let (a, b) = (u0.max(start) - start, u1.min(end).saturating_sub(start));
        start = end;
        if a >= b || i0 >= i1 {
            continue;
        }
        let n = job.w.n();
        let unit = job.w.unit();
        let (c0, c1) = (a * unit, (b * unit).min(n));
        // SAFETY: rows i0..i1 × columns c0..c1 of this job's `out` (m × n), this caller's
        // alone (the caller's promise).
        unsafe {
            let o = job.out.get();
            match job.w {
                MatRef::F32(w, _) => (kern.gemm)(
                    i1 - i0,
                    c1 - c0,
                    k,
                    &x[i0 * k..i1 * k],
                    &w[c0..],
                    n,
                    o.add(i0 * n + c0),
                    n,
                ),
                MatRef::Packed(w) => kern.gemm_packed(
                    i1 - i0,
                    c1 - c0,
                    k,
                    &x[i0 * k..i1 * k],
                    w.from_column(c0),
                    o.add(i0 * n + c0),
                    n,
                ),
                MatRef::Q(w) => kern.qgemm(w, a, b, qa, i0, i1, o, n),
            }
            if job.bias.is_some() || job.act.is_some() {
                for i in i0..i1 {
                    let row = std::slice::from_raw_parts_mut(o.add(i * n + c0), c1 - c0);
                    if let Some(bias) = job.bias {
                        add_in(row, &bias[c0..c1]);
                    }
                    if let Some(act) = job.act {
                        act_in_place(kern, act, row);
                    }
                }
            }
        }
    }
}

/// Columns `c0..c1` of [`linear_act`] (`act` None: [`linear`]) for all `m` rows of `x`, on
/// this thread: a team member's share (see [`crate::runtime::pool::team`]). A quantized
/// matrix reads `qa`, which must hold `x` quantized. Every output element is computed exactly
/// as [`linears`] computes it.
///
/// `c0` must be a multiple of the matrix's unit of work (16 columns quantized, 32 packed, 64
/// plain f32: see [`col_unit`]) and `c1` too, or the matrix's width.
///
/// # Safety
/// `out` holds `m × n_out` floats of which nothing else touches columns `c0..c1` during the
/// call, and nothing writes `x` or `qa`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn linear_cols(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    lin: &Linear,
    out: SendPtr,
    act: Option<Activation>,
    qa: &QActs,
    (c0, c1): (usize, usize),
) {
    let job = MatJob {
        w: mat_ref(lin),
        bias: Some(lin.b.values()),
        act,
        out,
    };
    let (k, n, unit) = (lin.n_in, job.w.n(), job.w.unit());
    assert!(x.len() >= m * k && c0 <= c1 && c1 <= n);
    assert!(c0 % unit == 0 && (c1 % unit == 0 || c1 == n));
    if let MatRef::Q(w) = job.w {
        assert!(qa.m >= m && qa.k == k && w.k == k);
    }
    // SAFETY: the caller's promise; the units cover exactly columns c0..c1.
    unsafe {
        run_units(
            kern,
            x,
            k,
            qa,
            &[job],
            (c0 / unit, c1.div_ceil(unit)),
            (0, m),
        )
    };
}

/// The unit of work of `lin`'s columns in [`linear_cols`].
pub(crate) fn col_unit(lin: &Linear) -> usize {
    mat_ref(lin).unit()
}

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
    assert!(out.len() >= m * w.n);
    let job = MatJob {
        w: MatRef::Q(w),
        bias: None,
        act: None,
        out: SendPtr(out.as_mut_ptr()),
    };
    matmuls(kern, x, m, w.k, &[job], qa);
}

/// `out[m × n] = x[m × k] · bᵀ` with `b` `[n × k]`, split by rows of `b` across the pool.
///
/// Each output is a dot product computed by the kernels' `gemm_nt` tiles, the same arithmetic
/// for every `m` and split (so a row's logits do not depend on the rest of its batch). Each
/// task walks its rows of `b` in blocks of [`NT_BLOCK`], running all `m` rows of `x` over a
/// block while it is in cache: `b` is read from memory once per call.
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
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|ci| {
        let (j0, j1) = (ci * chunk, ((ci + 1) * chunk).min(n));
        for j in (j0..j1).step_by(NT_BLOCK) {
            let w = NT_BLOCK.min(j1 - j);
            // SAFETY: columns j..j+w of the m rows of `out` (m × n), within this task's
            // block, disjoint from every other task's.
            unsafe { (kern.gemm_nt)(m, w, k, x, &b[j * k..(j + w) * k], ptr.get().add(j), n) };
        }
    });
}

/// From this many rows on, a matmul splits its rows across threads (each streaming all the
/// weights, amortized over its rows); below, its columns (each weight read once).
const ROW_SPLIT_ROWS: usize = 64;

/// Rows of `b` per cache block of `gemm_nt_parallel` (128 rows of 768 floats: 384 KB).
const NT_BLOCK: usize = 128;

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
