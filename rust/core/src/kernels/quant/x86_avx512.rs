//! Quantized kernels with AVX-512 VNNI: one `vpdpbusd` multiplies 4 weights of each of 16 rows
//! (one 64-byte load of a tile) by 4 broadcast activation bytes and adds them into 16 int32
//! lanes, one per row. Tiles of 16 rows × up to [`MR`] activation rows stay in registers.
//!
//! `vpdpbusd` takes unsigned × signed bytes. 4-bit quants are unsigned already (0..15); int8
//! weights are flipped to unsigned (`w ^ 0x80` = `w + 128`). The offsets come back out through
//! each activation block's quant sum `s`: the int32 lanes start at `−128·s` (q8_0) or `−8·s`
//! (q4_0), and q4_1 adds `m · d_a · s` in f32.

#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{for_groups, row_tiles, tile_layout};
use crate::kernels::QGemmFn;
use crate::quant::{QActs, QMatrix, BLOCK, ROWS};

/// Activation rows per register tile.
const MR: usize = 7;

/// The quantized matmul ([`crate::kernels::QGemmFn`]) per format, by
/// [`super::format_index`].
///
/// # Safety
/// As [`super::scalar::qgemm`]; the CPU must have AVX-512F/BW/VNNI and F16C (checked by the
/// dispatch point).
pub const QGEMM: [QGemmFn; 3] = [run::<0>, run::<1>, run::<2>];

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma,avx2")]
unsafe fn run<const T: u8>(
    w: &QMatrix,
    g0: usize,
    g1: usize,
    a: &QActs,
    i0: usize,
    i1: usize,
    out: *mut f32,
    ldo: usize,
) {
    let blocks = w.blocks();
    let mask = |valid: usize| ((1u32 << valid) - 1) as __mmask16;
    // Many activation rows (a prompt): two row groups per register tile, so each broadcast
    // activation feeds two vpdpbusd; a few rows (decoding): one group, two chains per row.
    let pairs = i1 - i0 >= 4 && g1 - g0 >= 2;
    // The rows in tiles of at most MR, as even as can be (14 rows: 7 + 7, not 7 + 7 + 0;
    // 8: 4 + 4, not 7 + 1).
    let tr = crate::kernels::even_tile(i1 - i0, MR);
    let mut pending: Option<(usize, &[u8], usize)> = None;
    for_groups(w, g0, g1, a, i1, |g, tiles, valid| {
        if pairs && valid == ROWS && pending.is_none() && g + 1 < g1 {
            pending = Some((g, tiles, valid));
            return;
        }
        // The tile's groups (a single group is passed twice and read once).
        let (t, gs, masks) = match pending.take() {
            Some((g_a, t_a, v_a)) => ([t_a, tiles], [g_a, g], [mask(v_a), mask(valid)]),
            None => ([tiles, tiles], [g, g], [mask(valid); 2]),
        };
        let two = gs[0] != gs[1];
        row_tiles(i0, i1, tr, |i, r| {
            // SAFETY: rows i..i+r of `out` at the columns of the tile's groups, within the
            // caller's promise; `tiles` are those groups', `a` holds rows up to i1.
            unsafe {
                let o = [
                    out.add(i * ldo + gs[0] * ROWS),
                    out.add(i * ldo + gs[1] * ROWS),
                ];
                let b = blocks;
                match (two, r) {
                    (true, 7) => tile::<T, 2, 7>(t, b, a, i, o, ldo, masks),
                    (true, 6) => tile::<T, 2, 6>(t, b, a, i, o, ldo, masks),
                    (true, 5) => tile::<T, 2, 5>(t, b, a, i, o, ldo, masks),
                    (true, 4) => tile::<T, 2, 4>(t, b, a, i, o, ldo, masks),
                    (true, 3) => tile::<T, 2, 3>(t, b, a, i, o, ldo, masks),
                    (true, 2) => tile::<T, 2, 2>(t, b, a, i, o, ldo, masks),
                    (true, _) => tile::<T, 2, 1>(t, b, a, i, o, ldo, masks),
                    (false, 7) => tile::<T, 1, 7>(t, b, a, i, o, ldo, masks),
                    (false, 6) => tile::<T, 1, 6>(t, b, a, i, o, ldo, masks),
                    (false, 5) => tile::<T, 1, 5>(t, b, a, i, o, ldo, masks),
                    (false, 4) => tile::<T, 1, 4>(t, b, a, i, o, ldo, masks),
                    (false, 3) => tile::<T, 1, 3>(t, b, a, i, o, ldo, masks),
                    (false, 2) => tile::<T, 1, 2>(t, b, a, i, o, ldo, masks),
                    (false, _) => tile::<T, 1, 1>(t, b, a, i, o, ldo, masks),
                }
            }
        });
    });
    debug_assert!(pending.is_none());
}

/// `G` row groups (16 weight rows each, `tiles[..G]`) × `R` activation rows from `i`, over
/// every block; group `gi` writes at `out[gi]` with `mask[gi]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma,avx2")]
#[inline]
unsafe fn tile<const T: u8, const G: usize, const R: usize>(
    tiles: [&[u8]; 2],
    blocks: usize,
    a: &QActs,
    i: usize,
    out: [*mut f32; 2],
    ldo: usize,
    mask: [__mmask16; 2],
) {
    let (tb, qo) = tile_layout(T);
    let nb = a.blocks;
    let aq = a.q[i * nb * BLOCK..(i + R) * nb * BLOCK].as_ptr();
    let ad = &a.d[i * nb..(i + R) * nb];
    let asum = &a.s[i * nb..(i + R) * nb];
    // One row, one group: two chains of vpdpbusd (its latency, not its throughput, bounds
    // such a tile), added at the end of each block.
    let split = G * R == 1;
    let mut facc = [[_mm512_setzero_ps(); R]; G];
    let flip = _mm512_set1_epi8(-128i8);
    let low4 = _mm512_set1_epi8(15);
    for b in 0..blocks {
        let t: [*const u8; G] = std::array::from_fn(|gi| tiles[gi][b * tb..(b + 1) * tb].as_ptr());
        // SAFETY: every load below is within the groups' tiles (tb bytes each) or within rows
        // i..i+R of the activations (R·nb·32 bytes); unaligned loads throughout.
        unsafe {
            let mut iacc = [[_mm512_setzero_si512(); R]; G];
            for acc in iacc.iter_mut() {
                for (ii, v) in acc.iter_mut().enumerate() {
                    let s = asum[ii * nb + b];
                    *v = match T {
                        0 => _mm512_set1_epi32(-128 * s),
                        1 => _mm512_set1_epi32(-8 * s),
                        _ => _mm512_setzero_si512(),
                    };
                }
            }
            let mut iacc2 = [_mm512_setzero_si512(); R];
            // Sub-groups of 4 columns in pairs: (w0, a0) then (w1, a1).
            for p in 0..BLOCK / 8 {
                let mut w0 = [_mm512_setzero_si512(); G];
                let mut w1 = [_mm512_setzero_si512(); G];
                for gi in 0..G {
                    let q = t[gi].add(qo);
                    if T == 0 {
                        w0[gi] = _mm512_xor_si512(_mm512_loadu_si512(q.add(128 * p).cast()), flip);
                        w1[gi] =
                            _mm512_xor_si512(_mm512_loadu_si512(q.add(128 * p + 64).cast()), flip);
                    } else {
                        let v = _mm512_loadu_si512(q.add(64 * p).cast());
                        w0[gi] = _mm512_and_si512(v, low4);
                        w1[gi] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                    }
                }
                for ii in 0..R {
                    let x = aq.add(ii * nb * BLOCK + b * BLOCK + 8 * p);
                    let a0 = _mm512_set1_epi32(x.cast::<i32>().read_unaligned());
                    let a1 = _mm512_set1_epi32(x.add(4).cast::<i32>().read_unaligned());
                    for gi in 0..G {
                        iacc[gi][ii] = _mm512_dpbusd_epi32(iacc[gi][ii], w0[gi], a0);
                        if split {
                            iacc2[ii] = _mm512_dpbusd_epi32(iacc2[ii], w1[gi], a1);
                        } else {
                            iacc[gi][ii] = _mm512_dpbusd_epi32(iacc[gi][ii], w1[gi], a1);
                        }
                    }
                }
            }
            if split {
                iacc[0][0] = _mm512_add_epi32(iacc[0][0], iacc2[0]);
            }
            for gi in 0..G {
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(t[gi].cast()));
                let mw = if T == 2 {
                    _mm512_cvtph_ps(_mm256_loadu_si256(t[gi].add(32).cast()))
                } else {
                    _mm512_setzero_ps()
                };
                for ii in 0..R {
                    let da = ad[ii * nb + b];
                    let sc = _mm512_mul_ps(dw, _mm512_set1_ps(da));
                    let f = &mut facc[gi][ii];
                    *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[gi][ii]), sc, *f);
                    if T == 2 {
                        let ms = _mm512_set1_ps(da * asum[ii * nb + b] as f32);
                        *f = _mm512_fmadd_ps(mw, ms, *f);
                    }
                }
            }
        }
    }
    for gi in 0..G {
        for (ii, v) in facc[gi].iter().enumerate() {
            // SAFETY: row i + ii of the output, the group's valid columns (mask).
            unsafe { _mm512_mask_storeu_ps(out[gi].add(ii * ldo), mask[gi], *v) };
        }
    }
}

/// See [`crate::kernels::QuantizeActsFn`]; bit-identical to the scalar reference.
pub fn quantize_acts(x: &[f32], k: usize, q: &mut [i8], d: &mut [f32], s: &mut [i32], levels: i32) {
    // SAFETY: the dispatch point hands this out only on CPUs with AVX-512F/BW.
    unsafe { quantize_acts_avx512(x, k, q, d, s, levels) }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_acts_avx512(
    x: &[f32],
    k: usize,
    q: &mut [i8],
    d: &mut [f32],
    s: &mut [i32],
    levels: i32,
) {
    let nb = k.div_ceil(BLOCK);
    let m = d.len() / nb;
    assert!(x.len() >= m * k && q.len() == m * nb * BLOCK && s.len() == m * nb);
    let (qs, ds, ss) = (q, d, s);
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        for b in 0..nb {
            let at = i * nb + b;
            let k0 = b * BLOCK;
            let len = BLOCK.min(k - k0);
            let src = row[k0..k0 + len].as_ptr();
            // SAFETY: masked loads read only the `len` values of this block.
            let (v0, v1) = unsafe {
                let m0 = ((1u32 << len.min(16)) - 1) as __mmask16;
                let m1 = ((1u64 << len.saturating_sub(16)) - 1) as __mmask16;
                (
                    _mm512_maskz_loadu_ps(m0, src),
                    _mm512_maskz_loadu_ps(m1, src.add(len.min(16))),
                )
            };
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let q = &mut qs[at * BLOCK..(at + 1) * BLOCK];
            if amax == 0.0 {
                q.fill(0);
                ds[at] = 0.0;
                ss[at] = 0;
                continue;
            }
            let id = _mm512_set1_ps(levels as f32 / amax);
            let (lo, hi) = (_mm512_set1_epi32(-levels), _mm512_set1_epi32(levels));
            let q0 = _mm512_min_epi32(
                _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)), lo),
                hi,
            );
            let q1 = _mm512_min_epi32(
                _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, id)), lo),
                hi,
            );
            // SAFETY: 2 × 16 bytes into this block's 32.
            unsafe {
                _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(q1));
            }
            ds[at] = amax / levels as f32;
            ss[at] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }
}
