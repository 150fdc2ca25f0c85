//! The KV cache and attention shared by the decoders (GPT-2, Llama): keys and values of every
//! layer at every position so far, per sequence ("slot"), and causal attention of new positions
//! over them, with grouped-query heads (several query heads reading one key/value head).
//!
//! The cache grows as sequences do (doubling, up to the model's context), so a model with a
//! long context costs memory for the positions used, not the ones it could use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::kernels;
use crate::runtime::mem;
use crate::{Error, Result};

use super::ModelId;

use crate::model::state::Work;

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
pub(crate) enum Kv {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Kv {
    fn zeros(dtype: KvDtype, n: usize) -> Result<Self> {
        // Keys and values together: the check is for both.
        let what = "the KV cache";
        Ok(match dtype {
            KvDtype::F32 => {
                mem::check(n, 8, what)?;
                Kv::F32(vec![0.0; n])
            }
            KvDtype::F16 => {
                mem::check(n, 4, what)?;
                Kv::F16(vec![0; n])
            }
        })
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
    pub(crate) fn put(&mut self, kern: &kernels::Kernels, at: usize, x: &[f32]) {
        match self {
            Kv::F32(v) => v[at..at + x.len()].copy_from_slice(x),
            Kv::F16(v) => (kern.to_f16)(x, &mut v[at..at + x.len()]),
        }
    }

    /// `q · self[at..at + q.len()]`.
    #[inline]
    pub(crate) fn dot(&self, kern: &kernels::Kernels, q: &[f32], at: usize) -> f32 {
        match self {
            Kv::F32(v) => (kern.dot)(q, &v[at..at + q.len()]),
            Kv::F16(v) => (kern.dot_f16)(q, &v[at..at + q.len()]),
        }
    }

    /// `out += w · self[at..at + out.len()]`.
    #[inline]
    pub(crate) fn axpy(&self, kern: &kernels::Kernels, w: f32, at: usize, out: &mut [f32]) {
        match self {
            Kv::F32(v) => (kern.axpy)(w, &v[at..at + out.len()], out),
            Kv::F16(v) => (kern.axpy_f16)(w, &v[at..at + out.len()], out),
        }
    }

    /// `out = self[at..at + out.len()]` as f32.
    #[inline]
    pub(crate) fn read(&self, kern: &kernels::Kernels, at: usize, out: &mut [f32]) {
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

/// Where slot `s`, layer `l`, position `p` starts in the cache's `k` / `v` buffers: positions
/// of `d` values (every key/value head side by side), `n_ctx` per layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    pub(crate) n_ctx: usize,
    pub(crate) n_layer: usize,
    pub(crate) d: usize,
}

impl Geom {
    #[inline]
    pub(crate) fn at(&self, s: usize, l: usize, p: usize) -> usize {
        ((s * self.n_layer + l) * self.n_ctx + p) * self.d
    }
}

/// Where a layer keeps its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerKv {
    /// Every position so far: layer `i` of the cache's `k` / `v`.
    Full(usize),
    /// The last positions only (a sliding-window layer): layer `i` of the ring.
    Ring(usize),
}

/// The keys and values of the sliding-window layers, `[slot][layer][size][d]`: real position
/// `p` at entry `p % size`, `size` at least the window plus the new positions of a call less
/// one, so that no key a query of the call sees is overwritten. Memory stays flat however
/// long a sequence grows.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    /// `n_ctx`: the ring's size.
    pub(crate) geom: Geom,
    pub(crate) k: Kv,
    pub(crate) v: Kv,
    /// `[slot][size]`: the position id held at each entry ([`EMPTY`] for none). Every ring
    /// layer holds the same positions.
    pub(crate) pos: Vec<u32>,
    /// The widest window of its layers.
    pub(crate) window: usize,
}

/// A ring entry that holds no position.
pub(crate) const EMPTY: u32 = u32::MAX;

impl Ring {
    /// Entries needed for a call of `t` new positions.
    fn size_for(&self, t: usize, max_ctx: usize) -> usize {
        (self.window + t - 1).min(max_ctx.max(1))
    }

    fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes() + self.pos.len() * 4
    }
}

/// The KV cache of `slots` sequences: keys and values of every layer at every position so far,
/// `[slot][layer][n_ctx][d]` (key/value heads side by side within `d`), but for sliding-window
/// layers, which keep their window in a [`Ring`]. `n_ctx` grows as the sequences do, up to the
/// model's context.
#[derive(Debug)]
pub struct Cache {
    pub(crate) slots: usize,
    /// `n_layer`: the layers that keep every position.
    pub(crate) geom: Geom,
    pub(crate) k: Kv,
    pub(crate) v: Kv,
    /// Each layer's place.
    pub(crate) layers: Vec<LayerKv>,
    pub(crate) ring: Option<Ring>,
    /// Positions filled per slot (padding included).
    pub(crate) len: Vec<usize>,
    /// `[slot][n_ctx]`: 1 where the position holds a real token.
    pub(crate) valid: Vec<u8>,
    /// `[slot][n_ctx]`: the position id of the token there (sliding windows count in them).
    pub(crate) pos: Vec<u32>,
    /// `[slot][n_ctx]`: the token id there (LongRoPE recomputes a cache from them).
    pub(crate) tok: Vec<u32>,
    /// The position id of each slot's next real token.
    pub(crate) next_pos: Vec<usize>,
    /// The model's context: no slot grows past it.
    pub(crate) max_ctx: usize,
    /// A recurrent model's state, `rnn_per_slot` values per slot (empty for the Transformers).
    pub(crate) rnn: Vec<f32>,
    pub(crate) rnn_per_slot: usize,
    pub(crate) work: Work,
    /// Set from another thread to stop a forward call between layers ([`Cache::set_cancel`]).
    pub(crate) cancel: Option<Arc<AtomicBool>>,
    /// The model that made it: only that one may run on it ([`Cache::begin`]).
    pub(crate) owner: ModelId,
}

/// [`Error::Cancelled`] once `flag` is set.
#[inline]
pub(crate) fn check_cancel(flag: &Option<Arc<AtomicBool>>) -> Result<()> {
    match flag {
        Some(f) if f.load(Ordering::Relaxed) => Err(Error::Cancelled),
        _ => Ok(()),
    }
}

/// Keys (or values) in a cache of `slots × n_layer × n_ctx × d`, or an error when that overflows.
fn cache_elems(slots: usize, n_layer: usize, n_ctx: usize, d: usize) -> Result<usize> {
    slots
        .checked_mul(n_layer)
        .and_then(|x| x.checked_mul(n_ctx))
        .and_then(|x| x.checked_mul(d))
        .ok_or_else(|| {
            Error::OutOfMemory(format!(
                "a KV cache of {slots} sequences × {n_ctx} positions is too large to address"
            ))
        })
}

/// Positions a new cache has room for before it first grows.
const INITIAL_CTX: usize = 64;

impl Cache {
    /// An empty cache for `slots` sequences of up to `max_ctx` positions, keys and values of
    /// `n_layer` layers × `d` values each, room for `capacity` positions to start with.
    pub(crate) fn new(
        n_layer: usize,
        d: usize,
        max_ctx: usize,
        slots: usize,
        dtype: KvDtype,
        capacity: usize,
    ) -> Result<Self> {
        Cache::windowed(n_layer, d, max_ctx, slots, dtype, capacity, &[])
    }

    /// [`Cache::new`] for layers of which some have a sliding window (`windows[l]`, empty for
    /// none): those keep a [`Ring`] of their window.
    pub(crate) fn windowed(
        n_layer: usize,
        d: usize,
        max_ctx: usize,
        slots: usize,
        dtype: KvDtype,
        capacity: usize,
        windows: &[Option<usize>],
    ) -> Result<Self> {
        let n_ctx = capacity.clamp(1, max_ctx.max(1));
        // A window as long as the context keeps everything anyway.
        let ringed = |l: usize| windows.get(l).copied().flatten().filter(|&w| w < max_ctx);
        let (mut full, mut rings) = (0, 0);
        let layers: Vec<LayerKv> = (0..n_layer)
            .map(|l| match ringed(l) {
                Some(_) => {
                    rings += 1;
                    LayerKv::Ring(rings - 1)
                }
                None => {
                    full += 1;
                    LayerKv::Full(full - 1)
                }
            })
            .collect();
        let ring = match (0..n_layer).filter_map(ringed).max() {
            None => None,
            Some(window) => {
                // (Grown to the window plus a call's new positions less one as calls come.)
                let size = window.min(max_ctx.max(1));
                let geom = Geom {
                    n_ctx: size,
                    n_layer: rings,
                    d,
                };
                let elems = cache_elems(slots, rings, size, d)?;
                Some(Ring {
                    geom,
                    k: Kv::zeros(dtype, elems)?,
                    v: Kv::zeros(dtype, elems)?,
                    pos: vec![EMPTY; slots.saturating_mul(size)],
                    window,
                })
            }
        };
        let geom = Geom {
            n_ctx,
            n_layer: full,
            d,
        };
        let size = cache_elems(slots, full, n_ctx, d)?;
        Ok(Cache {
            slots,
            geom,
            k: Kv::zeros(dtype, size)?,
            v: Kv::zeros(dtype, size)?,
            layers,
            ring,
            len: vec![0; slots],
            valid: mem::zeros(slots.saturating_mul(n_ctx), "the KV cache")?,
            pos: mem::zeros(slots.saturating_mul(n_ctx), "the KV cache")?,
            tok: mem::zeros(slots.saturating_mul(n_ctx), "the KV cache")?,
            next_pos: vec![0; slots],
            max_ctx,
            rnn: Vec::new(),
            rnn_per_slot: 0,
            work: Work::default(),
            cancel: None,
            owner: ModelId::NONE,
        })
    }

    /// Marks the cache as made by model `id` (the model's `new_cache` calls it).
    pub(crate) fn owned_by(mut self, id: ModelId) -> Self {
        self.owner = id;
        self
    }

    /// An empty cache for a recurrent model: `per_slot` state values per sequence (zeros), no
    /// keys or values; positions are still counted (up to `max_ctx`).
    pub(crate) fn recurrent(slots: usize, per_slot: usize, max_ctx: usize) -> Result<Self> {
        let mut c = Cache::new(1, 0, max_ctx, slots, KvDtype::F32, INITIAL_CTX.min(max_ctx))?;
        c.rnn = mem::zeros(slots.saturating_mul(per_slot), "the recurrent state")?;
        c.rnn_per_slot = per_slot;
        Ok(c)
    }

    /// The first capacity of a cache made without a length in mind.
    pub(crate) fn default_capacity(max_ctx: usize) -> usize {
        INITIAL_CTX.min(max_ctx)
    }

    /// Makes room for `t` more positions in every slot (doubling the capacity, at most to the
    /// model's context), or says which sequence would outgrow the context.
    pub(crate) fn reserve(&mut self, t: usize, what: &str) -> Result<()> {
        let need = self.len.iter().map(|&l| l + t).max().unwrap_or(0);
        if need > self.max_ctx {
            return Err(Error::invalid(format!(
                "sequence of {need} tokens is longer than the model's {what} = {}",
                self.max_ctx
            )));
        }
        self.reserve_ring(t)?;
        if need <= self.geom.n_ctx {
            return Ok(());
        }
        let old = self.geom;
        let n_ctx = need.max(2 * old.n_ctx).min(self.max_ctx);
        let geom = Geom { n_ctx, ..old };
        let size = cache_elems(self.slots, old.n_layer, n_ctx, old.d)?;
        let mut k = Kv::zeros(self.k.dtype(), size)?;
        let mut v = Kv::zeros(self.v.dtype(), size)?;
        let mut valid: Vec<u8> = mem::zeros(self.slots * n_ctx, "the KV cache")?;
        let mut pos: Vec<u32> = mem::zeros(self.slots * n_ctx, "the KV cache")?;
        let mut tok: Vec<u32> = mem::zeros(self.slots * n_ctx, "the KV cache")?;
        for s in 0..self.slots {
            let used = self.len[s] * old.d;
            for l in 0..old.n_layer {
                k.copy_from(geom.at(s, l, 0), &self.k, old.at(s, l, 0), used);
                v.copy_from(geom.at(s, l, 0), &self.v, old.at(s, l, 0), used);
            }
            let (new, was) = (s * n_ctx, s * old.n_ctx);
            let used = self.len[s];
            valid[new..new + used].copy_from_slice(&self.valid[was..was + used]);
            pos[new..new + used].copy_from_slice(&self.pos[was..was + used]);
            tok[new..new + used].copy_from_slice(&self.tok[was..was + used]);
        }
        (self.k, self.v, self.valid, self.pos, self.tok) = (k, v, valid, pos, tok);
        self.geom = geom;
        Ok(())
    }

    /// Grows the ring (if any) to hold a call of `t` new positions, each held position moving
    /// to its entry in the larger ring.
    fn reserve_ring(&mut self, t: usize) -> Result<()> {
        let (slots, max_ctx) = (self.slots, self.max_ctx);
        let Some(old) = self.ring.as_ref() else {
            return Ok(());
        };
        let size = old.size_for(t, max_ctx);
        if size <= old.geom.n_ctx {
            return Ok(());
        }
        let size = size.max(2 * old.geom.n_ctx).min(max_ctx.max(1));
        let geom = Geom {
            n_ctx: size,
            ..old.geom
        };
        let elems = cache_elems(slots, geom.n_layer, size, geom.d)?;
        let mut new = Ring {
            geom,
            k: Kv::zeros(old.k.dtype(), elems)?,
            v: Kv::zeros(old.v.dtype(), elems)?,
            pos: vec![EMPTY; slots.saturating_mul(size)],
            window: old.window,
        };
        let was = old.geom.n_ctx;
        for s in 0..slots {
            for e in 0..was {
                let p = old.pos[s * was + e];
                if p == EMPTY {
                    continue;
                }
                let to = p as usize % size;
                new.pos[s * size + to] = p;
                for l in 0..geom.n_layer {
                    let (dst, src) = (geom.at(s, l, to), old.geom.at(s, l, e));
                    new.k.copy_from(dst, &old.k, src, geom.d);
                    new.v.copy_from(dst, &old.v, src, geom.d);
                }
            }
        }
        self.ring = Some(new);
        Ok(())
    }

    /// Checks that model `model` made this cache and a forward call's input (`tokens` and
    /// `mask`, `[slots × t]`, ids below `vocab`), makes room for `t` more positions (`what`
    /// names the model's context limit in errors) and fills in the new rows' positions.
    pub(crate) fn begin(
        &mut self,
        model: ModelId,
        tokens: &[u32],
        mask: &[u8],
        t: usize,
        vocab: usize,
        what: &str,
    ) -> Result<()> {
        if self.owner != model {
            let g = self.geom;
            let shape = if self.rnn_per_slot > 0 {
                format!("a recurrent state of {} values", self.rnn_per_slot)
            } else {
                format!(
                    "{} layers × {} key/value values a position, context {}",
                    g.n_layer, g.d, self.max_ctx
                )
            };
            return Err(Error::invalid(format!(
                "past_key_values was made by another model ({shape}); a cache can only be \
                 continued by the model whose output it came from"
            )));
        }
        let slots = self.slots;
        if tokens.len() != slots * t || mask.len() != slots * t {
            return Err(Error::invalid(format!(
                "forward: {} tokens and {} mask values for {slots} sequences of {t}",
                tokens.len(),
                mask.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::OutOfRange(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        self.reserve(t, what)?;
        self.positions(mask, t);
        // (Past `len`: a call that fails leaves them unused.)
        for s in 0..slots {
            let at = s * self.geom.n_ctx + self.len[s];
            self.tok[at..at + t].copy_from_slice(&tokens[s * t..(s + 1) * t]);
        }
        // The ring entries the new real positions take. (A call that fails leaves them naming
        // positions past the sequence, which no query sees until a later call writes them;
        // what they held was older than any window still to be used.)
        if let Some(ring) = self.ring.as_mut() {
            let size = ring.geom.n_ctx;
            for (r, &m) in mask.iter().enumerate() {
                if m != 0 {
                    let p = self.work.positions[r];
                    ring.pos[(r / t) * size + p % size] = u32::try_from(p).unwrap_or(EMPTY);
                }
            }
        }
        Ok(())
    }

    /// Fills `work.positions` with the position id of each of the `[slots × t]` new rows:
    /// real tokens count on from the slot's next position, padding gets 0.
    fn positions(&mut self, mask: &[u8], t: usize) {
        let positions = &mut self.work.positions;
        positions.clear();
        for s in 0..self.slots {
            let mut p = self.next_pos[s];
            for i in 0..t {
                if mask[s * t + i] != 0 {
                    positions.push(p);
                    p += 1;
                } else {
                    positions.push(0);
                }
            }
        }
    }

    /// Records the `t` new positions of every slot (after every layer has appended them).
    pub(crate) fn commit(&mut self, mask: &[u8], t: usize) {
        for s in 0..self.slots {
            for i in 0..t {
                let real = mask[s * t + i] != 0;
                let at = s * self.geom.n_ctx + self.len[s] + i;
                self.valid[at] = u8::from(real);
                self.pos[at] = u32::try_from(self.work.positions[s * t + i]).unwrap_or(u32::MAX);
                if real {
                    self.next_pos[s] += 1;
                }
            }
            self.len[s] += t;
        }
    }

    /// The position id the next real token of slot `s` gets.
    pub(crate) fn next_position(&self, s: usize) -> usize {
        self.next_pos[s]
    }

    /// Every slot's tokens so far followed by `tokens` (`t` a slot) and the mask of both
    /// (padding held in the cache stays padding): the input that recomputes this cache and
    /// the call in one go, `len + t` a slot (the slots' lengths being equal).
    pub(crate) fn replay(
        &self,
        tokens: &[u32],
        mask: &[u8],
        t: usize,
    ) -> (Vec<u32>, Vec<u8>, usize) {
        let n = self.len.iter().copied().max().unwrap_or(0);
        let total = n + t;
        let (mut all, mut all_mask) = (Vec::with_capacity(self.slots * total), Vec::new());
        for s in 0..self.slots {
            let row = s * self.geom.n_ctx;
            let pad = n - self.len[s];
            all.extend(std::iter::repeat_n(0, pad));
            all_mask.extend(std::iter::repeat_n(0, pad));
            all.extend_from_slice(&self.tok[row..row + self.len[s]]);
            all_mask.extend_from_slice(&self.valid[row..row + self.len[s]]);
            all.extend_from_slice(&tokens[s * t..(s + 1) * t]);
            all_mask.extend_from_slice(&mask[s * t..(s + 1) * t]);
        }
        (all, all_mask, total)
    }

    /// An empty cache like this one (the same slots, model, element type, capacity and
    /// cancel flag).
    pub(crate) fn fresh(&self) -> Result<Cache> {
        let g = self.geom;
        let mut c = Cache::new(
            g.n_layer,
            g.d,
            self.max_ctx,
            self.slots,
            self.k.dtype(),
            g.n_ctx,
        )?;
        c.layers.clone_from(&self.layers);
        c.ring = self.ring.as_ref().map(|r| {
            let mut r = r.clone();
            r.pos.fill(EMPTY);
            r
        });
        c.owner = self.owner;
        c.cancel = self.cancel.clone();
        Ok(c)
    }

    /// A flag that, once set (from any thread), makes forward calls on this cache stop between
    /// layers with [`Error::Cancelled`]; the cache is left as it was before that call.
    pub fn set_cancel(&mut self, flag: Option<Arc<AtomicBool>>) {
        self.cancel = flag;
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

    /// Bytes held by keys and values (or a recurrent model's state).
    pub fn bytes(&self) -> usize {
        let ring = self.ring.as_ref().map_or(0, Ring::bytes);
        self.k.bytes() + self.v.bytes() + ring + self.rnn.len() * 4
    }

    /// A recurrent model's state of slot `s` (empty for the Transformers).
    pub fn state(&self, s: usize) -> &[f32] {
        let p = self.rnn_per_slot;
        &self.rnn[s * p..(s + 1) * p]
    }

    /// Replaces slot `s`'s recurrent state (`values` must have the state's size).
    pub fn set_state(&mut self, s: usize, values: &[f32]) -> Result<()> {
        let p = self.rnn_per_slot;
        if s >= self.slots || values.len() != p {
            return Err(Error::invalid(format!(
                "state of slot {s}: {} values given, the model's state has {p} ({} slots)",
                values.len(),
                self.slots
            )));
        }
        self.rnn[s * p..(s + 1) * p].copy_from_slice(values);
        Ok(())
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
        let n = sources.len();
        let size = cache_elems(n, g.n_layer, g.n_ctx, g.d)?;
        let mut k = Kv::zeros(self.k.dtype(), size)?;
        let mut v = Kv::zeros(self.v.dtype(), size)?;
        let mut valid: Vec<u8> = mem::zeros(n.saturating_mul(g.n_ctx), "the KV cache")?;
        let mut pos: Vec<u32> = mem::zeros(n.saturating_mul(g.n_ctx), "the KV cache")?;
        let mut tok: Vec<u32> = mem::zeros(n.saturating_mul(g.n_ctx), "the KV cache")?;
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
            pos[i * g.n_ctx..(i + 1) * g.n_ctx]
                .copy_from_slice(&self.pos[s * g.n_ctx..(s + 1) * g.n_ctx]);
            tok[i * g.n_ctx..(i + 1) * g.n_ctx]
                .copy_from_slice(&self.tok[s * g.n_ctx..(s + 1) * g.n_ctx]);
        }
        let ring = match self.ring.as_ref() {
            None => None,
            Some(r) => {
                let rg = r.geom;
                let elems = cache_elems(n, rg.n_layer, rg.n_ctx, rg.d)?;
                let mut new = Ring {
                    geom: rg,
                    k: Kv::zeros(r.k.dtype(), elems)?,
                    v: Kv::zeros(r.v.dtype(), elems)?,
                    pos: vec![EMPTY; n.saturating_mul(rg.n_ctx)],
                    window: r.window,
                };
                let per_slot = rg.n_layer * rg.n_ctx * rg.d;
                for (i, &s) in sources.iter().enumerate() {
                    new.k
                        .copy_from(rg.at(i, 0, 0), &r.k, rg.at(s, 0, 0), per_slot);
                    new.v
                        .copy_from(rg.at(i, 0, 0), &r.v, rg.at(s, 0, 0), per_slot);
                    new.pos[i * rg.n_ctx..(i + 1) * rg.n_ctx]
                        .copy_from_slice(&r.pos[s * rg.n_ctx..(s + 1) * rg.n_ctx]);
                }
                Some(new)
            }
        };
        Ok(Cache {
            slots: n,
            geom: g,
            k,
            v,
            layers: self.layers.clone(),
            ring,
            len: sources.iter().map(|&s| self.len[s]).collect(),
            valid,
            pos,
            tok,
            next_pos: sources.iter().map(|&s| self.next_pos[s]).collect(),
            max_ctx: self.max_ctx,
            rnn: sources
                .iter()
                .flat_map(|&s| {
                    let p = self.rnn_per_slot;
                    self.rnn[s * p..(s + 1) * p].iter().copied()
                })
                .collect(),
            rnn_per_slot: self.rnn_per_slot,
            work: Work::default(),
            cancel: self.cancel.clone(),
            owner: self.owner,
        })
    }
}
