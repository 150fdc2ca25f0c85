//! Quantized kernels with AVX2 (no VNNI): each 64-byte group of a tile is read as two halves
//! of 8 rows × 4 weights; `vpmaddubsw` multiplies unsigned × signed bytes into int16 pairs and
//! `vpmaddwd` sums those into one int32 lane per row.
//!
//! int8 weights take a whole row group (both halves) per broadcast activation word, with the
//! sign trick (`|w| · sign(x, w)` = `w · x`, both within int16 since |w|, |x| ≤ 127), or,
//! for 7-bit activations ([`crate::quant::QActs::narrow`]), as unsigned bytes `w + 128` with
//! no sign instruction (see [`group_q8`]); 4-bit quants (0..15) are unsigned already, and a block's eight int16
//! products fit without overflow (8 · 2 · 15 · 127 < 2¹⁵), so they are summed before
//! widening. Offsets as in the AVX-512 file: `−8·s` for q4_0, `+ m · d_a · s` for q4_1.

#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{for_groups, row_tiles, tile_layout};
use crate::kernels::QGemmFn;
use crate::quant::{QActs, QMatrix, BLOCK, ROWS};

/// Activation rows per register tile.
const MR: usize = 4;

/// The quantized matmul ([`crate::kernels::QGemmFn`]) per format, by
/// [`super::format_index`].
///
/// # Safety
/// As [`super::scalar::qgemm`]; the CPU must have AVX2, FMA and F16C (checked by the dispatch
/// point).
pub const QGEMM: [QGemmFn; 3] = [run::<0>, run::<1>, run::<2>];

#[target_feature(enable = "avx2,fma,f16c")]
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
    // q8_0: whole row groups (16 weight rows) per tile, the rows in tiles of at most MR as
    // even as can be.
    let mr = if a.narrow { 5 } else { MR };
    let tr = crate::kernels::even_tile(i1 - i0, mr);
    for_groups(w, g0, g1, a, i1, |g, tiles, valid| {
        if T == 0 {
            row_tiles(i0, i1, tr, |i, r| {
                // SAFETY: rows i..i+r of `out` at the group's columns, the caller's promise.
                unsafe {
                    let o = out.add(i * ldo + g * ROWS);
                    match (a.narrow, r) {
                        (false, 4) => group_q8::<4, false>(tiles, blocks, a, i, o, ldo, valid),
                        (false, 3) => group_q8::<3, false>(tiles, blocks, a, i, o, ldo, valid),
                        (false, 2) => group_q8::<2, false>(tiles, blocks, a, i, o, ldo, valid),
                        (false, _) => group_q8::<1, false>(tiles, blocks, a, i, o, ldo, valid),
                        (true, 5) => group_q8::<5, true>(tiles, blocks, a, i, o, ldo, valid),
                        (true, 4) => group_q8::<4, true>(tiles, blocks, a, i, o, ldo, valid),
                        (true, 3) => group_q8::<3, true>(tiles, blocks, a, i, o, ldo, valid),
                        (true, 2) => group_q8::<2, true>(tiles, blocks, a, i, o, ldo, valid),
                        (true, _) => group_q8::<1, true>(tiles, blocks, a, i, o, ldo, valid),
                    }
                }
            });
            return;
        }
        for h in 0..2 {
            if 8 * h >= valid {
                break;
            }
            let cols = (valid - 8 * h).min(8);
            row_tiles(i0, i1, MR, |i, r| {
                // SAFETY: rows i..i+r of `out` at columns 16g + 8h.., the caller's promise.
                unsafe {
                    let o = out.add(i * ldo + g * ROWS + 8 * h);
                    match r {
                        4 => half::<T, 4>(tiles, blocks, h, a, i, o, ldo, cols),
                        3 => half::<T, 3>(tiles, blocks, h, a, i, o, ldo, cols),
                        2 => half::<T, 2>(tiles, blocks, h, a, i, o, ldo, cols),
                        _ => half::<T, 1>(tiles, blocks, h, a, i, o, ldo, cols),
                    }
                }
            });
        }
    });
}

/// q8_0: one row group (16 weight rows, two vectors of 8) × `R` activation rows from `i`, over
/// every block; each broadcast activation word feeds both halves. Writes the first `valid`
/// columns.
///
/// `NARROW` (activations within ±64, [`QActs::narrow`]): the weights flipped to unsigned
/// (`w ^ 0x80` = `w + 128`, at most 255) go straight into `vpmaddubsw`, whose pairs then stay
/// within int16 (2 · 255 · 64 < 2¹⁵); the int32 lanes start at `−128·s` to take the offset
/// back out. Else the sign trick: `|w| · sign(x, w)`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn group_q8<const R: usize, const NARROW: bool>(
    tiles: &[u8],
    blocks: usize,
    a: &QActs,
    i: usize,
    out: *mut f32,
    ldo: usize,
    valid: usize,
) {
    let (tb, qo) = tile_layout(0);
    let nb = a.blocks;
    let aq = a.q[i * nb * BLOCK..(i + R) * nb * BLOCK].as_ptr();
    let ad = &a.d[i * nb..(i + R) * nb];
    let asum = &a.s[i * nb..(i + R) * nb];
    let mut facc = [[_mm256_setzero_ps(); 2]; R];
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128i8);
    for b in 0..blocks {
        let t = tiles[b * tb..(b + 1) * tb].as_ptr();
        // SAFETY: loads within this tile and rows i..i+R of the activations.
        unsafe {
            let q = t.add(qo);
            let mut iacc = [[_mm256_setzero_si256(); 2]; R];
            if NARROW {
                for (ii, acc) in iacc.iter_mut().enumerate() {
                    let off = _mm256_set1_epi32(-128 * asum[ii * nb + b]);
                    *acc = [off, off];
                }
            }
            for c in 0..BLOCK / 4 {
                let w0 = _mm256_loadu_si256(q.add(64 * c).cast());
                let w1 = _mm256_loadu_si256(q.add(64 * c + 32).cast());
                let (u0, u1) = if NARROW {
                    (_mm256_xor_si256(w0, flip), _mm256_xor_si256(w1, flip))
                } else {
                    (_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(w1, w1))
                };
                for (ii, acc) in iacc.iter_mut().enumerate() {
                    let x = aq.add(ii * nb * BLOCK + b * BLOCK + 4 * c);
                    let av = _mm256_set1_epi32(x.cast::<i32>().read_unaligned());
                    let (p0, p1) = if NARROW {
                        (_mm256_maddubs_epi16(u0, av), _mm256_maddubs_epi16(u1, av))
                    } else {
                        (
                            _mm256_maddubs_epi16(u0, _mm256_sign_epi8(av, w0)),
                            _mm256_maddubs_epi16(u1, _mm256_sign_epi8(av, w1)),
                        )
                    };
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(p0, ones));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(p1, ones));
                }
            }
            let dw = [
                _mm256_cvtph_ps(_mm_loadu_si128(t.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(t.add(16).cast())),
            ];
            for ii in 0..R {
                let da = _mm256_set1_ps(ad[ii * nb + b]);
                for h in 0..2 {
                    let sc = _mm256_mul_ps(dw[h], da);
                    let f = &mut facc[ii][h];
                    *f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[ii][h]), sc, *f);
                }
            }
        }
    }
    for (ii, v) in facc.iter().enumerate() {
        // SAFETY: row i + ii of the output, its first `valid` (≤ 16) columns.
        unsafe {
            let o = out.add(ii * ldo);
            if valid == ROWS {
                _mm256_storeu_ps(o, v[0]);
                _mm256_storeu_ps(o.add(8), v[1]);
            } else {
                let mut tmp = [0.0f32; ROWS];
                _mm256_storeu_ps(tmp.as_mut_ptr(), v[0]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v[1]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, valid);
            }
        }
    }
}

/// Rows `8h..8h+8` of one row group × `R` activation rows from `i`, over every block; writes
/// the first `cols` columns.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn half<const T: u8, const R: usize>(
    tiles: &[u8],
    blocks: usize,
    h: usize,
    a: &QActs,
    i: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
) {
    let (tb, qo) = tile_layout(T);
    let nb = a.blocks;
    let aq = a.q[i * nb * BLOCK..(i + R) * nb * BLOCK].as_ptr();
    let ad = &a.d[i * nb..(i + R) * nb];
    let asum = &a.s[i * nb..(i + R) * nb];
    let mut facc = [_mm256_setzero_ps(); R];
    let ones = _mm256_set1_epi16(1);
    let low4 = _mm256_set1_epi8(15);
    for b in 0..blocks {
        let t = tiles[b * tb..(b + 1) * tb].as_ptr();
        // SAFETY: loads within this tile and rows i..i+R of the activations.
        unsafe {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(t.add(16 * h).cast()));
            let q = t.add(qo + 32 * h);
            let mut iacc = [_mm256_setzero_si256(); R];
            if T == 0 {
                for c in 0..BLOCK / 4 {
                    let wv = _mm256_loadu_si256(q.add(64 * c).cast());
                    let aw = _mm256_sign_epi8(wv, wv);
                    for (ii, acc) in iacc.iter_mut().enumerate() {
                        let x = aq.add(ii * nb * BLOCK + b * BLOCK + 4 * c);
                        let av = _mm256_set1_epi32(x.cast::<i32>().read_unaligned());
                        let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(av, wv));
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(p, ones));
                    }
                }
            } else {
                let mut s16 = [_mm256_setzero_si256(); R];
                for p in 0..BLOCK / 8 {
                    let v = _mm256_loadu_si256(q.add(64 * p).cast());
                    let lo = _mm256_and_si256(v, low4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                    for (ii, acc) in s16.iter_mut().enumerate() {
                        let x = aq.add(ii * nb * BLOCK + b * BLOCK + 8 * p);
                        let a0 = _mm256_set1_epi32(x.cast::<i32>().read_unaligned());
                        let a1 = _mm256_set1_epi32(x.add(4).cast::<i32>().read_unaligned());
                        *acc = _mm256_add_epi16(*acc, _mm256_maddubs_epi16(lo, a0));
                        *acc = _mm256_add_epi16(*acc, _mm256_maddubs_epi16(hi, a1));
                    }
                }
                for ii in 0..R {
                    iacc[ii] = _mm256_madd_epi16(s16[ii], ones);
                    if T == 1 {
                        let off = _mm256_set1_epi32(8 * asum[ii * nb + b]);
                        iacc[ii] = _mm256_sub_epi32(iacc[ii], off);
                    }
                }
            }
            let mw = if T == 2 {
                _mm256_cvtph_ps(_mm_loadu_si128(t.add(32 + 16 * h).cast()))
            } else {
                _mm256_setzero_ps()
            };
            for ii in 0..R {
                let da = ad[ii * nb + b];
                let sc = _mm256_mul_ps(dw, _mm256_set1_ps(da));
                facc[ii] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[ii]), sc, facc[ii]);
                if T == 2 {
                    let ms = _mm256_set1_ps(da * asum[ii * nb + b] as f32);
                    facc[ii] = _mm256_fmadd_ps(mw, ms, facc[ii]);
                }
            }
        }
    }
    for (ii, v) in facc.iter().enumerate() {
        // SAFETY: row i + ii of the output, its first `cols` (≤ 8) columns of this half.
        unsafe {
            let o = out.add(ii * ldo);
            if cols == 8 {
                _mm256_storeu_ps(o, *v);
            } else {
                let mut tmp = [0.0f32; 8];
                _mm256_storeu_ps(tmp.as_mut_ptr(), *v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, cols);
            }
        }
    }
}

/// See [`crate::kernels::QuantizeActsFn`]; bit-identical to the scalar reference.
pub fn quantize_acts(x: &[f32], k: usize, q: &mut [i8], d: &mut [f32], s: &mut [i32], levels: i32) {
    // SAFETY: the dispatch point hands this out only on CPUs with AVX2.
    unsafe { quantize_acts_avx2(x, k, q, d, s, levels) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_acts_avx2(
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
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut pad = [0.0f32; BLOCK];
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        for b in 0..nb {
            let at = i * nb + b;
            let k0 = b * BLOCK;
            let src = if k0 + BLOCK <= k {
                &row[k0..k0 + BLOCK]
            } else {
                pad.fill(0.0);
                pad[..k - k0].copy_from_slice(&row[k0..]);
                &pad[..]
            };
            // SAFETY: four 8-float loads of the block's 32 values.
            let v = unsafe {
                let p = src.as_ptr();
                [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ]
            };
            let mx = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
            let q = &mut qs[at * BLOCK..(at + 1) * BLOCK];
            if amax == 0.0 {
                q.fill(0);
                ds[at] = 0.0;
                ss[at] = 0;
                continue;
            }
            let id = _mm256_set1_ps(levels as f32 / amax);
            let (lo, hi) = (_mm256_set1_epi32(-levels), _mm256_set1_epi32(levels));
            let qi = v.map(|x| {
                _mm256_min_epi32(
                    _mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x, id)), lo),
                    hi,
                )
            });
            let p01 = _mm256_packs_epi32(qi[0], qi[1]);
            let p23 = _mm256_packs_epi32(qi[2], qi[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
            // SAFETY: the block's 32 bytes.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), bytes) };
            let s = _mm256_add_epi32(
                _mm256_add_epi32(qi[0], qi[1]),
                _mm256_add_epi32(qi[2], qi[3]),
            );
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b00_00_00_01));
            ds[at] = amax / levels as f32;
            ss[at] = _mm_cvtsi128_si32(s1);
        }
    }
}
