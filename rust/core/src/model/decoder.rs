//! One decoder for every architecture: a stack of pre-norm Transformer blocks described by a
//! [`DecoderConfig`] (which norm, which positions, which MLP, how attention scales), run over
//! the KV cache, batched over several sequences ("slots").
//!
//! An architecture's file reads its config and its tensors into a [`Decoder`]; the forward pass
//! is this one:
//!
//! ```text
//! x = embed[ids] · scale (+ pos_embed[pos])                       # [rows, d]
//! for each layer:
//!     h = norm(x)                          (LayerNorm or RMSNorm)
//!     q, k, v = h @ [Wq | Wk | Wv] + b     (one fused matmul)      # heads nh, nkv (GQA)
//!     q, k = rms_norm(q), rms_norm(k)      (per head: Qwen3)
//!     q, k = rope(q, pos), rope(k, pos)    (RoPE models)
//!     x = x + post_norm(softmax(q kᵀ · scale + causal mask) v @ Wo + b)
//!                 (the mask: a sliding window on layers that have one; post_norm: Gemma)
//!     h = norm(x)
//!     x = x + post_norm(act(h @ W1 + b) @ W2 + b)            (plain MLP: GPT-2)
//!       | x + post_norm((act(h @ Wgate) * (h @ Wup)) @ Wdown) (gated MLP: SwiGLU, GeGLU)
//! logits = norm(x) @ headᵀ (soft-capped: Gemma)                    # head tied to embed, or not
//! ```
//!
//! One forward call advances every slot by the same number of tokens `t` (a left-padded
//! prompt, or one decoded token each); a mask says which of them are real. Positions count real
//! tokens only (as `transformers`' generate computes `position_ids` from the attention mask), so
//! a left-padded sequence gets exactly the logits it gets alone.

use std::path::Path;

use serde_json::{Map, Value};

use crate::io::safetensors::{F32Data, F32Tensor};
use crate::kernels;
use crate::model::act::{activate, add_in, gated, Activation};
use crate::model::attention::{attention, QkvLayout};
use crate::model::head::{check_logits, head_logits};
use crate::model::kv::{check_cancel, Cache, KvDtype};
use crate::model::linear::Proj;
use crate::model::norm::{layer_norm, rms_norm, rms_norm_heads};
use crate::model::registry::Arch;
use crate::model::rope::{self, inv_freq, rope, RopeScaling};
use crate::model::weights::{Norm, Table};
use crate::model::{CausalLm, ModelId};
use crate::quant::QType;
use crate::runtime::pool;
use crate::{Error, Result};

/// How each block and the output normalize their input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / std · w + b` (GPT-2).
    LayerNorm,
    /// `x / rms(x) · w` (Llama and its descendants).
    RmsNorm,
}

/// The feed-forward half of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `act(h @ W1 + b) @ W2 + b`: GPT-2's.
    Plain(Activation),
    /// `(act(h @ Wgate) * (h @ Wup)) @ Wdown`: SwiGLU with SiLU (Llama), GeGLU with GELU.
    Gated(Activation),
}

/// Where a token's position enters.
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    /// A learned table added to the embeddings (GPT-2's `wpe`).
    Learned,
    /// Rotary embeddings of the queries and keys.
    Rope(Rope),
}

/// Rotary embeddings: the base and the scaling of the frequencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f32,
    pub scaling: Option<RopeScaling>,
    /// Divides each frequency (a GGUF file's `rope_freqs`; LongRoPE's short factors), if given.
    pub factors: Option<Vec<f32>>,
    /// How many of each head's values rotate (the first ones; the rest pass through): the
    /// head size unless partial (Phi-3's `partial_rotary_factor`). `None`: the head size.
    pub dims: Option<usize>,
    /// LongRoPE (Phi-3's `longrope` / `su`): other factors past the original context.
    pub long: Option<LongRope>,
    /// Multiplies every cos and sin (LongRoPE's attention factor); 1 for the others.
    pub mscale: f32,
}

/// LongRoPE's second set of frequency factors. As `transformers` does, a forward call whose
/// furthest position (per sequence) is past `original_max_positions` rotates its queries and
/// keys by the frequencies divided by `factors`; a shorter one by the short factors
/// ([`Rope::factors`]). Keys already cached keep the rotation they were written with.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub factors: Vec<f32>,
    pub original_max_positions: usize,
}

impl Rope {
    /// Full-width RoPE of base `theta`, scaled by `scaling`, frequencies divided by `factors`.
    pub fn new(theta: f32, scaling: Option<RopeScaling>, factors: Option<Vec<f32>>) -> Self {
        Rope {
            theta,
            scaling,
            factors,
            dims: None,
            long: None,
            mscale: 1.0,
        }
    }
}

/// Everything the forward pass needs to know about an architecture's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention: each serves `num_heads / num_kv_heads`).
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// The longest sequence the model runs.
    pub max_positions: usize,
    /// The config key that names `max_positions`, for errors (`n_positions`,
    /// `max_position_embeddings`).
    pub max_positions_key: &'static str,
    pub norm: NormKind,
    pub norm_eps: f32,
    pub mlp: MlpKind,
    pub positions: Positions,
    /// Multiplies the attention scores (`1 / √head_dim` for most).
    pub attn_scale: f32,
    /// Divides layer `l`'s attention scores by `l + 1` (GPT-2's
    /// `scale_attn_by_inverse_layer_idx`).
    pub attn_scale_by_layer: bool,
    /// Each layer's sliding window, if it has one: a query sees that many positions up to its
    /// own (empty: no layer has one).
    pub windows: Vec<Option<usize>>,
    /// The RoPE of the layers with a window, where it differs from the others' (Gemma 3's
    /// local layers: base 10000, no scaling).
    pub local_rope: Option<Rope>,
    /// Multiplies the token embeddings (Gemma's √hidden_size).
    pub embed_scale: Option<f32>,
    /// `logits = cap · tanh(logits / cap)` (Gemma's `final_logit_softcapping`).
    pub final_softcap: Option<f32>,
    pub tie_word_embeddings: bool,
}

impl DecoderConfig {
    /// Query columns: heads × head size.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Key (and value) columns.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The shape's fields under a Llama-like `config.json`'s names (`vocab_size`, ...,
    /// `max_position_embeddings`, `rms_norm_eps`), for an architecture's `info`.
    pub(crate) fn rms_info(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (key, n) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_positions),
        ] {
            m.insert(key.into(), n.into());
        }
        m.insert("rms_norm_eps".into(), f64::from(self.norm_eps).into());
        m
    }

    /// The scale of layer `l`'s attention scores.
    fn scale(&self, l: usize) -> f32 {
        let mut s = self.attn_scale;
        if self.attn_scale_by_layer {
            s /= (l + 1) as f32;
        }
        s
    }
}

/// One block's weights. Norms of kind [`NormKind::RmsNorm`] have an empty bias.
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Norm,
    /// `[Wq | Wk | Wv]`.
    pub(crate) qkv: Proj,
    /// RMSNorm gains (`head_dim` values) of each query head and each key head, before RoPE
    /// (Qwen3, Gemma 3).
    pub(crate) qk_norm: Option<(Norm, Norm)>,
    pub(crate) o: Proj,
    /// Normalizes the attention's output before the residual add (Gemma).
    pub(crate) post_attn_norm: Option<Norm>,
    pub(crate) ffn_norm: Norm,
    /// `W1` (plain MLP) or `[Wgate | Wup]` (gated).
    pub(crate) up: Proj,
    pub(crate) down: Proj,
    /// Normalizes the MLP's output before the residual add (Gemma).
    pub(crate) post_ffn_norm: Option<Norm>,
}

/// A loaded decoder: immutable, shared across threads.
#[derive(Debug)]
pub struct Decoder {
    pub config: DecoderConfig,
    /// The architecture that loaded it.
    arch: &'static Arch,
    /// The config fields its architecture reports (`config.json`'s names), `model_type` first.
    info: Map<String, Value>,
    pub(crate) embed: Table,
    /// The learned position table (`[max_positions, d]`), for [`Positions::Learned`].
    pub(crate) pos_embed: Option<F32Tensor>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) final_norm: Norm,
    /// `None`: tied to `embed`.
    pub(crate) head: Option<Table>,
    inv_freq: Vec<f32>,
    /// LongRoPE's long frequencies and the context past which they apply.
    long_inv_freq: Option<(Vec<f32>, usize)>,
    /// The local layers' (see [`DecoderConfig::local_rope`]).
    local_inv_freq: Option<Vec<f32>>,
    /// The rotated values of each head (`head_dim` unless partial).
    rot_dims: usize,
    /// Multiplies cos and sin (LongRoPE's attention factor).
    rope_mscale: f32,
    kv_dtype: KvDtype,
    quant: Option<QType>,
    weight_bytes: usize,
    /// Marks the caches it makes.
    id: ModelId,
}

/// A norm without a bias (RMSNorm's gain alone).
pub(crate) fn gain(w: Vec<f32>) -> Norm {
    let n = w.len();
    Norm {
        w: F32Tensor {
            data: F32Data::Owned(w),
            shape: vec![n],
        },
        b: F32Tensor {
            data: F32Data::Owned(Vec::new()),
            shape: vec![0],
        },
    }
}

impl Decoder {
    /// Puts a decoder together from its config and weights (checked by the caller against the
    /// config); `quant` is the matrices' format, if quantized.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        arch: &'static Arch,
        info: Map<String, Value>,
        config: DecoderConfig,
        embed: Table,
        pos_embed: Option<F32Tensor>,
        layers: Vec<Layer>,
        final_norm: Norm,
        head: Option<Table>,
        quant: Option<QType>,
    ) -> Self {
        let table_bytes = |t: &Table| match t {
            Table::F32(t) => t.values().len() * 4,
            Table::Q(q) => q.bytes().len(),
        };
        let weight_bytes = layers
            .iter()
            .map(|b| b.qkv.bytes() + b.o.bytes() + b.up.bytes() + b.down.bytes())
            .sum::<usize>()
            + table_bytes(head.as_ref().unwrap_or(&embed))
            + pos_embed.as_ref().map_or(0, |t| t.values().len() * 4);
        let (rot_dims, rope_mscale, long) = match &config.positions {
            Positions::Rope(r) => (r.dims.unwrap_or(config.head_dim), r.mscale, r.long.as_ref()),
            Positions::Learned => (config.head_dim, 1.0, None),
        };
        let freqs = |r: &Rope| inv_freq(r.theta, rot_dims, r.scaling, r.factors.as_deref());
        let inv_freq = match &config.positions {
            Positions::Rope(r) => freqs(r),
            Positions::Learned => Vec::new(),
        };
        let long_inv_freq = match &config.positions {
            Positions::Rope(r) => long.map(|l| {
                let f = rope::inv_freq(r.theta, rot_dims, r.scaling, Some(&l.factors));
                (f, l.original_max_positions)
            }),
            Positions::Learned => None,
        };
        let local_inv_freq = config.local_rope.as_ref().map(freqs);
        let mut described = Map::new();
        described.insert("model_type".into(), Value::from(arch.name));
        described.extend(info);
        Decoder {
            config,
            arch,
            info: described,
            embed,
            pos_embed,
            layers,
            final_norm,
            head,
            inv_freq,
            long_inv_freq,
            local_inv_freq,
            rot_dims,
            rope_mscale,
            kv_dtype: KvDtype::F32,
            quant,
            weight_bytes,
            id: ModelId::fresh(),
        }
    }

    /// The architecture that loaded it.
    pub fn arch(&self) -> &'static Arch {
        self.arch
    }

    /// The config fields its architecture reports, under `config.json`'s names (`model_type`
    /// first).
    pub fn info(&self) -> &Map<String, Value> {
        &self.info
    }

    /// The element type of the KV caches this model makes from now on.
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    /// LongRoPE: whether a slot crosses into the long factors with this call, its cached
    /// positions computed with the short ones. As transformers' `generate` does for Phi-3,
    /// the cache is then recomputed with the call (every position's keys and values depend on
    /// the rotation of the ones before), so that a cached sequence equals its recomputation.
    fn crosses_into_long_rope(&self, cache: &Cache, mask: &[u8], t: usize) -> bool {
        let Some((_, orig)) = &self.long_inv_freq else {
            return false;
        };
        (0..cache.slots).any(|s| {
            let before = cache.next_position(s);
            let real = mask[s * t..(s + 1) * t].iter().filter(|&&m| m != 0).count();
            before > 0 && before <= *orig && before + real > *orig
        })
    }

    /// `out = norm(x)` per row.
    fn norm(&self, x: &[f32], out: &mut [f32], n: &Norm) {
        let eps = self.config.norm_eps;
        match self.config.norm {
            NormKind::LayerNorm => layer_norm(x, out, n, eps),
            NormKind::RmsNorm => rms_norm(x, out, n.w.values(), eps),
        }
    }
}

impl CausalLm for Decoder {
    fn model_type(&self) -> &'static str {
        self.arch.name
    }

    fn info(&self) -> Map<String, Value> {
        self.info.clone()
    }

    fn quantization(&self) -> Option<QType> {
        self.quant
    }

    /// Every matrix, the head, the position table (norms and biases, a fraction of a percent,
    /// aside).
    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    fn ctx_key(&self) -> &'static str {
        self.config.max_positions_key
    }

    fn can_save(&self) -> bool {
        self.arch.save.is_some()
    }

    fn save(&self, folder: &Path) -> Result<()> {
        match self.arch.save {
            Some(save) => save(self, folder),
            None => Err(Error::Unsupported(format!(
                "saving a {} model (it loads from its own folder or file)",
                self.arch.name
            ))),
        }
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn n_ctx(&self) -> usize {
        self.config.max_positions
    }

    fn new_cache(&self, slots: usize, capacity: Option<usize>) -> Result<Cache> {
        let c = &self.config;
        let n = c.max_positions;
        let cap = capacity.unwrap_or_else(|| Cache::default_capacity(n));
        let (layers, d) = (c.num_layers, c.kv_dim());
        let cache = Cache::windowed(layers, d, n, slots, self.kv_dtype, cap, &c.windows)?;
        Ok(cache.owned_by(self.id))
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
        cache.begin(self.id, tokens, mask, t, c.vocab_size, c.max_positions_key)?;
        if self.crosses_into_long_rope(cache, mask, t) {
            let (all, all_mask, total) = cache.replay(tokens, mask, t);
            let mut fresh = cache.fresh()?;
            let mut all_logits = Vec::new();
            self.forward_into(
                &mut fresh,
                &all,
                &all_mask,
                total,
                last_only,
                &mut all_logits,
            )?;
            let v = c.vocab_size;
            logits.clear();
            if last_only {
                logits.extend_from_slice(&all_logits);
            } else {
                for s in 0..slots {
                    let last = (s * total + total - t) * v..(s + 1) * total * v;
                    logits.extend_from_slice(&all_logits[last]);
                }
            }
            *cache = fresh;
            return Ok(());
        }
        let kern = kernels::get();
        let (d, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let (qd, kvd, inner) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        let rows = slots * t;
        let lay = QkvLayout {
            stride: qd + 2 * kvd,
            k_off: qd,
            v_off: qd + kvd,
            kv_d: kvd,
        };
        let mlp_width = match c.mlp {
            MlpKind::Plain(_) => inner,
            MlpKind::Gated(_) => 3 * inner,
        };
        cache.work.ensure(rows, d, lay.stride, qd, mlp_width)?;
        let mut ws = std::mem::take(&mut cache.work);
        let cancel = cache.cancel.clone();
        let mut tmp = Vec::new();
        let result = pool::install(|| -> Result<()> {
            // RoPE's cos / sin per row, computed once for every layer.       [rows, hd/2]
            // (Then the local layers' after them, where they have their own.)
            let (rot, half) = (self.rot_dims, self.rot_dims / 2);
            let rotary = matches!(c.positions, Positions::Rope(_));
            let tables = if self.local_inv_freq.is_some() { 2 } else { 1 };
            if rotary {
                ws.rope.resize(2 * tables * rows * half, 0.0);
                // LongRoPE: the slots whose furthest real position is past the original context
                // rotate by the long frequencies in this call.
                // (Empty, allocating nothing, without LongRoPE.)
                let long_slot: Vec<bool> = match &self.long_inv_freq {
                    None => Vec::new(),
                    Some((_, orig)) => (0..slots)
                        .map(|s| {
                            (s * t..(s + 1) * t)
                                .filter(|&r| mask[r] != 0)
                                .any(|r| ws.positions[r] + 1 > *orig)
                        })
                        .collect(),
                };
                let local = self.local_inv_freq.iter();
                for (table, freqs) in std::iter::once(&self.inv_freq).chain(local).enumerate() {
                    let at = 2 * table * rows * half;
                    let (cos, sin) = ws.rope[at..at + 2 * rows * half].split_at_mut(rows * half);
                    for (r, &p) in ws.positions.iter().enumerate() {
                        let freqs = match &self.long_inv_freq {
                            Some((long, _)) if table == 0 && long_slot[r / t] => long,
                            _ => freqs,
                        };
                        for (i, &f) in freqs.iter().enumerate() {
                            let a = p as f32 * f;
                            cos[r * half + i] = a.cos();
                            sin[r * half + i] = a.sin();
                        }
                    }
                    if self.rope_mscale != 1.0 {
                        let m = self.rope_mscale;
                        cos.iter_mut().chain(sin.iter_mut()).for_each(|v| *v *= m);
                    }
                }
            }
            // x = embed[ids] (+ pos_embed[pos])                             [rows, d]
            let pos_embed = self.pos_embed.as_ref().map(F32Tensor::values);
            for (r, row) in ws.x[..rows * d].chunks_exact_mut(d).enumerate() {
                self.embed.row_into(tokens[r] as usize, row);
                if let Some(scale) = c.embed_scale {
                    row.iter_mut().for_each(|v| *v *= scale);
                }
                if let Some(table) = pos_embed {
                    let pos = ws.positions[r];
                    add_in(row, &table[pos * d..(pos + 1) * d]);
                }
            }
            for (l, blk) in self.layers.iter().enumerate() {
                check_cancel(&cancel)?;
                // h = norm(x); qkv = h @ [Wq | Wk | Wv] + b                 [rows, stride]
                self.norm(&ws.x[..rows * d], &mut ws.h[..rows * d], &blk.attn_norm);
                let qkv = &mut ws.qkv[..rows * lay.stride];
                blk.qkv.run(
                    kern,
                    &ws.h[..rows * d],
                    rows,
                    qkv,
                    &mut tmp,
                    &mut ws.scratch,
                );
                if let Some((qn, kn)) = &blk.qk_norm {
                    let eps = c.norm_eps;
                    rms_norm_heads(qkv, lay.stride, (0, nh, hd), qn.w.values(), eps);
                    rms_norm_heads(qkv, lay.stride, (qd, nkv, hd), kn.w.values(), eps);
                }
                let window = c.windows.get(l).copied().flatten();
                if rotary {
                    let table = usize::from(window.is_some() && self.local_inv_freq.is_some());
                    let at = 2 * table * rows * half;
                    let (cos, sin) = ws.rope[at..at + 2 * rows * half].split_at(rows * half);
                    rope(qkv, lay.stride, nh + nkv, (hd, rot), cos, sin);
                }
                // k, v appended to the cache; attention per (slot, head)     [rows, qd]
                cache.append(kern, l, qkv, (t, mask, &ws.positions[..rows]), &lay);
                let args = cache
                    .attn_args(qkv, mask, l, t, (nh, nkv, hd), &lay, c.scale(l))
                    .windowed(window, &ws.positions[..rows]);
                check_cancel(&cancel)?;
                attention(kern, &args, &mut ws.att[..rows * qd], &mut ws.scores);
                // x = x + att @ Wo + b
                blk.o.run(
                    kern,
                    &ws.att[..rows * qd],
                    rows,
                    &mut ws.h[..rows * d],
                    &mut tmp,
                    &mut ws.scratch,
                );
                if let Some(n) = &blk.post_attn_norm {
                    self.norm(&ws.h[..rows * d], &mut ws.att[..rows * d], n);
                    ws.h[..rows * d].copy_from_slice(&ws.att[..rows * d]);
                }
                add_in(&mut ws.x[..rows * d], &ws.h[..rows * d]);
                check_cancel(&cancel)?;
                // x = x + mlp(norm(x))
                self.norm(&ws.x[..rows * d], &mut ws.h[..rows * d], &blk.ffn_norm);
                let hidden = match c.mlp {
                    MlpKind::Plain(act) => {
                        let hidden = &mut ws.mlp[..rows * inner];
                        blk.up.run(
                            kern,
                            &ws.h[..rows * d],
                            rows,
                            hidden,
                            &mut tmp,
                            &mut ws.scratch,
                        );
                        activate(kern, act, hidden);
                        &ws.mlp[..rows * inner]
                    }
                    MlpKind::Gated(act) => {
                        let (gu, out) = ws.mlp[..rows * 3 * inner].split_at_mut(rows * 2 * inner);
                        blk.up
                            .run(kern, &ws.h[..rows * d], rows, gu, &mut tmp, &mut ws.scratch);
                        gated(kern, act, gu, out, inner);
                        &ws.mlp[rows * 2 * inner..rows * 3 * inner]
                    }
                };
                blk.down.run(
                    kern,
                    hidden,
                    rows,
                    &mut ws.h[..rows * d],
                    &mut tmp,
                    &mut ws.scratch,
                );
                if let Some(n) = &blk.post_ffn_norm {
                    self.norm(&ws.h[..rows * d], &mut ws.att[..rows * d], n);
                    ws.h[..rows * d].copy_from_slice(&ws.att[..rows * d]);
                }
                add_in(&mut ws.x[..rows * d], &ws.h[..rows * d]);
            }
            // logits = norm(x) @ headᵀ, for the rows that want them
            let head = self.head.as_ref().unwrap_or(&self.embed);
            let norm = |x: &[f32], out: &mut [f32]| self.norm(x, out, &self.final_norm);
            head_logits(kern, &mut ws, (slots, t, d, last_only), norm, head, logits)?;
            if let Some(cap) = c.final_softcap {
                logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
            }
            Ok(())
        });
        cache.work = ws;
        result??;
        cache.commit(mask, t);
        Ok(())
    }
}
