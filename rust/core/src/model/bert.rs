//! BERT encoders (BertModel): config, weights (memory-mapped safetensors, `nn.Linear` layout
//! `[out, in]`, used in place), and the forward pass over a padded batch (or, for
//! [`Bert::embed`], unpadded sequences end to end).
//!
//! ```text
//! x = LN(word[ids] + pos[0..seq] + type[type_ids])                  # [rows, d]
//! for each layer (post-LN):
//!     q, k, v = x Wqᵀ + bq, x Wkᵀ + bk, x Wvᵀ + bv                    # [rows, d]
//!     a = softmax(q kᵀ / √hd + mask) v   (per sequence and head; padded keys masked)
//!     x = LN(x + a Woᵀ + bo)
//!     x = LN(x + act(x Wiᵀ + bi) Wo2ᵀ + bo2)
//! last_hidden_state = x;  pooler_output = tanh(x[CLS] Wpᵀ + bp)
//! ```

use std::path::Path;
use std::sync::{Mutex, TryLockError};

use rayon::prelude::*;
use serde_json::Value;

use crate::io::safetensors::{Checkpoint, F32Tensor};
use crate::kernels::{self, SendPtr};
use crate::model::act::{add_in, Activation, SERIAL_ELEMS};
use crate::model::linear::{
    col_unit, gemm_nt_parallel, linear, linear_act, linear_cols, linears, Scratch,
};
use crate::model::weights::{
    self, f32_entry, mat_entry, norm_entries, Layout, Linear, Norm, Progress, Quant, Weights,
};
use crate::quant::{QActs, QType, BLOCK};
use crate::runtime::pool;
use crate::{Error, Result};

/// The fields of a BERT `config.json` the forward pass uses.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub activation: Activation,
    /// `len(id2label)` (or `num_labels`): the classifier's outputs, for
    /// `BertForSequenceClassification`.
    pub num_labels: usize,
}

impl BertConfig {
    /// Reads a `config.json`; model types other than BERT's are refused naming theirs.
    pub fn from_json(what: &str, data: &[u8]) -> Result<Self> {
        Self::from_value(what, &weights::parse_config(what, data, "bert")?)
    }

    /// The fields of a parsed `config.json` (already checked to be BERT's).
    fn from_value(what: &str, v: &Value) -> Result<Self> {
        let get = |key: &str, default: usize| weights::positive(v, what, key, Some(default));
        let hidden = get("hidden_size", 768)?;
        let heads = get("num_attention_heads", 12)?;
        if hidden % heads != 0 {
            return Err(Error::format(
                what,
                format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        if let Some(kind) = v.get("position_embedding_type").and_then(Value::as_str) {
            if kind != "absolute" {
                return Err(Error::Unsupported(format!(
                    "position_embedding_type {kind:?}"
                )));
            }
        }
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        let activation = Activation::parse(act)
            .ok_or_else(|| Error::Unsupported(format!("hidden_act {act:?}")))?;
        Ok(BertConfig {
            vocab_size: get("vocab_size", 30522)?,
            hidden_size: hidden,
            num_hidden_layers: get("num_hidden_layers", 12)?,
            num_attention_heads: heads,
            intermediate_size: get("intermediate_size", 4 * hidden)?,
            max_position_embeddings: get("max_position_embeddings", 512)?,
            type_vocab_size: get("type_vocab_size", 2)?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12) as f32,
            activation,
            num_labels: v
                .get("id2label")
                .and_then(Value::as_object)
                .map(serde_json::Map::len)
                .or_else(|| {
                    v.get("num_labels")
                        .and_then(Value::as_u64)
                        .and_then(|n| usize::try_from(n).ok())
                })
                .unwrap_or(2),
        })
    }
}

// `nn.Linear` stores `W` as `[out, in]` (`y = x Wᵀ + b`). The encoder's matrices are
// transposed once at load into `[in, out]`, GPT-2's layout, so that one token streams each
// weight row in order and a batch runs the cache-blocked `gemm`: the same `linear` as GPT-2.
// (The embeddings and the classifier are used in place.)

#[derive(Debug, Clone)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_ln: Norm,
    inter: Linear,
    out: Linear,
    out_ln: Norm,
}

/// A loaded BERT encoder: immutable, shared across threads.
#[derive(Debug)]
pub struct Bert {
    pub config: BertConfig,
    word: F32Tensor,
    pos: F32Tensor,
    typ: F32Tensor,
    emb_ln: Norm,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    /// `BertForSequenceClassification`'s head on the pooled output, when present (`[out, in]`,
    /// in place).
    classifier: Option<(F32Tensor, F32Tensor, usize)>,
    /// The matrices' format, if quantized.
    quant: Option<QType>,
    /// The tensor-name prefix the checkpoint used (`bert.` or none).
    prefix: &'static str,
    /// The forward pass's buffers, kept for the next call (a call that finds them in use
    /// makes its own).
    buffers: Mutex<Buffers>,
}

/// The intermediate activations of a forward pass (every one written in full before it is
/// read), and the quantized activations of its matmuls.
#[derive(Debug, Default)]
struct Buffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    h: Vec<f32>,
    tmp: Vec<f32>,
    scratch: Scratch,
    /// Team passes ([`Bert::layers_team`]): the quantized context (the hidden state's are in
    /// `scratch`) and intermediate activations.
    qa_ctx: QActs,
    qa_wide: QActs,
}

/// Passes of at most this many rows (tokens, all sequences together) run as a team
/// ([`Bert::layers_team`]).
const TEAM_ROWS: usize = 256;

/// Buffers larger than this many floats (64 MB) are not kept between calls.
const KEEP_FLOATS: usize = 16 << 20;

/// How [`Bert::embed`] pools a sequence's hidden states (sentence-transformers'
/// `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the real (unmasked) tokens.
    Mean,
    /// The first token's (`[CLS]`).
    Cls,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// `[batch × seq × hidden]`.
    pub last_hidden_state: Vec<f32>,
    /// `[batch × hidden]`, when the checkpoint has a pooler.
    pub pooler_output: Option<Vec<f32>>,
    /// `[batch × num_labels]`, when the checkpoint has a classifier.
    pub logits: Option<Vec<f32>>,
}

impl Bert {
    /// Loads `config.json` and the safetensors checkpoint of a model folder.
    pub fn load(folder: &Path) -> Result<Self> {
        Self::load_with(folder, None, None)
    }

    /// [`Bert::load`] with the encoder's matrices (and the pooler's) quantized to `quantize`
    /// as they are read (the embeddings, looked up by row, and the small classifier stay
    /// f32); `progress` hears `(done, total)` per matrix. A folder saved quantized loads as
    /// it is, mapped in place.
    pub fn load_with(
        folder: &Path,
        quantize: Option<QType>,
        progress: Option<Progress<'_>>,
    ) -> Result<Self> {
        let (what, v, quant, ck) = weights::open_folder(folder, "bert", quantize)?;
        Self::from_checkpoint_with(BertConfig::from_value(&what, &v)?, &ck, quant, progress)
    }

    /// Takes the weights from `ck` (names with or without the `bert.` prefix that
    /// `BertFor*` models write), checking each shape against `config`.
    pub fn from_checkpoint(config: BertConfig, ck: &Checkpoint) -> Result<Self> {
        Self::from_checkpoint_with(config, ck, Quant::None, None)
    }

    /// [`Bert::from_checkpoint`] with the matrices handled as `quant` says.
    pub fn from_checkpoint_with(
        config: BertConfig,
        ck: &Checkpoint,
        quant: Quant,
        progress: Option<Progress<'_>>,
    ) -> Result<Self> {
        let total = 6 * config.num_hidden_layers + 1;
        let w = Weights::new(ck, "bert.", "embeddings.word_embeddings.weight")
            .with_quant(quant, total, progress);
        let (d, inter) = (config.hidden_size, config.intermediate_size);
        let get = |name: &str, shape: &[usize]| w.get(name, shape);
        let norm = |name: &str| w.norm(name, d);
        let linear = |name: &str, n_in, n_out| w.linear(name, n_in, n_out, Layout::OutInPacked);
        let mut layers = Vec::new(); // not sized by the config: its count is untrusted
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                q: linear(&format!("{p}.attention.self.query"), d, d)?,
                k: linear(&format!("{p}.attention.self.key"), d, d)?,
                v: linear(&format!("{p}.attention.self.value"), d, d)?,
                attn_out: linear(&format!("{p}.attention.output.dense"), d, d)?,
                attn_ln: norm(&format!("{p}.attention.output.LayerNorm"))?,
                inter: linear(&format!("{p}.intermediate.dense"), d, inter)?,
                out: linear(&format!("{p}.output.dense"), inter, d)?,
                out_ln: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let pooler = if w.contains("pooler.dense.weight")
            || w.contains(&weights::qweight_name("pooler.dense"))
        {
            Some(linear("pooler.dense", d, d)?)
        } else {
            None
        };
        let classifier = if ck.contains("classifier.weight") {
            let n = config.num_labels;
            let root = Weights::new(ck, "", "classifier.weight").with_quant(quant, 0, None);
            Some((
                root.get("classifier.weight", &[n, d])?,
                root.get("classifier.bias", &[n])?,
                n,
            ))
        } else {
            None
        };
        if classifier.is_some() && pooler.is_none() {
            return Err(Error::format(
                "checkpoint",
                "a classifier without the pooler (bert.pooler.dense) it reads from",
            ));
        }
        Ok(Bert {
            classifier,
            word: get("embeddings.word_embeddings.weight", &[config.vocab_size, d])?,
            pos: get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, d],
            )?,
            typ: get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, d],
            )?,
            emb_ln: norm("embeddings.LayerNorm")?,
            layers,
            pooler,
            quant: quant.qtype(),
            prefix: w.prefix,
            buffers: Mutex::default(),
            config,
        })
    }

    /// The matrices' quantized format, if any.
    pub fn quantization(&self) -> Option<QType> {
        self.quant
    }

    /// Writes a quantized model's weights as `model.safetensors` in `folder` (the tiles load
    /// back mapped in place). An f32 model is its source files: there is nothing to convert.
    pub fn save(&self, folder: &Path) -> Result<()> {
        if self.quant.is_none() {
            return Err(Error::invalid(
                "an f32 BERT saves as its source checkpoint: copy model.safetensors",
            ));
        }
        let p = self.prefix;
        let mut out = vec![
            f32_entry(&format!("{p}embeddings.word_embeddings.weight"), &self.word),
            f32_entry(
                &format!("{p}embeddings.position_embeddings.weight"),
                &self.pos,
            ),
            f32_entry(
                &format!("{p}embeddings.token_type_embeddings.weight"),
                &self.typ,
            ),
        ];
        norm_entries(&mut out, &format!("{p}embeddings.LayerNorm"), &self.emb_ln);
        for (l, layer) in self.layers.iter().enumerate() {
            let q = format!("{p}encoder.layer.{l}");
            for (name, lin) in [
                ("attention.self.query", &layer.q),
                ("attention.self.key", &layer.k),
                ("attention.self.value", &layer.v),
                ("attention.output.dense", &layer.attn_out),
                ("intermediate.dense", &layer.inter),
                ("output.dense", &layer.out),
            ] {
                out.push(mat_entry(&format!("{q}.{name}"), &lin.w)?);
                out.push(f32_entry(&format!("{q}.{name}.bias"), &lin.b));
            }
            norm_entries(
                &mut out,
                &format!("{q}.attention.output.LayerNorm"),
                &layer.attn_ln,
            );
            norm_entries(&mut out, &format!("{q}.output.LayerNorm"), &layer.out_ln);
        }
        if let Some(pl) = &self.pooler {
            out.push(mat_entry(&format!("{p}pooler.dense"), &pl.w)?);
            out.push(f32_entry(&format!("{p}pooler.dense.bias"), &pl.b));
        }
        if let Some((w, b, _)) = &self.classifier {
            out.push(f32_entry("classifier.weight", w));
            out.push(f32_entry("classifier.bias", b));
        }
        weights::save(folder, &out, self.quant)
    }

    /// True for a `BertForSequenceClassification` checkpoint (a classifier head was loaded).
    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    /// The encoder over `batch` sequences of `seq` tokens (`ids`, `type_ids`, `mask` are
    /// `[batch × seq]`, mask 1 for real tokens; padding may sit on either side).
    pub fn forward(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        mask: &[u8],
        batch: usize,
        seq: usize,
    ) -> Result<BertOutput> {
        self.forward_with(ids, type_ids, mask, batch, seq, true)
    }

    /// Sentence embeddings: the sequences `ids` (each its own length, at least one token,
    /// with its special tokens; `type_ids`, when given, shaped alike, else all 0) run through
    /// the encoder end to end without padding (each attends only within itself, so a
    /// sequence's vector is bit for bit the one it gets alone), each `last_hidden_state`
    /// pooled as `pooling` says (the
    /// mean over its real tokens, or its first token), then scaled to unit length when
    /// `normalize` (`v / max(‖v‖, 1e-12)`). Returns `[len(ids) × hidden]`. The pooler and
    /// the classifier are not run.
    pub fn embed(
        &self,
        ids: &[Vec<u32>],
        type_ids: Option<&[Vec<u32>]>,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>> {
        if let Some(t) = type_ids {
            if t.len() != ids.len() || t.iter().zip(ids).any(|(a, b)| a.len() != b.len()) {
                return Err(Error::invalid(
                    "embed: type_ids must have the shape of ids (one list per sequence, as long)",
                ));
            }
        }
        if ids.is_empty() || ids.iter().any(Vec::is_empty) {
            return Err(Error::invalid("embed: no tokens to encode"));
        }
        // The sequences end to end, unpadded: the matmuls see only real tokens and each
        // sequence attends within its own span.
        let rows: usize = ids.iter().map(Vec::len).sum();
        let mut spans = Vec::with_capacity(ids.len());
        let mut flat = Vec::with_capacity(rows);
        let mut types = Vec::with_capacity(rows);
        for (b, row) in ids.iter().enumerate() {
            spans.push((flat.len(), row.len()));
            flat.extend_from_slice(row);
            match type_ids {
                Some(t) => types.extend_from_slice(&t[b]),
                None => types.resize(flat.len(), 0),
            }
        }
        let mask = vec![1u8; rows];
        self.pool(&flat, &types, &mask, &spans, pooling, normalize)
    }

    /// [`Bert::embed`] of the sequences at `spans` (`(first row, length)`) of `ids`.
    fn pool(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        mask: &[u8],
        spans: &[(usize, usize)],
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>> {
        let out = self.forward_spans(ids, type_ids, mask, spans, false)?;
        let d = self.config.hidden_size;
        let x = &out.last_hidden_state;
        let mut pooled = vec![0.0f32; spans.len() * d];
        for (v, &(start, len)) in pooled.chunks_exact_mut(d).zip(spans) {
            match pooling {
                Pooling::Cls => v.copy_from_slice(&x[start * d..(start + 1) * d]),
                Pooling::Mean => {
                    let mut count = 0usize;
                    for (t, &m) in mask[start..start + len].iter().enumerate() {
                        if m != 0 {
                            add_in(v, &x[(start + t) * d..(start + t + 1) * d]);
                            count += 1;
                        }
                    }
                    let inv = 1.0 / (count as f32).max(1e-9);
                    v.iter_mut().for_each(|e| *e *= inv);
                }
            }
            if normalize {
                let norm = v.iter().map(|e| e * e).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|e| *e /= norm);
            }
        }
        Ok(pooled)
    }

    /// The padded batch of [`Bert::forward`]: `batch` spans of `seq` rows.
    fn forward_with(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        with_pooler: bool,
    ) -> Result<BertOutput> {
        let rows = batch * seq;
        if ids.len() != rows || type_ids.len() != rows || mask.len() != rows {
            return Err(Error::invalid(format!(
                "forward: {} ids, {} type ids and {} mask values for {batch} sequences of {seq}",
                ids.len(),
                type_ids.len(),
                mask.len()
            )));
        }
        let spans: Vec<(usize, usize)> = (0..batch).map(|b| (b * seq, seq)).collect();
        self.forward_spans(ids, type_ids, mask, &spans, with_pooler)
    }

    /// The encoder over the sequences at `spans` (`(first row, length)`, in order, end to
    /// end) of `ids`, `type_ids` and `mask` (one value per row). `last_hidden_state` is
    /// `[rows × hidden]`; the pooler reads each span's first row.
    fn forward_spans(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        mask: &[u8],
        spans: &[(usize, usize)],
        with_pooler: bool,
    ) -> Result<BertOutput> {
        let c = &self.config;
        let rows = ids.len();
        debug_assert!(type_ids.len() == rows && mask.len() == rows);
        debug_assert!(spans.iter().map(|s| s.1).sum::<usize>() == rows);
        let longest = spans.iter().map(|s| s.1).max().unwrap_or(0);
        if longest > c.max_position_embeddings {
            return Err(Error::invalid(format!(
                "sequence of {longest} tokens is longer than max_position_embeddings = {} \
                 (truncate it: truncation=True)",
                c.max_position_embeddings
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(Error::OutOfRange(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        if let Some(&bad) = type_ids.iter().find(|&&i| i as usize >= c.type_vocab_size) {
            return Err(Error::OutOfRange(format!(
                "token type id {bad} is outside type_vocab_size = {}",
                c.type_vocab_size
            )));
        }
        let kern = kernels::get();
        let (d, nh) = (c.hidden_size, c.num_attention_heads);
        let hd = d / nh;
        let eps = c.layer_norm_eps;
        let mut kept = match self.buffers.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let mut own = Buffers::default();
        let bufs = kept.as_deref_mut().unwrap_or(&mut own);
        for (buf, len) in [
            (&mut bufs.q, rows * d),
            (&mut bufs.k, rows * d),
            (&mut bufs.v, rows * d),
            (&mut bufs.ctx, rows * d),
            (&mut bufs.h, rows * c.intermediate_size),
            (&mut bufs.tmp, rows * d),
        ] {
            buf.resize(len, 0.0);
        }
        // 7-bit activations where the kernels run faster on them (a cosine to f32 of 0.998 on
        // MiniLM against 0.999 at 8 bits: see `Kernels::narrow_acts`).
        for qa in [&mut bufs.scratch.qa, &mut bufs.qa_ctx, &mut bufs.qa_wide] {
            qa.narrow = kern.narrow_acts;
        }
        // Position of each row within its sequence.
        let mut pos = Vec::with_capacity(rows);
        for &(_, len) in spans {
            pos.extend(0..len);
        }
        let mut x = vec![0.0f32; rows * d];
        // A short pass runs as a team in lockstep (see `layers_team`); the same values.
        let teamed = rows <= TEAM_ROWS
            && pool::num_threads()? > 1
            && self.layers_team(kern, ids, type_ids, &pos, mask, spans, &mut x, bufs)?;
        let out = if teamed {
            // The rest is a few rows: on this thread (waking the pool's workers would cost
            // more, and they would compete with the team's spinning threads).
            let (pooler_output, logits) =
                self.head(kern, &x, spans, with_pooler, &mut bufs.scratch, true);
            BertOutput {
                last_hidden_state: x,
                pooler_output,
                logits,
            }
        } else {
            pool::install(|| -> Result<BertOutput> {
                let Buffers {
                    q,
                    k,
                    v,
                    ctx,
                    h,
                    tmp,
                    scratch,
                    ..
                } = &mut *bufs;
                // x = LN(word + pos + type)                                   [rows, d]
                for ((row, &t), (&ty, &p)) in x
                    .chunks_exact_mut(d)
                    .zip(ids)
                    .zip(type_ids.iter().zip(&pos))
                {
                    self.embed_row(row, t, ty, p);
                }
                layer_norm(&mut x, None, &self.emb_ln, d, eps);
                let scale = 1.0 / (hd as f32).sqrt();
                for layer in &self.layers {
                    linears(
                        kern,
                        &x,
                        rows,
                        &mut [
                            (&layer.q, &mut *q),
                            (&layer.k, &mut *k),
                            (&layer.v, &mut *v),
                        ],
                        scratch,
                    );
                    attention(kern, q, k, v, mask, spans, nh, hd, scale, ctx);
                    // x = LN(x + ctx Woᵀ + bo)
                    linear(kern, ctx, rows, &layer.attn_out, tmp, scratch);
                    layer_norm(&mut x, Some(tmp), &layer.attn_ln, d, eps);
                    // x = LN(x + act(x Wiᵀ + bi) Wo2ᵀ + bo2)
                    linear_act(kern, &x, rows, &layer.inter, c.activation, h, scratch);
                    linear(kern, h, rows, &layer.out, tmp, scratch);
                    layer_norm(&mut x, Some(tmp), &layer.out_ln, d, eps);
                }
                let (pooler_output, logits) =
                    self.head(kern, &x, spans, with_pooler, scratch, false);
                Ok(BertOutput {
                    last_hidden_state: x,
                    pooler_output,
                    logits,
                })
            })??
        };
        if let Some(g) = kept.as_deref_mut() {
            let held = [&g.q, &g.k, &g.v, &g.ctx, &g.h, &g.tmp].map(|b| b.capacity());
            if held.iter().sum::<usize>() > KEEP_FLOATS {
                *g = Buffers::default();
            }
        }
        Ok(out)
    }

    /// The pooler's output (`tanh(x[first] Wpᵀ + bp)` for each span's first row), when asked
    /// and present, and the classifier's logits on it, when present; on the pool, or on this
    /// thread when `serial` (the same values: each is computed the same way wherever it runs).
    #[allow(clippy::type_complexity)]
    fn head(
        &self,
        kern: &kernels::Kernels,
        x: &[f32],
        spans: &[(usize, usize)],
        with_pooler: bool,
        scratch: &mut Scratch,
        serial: bool,
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let d = self.config.hidden_size;
        let batch = spans.len();
        let pooler = self.pooler.as_ref().filter(|_| with_pooler);
        let pooler_output = pooler.map(|p| {
            let mut first = vec![0.0f32; batch * d];
            for (f, &(start, _)) in first.chunks_exact_mut(d).zip(spans) {
                f.copy_from_slice(&x[start * d..(start + 1) * d]);
            }
            let mut out = vec![0.0f32; batch * d];
            if serial {
                let qa = &mut scratch.qa;
                qa.reset(batch, d);
                let lv = qa.levels();
                (kern.quantize_acts)(&first, d, &mut qa.q, &mut qa.d, &mut qa.s, lv);
                let o = SendPtr(out.as_mut_ptr());
                // SAFETY: `out` is batch × d, this thread's alone; `qa` holds `first`.
                unsafe { linear_cols(kern, &first, batch, p, o, None, qa, (0, p.n_out)) };
            } else {
                linear(kern, &first, batch, p, &mut out, scratch);
            }
            out.iter_mut().for_each(|v| *v = v.tanh());
            out
        });
        let logits = match (&self.classifier, &pooler_output) {
            (Some((w, b, n)), Some(pooled)) => {
                let mut out = vec![0.0f32; batch * n];
                if serial {
                    // SAFETY: `out` is batch × n, `w` n × d, `pooled` batch × d.
                    unsafe {
                        (kern.gemm_nt)(batch, *n, d, pooled, w.values(), out.as_mut_ptr(), *n);
                    }
                } else {
                    gemm_nt_parallel(kern, pooled, batch, d, w.values(), *n, &mut out);
                }
                for row in out.chunks_exact_mut(*n) {
                    add_in(row, b.values());
                }
                Some(out)
            }
            _ => None,
        };
        (pooler_output, logits)
    }

    /// `row = word[t] + pos[p] + type[ty]` (before the embeddings' LayerNorm).
    #[inline]
    fn embed_row(&self, row: &mut [f32], t: u32, ty: u32, p: usize) {
        let d = self.config.hidden_size;
        let (t, ty) = (t as usize, ty as usize);
        let (word, pos, typ) = (self.word.values(), self.pos.values(), self.typ.values());
        let (w, p, y) = (
            &word[t * d..(t + 1) * d],
            &pos[p * d..(p + 1) * d],
            &typ[ty * d..(ty + 1) * d],
        );
        for (((o, &a), &b), &c) in row.iter_mut().zip(w).zip(p).zip(y) {
            *o = a + b + c;
        }
    }

    /// The embeddings and the encoder layers of a short pass (`x` gets the last hidden state),
    /// run by the pool's threads as one team in lockstep ([`pool::team`]), with a barrier
    /// between dependent steps — one sentence through MiniLM is some 40 steps of a few
    /// microseconds each, where a parallel region apiece would spend as long waking threads as
    /// computing. The split keeps each member on data it wrote itself where it can, since a
    /// cache line written by another core costs a transfer between cores:
    ///
    /// - each member owns a run of heads: it computes their query, key and value columns,
    ///   their attention, and quantizes their context columns — no barrier in between;
    /// - the other matmuls split by output columns; the intermediate activations are
    ///   quantized by the member that computed them, right after;
    /// - LayerNorm and the hidden state's quantization split by rows.
    ///
    /// Every value is computed by the same code as on the ordinary path, so the results are
    /// identical (tested). `Ok(false)` when the pool cannot run a team now, or when a head's
    /// columns are not whole units of the matmuls and blocks of the quantization (the caller
    /// takes the ordinary path).
    #[allow(clippy::too_many_arguments)]
    fn layers_team(
        &self,
        kern: &kernels::Kernels,
        ids: &[u32],
        type_ids: &[u32],
        pos: &[usize],
        mask: &[u8],
        spans: &[(usize, usize)],
        x: &mut [f32],
        bufs: &mut Buffers,
    ) -> Result<bool> {
        let c = &self.config;
        let (d, nh, inter) = (c.hidden_size, c.num_attention_heads, c.intermediate_size);
        let (hd, eps) = (d / nh, c.layer_norm_eps);
        let rows = ids.len();
        let scale = 1.0 / (hd as f32).sqrt();
        let quant = self.quant.is_some();
        let heads_split = self
            .layers
            .iter()
            .all(|l| [&l.q, &l.k, &l.v].iter().all(|lin| hd % col_unit(lin) == 0));
        if !heads_split || hd % BLOCK != 0 {
            return Ok(false);
        }
        assert!(x.len() == rows * d && pos.len() == rows);
        assert!(bufs.h.len() >= rows * inter && bufs.tmp.len() >= rows * d);
        assert!(bufs.q.len() >= rows * d && bufs.ctx.len() >= rows * d);
        bufs.scratch.qa.reset(rows, d);
        bufs.qa_ctx.reset(rows, d);
        bufs.qa_wide.reset(rows, inter);
        let (qx_rows, qc_rows, qh_rows) = (
            bufs.scratch.qa.rows_writer(),
            bufs.qa_ctx.rows_writer(),
            bufs.qa_wide.rows_writer(),
        );
        let (qx, qc, qh) = (
            SharedRef(&bufs.scratch.qa),
            SharedRef(&bufs.qa_ctx),
            SharedRef(&bufs.qa_wide),
        );
        let ptr = |b: &mut Vec<f32>| SendPtr(b.as_mut_ptr());
        let (xp, qp, kp, vp) = (
            SendPtr(x.as_mut_ptr()),
            ptr(&mut bufs.q),
            ptr(&mut bufs.k),
            ptr(&mut bufs.v),
        );
        let (cp, hp, tp) = (ptr(&mut bufs.ctx), ptr(&mut bufs.h), ptr(&mut bufs.tmp));
        let longest = spans.iter().map(|s| s.1).max().unwrap_or(0);
        // SAFETY (every raw access below): each buffer holds `rows × width` floats (asserted)
        // and outlives the team; between two barriers each block of a buffer is either only
        // read by the members or written by one of them — the one whose rows, columns or
        // heads it is — and read by no other.
        let view = |p: SendPtr, len: usize| unsafe { std::slice::from_raw_parts(p.get(), len) };
        pool::team(|m| {
            let (r0, r1) = m.share(rows);
            // This member's columns of a matmul's output: whole chunks of 32 columns (one
            // quantization block) and of the matrix's unit of work.
            let cols = |lin: &Linear| {
                let chunk = col_unit(lin).max(BLOCK);
                let (a, b) = m.share(lin.n_out.div_ceil(chunk));
                (a * chunk, (b * chunk).min(lin.n_out))
            };
            let (h0, h1) = m.share(nh);
            let heads = (h0 * hd, h1 * hd);
            // The rows of this member: x[r0..r1], written in place.
            let my_rows =
                || unsafe { std::slice::from_raw_parts_mut(xp.get().add(r0 * d), (r1 - r0) * d) };
            let norm_rows = |n: &Norm, y: Option<SendPtr>| {
                let tmp = y.map(|p| view(p, rows * d));
                for (r, row) in (r0..r1).zip(my_rows().chunks_exact_mut(d)) {
                    ln_row(row, tmp.map(|t| &t[r * d..(r + 1) * d]), n, eps);
                }
            };
            for (r, row) in (r0..r1).zip(my_rows().chunks_exact_mut(d)) {
                self.embed_row(row, ids[r], type_ids[r], pos[r]);
            }
            norm_rows(&self.emb_ln, None);
            if quant {
                unsafe { qx_rows.quantize(kern, xp.get(), r0, r1) };
            }
            m.sync();
            let mut head_bufs = HeadBufs::new(longest, hd);
            for (l, layer) in self.layers.iter().enumerate() {
                // This member's heads: their q, k, v columns, attention, context quantized.
                for (lin, out) in [(&layer.q, qp), (&layer.k, kp), (&layer.v, vp)] {
                    let x = view(xp, rows * d);
                    unsafe { linear_cols(kern, x, rows, lin, out, None, qx.0, heads) };
                }
                for si in 0..spans.len() {
                    let jobs = si * nh + h0..si * nh + h1;
                    let (qkv, shape) = ([qp, kp, vp], (nh, hd, scale));
                    unsafe {
                        attention_jobs(kern, qkv, mask, spans, shape, cp, jobs, &mut head_bufs);
                    }
                }
                if quant {
                    unsafe { qc_rows.quantize_cols(kern, cp.get(), heads.0, heads.1) };
                }
                m.sync();
                // x = LN(x + ctx Woᵀ + bo)
                let (lin, ctx) = (&layer.attn_out, view(cp, rows * d));
                unsafe { linear_cols(kern, ctx, rows, lin, tp, None, qc.0, cols(lin)) };
                m.sync();
                norm_rows(&layer.attn_ln, Some(tp));
                if quant {
                    unsafe { qx_rows.quantize(kern, xp.get(), r0, r1) };
                }
                m.sync();
                // x = LN(x + act(x Wiᵀ + bi) Wo2ᵀ + bo2)
                let (lin, act) = (&layer.inter, Some(c.activation));
                let (c0, c1) = cols(lin);
                let x = view(xp, rows * d);
                unsafe { linear_cols(kern, x, rows, lin, hp, act, qx.0, (c0, c1)) };
                if quant {
                    unsafe { qh_rows.quantize_cols(kern, hp.get(), c0, c1) };
                }
                m.sync();
                let (lin, h) = (&layer.out, view(hp, rows * inter));
                unsafe { linear_cols(kern, h, rows, lin, tp, None, qh.0, cols(lin)) };
                m.sync();
                norm_rows(&layer.out_ln, Some(tp));
                if quant && l + 1 < self.layers.len() {
                    unsafe { qx_rows.quantize(kern, xp.get(), r0, r1) };
                }
                m.sync();
            }
        })
    }
}

/// A shared reference handed to a team's members (the referent is only read while they run).
#[derive(Clone, Copy)]
struct SharedRef<'a, T>(&'a T);

// SAFETY: the members only read through it, in the steps where no member writes (barriers
// order the writes through `QActsRows` before).
unsafe impl<T> Send for SharedRef<'_, T> {}
unsafe impl<T> Sync for SharedRef<'_, T> {}

/// `x = LN(x + y)` row by row (`y` None: `x = LN(x)`), on the pool for many rows.
fn layer_norm(x: &mut [f32], y: Option<&[f32]>, n: &Norm, d: usize, eps: f32) {
    if let Some(y) = y {
        assert_eq!(x.len(), y.len());
    }
    let run =
        |(r, row): (usize, &mut [f32])| ln_row(row, y.map(|y| &y[r * d..(r + 1) * d]), n, eps);
    if x.len() <= SERIAL_ELEMS {
        x.chunks_exact_mut(d).enumerate().for_each(run);
    } else {
        x.par_chunks_mut(d).enumerate().for_each(run);
    }
}

/// `row = LN(row + y)` (`y` None: `row = LN(row)`).
#[inline]
fn ln_row(row: &mut [f32], y: Option<&[f32]>, n: &Norm, eps: f32) {
    let (w, b) = (n.w.values(), n.b.values());
    if let Some(y) = y {
        add_in(row, y);
    }
    let len = row.len() as f32;
    let mean = lane_sum(row, |v| v) / len;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / len;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &g), &bb) in row.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + bb;
    }
}

/// `Σ f(v)` over `row` in 16 independent lanes (so the compiler vectorizes it), then the
/// lanes in order: the same value for a row wherever it sits.
#[inline]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(tail) {
        *l += f(v);
    }
    lanes.iter().sum()
}

/// `dst = src` for a few dozen floats, in register-sized pieces (a call to `memcpy` per head
/// row costs more than the copy).
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let (dc, dr) = dst.as_chunks_mut::<8>();
    let (sc, sr) = src.as_chunks::<8>();
    for (a, b) in dc.iter_mut().zip(sc) {
        *a = *b;
    }
    for (a, b) in dr.iter_mut().zip(sr) {
        *a = *b;
    }
}

/// Per-thread buffers of [`attention`]: one head of one sequence of up to `seq` tokens, its
/// keys padded to `sp` (a multiple of 16).
struct HeadBufs {
    /// The head's queries `[seq × hd]`.
    q: Vec<f32>,
    /// Its keys transposed `[hd × sp]`.
    kt: Vec<f32>,
    /// Its values `[sp × hd]`.
    v: Vec<f32>,
    /// Scores, then attention weights `[seq × sp]`.
    p: Vec<f32>,
}

impl HeadBufs {
    /// Buffers for sequences of up to `longest` tokens and heads of `hd`.
    fn new(longest: usize, hd: usize) -> Self {
        let most = longest.next_multiple_of(16);
        HeadBufs {
            q: vec![0.0; longest * hd],
            kt: vec![0.0; hd * most],
            v: vec![0.0; most * hd],
            p: vec![0.0; longest * most],
        }
    }
}

/// Bidirectional attention within each sequence (`spans`: `(first row, length)`), masked
/// keys (mask 0) left out; per (sequence, head) in parallel. All `[rows × d]`, heads side by
/// side.
///
/// Each head is two small matmuls through the kernels' `gemm` (`q kᵀ`, then the weights times
/// `v`), with the keys padded with zeros to a multiple of 16 columns: a padded or masked key
/// gets the weight 0, which adds exactly nothing, so a sequence's output depends neither on
/// how far its batch is padded nor on the other sequences beside it.
#[allow(clippy::too_many_arguments)]
fn attention(
    kern: &kernels::Kernels,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[u8],
    spans: &[(usize, usize)],
    nh: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    let d = nh * hd;
    let rows = spans.last().map_or(0, |&(s, l)| s + l);
    assert!(out.len() >= rows * d);
    let longest = spans.iter().map(|s| s.1).max().unwrap_or(0);
    let ptr = SendPtr(out.as_mut_ptr());
    let init = || HeadBufs::new(longest, hd);
    assert!(q.len() >= rows * d && k.len() >= rows * d && v.len() >= rows * d);
    let src = [q, k, v].map(|b| SendPtr(b.as_ptr().cast_mut()));
    // SAFETY: the buffers hold [rows × d] (asserted), `q`, `k`, `v` are only read, and each
    // job writes its own (sequence, head) block of `out`.
    let job = |bufs: &mut HeadBufs, j: usize| unsafe {
        attention_jobs(kern, src, mask, spans, (nh, hd, scale), ptr, j..j + 1, bufs);
    };
    let work: usize = spans.iter().map(|s| s.1 * s.1).sum::<usize>() * d;
    if work <= SERIAL_ELEMS {
        let mut bufs = init();
        (0..spans.len() * nh).for_each(|j| job(&mut bufs, j));
    } else {
        (0..spans.len() * nh)
            .into_par_iter()
            .for_each_init(init, job);
    }
}

/// The (sequence, head) jobs `jobs` (job `j` = sequence `j / nh`, head `j % nh`) of
/// [`attention`], on this thread, with `bufs` (sized for the longest sequence).
///
/// # Safety
/// `q`, `k`, `v` and `out` point to `[rows × d]` floats each; during the call nothing writes
/// the jobs' blocks (their head's columns of their sequence's rows) of `q`, `k`, `v`, and
/// nothing else touches those of `out`. (Other heads' columns may be written meanwhile: only
/// these blocks are read.)
#[allow(clippy::too_many_arguments)]
unsafe fn attention_jobs(
    kern: &kernels::Kernels,
    [q, k, v]: [SendPtr; 3],
    mask: &[u8],
    spans: &[(usize, usize)],
    (nh, hd, scale): (usize, usize, f32),
    out: SendPtr,
    jobs: std::ops::Range<usize>,
    bufs: &mut HeadBufs,
) {
    let d = nh * hd;
    let rows = spans.last().map_or(0, |&(s, l)| s + l);
    assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    assert!(mask.len() >= rows);
    // SAFETY: within the `[rows × d]` buffers (the caller's promise), this job's block.
    let head = |p: SendPtr, at: usize| unsafe { std::slice::from_raw_parts(p.get().add(at), hd) };
    for job in jobs {
        let ((start, seq), h) = (spans[job / nh], job % nh);
        let sp = seq.next_multiple_of(16);
        assert!(bufs.q.len() >= seq * hd && bufs.kt.len() >= hd * sp);
        assert!(bufs.v.len() >= sp * hd && bufs.p.len() >= seq * sp);
        let keys = &mask[start..start + seq];
        let any_real = keys.iter().any(|&m| m != 0);
        for j in 0..seq {
            let at = (start + j) * d + h * hd;
            copy_short(&mut bufs.q[j * hd..(j + 1) * hd], head(q, at));
            copy_short(&mut bufs.v[j * hd..(j + 1) * hd], head(v, at));
            for (c, &x) in head(k, at).iter().enumerate() {
                bufs.kt[c * sp + j] = x;
            }
        }
        // The padding keys and values are zero (the buffers last from a longer sequence).
        bufs.v[seq * hd..sp * hd].fill(0.0);
        for c in 0..hd {
            bufs.kt[c * sp + seq..(c + 1) * sp].fill(0.0);
        }
        // SAFETY: the buffers hold at least seq × hd, hd × sp and seq × sp floats (asserted).
        unsafe { (kern.gemm)(seq, sp, hd, &bufs.q, &bufs.kt, sp, bufs.p.as_mut_ptr(), sp) };
        for row in bufs.p[..seq * sp].chunks_exact_mut(sp) {
            // A sequence of padding only attends to everything (its output is unused).
            let live = |j: usize| j < seq && (keys[j] != 0 || !any_real);
            let mut max = f32::NEG_INFINITY;
            for (j, s) in row.iter_mut().enumerate() {
                if live(j) {
                    *s *= scale;
                    max = max.max(*s);
                }
            }
            for s in row[..seq].iter_mut() {
                *s -= max;
            }
            (kern.exp)(&mut row[..seq]);
            let mut sum = 0.0f32;
            for (j, s) in row.iter_mut().enumerate() {
                if live(j) {
                    sum += *s;
                } else {
                    *s = 0.0;
                }
            }
            let inv = 1.0 / sum;
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
        // SAFETY: this job's block of `out` (its head's hd columns at stride d of its span's
        // rows), the caller's promise.
        unsafe {
            let o = out.get().add(start * d + h * hd);
            (kern.gemm)(seq, hd, sp, &bufs.p, &bufs.v, hd, o, d);
        }
    }
}
