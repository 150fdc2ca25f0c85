//! Causal attention of new positions over the KV cache, with grouped-query heads (several
//! query heads reading one key/value head): one dot product per (query, key) for a few new
//! tokens, matmuls per tile of queries for a prompt.

use rayon::prelude::*;

use crate::kernels::{self, SendPtr};
use crate::model::act::SERIAL_ELEMS;
use crate::model::kv::{Cache, Geom, Kv, LayerKv, EMPTY};

/// Where the queries, keys and values sit in each row of a layer's projection buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QkvLayout {
    /// Values per row.
    pub(crate) stride: usize,
    /// The keys' first column (the queries start at 0).
    pub(crate) k_off: usize,
    /// The values' first column.
    pub(crate) v_off: usize,
    /// Key (and value) columns: key/value heads × head size.
    pub(crate) kv_d: usize,
}

impl Cache {
    /// Copies the new keys and values of layer `l` (as `lay` places them in `qkv`, `[slots ×
    /// t]` rows) into the cache.
    pub(crate) fn append(
        &mut self,
        kern: &kernels::Kernels,
        l: usize,
        qkv: &[f32],
        (t, mask, positions): (usize, &[u8], &[usize]),
        lay: &QkvLayout,
    ) {
        let l = match self.layers.get(l) {
            Some(LayerKv::Ring(r)) => {
                // A sliding-window layer: real positions into their ring entries.
                let Some(ring) = self.ring.as_mut() else {
                    return;
                };
                let size = ring.geom.n_ctx;
                for (row_i, &m) in mask.iter().enumerate() {
                    if m == 0 {
                        continue;
                    }
                    let row = &qkv[row_i * lay.stride..(row_i + 1) * lay.stride];
                    let at = ring.geom.at(row_i / t, *r, positions[row_i] % size);
                    ring.k.put(kern, at, &row[lay.k_off..lay.k_off + lay.kv_d]);
                    ring.v.put(kern, at, &row[lay.v_off..lay.v_off + lay.kv_d]);
                }
                return;
            }
            Some(LayerKv::Full(i)) => *i,
            None => l,
        };
        for (s, &start) in self.len.iter().enumerate() {
            for i in 0..t {
                let row = &qkv[(s * t + i) * lay.stride..(s * t + i + 1) * lay.stride];
                let at = self.geom.at(s, l, start + i);
                self.k.put(kern, at, &row[lay.k_off..lay.k_off + lay.kv_d]);
                self.v.put(kern, at, &row[lay.v_off..lay.v_off + lay.kv_d]);
            }
        }
    }

    /// The attention inputs of layer `l` over this cache for `t` new positions per slot.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attn_args<'a>(
        &'a self,
        qkv: &'a [f32],
        mask: &'a [u8],
        l: usize,
        t: usize,
        heads: (usize, usize, usize),
        lay: &QkvLayout,
        scale: f32,
    ) -> AttnArgs<'a> {
        let (nh, nkv, hd) = heads;
        let (k, v, geom, layer, ring) = match (self.layers.get(l), self.ring.as_ref()) {
            (Some(LayerKv::Ring(r)), Some(ring)) => {
                (&ring.k, &ring.v, &ring.geom, *r, Some(&ring.pos[..]))
            }
            (Some(LayerKv::Full(i)), _) => (&self.k, &self.v, &self.geom, *i, None),
            _ => (&self.k, &self.v, &self.geom, l, None),
        };
        AttnArgs {
            qkv,
            k,
            v,
            geom,
            layer,
            ring,
            len: &self.len,
            valid: &self.valid,
            kpos: &self.pos,
            mask,
            qpos: &[],
            window: usize::MAX,
            t,
            stride: lay.stride,
            d: nh * hd,
            hd,
            nh,
            group: nh / nkv,
            scale,
        }
    }
}

pub(crate) struct AttnArgs<'a> {
    qkv: &'a [f32],
    k: &'a Kv,
    v: &'a Kv,
    geom: &'a Geom,
    layer: usize,
    /// A sliding-window layer's ring (`[slot][size]`: the position id at each entry): the
    /// keys are its entries, not the cache positions.
    ring: Option<&'a [u32]>,
    len: &'a [usize],
    valid: &'a [u8],
    /// `[slot][n_ctx]`: the position id of the token at each cache position.
    kpos: &'a [u32],
    mask: &'a [u8],
    /// The position id of each new row (`[slots × t]`); read only with a window.
    qpos: &'a [usize],
    /// A query sees the keys less than this many positions back (itself included);
    /// `usize::MAX`: every earlier one.
    window: usize,
    t: usize,
    /// Values per row of `qkv` (the queries are its first `d` columns).
    stride: usize,
    /// Output columns: query heads × head size.
    d: usize,
    hd: usize,
    nh: usize,
    /// Query heads per key/value head.
    group: usize,
    scale: f32,
}

impl<'a> AttnArgs<'a> {
    /// With a sliding window: each query sees the `window` positions up to its own (`qpos`:
    /// the position id of each new row).
    pub(crate) fn windowed(mut self, window: Option<usize>, qpos: &'a [usize]) -> Self {
        if let Some(w) = window {
            self.window = w;
            self.qpos = qpos;
        }
        self
    }

    /// The keys new row `i` of slot `s` looks at: the cache positions up to its own, or
    /// every ring entry.
    #[inline]
    fn keys(&self, s: usize, i: usize) -> usize {
        match self.ring {
            None => self.len[s] + i + 1,
            Some(_) => self.geom.n_ctx,
        }
    }

    /// What new row `i` of slot `s` sees: [`RowMask::sees`].
    #[inline]
    fn row(&self, s: usize, i: usize) -> RowMask<'_> {
        let t = self.t;
        if let Some(pos) = self.ring {
            let size = self.geom.n_ctx;
            // A padded row sees nothing (its output is never used).
            let real = self.mask[s * t + i] != 0;
            return RowMask::Ring {
                pos: &pos[s * size..(s + 1) * size],
                qpos: if real {
                    Some(self.qpos[s * t + i])
                } else {
                    None
                },
                window: self.window,
            };
        }
        let (base, n_ctx) = (self.len[s], self.geom.n_ctx);
        let window = (self.window != usize::MAX).then(|| Window {
            size: self.window,
            qpos: self.qpos[s * t + i],
            kpos: &self.kpos[s * n_ctx..s * n_ctx + base],
            new: &self.qpos[s * t..(s + 1) * t],
        });
        RowMask::Rows {
            valid: &self.valid[s * n_ctx..s * n_ctx + base],
            mask: &self.mask[s * t..(s + 1) * t],
            base,
            own: base + i,
            window,
        }
    }
}

/// The keys one new row sees.
enum RowMask<'a> {
    /// Cache positions.
    Rows {
        /// The slot's cached positions: 1 for a real token.
        valid: &'a [u8],
        /// The slot's new positions: 1 for a real token.
        mask: &'a [u8],
        /// Cached positions (the new ones start here).
        base: usize,
        /// The row's own position in the cache.
        own: usize,
        window: Option<Window<'a>>,
    },
    /// Ring entries: those holding a position within the window up to the row's own.
    Ring {
        /// The slot's entries' position ids.
        pos: &'a [u32],
        /// The row's position id; `None` for a padded row, which sees nothing.
        qpos: Option<usize>,
        window: usize,
    },
}

/// A sliding window, counted in position ids.
struct Window<'a> {
    size: usize,
    /// The row's position id.
    qpos: usize,
    /// The position ids of the slot's cached positions and of its new ones.
    kpos: &'a [u32],
    new: &'a [usize],
}

impl RowMask<'_> {
    /// Whether the row sees cache position `p` (at most its own): a real token (its own always
    /// is, so that a padded query has something to attend to; its output is never used),
    /// within the window if there is one.
    #[inline]
    fn sees(&self, p: usize) -> bool {
        match self {
            RowMask::Rows {
                valid,
                mask,
                base,
                own,
                window,
            } => {
                let real = if p < *base {
                    valid[p] != 0
                } else {
                    p == *own || mask[p - base] != 0
                };
                match window {
                    None => real,
                    Some(w) => {
                        let kp = if p < *base {
                            w.kpos[p] as usize
                        } else {
                            w.new[p - base]
                        };
                        real && w.qpos.saturating_sub(kp) < w.size
                    }
                }
            }
            RowMask::Ring { pos, qpos, window } => {
                let kp = pos[p];
                match qpos {
                    Some(q) if kp != EMPTY => {
                        let kp = kp as usize;
                        kp <= *q && q - kp < *window
                    }
                    _ => false,
                }
            }
        }
    }
}

/// Causal attention of the `t` new positions of every slot over that slot's cache, in parallel
/// over (slot, head) pairs. `out` is `[rows, d]`; `scores` a scratch of at least
/// `slots × heads × n_ctx`.
pub(crate) fn attention(
    kern: &kernels::Kernels,
    a: &AttnArgs<'_>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
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
        for i in 0..a.t {
            let row = s * a.t + i;
            let q = &a.qkv[row * a.stride + h * a.hd..row * a.stride + (h + 1) * a.hd];
            let kv_col = (h / a.group) * a.hd;
            let upto = a.keys(s, i); // positions 0..=base+i (or the ring's entries)
            let mut max = f32::NEG_INFINITY;
            let mut any_masked = false;
            let rm = a.row(s, i);
            for (p, slot) in sc.iter_mut().enumerate().take(upto) {
                if rm.sees(p) {
                    let at = a.geom.at(s, a.layer, p) + kv_col;
                    let x = a.k.dot(kern, q, at) * a.scale;
                    *slot = x;
                    max = max.max(x);
                } else {
                    *slot = f32::NEG_INFINITY;
                    any_masked = true;
                }
            }
            // SAFETY: as below.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(row * a.d + h * a.hd), a.hd)
            };
            if max == f32::NEG_INFINITY {
                // Nothing seen (a padded row over a ring): its output is never used.
                o.fill(0.0);
                continue;
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
            // (`o`: each (slot, head) job writes only row `row`'s columns of head `h`,
            // disjoint from every other job's; `out` outlives the parallel loop.)
            o.fill(0.0);
            let inv = 1.0 / sum;
            for (p, &w) in sc[..upto].iter().enumerate() {
                if w != 0.0 {
                    let at = a.geom.at(s, a.layer, p) + kv_col;
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
    let (hd, d, t) = (a.hd, a.d, a.t);
    let tiles = t.div_ceil(ATTN_TILE);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let jobs = a.len.len() * a.nh * tiles;
    type Bufs = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<bool>);
    let job = |(kb, vb, qb, sc, seen): &mut Bufs, job: usize| {
        let (s, h, tile) = (job / (a.nh * tiles), (job / tiles) % a.nh, job % tiles);
        let (i0, i1) = (tile * ATTN_TILE, ((tile + 1) * ATTN_TILE).min(t));
        let (m, keys) = (i1 - i0, a.keys(s, i1 - 1));
        kb.resize(keys * hd, 0.0);
        vb.resize(keys * hd, 0.0);
        for p in 0..keys {
            let at = a.geom.at(s, a.layer, p) + (h / a.group) * hd;
            a.k.read(kern, at, &mut kb[p * hd..(p + 1) * hd]);
            a.v.read(kern, at, &mut vb[p * hd..(p + 1) * hd]);
        }
        qb.clear();
        for i in i0..i1 {
            let row = (s * t + i) * a.stride + h * hd;
            qb.extend_from_slice(&a.qkv[row..row + hd]);
        }
        sc.resize(m * keys, 0.0);
        // SAFETY: `sc` is m × keys.
        unsafe { (kern.gemm_nt)(m, keys, hd, qb, kb, sc.as_mut_ptr(), keys) };
        for (ii, row) in sc.chunks_exact_mut(keys).enumerate() {
            let i = i0 + ii;
            let upto = a.keys(s, i);
            let mut max = f32::NEG_INFINITY;
            let rm = a.row(s, i);
            for (p, x) in row.iter_mut().enumerate() {
                if p < upto && rm.sees(p) {
                    *x *= a.scale;
                    max = max.max(*x);
                } else {
                    *x = f32::NEG_INFINITY;
                }
            }
            if max == f32::NEG_INFINITY {
                row.fill(0.0); // nothing seen: a padded row over a ring
                continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kv::KvDtype;
    use crate::model::ModelId;

    /// Plain causal attention of slot `s`'s row `i` over `keys` (position id, key, value) of
    /// real tokens, with an optional window: softmax over the keys within it, in f64.
    fn reference(
        q: &[f32],
        keys: &[(usize, &[f32], &[f32])],
        qpos: usize,
        window: usize,
        scale: f32,
    ) -> Vec<f64> {
        let seen: Vec<_> = keys.iter().filter(|(p, _, _)| qpos - p < window).collect();
        let scores: Vec<f64> = seen
            .iter()
            .map(|(_, k, _)| {
                q.iter()
                    .zip(*k)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>()
                    * f64::from(scale)
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = w.iter().sum();
        let mut out = vec![0.0; q.len()];
        for ((_, _, v), w) in seen.iter().zip(&w) {
            for (o, x) in out.iter_mut().zip(*v) {
                *o += w / sum * f64::from(*x);
            }
        }
        out
    }

    #[test]
    fn windowed_attention_matches_the_plain_definition_on_both_paths() {
        let kern = kernels::get();
        let (nh, nkv, hd) = (4, 2, 8);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let lay = QkvLayout {
            stride: qd + 2 * kvd,
            k_off: qd,
            v_off: qd + kvd,
            kv_d: kvd,
        };
        let scale = 0.3;
        // t = 40 runs the blocked (prompt) path, t = 5 the per-query one; slot 1 left-padded.
        // Windowed layers keep their keys in a ring, or (for the check) in full rows.
        let cases = [
            (40usize, 7usize, true),
            (40, 7, false),
            (5, 3, true),
            (5, 3, false),
            (40, usize::MAX, false),
        ];
        for (t, window, ringed) in cases {
            let slots = 2;
            let windows = [(window != usize::MAX && ringed).then_some(window)];
            let mut cache = Cache::windowed(1, kvd, 64, slots, KvDtype::F32, 64, &windows).unwrap();
            assert_eq!(cache.ring.is_some(), windows[0].is_some());
            let mut mask = vec![1u8; slots * t];
            mask[t..t + 3].fill(0);
            let tokens = vec![0u32; slots * t];
            cache
                .begin(ModelId::NONE, &tokens, &mask, t, 1, "n_ctx")
                .unwrap();
            let qkv: Vec<f32> = (0..slots * t * lay.stride)
                .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
                .collect();
            let positions = cache.work.positions.clone();
            cache.append(kern, 0, &qkv, (t, &mask, &positions), &lay);
            let w = (window != usize::MAX).then_some(window);
            let args = cache
                .attn_args(&qkv, &mask, 0, t, (nh, nkv, hd), &lay, scale)
                .windowed(w, &positions);
            let mut out = vec![0.0; slots * t * qd];
            attention(kern, &args, &mut out, &mut Vec::new());
            for s in 0..slots {
                for i in 0..t {
                    let r = s * t + i;
                    if mask[r] == 0 {
                        continue; // a padded row's output is never used
                    }
                    for h in 0..nh {
                        let q = &qkv[r * lay.stride + h * hd..r * lay.stride + (h + 1) * hd];
                        let kv = (h / (nh / nkv)) * hd;
                        let keys: Vec<_> = (0..=i)
                            .filter(|&j| mask[s * t + j] != 0)
                            .map(|j| {
                                let row =
                                    &qkv[(s * t + j) * lay.stride..(s * t + j + 1) * lay.stride];
                                (
                                    positions[s * t + j],
                                    &row[lay.k_off + kv..lay.k_off + kv + hd],
                                    &row[lay.v_off + kv..lay.v_off + kv + hd],
                                )
                            })
                            .collect();
                        let want = reference(q, &keys, positions[r], window, scale);
                        let got = &out[r * qd + h * hd..r * qd + (h + 1) * hd];
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (f64::from(*g) - w).abs() < 1e-5,
                                "t {t} window {window} ring {ringed} slot {s} row {i} head \
                                 {h}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_ring_holds_the_window_through_long_decoding() {
        // A prompt of 12 (slot 1 left-padded by 4), then 50 steps of one token: the ring of a
        // window of 5 wraps many times, the full-row cache of the same keys does not; both
        // equal the plain definition over every key so far.
        let kern = kernels::get();
        let (nh, nkv, hd, window) = (2, 1, 4, 5);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let lay = QkvLayout {
            stride: qd + 2 * kvd,
            k_off: qd,
            v_off: qd + kvd,
            kv_d: kvd,
        };
        let slots = 2;
        let mut ring =
            Cache::windowed(1, kvd, 128, slots, KvDtype::F32, 8, &[Some(window)]).unwrap();
        let mut rows: Vec<Vec<(usize, Vec<f32>)>> = vec![Vec::new(); slots];
        let mut step = 0usize;
        for t in std::iter::once(12).chain(std::iter::repeat_n(1, 50)) {
            let mut mask = vec![1u8; slots * t];
            if step == 0 {
                mask[t..t + 4].fill(0);
            }
            let tokens = vec![0u32; slots * t];
            ring.begin(ModelId::NONE, &tokens, &mask, t, 1, "n_ctx")
                .unwrap();
            let qkv: Vec<f32> = (0..slots * t * lay.stride)
                .map(|i| ((i + 7 * step) * 53 % 97) as f32 / 40.0 - 1.2)
                .collect();
            let positions = ring.work.positions.clone();
            ring.append(kern, 0, &qkv, (t, &mask, &positions), &lay);
            let args = ring
                .attn_args(&qkv, &mask, 0, t, (nh, nkv, hd), &lay, 0.5)
                .windowed(Some(window), &positions);
            let mut out = vec![0.0; slots * t * qd];
            attention(kern, &args, &mut out, &mut Vec::new());
            for (s, seen) in rows.iter_mut().enumerate() {
                for i in 0..t {
                    let r = s * t + i;
                    if mask[r] == 0 {
                        continue;
                    }
                    seen.push((
                        positions[r],
                        qkv[r * lay.stride..(r + 1) * lay.stride].to_vec(),
                    ));
                    for h in 0..nh {
                        let q = &qkv[r * lay.stride + h * hd..r * lay.stride + (h + 1) * hd];
                        let keys: Vec<_> = seen
                            .iter()
                            .map(|(p, row)| {
                                (
                                    *p,
                                    &row[lay.k_off..lay.k_off + hd],
                                    &row[lay.v_off..lay.v_off + hd],
                                )
                            })
                            .collect();
                        let want = reference(q, &keys, positions[r], window, 0.5);
                        let got = &out[r * qd + h * hd..r * qd + (h + 1) * hd];
                        for (g, w) in got.iter().zip(&want) {
                            assert!((f64::from(*g) - w).abs() < 1e-5, "step {step} slot {s}");
                        }
                    }
                }
            }
            ring.commit(&mask, t);
            step += 1;
        }
        let size = ring.ring.as_ref().unwrap().geom.n_ctx;
        assert!(
            size < 40,
            "the ring stays near the window plus the prompt: {size}"
        );
        assert!(ring.len(0) == 62 && ring.bytes() < 2 * 2 * size * kvd * 4 + 4 * 2 * size + 1);
    }
}
