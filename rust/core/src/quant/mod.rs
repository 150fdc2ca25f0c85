//! Quantized weight formats: int8 and int4 in blocks of 32 weights, each block with its own
//! f16 scale, as llama.cpp's Q8_0 / Q4_0 / Q4_1 (the same values, the same bits per weight),
//! stored in tiles of 16 output rows that the SIMD kernels read with one load per 4 weights
//! of 16 rows.
//!
//! # The formats (per block of 32 consecutive weights of one row)
//!
//! | format | stored                          | weight `x_i`      | bits / weight |
//! |--------|---------------------------------|-------------------|---------------|
//! | `q8_0` | f16 `d`, 32 × i8 `q` (−127..127) | `d · q_i`         | 8.5           |
//! | `q4_0` | f16 `d`, 32 × u4 `q` (0..15)     | `d · (q_i − 8)`   | 4.5           |
//! | `q4_1` | f16 `d`, f16 `m`, 32 × u4 `q`    | `d · q_i + m`     | 5.0           |
//!
//! A matrix is `W[n × k]`: `n` output rows (features), each the dot product of one row of
//! weights with the input over `k`. Rows are padded with zero weights to a multiple of 32 (`k`
//! need not be one), and the row count to a multiple of 16.
//!
//! # The tile layout (`r16`)
//! The matrix is stored as tiles of 16 rows × 32 columns (one block of each of 16 rows), row
//! group by row group, and within a group block by block: tile `(g, b)` is at byte
//! `(g · blocks + b) · tile_bytes`. A tile holds, little-endian:
//! - `d[16]`: the 16 rows' f16 scales (32 bytes);
//! - `q4_1` only: `m[16]`, the 16 rows' f16 minimums (32 bytes);
//! - the quants, in groups of 4 columns: for `q8_0`, 8 groups `c` of 16 rows × 4 bytes, byte
//!   `64c + 4r + j` = `q(row r, column 4c + j)` (512 bytes); for `q4_0` / `q4_1`, 4 pairs `p`
//!   of 16 rows × 4 bytes, byte `64p + 4r + j` = `q(r, 8p + j) | q(r, 8p + 4 + j) << 4` (256
//!   bytes).
//!
//! One 64-byte load thus holds 4 consecutive weights of each of 16 rows: one 32-bit lane per
//! row, which is what `vpdpbusd` (AVX-512 VNNI) multiplies with 4 broadcast activation bytes, and
//! what `vpmaddubsw` (AVX2) and `vmull_s8` (NEON) take in halves and quarters.
//!
//! # Quantizing
//! Each block's scale is chosen to minimise its squared error, among candidates that include
//! exactly llama.cpp's reference choice (`quantize_row_q8_0_ref` etc.), with the error
//! measured after the scale is rounded to f16 as stored: the reconstruction error is never
//! worse than llama.cpp's on the same block.
//!
//! Activations are quantized on the fly per block of 32 to int8 with an f32 scale
//! (`d = max|x| / 127`, `q = round_half_even(x · 127 / max|x|)`) — see [`QActs`].

use rayon::prelude::*;

use crate::io::half::{f16_to_f32, f32_to_f16};
use crate::io::safetensors::ByteData;
use crate::{Error, Result};

/// Weights per block (one scale each).
pub const BLOCK: usize = 32;
/// Rows per tile.
pub const ROWS: usize = 16;

/// A quantized format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl QType {
    /// `q8_0`, `q4_0`, `q4_1`, or the aliases `int8` (= `q8_0`) and `int4` (= `q4_0`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "int8" => Some(QType::Q8_0),
            "q4_0" | "int4" => Some(QType::Q4_0),
            "q4_1" => Some(QType::Q4_1),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QType::Q8_0 => "q8_0",
            QType::Q4_0 => "q4_0",
            QType::Q4_1 => "q4_1",
        }
    }

    /// Bytes of one tile (16 rows × 32 weights).
    pub const fn tile_bytes(self) -> usize {
        match self {
            QType::Q8_0 => 32 + 512,
            QType::Q4_0 => 32 + 256,
            QType::Q4_1 => 64 + 256,
        }
    }

    /// Where a tile's quants start.
    pub const fn quant_offset(self) -> usize {
        match self {
            QType::Q4_1 => 64,
            _ => 32,
        }
    }

    /// Bytes of a `[n × k]` matrix in this format.
    pub fn matrix_bytes(self, n: usize, k: usize) -> Option<usize> {
        n.div_ceil(ROWS)
            .checked_mul(k.div_ceil(BLOCK))?
            .checked_mul(self.tile_bytes())
    }
}

/// A quantized `[n × k]` matrix in the `r16` tile layout (see the module docs).
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub ty: QType,
    /// Output rows.
    pub n: usize,
    /// Inputs per row.
    pub k: usize,
    data: ByteData,
}

impl QMatrix {
    /// Row groups of 16.
    #[inline]
    pub fn groups(&self) -> usize {
        self.n.div_ceil(ROWS)
    }

    /// Blocks of 32 per row.
    #[inline]
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(BLOCK)
    }

    /// The tiles, in order.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// True when the tiles are read from a file in place.
    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }

    /// Wraps tiles read from a file, checking their length against the shape.
    pub fn from_bytes(ty: QType, n: usize, k: usize, data: ByteData, what: &str) -> Result<Self> {
        let want = ty
            .matrix_bytes(n, k)
            .ok_or_else(|| Error::format(what, format!("a [{n} × {k}] matrix is too large")))?;
        if n == 0 || k == 0 || data.as_slice().len() != want {
            return Err(Error::format(
                what,
                format!(
                    "{} bytes of {} tiles for a [{n} × {k}] matrix, which needs {want}",
                    data.as_slice().len(),
                    ty.name()
                ),
            ));
        }
        Ok(QMatrix { ty, n, k, data })
    }

    /// Quantizes `w`, an f32 matrix `[n × k]` (`transposed = false`: row `j` at `w[j·k..]`) or
    /// `[k × n]` (`transposed = true`: GPT-2's Conv1D layout, row `j` is column `j`). Runs
    /// on the current rayon pool.
    pub fn quantize(ty: QType, w: &[f32], n: usize, k: usize, transposed: bool) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "quantize: {} values for [{n} × {k}]",
            w.len()
        );
        let (groups, blocks, tb) = (n.div_ceil(ROWS), k.div_ceil(BLOCK), ty.tile_bytes());
        let mut out = vec![0u8; groups * blocks * tb];
        out.par_chunks_mut(blocks * tb)
            .enumerate()
            .for_each(|(g, dst)| {
                // The group's 16 rows, zero-padded to whole blocks (and rows).
                let kp = blocks * BLOCK;
                let mut rows = vec![0.0f32; ROWS * kp];
                for r in 0..ROWS.min(n - g * ROWS) {
                    let j = g * ROWS + r;
                    let row = &mut rows[r * kp..r * kp + k];
                    if transposed {
                        for (i, v) in row.iter_mut().enumerate() {
                            *v = w[i * n + j];
                        }
                    } else {
                        row.copy_from_slice(&w[j * k..(j + 1) * k]);
                    }
                }
                for (b, tile) in dst.chunks_exact_mut(tb).enumerate() {
                    for r in 0..ROWS {
                        let x: &[f32; BLOCK] = rows[r * kp + b * BLOCK..r * kp + (b + 1) * BLOCK]
                            .try_into()
                            .unwrap_or(&[0.0; BLOCK]);
                        let blk = quantize_block(ty, x);
                        put_block(ty, tile, r, &blk);
                    }
                }
            });
        QMatrix {
            ty,
            n,
            k,
            data: ByteData::Owned(out),
        }
    }

    /// Row `j`'s weights, dequantized into `out` (`k` values).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let (g, r) = (j / ROWS, j % ROWS);
        let (blocks, tb) = (self.blocks(), self.ty.tile_bytes());
        let bytes = self.bytes();
        for (b, chunk) in out[..self.k].chunks_mut(BLOCK).enumerate() {
            let tile = &bytes[(g * blocks + b) * tb..(g * blocks + b + 1) * tb];
            let blk = get_block(self.ty, tile, r);
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = blk.value(self.ty, i);
            }
        }
    }

    /// The whole matrix, dequantized, `[n × k]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.n * self.k];
        for (j, row) in out.chunks_exact_mut(self.k).enumerate() {
            self.dequantize_row(j, row);
        }
        out
    }
}

/// One quantized block of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    /// f16 bits of the scale.
    pub d: u16,
    /// f16 bits of the minimum (`q4_1`; 0 otherwise).
    pub m: u16,
    /// The quants: i8 for `q8_0` (as `u8` bits), 0..15 for the 4-bit formats.
    pub q: [u8; BLOCK],
}

impl Block {
    /// The `i`-th weight.
    #[inline]
    pub fn value(&self, ty: QType, i: usize) -> f32 {
        let d = f16_to_f32(self.d);
        match ty {
            QType::Q8_0 => d * f32::from(self.q[i] as i8),
            QType::Q4_0 => d * (f32::from(self.q[i]) - 8.0),
            QType::Q4_1 => d * f32::from(self.q[i]) + f16_to_f32(self.m),
        }
    }
}

/// Writes row `r`'s block into a tile.
pub fn put_block(ty: QType, tile: &mut [u8], r: usize, blk: &Block) {
    tile[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
    if ty == QType::Q4_1 {
        tile[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&blk.m.to_le_bytes());
    }
    let q = &mut tile[ty.quant_offset()..];
    match ty {
        QType::Q8_0 => {
            for c in 0..BLOCK / 4 {
                q[64 * c + 4 * r..64 * c + 4 * r + 4].copy_from_slice(&blk.q[4 * c..4 * c + 4]);
            }
        }
        QType::Q4_0 | QType::Q4_1 => {
            for p in 0..BLOCK / 8 {
                for j in 0..4 {
                    q[64 * p + 4 * r + j] = (blk.q[8 * p + j] & 15) | (blk.q[8 * p + 4 + j] << 4);
                }
            }
        }
    }
}

/// Reads row `r`'s block from a tile.
pub fn get_block(ty: QType, tile: &[u8], r: usize) -> Block {
    let d = u16::from_le_bytes([tile[2 * r], tile[2 * r + 1]]);
    let m = if ty == QType::Q4_1 {
        u16::from_le_bytes([tile[32 + 2 * r], tile[32 + 2 * r + 1]])
    } else {
        0
    };
    let q = &tile[ty.quant_offset()..];
    let mut out = [0u8; BLOCK];
    match ty {
        QType::Q8_0 => {
            for c in 0..BLOCK / 4 {
                out[4 * c..4 * c + 4].copy_from_slice(&q[64 * c + 4 * r..64 * c + 4 * r + 4]);
            }
        }
        QType::Q4_0 | QType::Q4_1 => {
            for p in 0..BLOCK / 8 {
                for j in 0..4 {
                    let v = q[64 * p + 4 * r + j];
                    out[8 * p + j] = v & 15;
                    out[8 * p + 4 + j] = v >> 4;
                }
            }
        }
    }
    Block { d, m, q: out }
}

/// `x` rounded to the nearest integer, ties to even, for |x| < 2²² (larger values are
/// clamped by every caller anyway): the add-and-subtract of 1.5 · 2²³ that SSE2 vectorizes,
/// where `round_ties_even` is a library call on the baseline x86-64 target.
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-4_194_304.0, 4_194_304.0);
    (x + MAGIC) - MAGIC
}

/// Squared reconstruction error of `blk` against `x`.
fn sq_error(ty: QType, x: &[f32; BLOCK], blk: &Block) -> f32 {
    let d = f16_to_f32(blk.d);
    let (m, off) = match ty {
        QType::Q8_0 => (0.0, 0.0),
        QType::Q4_0 => (0.0, 8.0),
        QType::Q4_1 => (f16_to_f32(blk.m), 0.0),
    };
    let mut e = 0.0f32;
    for (&v, &q) in x.iter().zip(&blk.q) {
        let qf = if ty == QType::Q8_0 {
            f32::from(q as i8)
        } else {
            f32::from(q) - off
        };
        let r = v - (d * qf + m);
        e += r * r;
    }
    e
}

/// Quantizes one block of 32 weights: the best of the candidate scales (llama.cpp's reference
/// choice among them) by squared error after rounding the scale to f16.
pub fn quantize_block(ty: QType, x: &[f32; BLOCK]) -> Block {
    let start = reference_block(ty, x);
    let mut best = start;
    let mut best_err = sq_error(ty, x, &best);
    if best_err == 0.0 || !best_err.is_finite() {
        return best;
    }
    match ty {
        QType::Q8_0 | QType::Q4_0 => {
            // Scales around the reference one; quants rounded against the stored (f16) scale.
            let (qmax, offset, lo, hi) = if ty == QType::Q8_0 {
                (127.0f32, 0.0f32, -127.0f32, 127.0f32)
            } else {
                (8.0, 8.0, 0.0, 15.0)
            };
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let signs: &[f32] = if ty == QType::Q8_0 {
                &[1.0]
            } else {
                &[1.0, -1.0]
            };
            let steps = if ty == QType::Q8_0 { -4..=2 } else { -4..=4 };
            for step in steps {
                for &sign in signs {
                    let dh = f32_to_f16(sign * amax / (qmax + step as f32 * 0.25));
                    let df = f16_to_f32(dh);
                    if df == 0.0 || !df.is_finite() {
                        continue;
                    }
                    // The error first (a loop without casts, which vectorizes); the quants
                    // only for a better candidate.
                    let inv = 1.0 / df;
                    let quant = |v: f32| (round_even(v * inv) + offset).clamp(lo, hi);
                    let e: f32 = x
                        .iter()
                        .map(|&v| {
                            let diff = v - df * (quant(v) - offset);
                            diff * diff
                        })
                        .sum();
                    if e < best_err {
                        best_err = e;
                        let mut q = [0u8; BLOCK];
                        for (o, &v) in q.iter_mut().zip(x) {
                            let r = quant(v);
                            *o = if ty == QType::Q8_0 {
                                r as i8 as u8
                            } else {
                                r as u8
                            };
                        }
                        best = Block { d: dh, m: 0, q };
                    }
                }
            }
        }
        QType::Q4_1 => {
            // Alternate: quants for the current (d, m); then d, m refitted by least squares.
            let mut cur = start;
            for _ in 0..4 {
                let (n, mut sq, mut sqq, mut sx, mut sqx) = (BLOCK as f32, 0.0, 0.0, 0.0, 0.0);
                for (&q, &v) in cur.q.iter().zip(x) {
                    let q = f32::from(q);
                    sq += q;
                    sqq += q * q;
                    sx += v;
                    sqx += q * v;
                }
                let det = n * sqq - sq * sq;
                if det <= 0.0 {
                    break;
                }
                let d = (n * sqx - sq * sx) / det;
                let m = (sx - d * sq) / n;
                let (dh, mh) = (f32_to_f16(d), f32_to_f16(m));
                let (df, mf) = (f16_to_f32(dh), f16_to_f32(mh));
                if !(df.is_finite() && mf.is_finite()) || df <= 0.0 {
                    break;
                }
                let inv = 1.0 / df;
                let mut q = [0u8; BLOCK];
                for (o, &v) in q.iter_mut().zip(x) {
                    *o = round_even((v - mf) * inv).clamp(0.0, 15.0) as u8;
                }
                cur = Block { d: dh, m: mh, q };
                let e = sq_error(ty, x, &cur);
                if e < best_err {
                    best_err = e;
                    best = cur;
                }
            }
        }
    }
    best
}

/// llama.cpp's reference quantization of one block (`quantize_row_q*_ref`): the scale from the
/// block's extreme values, quants against the unrounded scale.
pub fn reference_block(ty: QType, x: &[f32; BLOCK]) -> Block {
    let mut q = [0u8; BLOCK];
    match ty {
        QType::Q8_0 => {
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (o, &v) in q.iter_mut().zip(x) {
                *o = (v * id).round() as i8 as u8;
            }
            Block {
                d: f32_to_f16(d),
                m: 0,
                q,
            }
        }
        QType::Q4_0 => {
            // The value of largest magnitude, with its sign, maps to -8.
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (o, &v) in q.iter_mut().zip(x) {
                *o = ((v * id + 8.5) as i8).min(15) as u8;
            }
            Block {
                d: f32_to_f16(d),
                m: 0,
                q,
            }
        }
        QType::Q4_1 => {
            let (mut min, mut max) = (f32::MAX, f32::MIN);
            for &v in x {
                min = min.min(v);
                max = max.max(v);
            }
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (o, &v) in q.iter_mut().zip(x) {
                *o = (((v - min) * id + 0.5) as u8).min(15);
            }
            Block {
                d: f32_to_f16(d),
                m: f32_to_f16(min),
                q,
            }
        }
    }
}

/// Activations quantized per block of 32 to int8 (for the integer dot products): `m` rows of
/// `blocks` blocks, row `i` block `b` = `d[i·blocks + b] · q[(i·blocks + b)·32 ..][..32]`, and
/// `s` = the sum of that block's quants. Rows are zero-padded to whole blocks. Reused across
/// calls (grown, never shrunk).
#[derive(Debug, Default, Clone)]
pub struct QActs {
    pub m: usize,
    pub k: usize,
    pub blocks: usize,
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<i32>,
    /// Quants within ±64 instead of ±127 (7-bit activations, set by the owner before
    /// quantizing): what [`crate::kernels::Kernels::narrow_acts`] kernels run faster on. The
    /// kernels read it as a promise about `q`; every kernel computes the same either way.
    pub narrow: bool,
}

impl QActs {
    /// The quantization range of these activations: 64 when [`QActs::narrow`], else 127.
    #[inline]
    pub fn levels(&self) -> i32 {
        levels(self.narrow)
    }

    /// Sizes the buffers for `m` rows of `k`.
    pub fn reset(&mut self, m: usize, k: usize) {
        self.m = m;
        self.k = k;
        self.blocks = k.div_ceil(BLOCK);
        let nb = m * self.blocks;
        // Exactly m rows (resize shrinks too): the kernels size their work from these lengths.
        self.q.resize(nb * BLOCK, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0);
    }

    /// Quantizes `m` rows of `k` (contiguous in `x`) with `kern`, in parallel on the current
    /// pool when there are many rows (a prompt).
    pub fn quantize(&mut self, kern: &crate::kernels::Kernels, x: &[f32], m: usize, k: usize) {
        self.reset(m, k);
        let nb = self.blocks;
        let x = &x[..m * k];
        const CHUNK: usize = 32; // rows per task
        if m < 2 * CHUNK {
            let lv = self.levels();
            (kern.quantize_acts)(x, k, &mut self.q, &mut self.d, &mut self.s, lv);
            return;
        }
        let lv = self.levels();
        self.q[..m * nb * BLOCK]
            .par_chunks_mut(CHUNK * nb * BLOCK)
            .zip(self.d[..m * nb].par_chunks_mut(CHUNK * nb))
            .zip(self.s[..m * nb].par_chunks_mut(CHUNK * nb))
            .zip(x.par_chunks(CHUNK * k))
            .for_each(|(((q, d), s), x)| (kern.quantize_acts)(x, k, q, d, s, lv));
    }

    /// Row `i`'s quants (`blocks · 32`).
    #[inline]
    pub fn row(&self, i: usize) -> &[i8] {
        &self.q[i * self.blocks * BLOCK..(i + 1) * self.blocks * BLOCK]
    }
}

/// Writes disjoint rows of one [`QActs`] from several threads (a team's members, each
/// quantizing its share of the rows): raw pointers into its buffers, taken after
/// [`QActs::reset`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct QActsRows {
    q: *mut i8,
    d: *mut f32,
    s: *mut i32,
    m: usize,
    k: usize,
    blocks: usize,
    narrow: bool,
}

// SAFETY: the members write disjoint rows, between barriers that order them with the reads.
unsafe impl Send for QActsRows {}
unsafe impl Sync for QActsRows {}

impl QActs {
    /// The row writer of these buffers, as [`QActs::reset`] sized them.
    pub(crate) fn rows_writer(&mut self) -> QActsRows {
        QActsRows {
            q: self.q.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            m: self.m,
            k: self.k,
            blocks: self.blocks,
            narrow: self.narrow,
        }
    }
}

impl QActsRows {
    /// The quants, scales and sums of blocks `at..at + n` (counted across rows).
    ///
    /// # Safety
    /// Within the `m × blocks` blocks; no other thread touches them while the slices live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn blocks(&self, at: usize, n: usize) -> (&mut [i8], &mut [f32], &mut [i32]) {
        debug_assert!(at + n <= self.m * self.blocks);
        // SAFETY: the caller's promise.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.q.add(at * BLOCK), n * BLOCK),
                std::slice::from_raw_parts_mut(self.d.add(at), n),
                std::slice::from_raw_parts_mut(self.s.add(at), n),
            )
        }
    }

    /// Quantizes rows `r0..r1` of `x` (`m` rows of `k` floats at `x`) into their place, as
    /// [`QActs::quantize`] does.
    ///
    /// # Safety
    /// The buffers are alive and unmoved since [`QActs::rows_writer`]; no other thread reads
    /// or writes rows `r0..r1` of them meanwhile, nor writes those rows of `x`.
    pub(crate) unsafe fn quantize(
        &self,
        kern: &crate::kernels::Kernels,
        x: *const f32,
        r0: usize,
        r1: usize,
    ) {
        let (k, nb) = (self.k, self.blocks);
        assert!(r0 <= r1 && r1 <= self.m);
        if r0 == r1 {
            return;
        }
        // SAFETY: rows r0..r1 of `x` and of the buffers (the caller's promise).
        unsafe {
            let x = std::slice::from_raw_parts(x.add(r0 * k), (r1 - r0) * k);
            let (q, d, s) = self.blocks(r0 * nb, (r1 - r0) * nb);
            (kern.quantize_acts)(x, k, q, d, s, levels(self.narrow));
        }
    }

    /// Quantizes columns `c0..c1` of every row of `x` (`m` rows of `k` floats at `x`) into
    /// their blocks, as [`QActs::quantize`] does (the blocks are independent): `c0` a
    /// multiple of 32, `c1` too or `k`.
    ///
    /// # Safety
    /// As [`QActsRows::quantize`], for those blocks of every row; `x` points to `m × k`
    /// floats of which those columns are not written meanwhile.
    pub(crate) unsafe fn quantize_cols(
        &self,
        kern: &crate::kernels::Kernels,
        x: *const f32,
        c0: usize,
        c1: usize,
    ) {
        let (k, nb) = (self.k, self.blocks);
        assert!(
            c0.is_multiple_of(BLOCK)
                && c0 <= c1
                && c1 <= k
                && (c1.is_multiple_of(BLOCK) || c1 == k)
        );
        if c0 == c1 {
            return;
        }
        let (b0, width) = (c0 / BLOCK, c1 - c0);
        for r in 0..self.m {
            // SAFETY: row r's columns c0..c1 and its blocks from b0 (the caller's promise).
            unsafe {
                let src = std::slice::from_raw_parts(x.add(r * k + c0), width);
                let (q, d, s) = self.blocks(r * nb + b0, width.div_ceil(BLOCK));
                (kern.quantize_acts)(src, width, q, d, s, levels(self.narrow));
            }
        }
    }
}

/// The quantization range of activations: ±64 when `narrow` ([`QActs::narrow`]), else ±127.
#[inline]
pub const fn levels(narrow: bool) -> i32 {
    if narrow {
        64
    } else {
        127
    }
}

/// The reference activation quantization of one block (`x` shorter than 32: zero-padded) to
/// integers within `±levels`: returns `(d, sum of quants)` and fills `q`.
#[inline]
pub fn quantize_act_block(x: &[f32], q: &mut [i8], levels: i32) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        q.fill(0);
        return (0.0, 0);
    }
    let (lv, id) = (levels as f32, levels as f32 / amax);
    let mut s = 0i32;
    for (i, o) in q.iter_mut().enumerate() {
        let v = x.get(i).copied().unwrap_or(0.0);
        let r = (v * id).round_ties_even().clamp(-lv, lv) as i32;
        *o = r as i8;
        s += r;
    }
    (amax / lv, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rand;

    #[test]
    fn blocks_round_trip_through_tiles() {
        for ty in [QType::Q8_0, QType::Q4_0, QType::Q4_1] {
            let mut tile = vec![0u8; ty.tile_bytes()];
            let mut blocks = Vec::new();
            for r in 0..ROWS {
                let x: [f32; BLOCK] = rand(BLOCK, r as u64).try_into().unwrap();
                let b = quantize_block(ty, &x);
                put_block(ty, &mut tile, r, &b);
                blocks.push(b);
            }
            for (r, b) in blocks.iter().enumerate() {
                assert_eq!(get_block(ty, &tile, r), *b);
            }
        }
    }

    #[test]
    fn error_never_worse_than_reference() {
        for ty in [QType::Q8_0, QType::Q4_0, QType::Q4_1] {
            let (mut ours, mut theirs) = (0.0f64, 0.0f64);
            for seed in 0..500 {
                let mut x: [f32; BLOCK] = rand(BLOCK, seed).try_into().unwrap();
                if seed % 3 == 0 {
                    x[seed as usize % BLOCK] *= 8.0; // an outlier
                }
                let a = sq_error(ty, &x, &quantize_block(ty, &x));
                let b = sq_error(ty, &x, &reference_block(ty, &x));
                assert!(a <= b, "{ty:?} seed {seed}: {a} > {b}");
                ours += f64::from(a);
                theirs += f64::from(b);
            }
            assert!(ours < theirs, "{ty:?}: {ours} vs {theirs}");
        }
    }

    #[test]
    fn matrix_layouts_and_padding() {
        // k not a multiple of 32, n not a multiple of 16; both source layouts.
        let (n, k) = (21, 45);
        let w = rand(n * k, 7);
        let mut wt = vec![0.0; n * k];
        for j in 0..n {
            for i in 0..k {
                wt[i * n + j] = w[j * k + i];
            }
        }
        for ty in [QType::Q8_0, QType::Q4_0, QType::Q4_1] {
            let a = QMatrix::quantize(ty, &w, n, k, false);
            let b = QMatrix::quantize(ty, &wt, n, k, true);
            assert_eq!(a.bytes(), b.bytes());
            assert_eq!(a.bytes().len(), ty.matrix_bytes(n, k).unwrap());
            let back = a.dequantize();
            let tol = if ty == QType::Q8_0 { 0.005 } else { 0.07 };
            for (x, y) in back.iter().zip(&w) {
                assert!((x - y).abs() < tol, "{ty:?}: {x} vs {y}");
            }
        }
        let bad = QMatrix::from_bytes(QType::Q8_0, n, k, ByteData::Owned(vec![0; 10]), "t");
        assert!(bad.unwrap_err().to_string().contains("10 bytes"));
    }

    #[test]
    fn magic_rounding() {
        for x in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, 3.2, -3.7, 127.49, 1e-3, 0.0, 4e6,
        ] {
            assert_eq!(round_even(x), x.round_ties_even(), "{x}");
        }
    }

    #[test]
    fn activation_blocks() {
        let x = [0.5f32, -1.0, 0.25, 0.0];
        let mut q = [0i8; BLOCK];
        let (d, s) = quantize_act_block(&x, &mut q, 127);
        assert_eq!(d, 1.0 / 127.0);
        assert_eq!(&q[..4], &[64, -127, 32, 0]); // 63.5 rounds to even
        assert!(q[4..].iter().all(|&v| v == 0));
        assert_eq!(s, 64 - 127 + 32);
        // 7-bit: within ±64 (32.5 rounds to even).
        let (d, s) = quantize_act_block(&[0.5f32, -1.0, 0.25, 1.0 / 128.0], &mut q, 64);
        assert_eq!(d, 1.0 / 64.0);
        assert_eq!(&q[..4], &[32, -64, 16, 0]);
        assert_eq!(s, 32 - 64 + 16);
    }
}
