//! Recurrent language models: Embedding → N stacked unidirectional LSTM or GRU layers → Dense,
//! the program every introductory course builds (Keras' `Embedding` / `LSTM` / `GRU` / `Dense`,
//! PyTorch's `nn.Embedding` / `nn.LSTM` / `nn.GRU` / `nn.Linear`). Layers may differ in size
//! (Keras' `LSTM(128)` on `LSTM(64)`); one model's layers are all LSTM or all GRU.
//!
//! ```text
//! x_t = embedding[id_t]
//! for each layer k (state of `hidden[k]` values, carried across calls in the cache):
//!   LSTM (state h, c):
//!     z   = x_t @ W_ih + b  +  h @ W_hh            # [4 × hidden[k]], PyTorch order i f g o
//!     i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)
//!     c = f·c + i·g;  h = o·tanh(c);  x_t = h
//!   GRU (state h; nn.GRU, = Keras' GRU with reset_after=True):
//!     a = x_t @ W_ih + b_ih;  b = h @ W_hh + b_hh   # [3 × hidden[k]], PyTorch order r z n
//!     r, z = σ(a_r + b_r), σ(a_z + b_z);  n = tanh(a_n + r·b_n)
//!     h = (1 - z)·n + z·h;  x_t = h
//! logits_t = x_t @ W_out + b_out                    # [vocab], from the last layer's units
//! ```
//!
//! The input projections `x @ W_ih` of every step of a call are one matrix product before the
//! recurrence (a prompt or a scored text runs them as a GEMM); the recurrence itself is one
//! `h @ W_hh` per step for all sequences together. A padded position (mask 0) leaves its
//! sequence's state unchanged, so left- or right-padded batches equal their rows run alone.
//!
//! Weights load from a folder (`config.json` with `model_type` "lstm" + safetensors in
//! PyTorch's layout). `cell` is `"lstm"` (the default) or `"gru"`; `hidden_size` an integer
//! (every layer) or a list of one size per layer. With `{rnn}` = `tensor_names[cell]` (default:
//! the cell's name, `lstm` or `gru`), `G` = 4 (LSTM) or 3 (GRU) and `h` = layer k's size:
//! `embedding.weight` `[vocab, emb]`, `{rnn}.weight_ih_l{k}` `[G·h, in]`,
//! `{rnn}.weight_hh_l{k}` `[G·h, h]`, `{rnn}.bias_ih_l{k}` / `{rnn}.bias_hh_l{k}` `[G·h]`,
//! `fc.weight` `[vocab, h_last]`, `fc.bias`; the Python layer converts Keras files into that
//! layout (and stacks of separate PyTorch modules, renumbered `l0, l1, ...`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::io::safetensors::{Checkpoint, F32Data, F32Tensor};
use crate::kernels;
use crate::model::kv::{check_cancel, Cache};
use crate::model::linear::linear;
use crate::model::weights::{self, Linear, Mat, Table};
use crate::model::{CausalLm, ModelId};
use crate::quant::{QMatrix, QType};
use crate::runtime::{mem, pool};
use crate::{Error, Result};

/// What the Dense layer applies to its outputs (Keras' `activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputActivation {
    /// The logits as they are (`linear`, PyTorch's `nn.Linear`).
    Linear,
    /// Probabilities (`softmax`): `predict` returns them; `logits` are the pre-softmax values.
    Softmax,
}

/// The recurrent cell of every layer (config `cell`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// `nn.LSTM` / Keras `LSTM`: state `h` and `c`, 4 gates.
    Lstm,
    /// `nn.GRU` / Keras `GRU(reset_after=True)`: state `h`, 3 gates.
    Gru,
}

impl CellKind {
    /// The config's and the default tensor prefix's name.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }

    /// Gate rows per unit: `W_ih` is `[gates × h, in]`.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// State vectors per layer: `h, c` or `h`.
    pub fn states(self) -> usize {
        match self {
            CellKind::Lstm => 2,
            CellKind::Gru => 1,
        }
    }
}

/// The fields of a recurrent language model's `config.json` (schema in the module docs and the
/// Python package's `LSTMLanguageModel` docstring).
#[derive(Debug, Clone, PartialEq)]
pub struct LstmConfig {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub cell: CellKind,
    /// Units of each layer, first to last (`hidden_size` as a list, or one size `num_layers`
    /// times).
    pub hidden_sizes: Vec<usize>,
    pub output_activation: OutputActivation,
    /// Longest sequence (positions are only counted: an LSTM has no position limit of its own).
    pub max_length: usize,
    /// Tensor name prefixes: embedding, recurrent layers, output layer.
    pub names: (String, String, String),
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Vec<u32>,
}

/// The default `max_length`: no model limit, only memory's.
const NO_LIMIT: usize = 1 << 24;

impl LstmConfig {
    pub fn from_json(what: &str, data: &[u8]) -> Result<Self> {
        Self::from_value(what, &weights::parse_config(what, data, "lstm")?)
    }

    fn from_value(what: &str, v: &Value) -> Result<Self> {
        let num = |key: &str, default: Option<usize>| weights::positive(v, what, key, default);
        let act = v
            .get("output_activation")
            .and_then(Value::as_str)
            .unwrap_or("linear");
        let output_activation = match act {
            "linear" | "none" | "logits" => OutputActivation::Linear,
            "softmax" => OutputActivation::Softmax,
            other => {
                return Err(Error::Unsupported(format!(
                    "output_activation {other:?} ({what}); ferrolm runs linear and softmax"
                )))
            }
        };
        let cell = match v.get("cell") {
            None | Some(Value::Null) => CellKind::Lstm,
            Some(x) => match x.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("lstm") => CellKind::Lstm,
                Some("gru") => CellKind::Gru,
                _ => {
                    return Err(Error::Unsupported(format!(
                        "cell {x} ({what}); ferrolm runs \"lstm\" and \"gru\" (one kind per \
                         model)"
                    )))
                }
            },
        };
        // `hidden_size`: one size for every layer, or one per layer (then `num_layers`, if
        // given, must count them).
        let hidden_sizes = match v.get("hidden_size") {
            Some(Value::Array(sizes)) => {
                let bad = || {
                    Error::format(
                        what,
                        format!(
                            "`hidden_size` must be a positive integer (at most {MAX_HIDDEN}) \
                             or a non-empty list of them"
                        ),
                    )
                };
                let sizes = sizes
                    .iter()
                    .map(|x| {
                        x.as_u64()
                            .and_then(|n| usize::try_from(n).ok())
                            .filter(|&n| n > 0 && n <= MAX_HIDDEN)
                            .ok_or_else(bad)
                    })
                    .collect::<Result<Vec<usize>>>()?;
                if sizes.is_empty() {
                    return Err(bad());
                }
                let layers = num("num_layers", Some(sizes.len()))?;
                if layers != sizes.len() {
                    return Err(Error::format(
                        what,
                        format!(
                            "`num_layers` = {layers} but `hidden_size` lists {} sizes",
                            sizes.len()
                        ),
                    ));
                }
                sizes
            }
            _ => {
                let h = num("hidden_size", None)?;
                let layers = num("num_layers", Some(1))?;
                if h > MAX_HIDDEN {
                    return Err(Error::format(
                        what,
                        format!("`hidden_size` = {h} (more than {MAX_HIDDEN})"),
                    ));
                }
                // The count is untrusted: a layer's weights are at least `h` values each, so a
                // count beyond the checkpoint's fails there; refuse absurd ones before allocating.
                if layers > MAX_LAYERS {
                    return Err(Error::format(
                        what,
                        format!("`num_layers` = {layers} (more than {MAX_LAYERS})"),
                    ));
                }
                vec![h; layers]
            }
        };
        let names = v.get("tensor_names");
        let name = |key: &str, default: &str| -> String {
            names
                .and_then(|n| n.get(key))
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let ids = |key: &str| -> Vec<u32> {
            match v.get(key) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect(),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            }
        };
        Ok(LstmConfig {
            vocab_size: num("vocab_size", None)?,
            embedding_dim: num("embedding_dim", None)?,
            cell,
            hidden_sizes,
            output_activation,
            max_length: num("max_length", Some(NO_LIMIT))?,
            names: (
                name("embedding", "embedding"),
                name(cell.name(), cell.name()),
                name("output", "fc"),
            ),
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_id: ids("eos_token_id"),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.hidden_sizes.len()
    }

    /// Units of the last layer: the Dense layer's inputs.
    pub fn output_size(&self) -> usize {
        self.hidden_sizes.last().copied().unwrap_or(0)
    }

    /// Where layer `k`'s state starts within a sequence's state (`h` then, for an LSTM, `c`).
    pub fn state_offset(&self, k: usize) -> usize {
        self.cell.states() * self.hidden_sizes[..k].iter().sum::<usize>()
    }

    /// State values per sequence: `h` (and `c`) of every layer.
    pub fn state_size(&self) -> usize {
        self.state_offset(self.num_layers())
    }
}

/// More layers, or units in a layer, than any model has: a corrupt `num_layers` or
/// `hidden_size` is refused before anything is sized by it (and sizes' sums cannot overflow).
const MAX_LAYERS: usize = 4096;
const MAX_HIDDEN: usize = 1 << 24;

#[derive(Debug)]
struct Layer {
    /// Units `h` of this layer.
    hidden: usize,
    /// `[in → G·h]`; bias: LSTM `b_ih + b_hh`, GRU `b_ih + [b_hr | b_hz | 0]`.
    w_ih: Linear,
    /// `[h → G·h]`; bias: LSTM none, GRU `[0 | 0 | b_hn]` (scaled by r, so not foldable).
    w_hh: Linear,
}

/// A loaded recurrent (LSTM or GRU) language model: immutable, shared across threads.
#[derive(Debug)]
pub struct Lstm {
    pub config: LstmConfig,
    embed: Table,
    layers: Vec<Layer>,
    out: Linear,
    quant: Option<QType>,
    /// Marks the caches (states) it makes.
    id: ModelId,
}

fn owned(values: Vec<f32>, shape: Vec<usize>) -> F32Tensor {
    F32Tensor {
        data: F32Data::Owned(values),
        shape,
    }
}

impl Lstm {
    /// Loads `config.json` and the safetensors checkpoint of a folder, the matrices quantized
    /// to `quantize` if given.
    pub fn load(folder: &Path, quantize: Option<QType>) -> Result<Self> {
        let (what, v) = weights::read_config(folder, "lstm")?;
        let config = LstmConfig::from_value(&what, &v)?;
        let ck = Checkpoint::open_folder(folder)?;
        Self::from_checkpoint(config, &ck, quantize)
    }

    /// Takes the weights from `ck`, every name and shape checked against `config`.
    pub fn from_checkpoint(
        config: LstmConfig,
        ck: &Checkpoint,
        quantize: Option<QType>,
    ) -> Result<Self> {
        let (v, e) = (config.vocab_size, config.embedding_dim);
        let (emb_name, rnn, out_name) = config.names.clone();
        let cell = config.cell;
        let g = cell.gates();
        // A PyTorch `[out, in]` weight as a linear layer (transposed, or quantized).
        let matrix = |name: &str, n_in: usize, n_out: usize| -> Result<Mat> {
            let t = ck.f32(name, &[n_out, n_in])?;
            Ok(match quantize {
                Some(ty) => Mat::Q(QMatrix::quantize(ty, t.values(), n_out, n_in, false)),
                None => Mat::F32(weights::transposed(t.values(), n_out, n_in)),
            })
        };
        let vector = |name: &str, n: usize| -> Result<Vec<f32>> {
            if ck.contains(name) {
                Ok(ck.f32(name, &[n])?.values().to_vec())
            } else {
                Ok(vec![0.0; n])
            }
        };
        // A checkpoint of the other cell: say so, rather than "missing {rnn}.weight_ih_l0".
        let other = match cell {
            CellKind::Lstm => CellKind::Gru,
            CellKind::Gru => CellKind::Lstm,
        };
        let other_name = format!("{}.weight_ih_l0", other.name());
        if !ck.contains(&format!("{rnn}.weight_ih_l0")) && ck.contains(&other_name) {
            return Err(Error::format(
                "checkpoint",
                format!(
                    "{other_name} exists but config.json says cell = {:?}: set \"cell\": {:?}",
                    cell.name(),
                    other.name()
                ),
            ));
        }
        let mut layers = Vec::new(); // not sized by the config: its count is untrusted
        let mut n_in = e;
        for (k, &h) in config.hidden_sizes.iter().enumerate() {
            let mut b_ih = vector(&format!("{rnn}.bias_ih_l{k}"), g * h)?;
            let mut b_hh = vector(&format!("{rnn}.bias_hh_l{k}"), g * h)?;
            // LSTM: all of b_hh adds to the input projection. GRU: b_hr, b_hz do; b_hn stays
            // inside r·(W_hn h + b_hn).
            let folded = match cell {
                CellKind::Lstm => g * h,
                CellKind::Gru => 2 * h,
            };
            for (b, x) in b_ih.iter_mut().zip(&mut b_hh[..folded]) {
                *b += std::mem::take(x);
            }
            layers.push(Layer {
                hidden: h,
                w_ih: Linear {
                    w: matrix(&format!("{rnn}.weight_ih_l{k}"), n_in, g * h)?,
                    b: owned(b_ih, vec![g * h]),
                    n_in,
                    n_out: g * h,
                },
                w_hh: Linear {
                    w: matrix(&format!("{rnn}.weight_hh_l{k}"), h, g * h)?,
                    b: owned(b_hh, vec![g * h]),
                    n_in: h,
                    n_out: g * h,
                },
            });
            n_in = h;
        }
        let extra = format!("{rnn}.weight_ih_l{}", config.num_layers());
        if ck.contains(&extra) {
            return Err(Error::format(
                "checkpoint",
                format!(
                    "{extra} exists: the checkpoint has more layers than num_layers = {}",
                    config.num_layers()
                ),
            ));
        }
        let embed = {
            let t = ck.f32(&format!("{emb_name}.weight"), &[v, e])?;
            match quantize {
                Some(ty) if e.is_multiple_of(32) => {
                    Table::Q(QMatrix::quantize(ty, t.values(), v, e, false))
                }
                _ => Table::F32(owned(t.values().to_vec(), vec![v, e])),
            }
        };
        let h = config.output_size();
        let out = Linear {
            w: matrix(&format!("{out_name}.weight"), h, v)?,
            b: owned(vector(&format!("{out_name}.bias"), v)?, vec![v]),
            n_in: h,
            n_out: v,
        };
        Ok(Lstm {
            config,
            embed,
            layers,
            out,
            quant: quantize,
            id: ModelId::fresh(),
        })
    }

    fn quant_type(&self) -> Option<QType> {
        self.quant
    }

    /// Bytes of weights read per decoded token (the embedding's row aside).
    fn weights_read(&self) -> usize {
        let mat = |l: &Linear| l.w.bytes();
        self.layers
            .iter()
            .map(|l| mat(&l.w_ih) + mat(&l.w_hh))
            .sum::<usize>()
            + mat(&self.out)
    }
}

/// One LSTM cell update from the gate pre-activations `z` (`[i | f | g | o]`, each `h` wide):
/// `c = σ(f)·c + σ(i)·tanh(g)`, `h = σ(o)·tanh(c)`.
fn lstm_cell(kern: &kernels::Kernels, z: &mut [f32], h: &mut [f32], c: &mut [f32]) {
    let n = h.len();
    // σ(x) = 1 / (1 + e^-x) and tanh(x) = 2σ(2x) - 1, with the exponentials vectorized.
    for (k, x) in z.iter_mut().enumerate() {
        let gate = k / n;
        *x = if gate == 2 { -2.0 * *x } else { -*x };
    }
    (kern.exp)(z);
    for x in z.iter_mut() {
        *x = 1.0 / (1.0 + *x);
    }
    let (i, rest) = z.split_at(n);
    let (f, rest) = rest.split_at(n);
    let (g, o) = rest.split_at(n);
    for k in 0..n {
        let g = 2.0 * g[k] - 1.0;
        c[k] = f[k] * c[k] + i[k] * g;
        h[k] = o[k] * c[k].tanh();
    }
}

/// One GRU cell update (`nn.GRU`) from the input part `a = x·W_ih + b` and the recurrent part
/// `b = h·W_hh + [0 | 0 | b_hn]`, each `[r | z | n]` of `h` wide:
/// `r, z = σ(a_r + b_r), σ(a_z + b_z)`, `n = tanh(a_n + r·b_n)`, `h = (1 - z)·n + z·h`.
fn gru_cell(kern: &kernels::Kernels, a: &[f32], b: &mut [f32], h: &mut [f32]) {
    let n = h.len();
    let (rz, b_n) = b.split_at_mut(2 * n);
    // σ(x) = 1 / (1 + e^-x), the exponentials vectorized.
    for (x, y) in rz.iter_mut().zip(&a[..2 * n]) {
        *x = -(*x + y);
    }
    (kern.exp)(rz);
    for x in rz.iter_mut() {
        *x = 1.0 / (1.0 + *x);
    }
    let (r, z) = rz.split_at(n);
    let a_n = &a[2 * n..3 * n];
    for k in 0..n {
        let cand = (a_n[k] + r[k] * b_n[k]).tanh();
        h[k] = (1.0 - z[k]) * cand + z[k] * h[k];
    }
}

impl CausalLm for Lstm {
    fn model_type(&self) -> &'static str {
        "lstm"
    }

    fn info(&self) -> Map<String, Value> {
        let c = &self.config;
        let mut m = Map::new();
        m.insert("model_type".into(), "lstm".into());
        m.insert("vocab_size".into(), c.vocab_size.into());
        m.insert("embedding_dim".into(), c.embedding_dim.into());
        // `hidden_size`: one number when every layer has it, else the list (as in config.json);
        // `hidden_sizes` is always the list.
        let hidden: Value = match c.hidden_sizes.as_slice() {
            [first, rest @ ..] if rest.iter().all(|h| h == first) => (*first).into(),
            sizes => sizes.to_vec().into(),
        };
        m.insert("hidden_size".into(), hidden);
        m.insert("hidden_sizes".into(), c.hidden_sizes.clone().into());
        m.insert("num_layers".into(), c.num_layers().into());
        m.insert("cell".into(), c.cell.name().into());
        let act = match c.output_activation {
            OutputActivation::Linear => "linear",
            OutputActivation::Softmax => "softmax",
        };
        m.insert("output_activation".into(), act.into());
        m.insert("bos_token_id".into(), c.bos_token_id.into());
        m.insert("eos_token_id".into(), c.eos_token_id.clone().into());
        m.insert("state_size".into(), c.state_size().into());
        m
    }

    fn quantization(&self) -> Option<QType> {
        self.quant_type()
    }

    fn ctx_key(&self) -> &'static str {
        "max_length"
    }

    fn weight_bytes(&self) -> usize {
        self.weights_read()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn n_ctx(&self) -> usize {
        self.config.max_length
    }

    fn new_cache(&self, slots: usize, _capacity: Option<usize>) -> Result<Cache> {
        Ok(
            Cache::recurrent(slots, self.config.state_size(), self.config.max_length)?
                .owned_by(self.id),
        )
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
        if cache.rnn_per_slot != c.state_size() {
            return Err(Error::invalid(
                "this cache was not made by this model (new_cache)",
            ));
        }
        let slots = cache.slots;
        crate::model::head::check_logits(slots, t, c.vocab_size, last_only)?;
        cache.begin(self.id, tokens, mask, t, c.vocab_size, "max_length")?;
        let kern = kernels::get();
        let e = c.embedding_dim;
        let g = c.cell.gates();
        let hmax = c.hidden_sizes.iter().copied().max().unwrap_or(0);
        let rows = slots * t;
        let d = e.max(hmax);
        // x: a layer's inputs [rows, ≤ d]; qkv: its input projections [rows, G·h]; h: the
        // slots' states [slots, h]; mlp: their recurrent projections [slots, G·h]; att: the
        // layer's outputs [rows, h].
        cache.work.ensure(rows, d, g * hmax, hmax, g * hmax)?;
        let mut ws = std::mem::take(&mut cache.work);
        let cancel = cache.cancel.clone();
        let state = &mut cache.rnn;
        let per = c.state_size();
        let result = pool::install(|| -> Result<()> {
            // x = embedding[ids]                                        [rows, e]
            for (r, row) in ws.x[..rows * e].chunks_exact_mut(e).enumerate() {
                self.embed.row_into(tokens[r] as usize, row);
            }
            let mut width = e;
            for (l, layer) in self.layers.iter().enumerate() {
                check_cancel(&cancel)?;
                let h = layer.hidden;
                let gh = g * h;
                let base = c.state_offset(l);
                // Every step's input projection at once.               [rows, G·h]
                let xp = &mut ws.qkv[..rows * gh];
                linear(
                    kern,
                    &ws.x[..rows * width],
                    rows,
                    &layer.w_ih,
                    xp,
                    &mut ws.scratch,
                );
                for i in 0..t {
                    // h of every slot                                    [slots, h]
                    for s in 0..slots {
                        let at = s * per + base;
                        ws.h[s * h..(s + 1) * h].copy_from_slice(&state[at..at + h]);
                    }
                    // h @ W_hh (+ b_hn for a GRU)                        [slots, G·h]
                    let z = &mut ws.mlp[..slots * gh];
                    linear(
                        kern,
                        &ws.h[..slots * h],
                        slots,
                        &layer.w_hh,
                        z,
                        &mut ws.scratch,
                    );
                    for s in 0..slots {
                        let row = s * t + i;
                        let at = s * per + base;
                        let zs = &mut z[s * gh..(s + 1) * gh];
                        let xs = &xp[row * gh..(row + 1) * gh];
                        let hs = match c.cell {
                            CellKind::Lstm => {
                                let (hs, cs) = state[at..at + 2 * h].split_at_mut(h);
                                if mask[row] != 0 {
                                    for (a, b) in zs.iter_mut().zip(xs) {
                                        *a += b;
                                    }
                                    lstm_cell(kern, zs, hs, cs);
                                }
                                hs
                            }
                            CellKind::Gru => {
                                let hs = &mut state[at..at + h];
                                if mask[row] != 0 {
                                    gru_cell(kern, xs, zs, hs);
                                }
                                hs
                            }
                        };
                        ws.att[row * h..(row + 1) * h].copy_from_slice(hs);
                    }
                }
                // This layer's outputs are the next one's inputs.
                ws.x[..rows * h].copy_from_slice(&ws.att[..rows * h]);
                width = h;
            }
            let h = width;
            let m = if last_only { slots } else { rows };
            let src = &mut ws.h[..m * h];
            for i in 0..m {
                let r = if last_only { i * t + t - 1 } else { i };
                src[i * h..(i + 1) * h].copy_from_slice(&ws.x[r * h..(r + 1) * h]);
            }
            logits.clear();
            mem::grow(logits, m.saturating_mul(c.vocab_size), "the logits")?;
            linear(kern, &ws.h[..m * h], m, &self.out, logits, &mut ws.scratch);
            Ok(())
        });
        cache.work = ws;
        result??;
        cache.commit(mask, t);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_matches_the_formula() {
        let kern = kernels::get();
        let n = 3;
        let z0: Vec<f32> = (0..4 * n).map(|k| (k as f32 - 5.0) * 0.37).collect();
        let mut z = z0.clone();
        let (mut h, mut c) = (vec![0.1f32, -0.2, 0.3], vec![0.5f32, -0.5, 1.5]);
        let c0 = c.clone();
        lstm_cell(kern, &mut z, &mut h, &mut c);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        for k in 0..n {
            let (i, f, g, o) = (
                sig(z0[k]),
                sig(z0[n + k]),
                z0[2 * n + k].tanh(),
                sig(z0[3 * n + k]),
            );
            let want_c = f * c0[k] + i * g;
            assert!((c[k] - want_c).abs() < 1e-6, "c[{k}]");
            assert!((h[k] - o * want_c.tanh()).abs() < 1e-6, "h[{k}]");
        }
    }

    #[test]
    fn gru_cell_matches_the_formula() {
        let kern = kernels::get();
        let n = 3;
        let a: Vec<f32> = (0..3 * n).map(|k| (k as f32 - 4.0) * 0.41).collect();
        let b0: Vec<f32> = (0..3 * n).map(|k| (3.0 - k as f32) * 0.29).collect();
        let mut b = b0.clone();
        let h0 = vec![0.1f32, -0.7, 0.3];
        let mut h = h0.clone();
        gru_cell(kern, &a, &mut b, &mut h);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        for k in 0..n {
            let r = sig(a[k] + b0[k]);
            let z = sig(a[n + k] + b0[n + k]);
            let cand = (a[2 * n + k] + r * b0[2 * n + k]).tanh();
            let want = (1.0 - z) * cand + z * h0[k];
            assert!((h[k] - want).abs() < 1e-6, "h[{k}]: {} vs {want}", h[k]);
        }
    }

    #[test]
    fn config_is_checked() {
        let ok = br#"{"model_type": "lstm", "vocab_size": 50, "embedding_dim": 8,
                      "hidden_size": 16, "num_layers": 2, "output_activation": "softmax"}"#;
        let c = LstmConfig::from_json("c", ok).unwrap();
        assert_eq!(
            (c.state_size(), c.output_activation, c.cell),
            (64, OutputActivation::Softmax, CellKind::Lstm)
        );
        assert_eq!(
            (c.hidden_sizes.clone(), c.names.1.as_str()),
            (vec![16, 16], "lstm")
        );
        let bad = br#"{"model_type": "lstm", "vocab_size": 50, "embedding_dim": 8,
                       "hidden_size": 16, "output_activation": "relu"}"#;
        assert!(LstmConfig::from_json("c", bad).is_err());
        let missing = br#"{"model_type": "lstm", "vocab_size": 50}"#;
        assert!(LstmConfig::from_json("c", missing).is_err());
    }

    #[test]
    fn config_takes_per_layer_sizes_and_the_cell() {
        let sizes = br#"{"model_type": "lstm", "vocab_size": 50, "embedding_dim": 8,
                         "hidden_size": [40, 56]}"#;
        let c = LstmConfig::from_json("c", sizes).unwrap();
        assert_eq!((c.num_layers(), c.output_size()), (2, 56));
        assert_eq!((c.state_offset(1), c.state_size()), (80, 192));
        let gru = br#"{"model_type": "lstm", "vocab_size": 50, "embedding_dim": 8,
                       "cell": "gru", "hidden_size": [40, 56], "num_layers": 2}"#;
        let c = LstmConfig::from_json("c", gru).unwrap();
        assert_eq!((c.cell, c.names.1.as_str()), (CellKind::Gru, "gru"));
        assert_eq!((c.state_offset(1), c.state_size()), (40, 96));
        for bad in [
            r#""hidden_size": [40, 56], "num_layers": 3"#,
            r#""hidden_size": []"#,
            r#""hidden_size": [40, 0]"#,
            r#""hidden_size": [40, "a"]"#,
            r#""hidden_size": 16, "num_layers": 1000000000000"#,
            r#""hidden_size": 16, "cell": "rnn""#,
            r#""hidden_size": 16, "cell": ["lstm", "gru"]"#,
        ] {
            let json =
                format!(r#"{{"model_type": "lstm", "vocab_size": 50, "embedding_dim": 8, {bad}}}"#);
            assert!(
                LstmConfig::from_json("c", json.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    /// Deterministic values in [-scale, scale).
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Tensors of an Embedding → stacked `cell` layers of `sizes` → Linear model in PyTorch's
    /// layout, by name.
    fn tensors(
        cell: CellKind,
        v: usize,
        e: usize,
        sizes: &[usize],
    ) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let g = cell.gates();
        let p = cell.name();
        let mut out = vec![(
            "embedding.weight".to_owned(),
            vec![v, e],
            values(v * e, 1, 1.0),
        )];
        let mut n_in = e;
        for (k, &h) in sizes.iter().enumerate() {
            let s = 10 * k as u64;
            out.push((
                format!("{p}.weight_ih_l{k}"),
                vec![g * h, n_in],
                values(g * h * n_in, s + 2, 0.8),
            ));
            out.push((
                format!("{p}.weight_hh_l{k}"),
                vec![g * h, h],
                values(g * h * h, s + 3, 0.8),
            ));
            out.push((
                format!("{p}.bias_ih_l{k}"),
                vec![g * h],
                values(g * h, s + 4, 0.5),
            ));
            out.push((
                format!("{p}.bias_hh_l{k}"),
                vec![g * h],
                values(g * h, s + 5, 0.5),
            ));
            n_in = h;
        }
        out.push((
            "fc.weight".to_owned(),
            vec![v, n_in],
            values(v * n_in, 7, 2.0),
        ));
        out.push(("fc.bias".to_owned(), vec![v], values(v, 8, 0.5)));
        out
    }

    /// PyTorch's nn.LSTM / nn.GRU equations, one sequence, step by step, every bias apart.
    fn reference(
        cell: CellKind,
        w: &[(String, Vec<usize>, Vec<f32>)],
        e: usize,
        sizes: &[usize],
        ids: &[u32],
    ) -> Vec<f32> {
        let get = |name: &str| &w.iter().find(|t| t.0 == name).unwrap().2;
        let p = cell.name();
        let matvec = |m: &[f32], x: &[f32]| -> Vec<f32> {
            m.chunks_exact(x.len())
                .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect()
        };
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let mut xs: Vec<Vec<f32>> = ids
            .iter()
            .map(|&i| get("embedding.weight")[i as usize * e..(i as usize + 1) * e].to_vec())
            .collect();
        for (k, &h) in sizes.iter().enumerate() {
            let (wi, wh) = (
                get(&format!("{p}.weight_ih_l{k}")),
                get(&format!("{p}.weight_hh_l{k}")),
            );
            let (bi, bh) = (
                get(&format!("{p}.bias_ih_l{k}")),
                get(&format!("{p}.bias_hh_l{k}")),
            );
            let (mut hs, mut cs) = (vec![0.0f32; h], vec![0.0f32; h]);
            for x in xs.iter_mut() {
                let a: Vec<f32> = matvec(wi, x).iter().zip(bi).map(|(a, b)| a + b).collect();
                let b: Vec<f32> = matvec(wh, &hs).iter().zip(bh).map(|(a, b)| a + b).collect();
                for j in 0..h {
                    match cell {
                        CellKind::Lstm => {
                            let z = |q: usize| a[q * h + j] + b[q * h + j];
                            cs[j] = sig(z(1)) * cs[j] + sig(z(0)) * z(2).tanh();
                            hs[j] = sig(z(3)) * cs[j].tanh();
                        }
                        CellKind::Gru => {
                            let r = sig(a[j] + b[j]);
                            let zg = sig(a[h + j] + b[h + j]);
                            let n = (a[2 * h + j] + r * b[2 * h + j]).tanh();
                            hs[j] = (1.0 - zg) * n + zg * hs[j];
                        }
                    }
                }
                *x = hs.clone();
            }
        }
        xs.iter()
            .flat_map(|x| {
                matvec(get("fc.weight"), x)
                    .into_iter()
                    .zip(get("fc.bias"))
                    .map(|(a, b)| a + b)
                    .collect::<Vec<f32>>()
            })
            .collect()
    }

    #[test]
    fn stacks_of_different_sizes_match_the_equations() {
        let (v, e) = (11, 6);
        for (cell, sizes) in [
            (CellKind::Lstm, vec![5, 9]),
            (CellKind::Gru, vec![5, 9]),
            (CellKind::Gru, vec![7]),
            (CellKind::Gru, vec![9, 4, 6]),
        ] {
            let dir = std::env::temp_dir().join(format!(
                "ferrolm-rnn-{}-{}-{}",
                std::process::id(),
                cell.name(),
                sizes.len()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let w = tensors(cell, v, e, &sizes);
            let list: Vec<(&str, &[usize], &[f32])> = w
                .iter()
                .map(|(n, s, x)| (n.as_str(), s.as_slice(), x.as_slice()))
                .collect();
            crate::io::safetensors::write_f32(&dir.join("model.safetensors"), &list).unwrap();
            let config = format!(
                r#"{{"model_type": "lstm", "vocab_size": {v}, "embedding_dim": {e},
                     "cell": "{}", "hidden_size": {sizes:?}}}"#,
                cell.name()
            );
            std::fs::write(dir.join("config.json"), config).unwrap();
            let model = Lstm::load(&dir, None).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            let ids = [3u32, 0, 7, 10, 2, 2, 5];
            let t = ids.len();
            let want = reference(cell, &w, e, &sizes, &ids);
            // Whole sequence, then a left-padded batch of it beside a shorter row.
            let mut cache = model.new_cache(1, None).unwrap();
            let got = model.forward(&mut cache, &ids, &[1; 7], t, false).unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-4, "{cell:?} {sizes:?}: {worst}");
            let mut batch = vec![4u32, 4];
            batch.extend(&ids[..5]);
            batch.extend(&ids);
            let mut mask = vec![0u8, 0, 1, 1, 1, 1, 1];
            mask.extend([1u8; 7]);
            let mut cache = model.new_cache(2, None).unwrap();
            let got = model.forward(&mut cache, &batch, &mask, t, false).unwrap();
            let short = reference(cell, &w, e, &sizes, &ids[..5]);
            let worst = got[2 * v..7 * v]
                .iter()
                .zip(&short)
                .chain(got[7 * v..].iter().zip(&want))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-4, "{cell:?} {sizes:?} padded: {worst}");
        }
    }

    #[test]
    fn a_gru_checkpoint_under_an_lstm_config_is_a_format_error() {
        let dir = std::env::temp_dir().join(format!("ferrolm-rnn-mixup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = tensors(CellKind::Gru, 11, 6, &[5]);
        let list: Vec<(&str, &[usize], &[f32])> = w
            .iter()
            .map(|(n, s, x)| (n.as_str(), s.as_slice(), x.as_slice()))
            .collect();
        crate::io::safetensors::write_f32(&dir.join("model.safetensors"), &list).unwrap();
        let config = r#"{"model_type": "lstm", "vocab_size": 11, "embedding_dim": 6,
                         "hidden_size": 5}"#;
        std::fs::write(dir.join("config.json"), config).unwrap();
        let err = Lstm::load(&dir, None).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("\"cell\": \"gru\""), "{err}");
    }
}
