//! The reference quantized kernels: plain loops over the tile layout of [`crate::quant`], the
//! same signatures as each ISA's file. Every other implementation is tested against these.

use crate::io::half::f16_to_f32;
use crate::kernels::QGemmFn;
use crate::quant::{quantize_act_block, QActs, QMatrix, QType, BLOCK, ROWS};

/// The quantized matmul ([`crate::kernels::QGemmFn`]), one entry per format (the reference
/// handles all three in one function).
pub const QGEMM: [QGemmFn; 3] = [qgemm, qgemm, qgemm];

/// # Safety
/// `out` must be valid for writes of rows `i0..i1` (stride `ldo`) at the columns of row groups
/// `g0..g1`, which no other thread touches during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn qgemm(
    w: &QMatrix,
    g0: usize,
    g1: usize,
    a: &QActs,
    i0: usize,
    i1: usize,
    out: *mut f32,
    ldo: usize,
) {
    let (ty, blocks, tb, qo) = (w.ty, w.blocks(), w.ty.tile_bytes(), w.ty.quant_offset());
    let bytes = w.bytes();
    for g in g0..g1 {
        let valid = ROWS.min(w.n - g * ROWS);
        for i in i0..i1 {
            let xq = a.row(i);
            let mut acc = [0.0f32; ROWS];
            for b in 0..blocks {
                let tile = &bytes[(g * blocks + b) * tb..(g * blocks + b + 1) * tb];
                let (da, sa) = (a.d[i * a.blocks + b], a.s[i * a.blocks + b]);
                let x = &xq[b * BLOCK..(b + 1) * BLOCK];
                let q = &tile[qo..];
                for (r, acc) in acc.iter_mut().enumerate().take(valid) {
                    let dw = f16_to_f32(u16::from_le_bytes([tile[2 * r], tile[2 * r + 1]]));
                    let mut dot = 0i32;
                    for (j, &xv) in x.iter().enumerate() {
                        let wq = match ty {
                            QType::Q8_0 => i32::from(q[64 * (j / 4) + 4 * r + j % 4] as i8),
                            QType::Q4_0 | QType::Q4_1 => {
                                let v = q[64 * (j / 8) + 4 * r + j % 4];
                                i32::from(if j % 8 < 4 { v & 15 } else { v >> 4 })
                            }
                        };
                        dot += wq * i32::from(xv);
                    }
                    let sc = dw * da;
                    match ty {
                        QType::Q8_0 => *acc += dot as f32 * sc,
                        QType::Q4_0 => *acc += (dot - 8 * sa) as f32 * sc,
                        QType::Q4_1 => {
                            let mw = f16_to_f32(u16::from_le_bytes([
                                tile[32 + 2 * r],
                                tile[32 + 2 * r + 1],
                            ]));
                            *acc += dot as f32 * sc;
                            *acc += mw * (da * sa as f32);
                        }
                    }
                }
            }
            for (r, &v) in acc.iter().enumerate().take(valid) {
                // SAFETY: row i, column 16g + r < n: within what the caller handed over.
                unsafe { *out.add(i * ldo + g * ROWS + r) = v };
            }
        }
    }
}

/// See [`crate::kernels::QuantizeActsFn`]: `x` is `m × k`, contiguous.
pub fn quantize_acts(x: &[f32], k: usize, q: &mut [i8], d: &mut [f32], s: &mut [i32], levels: i32) {
    let nb = k.div_ceil(BLOCK);
    let m = d.len() / nb;
    assert!(x.len() >= m * k && q.len() == m * nb * BLOCK && s.len() == m * nb);
    let (qs, ds, ss) = (q, d, s);
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        for b in 0..nb {
            let at = i * nb + b;
            let src = &row[b * BLOCK..((b + 1) * BLOCK).min(k)];
            let (dv, sv) = quantize_act_block(src, &mut qs[at * BLOCK..(at + 1) * BLOCK], levels);
            ds[at] = dv;
            ss[at] = sv;
        }
    }
}
