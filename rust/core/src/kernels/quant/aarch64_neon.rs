//! Quantized kernels with baseline NEON (every aarch64 CPU): each 64-byte group of a tile is
//! four registers of 4 rows × 4 weights; `vmull_s8` multiplies them by 4 broadcast activation
//! bytes into int16 and `vpadalq_s16` adds pairs into int32 (two lanes per row, folded at the
//! end of each block by `vpaddq_s32`). int8 × int8 needs no sign trick here; 4-bit quants
//! (0..15) are signed-safe, with the offsets of the x86 files (`−8·s`, `+ m · d_a · s`).
//! The f16 scales are widened exactly with integer shifts and one multiply by 2¹¹² (no
//! half-precision types needed).

#![allow(clippy::too_many_arguments)]

use std::arch::aarch64::*;

use super::{for_groups, row_tiles, tile_layout};
use crate::kernels::QGemmFn;
use crate::quant::{QActs, QMatrix, BLOCK, ROWS};

/// Activation rows per register tile.
const MR: usize = 2;

/// The quantized matmul ([`crate::kernels::QGemmFn`]) per format, by
/// [`super::format_index`].
///
/// # Safety
/// As [`super::scalar::qgemm`] (NEON is part of every aarch64 CPU).
pub const QGEMM: [QGemmFn; 3] = [run::<0>, run::<1>, run::<2>];

#[target_feature(enable = "neon")]
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
    for_groups(w, g0, g1, a, i1, |g, tiles, valid| {
        row_tiles(i0, i1, MR, |i, r| {
            // SAFETY: rows i..i+r of `out` at columns 16g.., the caller's promise.
            unsafe {
                let o = out.add(i * ldo + g * ROWS);
                match r {
                    2 => tile::<T, 2>(tiles, blocks, a, i, o, ldo, valid),
                    _ => tile::<T, 1>(tiles, blocks, a, i, o, ldo, valid),
                }
            }
        });
    });
}

/// 16 f16 scales (at `p`) as four f32 vectors, exactly.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn scales(p: *const u8) -> [float32x4_t; 4] {
    // SAFETY: 32 bytes at `p`, within the tile.
    unsafe {
        let h = [vld1q_u16(p.cast()), vld1q_u16(p.add(16).cast())];
        let pow = vdupq_n_f32(f32::from_bits((127 + 112) << 23));
        let widen = |x: uint32x4_t| {
            let mag = vshlq_n_u32(vandq_u32(x, vdupq_n_u32(0x7fff)), 13);
            let sign = vshlq_n_u32(vandq_u32(x, vdupq_n_u32(0x8000)), 16);
            let v = vmulq_f32(vreinterpretq_f32_u32(mag), pow);
            vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(v), sign))
        };
        [
            widen(vmovl_u16(vget_low_u16(h[0]))),
            widen(vmovl_high_u16(h[0])),
            widen(vmovl_u16(vget_low_u16(h[1]))),
            widen(vmovl_high_u16(h[1])),
        ]
    }
}

/// One row group × `R` activation rows from `i`; writes the first `valid` columns.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn tile<const T: u8, const R: usize>(
    tiles: &[u8],
    blocks: usize,
    a: &QActs,
    i: usize,
    out: *mut f32,
    ldo: usize,
    valid: usize,
) {
    let (tb, qo) = tile_layout(T);
    let nb = a.blocks;
    let aq = a.q[i * nb * BLOCK..(i + R) * nb * BLOCK].as_ptr();
    let ad = &a.d[i * nb..(i + R) * nb];
    let asum = &a.s[i * nb..(i + R) * nb];
    // SAFETY: loads within each tile and rows i..i+R of the activations; NEON is baseline.
    unsafe {
        let mut facc = [[vdupq_n_f32(0.0); 4]; R];
        for b in 0..blocks {
            let t = tiles[b * tb..(b + 1) * tb].as_ptr();
            let dw = scales(t);
            let mw = if T == 2 { scales(t.add(32)) } else { dw };
            let q = t.add(qo);
            // Per activation row and quarter: int32 lanes [r0, r0, r1, r1] and [r2, r2, r3, r3].
            let mut lo = [[vdupq_n_s32(0); 4]; R];
            let mut hi = [[vdupq_n_s32(0); 4]; R];
            let mut step = |wq: [int8x16_t; 4], off: usize| {
                for ii in 0..R {
                    let x = aq.add(ii * nb * BLOCK + b * BLOCK + off);
                    let av = vreinterpretq_s8_s32(vdupq_n_s32(x.cast::<i32>().read_unaligned()));
                    for qr in 0..4 {
                        let pl = vmull_s8(vget_low_s8(wq[qr]), vget_low_s8(av));
                        let ph = vmull_high_s8(wq[qr], av);
                        lo[ii][qr] = vpadalq_s16(lo[ii][qr], pl);
                        hi[ii][qr] = vpadalq_s16(hi[ii][qr], ph);
                    }
                }
            };
            if T == 0 {
                for c in 0..BLOCK / 4 {
                    let p = q.add(64 * c);
                    let wq = [
                        vld1q_s8(p.cast()),
                        vld1q_s8(p.add(16).cast()),
                        vld1q_s8(p.add(32).cast()),
                        vld1q_s8(p.add(48).cast()),
                    ];
                    step(wq, 4 * c);
                }
            } else {
                let low4 = vdupq_n_u8(15);
                for pr in 0..BLOCK / 8 {
                    let p = q.add(64 * pr);
                    let v = [
                        vld1q_u8(p),
                        vld1q_u8(p.add(16)),
                        vld1q_u8(p.add(32)),
                        vld1q_u8(p.add(48)),
                    ];
                    step(v.map(|x| vreinterpretq_s8_u8(vandq_u8(x, low4))), 8 * pr);
                    step(v.map(|x| vreinterpretq_s8_u8(vshrq_n_u8(x, 4))), 8 * pr + 4);
                }
            }
            for ii in 0..R {
                let da = ad[ii * nb + b];
                let s = asum[ii * nb + b];
                for qr in 0..4 {
                    let mut dot = vpaddq_s32(lo[ii][qr], hi[ii][qr]);
                    if T == 1 {
                        dot = vsubq_s32(dot, vdupq_n_s32(8 * s));
                    }
                    let sc = vmulq_f32(dw[qr], vdupq_n_f32(da));
                    facc[ii][qr] = vfmaq_f32(facc[ii][qr], vcvtq_f32_s32(dot), sc);
                    if T == 2 {
                        let ms = vdupq_n_f32(da * s as f32);
                        facc[ii][qr] = vfmaq_f32(facc[ii][qr], mw[qr], ms);
                    }
                }
            }
        }
        for (ii, rows) in facc.iter().enumerate() {
            let mut tmp = [0.0f32; ROWS];
            for (qr, v) in rows.iter().enumerate() {
                vst1q_f32(tmp.as_mut_ptr().add(4 * qr), *v);
            }
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out.add(ii * ldo), valid);
        }
    }
}

/// See [`crate::kernels::QuantizeActsFn`]: the scalar reference (NEON rounds the same way, and
/// activations are a small part of the work).
pub fn quantize_acts(x: &[f32], k: usize, q: &mut [i8], d: &mut [f32], s: &mut [i32], levels: i32) {
    super::scalar::quantize_acts(x, k, q, d, s, levels)
}
