//! A GGUF file's tensors as a decoder's weights: matrices used in ferrolm's tiles where the
//! file stores them quantized (repacked losslessly), f32 / f16 / bf16 ones as f32 or quantized
//! to the type asked for; every shape checked against the config, progress counted per matrix.
//! The GGUF counterpart of [`Weights`](crate::model::weights::Weights).

use std::cell::Cell;

use serde_json::{Map, Value};

use crate::io::gguf::{self, Gguf};
use crate::io::safetensors::{F32Data, F32Tensor};
use crate::model::decoder::{gain, Decoder, DecoderConfig, Layer};
use crate::model::registry::Arch;
use crate::model::weights::{self, Linear, Mat, Progress, Table};
use crate::quant::QType;
use crate::Result;

/// Maps an output row of a matrix to the file's row (an identity but for GGUF's permuted
/// Llama queries and keys).
pub(crate) type RowOf<'f> = &'f (dyn Fn(usize) -> usize + Sync);

/// The identity row map.
pub(crate) fn same_row(j: usize) -> usize {
    j
}

pub(crate) struct GgufWeights<'a> {
    pub(crate) g: &'a Gguf,
    quantize: Option<QType>,
    total: usize,
    done: Cell<usize>,
    progress: Option<Progress<'a>>,
}

impl<'a> GgufWeights<'a> {
    /// `total`: the matrices and tables the loader reads, for `progress`.
    pub(crate) fn new(
        g: &'a Gguf,
        quantize: Option<QType>,
        total: usize,
        progress: Option<Progress<'a>>,
    ) -> Self {
        GgufWeights {
            g,
            quantize,
            total,
            done: Cell::new(0),
            progress,
        }
    }

    /// Counts one matrix or table read.
    pub(crate) fn tick(&self) {
        self.done.set(self.done.get() + 1);
        if let Some(p) = self.progress {
            p(self.done.get(), self.total);
        }
    }

    /// A vector (a norm's gain, a bias) of `n` values, as f32.
    pub(crate) fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        self.g.f32(name, &[n])
    }

    /// The matrix `name` of `n_out` rows of `n_in` (ggml's `{n_in, n_out}`), row `j` of the
    /// result being the file's row `row_of(j)`.
    pub(crate) fn mat(
        &self,
        name: &str,
        n_in: usize,
        n_out: usize,
        row_of: RowOf<'_>,
    ) -> Result<Mat> {
        let (_, ty) = self.g.tensor(name, &[n_in, n_out])?;
        let m = match (ty.qtype(), self.quantize) {
            (Some(_), _) => Mat::Q(
                self.g
                    .qmatrix_rows(name, n_in, n_out, QType::Q8_0, row_of)?,
            ),
            (None, Some(q)) if n_in.is_multiple_of(32) => {
                Mat::Q(self.g.qmatrix_rows(name, n_in, n_out, q, row_of)?)
            }
            (None, _) => {
                let w = gguf::permute_rows(&self.g.f32(name, &[n_in, n_out])?, n_in, row_of);
                Mat::F32(weights::transposed(&w, n_out, n_in))
            }
        };
        self.tick();
        Ok(m)
    }

    /// `<prefix>.weight` and its bias `<prefix>.bias` (zeros where the file has none), rows
    /// mapped by `row_of`.
    pub(crate) fn linear(
        &self,
        prefix: &str,
        n_in: usize,
        n_out: usize,
        row_of: RowOf<'_>,
    ) -> Result<Linear> {
        let w = self.mat(&format!("{prefix}.weight"), n_in, n_out, row_of)?;
        let name = format!("{prefix}.bias");
        let b = if self.g.contains(&name) {
            let b = self.g.f32(&name, &[n_out])?;
            (0..n_out).map(|j| b[row_of(j)]).collect()
        } else {
            vec![0.0; n_out]
        };
        Ok(Linear {
            w,
            b: F32Tensor {
                data: F32Data::Owned(b),
                shape: vec![n_out],
            },
            n_in,
            n_out,
        })
    }

    /// A `[rows, d]` table (the token embeddings, the head).
    pub(crate) fn table(&self, name: &str, d: usize, rows: usize) -> Result<Table> {
        let (_, ty) = self.g.tensor(name, &[d, rows])?;
        let t = match (ty.qtype(), self.quantize) {
            (Some(_), _) => Table::Q(self.g.qmatrix(name, d, rows, QType::Q8_0)?),
            (None, Some(q)) if d.is_multiple_of(32) => Table::Q(self.g.qmatrix(name, d, rows, q)?),
            (None, _) => Table::F32(F32Tensor {
                data: F32Data::Owned(self.g.f32(name, &[d, rows])?),
                shape: vec![rows, d],
            }),
        };
        self.tick();
        Ok(t)
    }

    /// An unsigned metadata value of `<arch>.<key>` in `1..2^30`, or a `FormatError` naming
    /// it.
    pub(crate) fn num(&self, key: &str) -> Result<usize> {
        self.g
            .meta(key)
            .and_then(gguf::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0 && n < (1 << 30))
            .ok_or_else(|| {
                crate::Error::format(self.g.what(), format!("{key} is missing or invalid"))
            })
    }

    /// A float metadata value, if present.
    pub(crate) fn float(&self, key: &str) -> Option<f64> {
        self.g.meta(key).and_then(gguf::Value::as_f64)
    }

    /// A token id of the tokenizer's metadata (`tokenizer.ggml.bos_token_id`), if present.
    pub(crate) fn token_id(&self, key: &str) -> Option<u32> {
        self.g
            .meta(key)
            .and_then(gguf::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    }

    /// The decoder of `layers` (as many as `config` says: a file with more is refused) and
    /// the file's embeddings, head (`output`, or tied) and final norm.
    pub(crate) fn decoder(
        &self,
        arch: &'static Arch,
        info: Map<String, Value>,
        config: DecoderConfig,
        layers: Vec<Layer>,
    ) -> Result<Decoder> {
        let g = self.g;
        let (d, n) = (config.hidden_size, config.num_layers);
        if g.contains(&format!("blk.{n}.attn_norm.weight")) {
            let arch_name = g
                .meta("general.architecture")
                .and_then(gguf::Value::as_str)
                .unwrap_or("");
            return Err(crate::Error::format(
                g.what(),
                format!("it has more layers than {arch_name}.block_count = {n}"),
            ));
        }
        let embed = self.table("token_embd.weight", d, config.vocab_size)?;
        let head = if config.tie_word_embeddings {
            None
        } else {
            Some(self.table("output.weight", d, config.vocab_size)?)
        };
        let final_norm = gain(self.vec("output_norm.weight", d)?);
        let qtype = layers.first().and_then(|l| l.up.qtype());
        Ok(Decoder::new(
            arch, info, config, embed, None, layers, final_norm, head, qtype,
        ))
    }
}
