//! The quantized matmul kernels (see [`crate::quant`] for the formats): one file per ISA, the
//! same two functions in each, reached through the dispatch table of [`crate::kernels`].
//!
//! - `qgemm`: `out[i × n] = A[i × k] · W[n × k]ᵀ` for a range of W's row groups and of A's rows,
//!   with A quantized per block to int8 ([`crate::quant::QActs`]), integer dot products per block
//!   and f32 accumulation across blocks. Decoding (one row of A) and prefill (many) are the same
//!   kernel: the register tile is 16 weight rows × a few activation rows, so a row group's
//!   weights are read once per few tokens.
//! - `quantize_acts`: f32 rows to int8 blocks, bit-identical on every ISA.
//!
//! [`scalar`] is the reference; [`x86_avx2`] (AVX2 + FMA + F16C), [`x86_avx512`] (AVX-512
//! F/BW + VNNI) and [`aarch64_neon`] (baseline NEON) are tested against it.

use crate::quant::{QActs, QMatrix, QType, ROWS};

pub mod scalar;

#[cfg(target_arch = "aarch64")]
pub mod aarch64_neon;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;

/// The index of a format in the kernel tables (and the const parameter `T` of each ISA's
/// `run::<T>`): q8_0 0, q4_0 1, q4_1 2.
#[inline]
pub const fn format_index(ty: QType) -> usize {
    match ty {
        QType::Q8_0 => 0,
        QType::Q4_0 => 1,
        QType::Q4_1 => 2,
    }
}

/// `(tile bytes, offset of the quants)` of the format with index `t`.
pub(crate) const fn tile_layout(t: u8) -> (usize, usize) {
    match t {
        0 => (QType::Q8_0.tile_bytes(), QType::Q8_0.quant_offset()),
        1 => (QType::Q4_0.tile_bytes(), QType::Q4_0.quant_offset()),
        _ => (QType::Q4_1.tile_bytes(), QType::Q4_1.quant_offset()),
    }
}

/// Each row group `g0..g1` of `w`: `group(g, the group's tiles, its valid rows)`, after
/// checking that `a` has `w`'s blocks and holds rows up to `i1` (the kernels index by both).
#[inline]
pub(crate) fn for_groups<'w>(
    w: &'w QMatrix,
    g0: usize,
    g1: usize,
    a: &QActs,
    i1: usize,
    mut group: impl FnMut(usize, &'w [u8], usize),
) {
    let (blocks, tb) = (w.blocks(), w.ty.tile_bytes());
    let bytes = w.bytes();
    assert!(g1 * blocks * tb <= bytes.len() && a.blocks == blocks && i1 <= a.m);
    for g in g0..g1 {
        let tiles = &bytes[g * blocks * tb..(g + 1) * blocks * tb];
        group(g, tiles, ROWS.min(w.n - g * ROWS));
    }
}

/// Rows `i0..i1` in register tiles of at most `mr`: `tile(first row, rows)` for each.
#[inline]
pub(crate) fn row_tiles(i0: usize, i1: usize, mr: usize, mut tile: impl FnMut(usize, usize)) {
    let mut i = i0;
    while i < i1 {
        let r = (i1 - i).min(mr);
        tile(i, r);
        i += r;
    }
}
