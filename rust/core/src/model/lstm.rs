//! LSTM language models: Embedding → N stacked unidirectional LSTM layers → Dense, the program
//! every introductory course builds (Keras' `Embedding` / `LSTM` / `Dense`, PyTorch's
//! `nn.Embedding` / `nn.LSTM` / `nn.Linear`).
//!
//! ```text
//! x_t = embedding[id_t]
//! for each layer (state h, c of `hidden` values, carried across calls in the cache):
//!     z   = x_t @ W_ih + b  +  h @ W_hh            # [4 × hidden], gates in PyTorch order
//!     i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)
//!     c = f·c + i·g;  h = o·tanh(c);  x_t = h
//! logits_t = x_t @ W_out + b_out                    # [vocab]
//! ```
//!
//! The input projections `x @ W_ih` of every step of a call are one matrix product before the
//! recurrence (a prompt or a scored text runs them as a GEMM); the recurrence itself is one
//! `h @ W_hh` per step for all sequences together. A padded position (mask 0) leaves its
//! sequence's state unchanged, so left- or right-padded batches equal their rows run alone.
//!
//! Weights load from a folder (`config.json` with `model_type` "lstm" + safetensors in
//! PyTorch's layout: `embedding.weight` `[vocab, emb]`, `lstm.weight_ih_l{k}` `[4h, in]`,
//! `lstm.weight_hh_l{k}` `[4h, h]`, `lstm.bias_ih_l{k}` / `lstm.bias_hh_l{k}` `[4h]`,
//! `fc.weight` `[vocab, h]`, `fc.bias`); the Python layer converts Keras files into that layout.

use std::path::Path;

use serde_json::Value;

use crate::io::safetensors::{Checkpoint, F32Data, F32Tensor};
use crate::kernels;
use crate::model::gpt2::linear;
use crate::model::kv::{check_cancel, Cache};
use crate::model::weights::{self, Linear, Mat, Table};
use crate::model::CausalLm;
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

/// The fields of an LSTM language model's `config.json` (schema in `docs` and the Python
/// package's `LSTMLanguageModel` docstring).
#[derive(Debug, Clone, PartialEq)]
pub struct LstmConfig {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub output_activation: OutputActivation,
    /// Longest sequence (positions are only counted: an LSTM has no position limit of its own).
    pub max_length: usize,
    /// Tensor name prefixes: embedding, LSTM, output layer.
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
            hidden_size: num("hidden_size", None)?,
            num_layers: num("num_layers", Some(1))?,
            output_activation,
            max_length: num("max_length", Some(NO_LIMIT))?,
            names: (
                name("embedding", "embedding"),
                name("lstm", "lstm"),
                name("output", "fc"),
            ),
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_id: ids("eos_token_id"),
        })
    }

    /// State values per sequence: `h` and `c` of every layer.
    pub fn state_size(&self) -> usize {
        2 * self.num_layers * self.hidden_size
    }
}

#[derive(Debug)]
struct Layer {
    /// `[in → 4h]`, bias `b_ih + b_hh`.
    w_ih: Linear,
    /// `[h → 4h]`, no bias.
    w_hh: Linear,
}

/// A loaded LSTM language model: immutable, shared across threads.
#[derive(Debug)]
pub struct Lstm {
    pub config: LstmConfig,
    embed: Table,
    layers: Vec<Layer>,
    out: Linear,
    quant: Option<QType>,
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
        let (v, e, h) = (config.vocab_size, config.embedding_dim, config.hidden_size);
        let (emb_name, lstm_name, out_name) = config.names.clone();
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
        let mut layers = Vec::new(); // not sized by the config: its count is untrusted
        for k in 0..config.num_layers {
            let n_in = if k == 0 { e } else { h };
            let mut bias = vector(&format!("{lstm_name}.bias_ih_l{k}"), 4 * h)?;
            for (b, x) in bias
                .iter_mut()
                .zip(vector(&format!("{lstm_name}.bias_hh_l{k}"), 4 * h)?)
            {
                *b += x;
            }
            layers.push(Layer {
                w_ih: Linear {
                    w: matrix(&format!("{lstm_name}.weight_ih_l{k}"), n_in, 4 * h)?,
                    b: owned(bias, vec![4 * h]),
                    n_in,
                    n_out: 4 * h,
                },
                w_hh: Linear {
                    w: matrix(&format!("{lstm_name}.weight_hh_l{k}"), h, 4 * h)?,
                    b: owned(vec![0.0; 4 * h], vec![4 * h]),
                    n_in: h,
                    n_out: 4 * h,
                },
            });
        }
        let extra = format!("{lstm_name}.weight_ih_l{}", config.num_layers);
        if ck.contains(&extra) {
            return Err(Error::format(
                "checkpoint",
                format!(
                    "{extra} exists: the checkpoint has more layers than num_layers = {}",
                    config.num_layers
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
        })
    }

    pub fn quantization(&self) -> Option<QType> {
        self.quant
    }

    /// Bytes of weights read per decoded token (the embedding's row aside).
    pub fn weight_bytes(&self) -> usize {
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
fn cell(kern: &kernels::Kernels, z: &mut [f32], h: &mut [f32], c: &mut [f32]) {
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

impl CausalLm for Lstm {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn n_ctx(&self) -> usize {
        self.config.max_length
    }

    fn new_cache(&self, slots: usize, _capacity: Option<usize>) -> Result<Cache> {
        Cache::recurrent(slots, self.config.state_size(), self.config.max_length)
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
        crate::model::gpt2::check_logits(slots, t, c.vocab_size, last_only)?;
        cache.begin(tokens, mask, t, c.vocab_size, "max_length")?;
        let kern = kernels::get();
        let (e, h) = (c.embedding_dim, c.hidden_size);
        let rows = slots * t;
        let d = e.max(h);
        cache.work.ensure(rows, d, 4 * h, h, 4 * h)?;
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
                // Every step's input projection at once.               [rows, 4h]
                let xp = &mut ws.qkv[..rows * 4 * h];
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
                        let at = s * per + l * 2 * h;
                        ws.h[s * h..(s + 1) * h].copy_from_slice(&state[at..at + h]);
                    }
                    let z = &mut ws.mlp[..slots * 4 * h];
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
                        let at = s * per + l * 2 * h;
                        let (hs, cs) = state[at..at + 2 * h].split_at_mut(h);
                        if mask[row] != 0 {
                            let zs = &mut z[s * 4 * h..(s + 1) * 4 * h];
                            for (a, b) in zs.iter_mut().zip(&xp[row * 4 * h..(row + 1) * 4 * h]) {
                                *a += b;
                            }
                            cell(kern, zs, hs, cs);
                        }
                        ws.att[row * h..(row + 1) * h].copy_from_slice(hs);
                    }
                }
                // This layer's outputs are the next one's inputs.
                ws.x[..rows * h].copy_from_slice(&ws.att[..rows * h]);
                width = h;
            }
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
        cell(kern, &mut z, &mut h, &mut c);
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
    fn config_is_checked() {
        let ok = br#"{"model_type": "lstm", "vocab_size": 50, "embedding_dim": 8,
                      "hidden_size": 16, "num_layers": 2, "output_activation": "softmax"}"#;
        let c = LstmConfig::from_json("c", ok).unwrap();
        assert_eq!(
            (c.state_size(), c.output_activation),
            (64, OutputActivation::Softmax)
        );
        let bad = br#"{"model_type": "lstm", "vocab_size": 50, "embedding_dim": 8,
                       "hidden_size": 16, "output_activation": "relu"}"#;
        assert!(LstmConfig::from_json("c", bad).is_err());
        let missing = br#"{"model_type": "lstm", "vocab_size": 50}"#;
        assert!(LstmConfig::from_json("c", missing).is_err());
    }
}
