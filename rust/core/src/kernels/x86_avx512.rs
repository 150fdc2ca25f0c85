//! The kernels with AVX-512F (16 f32 lanes). Same functions and signatures as [`super::scalar`];
//! the same blocking as [`super::x86_avx2`], with a register tile of up to 6 rows × 64 columns.

// BLAS-shaped signatures: sizes, operands and strides.
#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{scalar, Kernels, PANEL};

pub const KERNELS: Kernels = Kernels {
    name: "avx512",
    gemm,
    gemm_packed: Some(gemm_packed),
    gemm_nt,
    exp,
    gelu_tanh,
    gelu_erf,
    dot,
    axpy,
    // A head's 64 values: AVX2's 8-lane F16C conversions are as fast here.
    dot_f16: super::x86_avx2::dot_f16,
    axpy_f16: super::x86_avx2::axpy_f16,
    to_f16: super::x86_avx2::to_f16,
    qgemm: super::quant::x86_avx512::QGEMM,
    quantize_acts: super::quant::x86_avx512::quantize_acts,
    narrow_acts: false,
};

const KC: usize = 256;
const NC: usize = 256;
const NR: usize = 64;

/// # Safety
/// See [`super::GemmFn`]; the CPU must have AVX-512F (checked by the dispatch point).
pub unsafe fn gemm(
    m: usize,
    w: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs with AVX-512F.
    unsafe { gemm_avx512(m, w, k, a, b, ldb, c, ldc) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512(
    m: usize,
    w: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    assert!(a.len() >= m * k);
    assert!(k == 0 || b.len() >= (k - 1) * ldb + w);
    // Tiles of 64 columns, then of 16, then the reference loop for the last few: each column
    // always goes through the same arithmetic (one chain of fused multiply-adds over k, or the
    // reference's), whatever `m`, `w`'s split across threads or the caller's blocking.
    let full = w - w % 16;
    let mut j0 = 0;
    while j0 < full {
        let j1 = (j0 + NC).min(full);
        let mut p0 = 0;
        while p0 < k || (p0 == 0 && k == 0) {
            let p1 = (p0 + KC).min(k);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(6);
                let mut j = j0;
                while j < j1 {
                    let wide = j + NR <= j1;
                    // SAFETY: rows i..i+r, columns j..j+64 (or j+16) of C; rows p0..p1 and the
                    // same columns of B; all within the bounds asserted above and the caller's C.
                    unsafe {
                        let ap = a.as_ptr().add(i * k + p0);
                        let bp = b.as_ptr().add(p0 * ldb + j);
                        let cp = c.add(i * ldc + j);
                        let args = (p1 - p0, ap, k, bp, ldb, cp, ldc, p0 > 0);
                        match (wide, r) {
                            (true, 6) => tile::<6, 4>(args),
                            (true, 5) => tile::<5, 4>(args),
                            (true, 4) => tile::<4, 4>(args),
                            (true, 3) => tile::<3, 4>(args),
                            (true, 2) => tile::<2, 4>(args),
                            (true, _) => tile::<1, 4>(args),
                            (false, 6) => tile::<6, 1>(args),
                            (false, 5) => tile::<5, 1>(args),
                            (false, 4) => tile::<4, 1>(args),
                            (false, 3) => tile::<3, 1>(args),
                            (false, 2) => tile::<2, 1>(args),
                            (false, _) => tile::<1, 1>(args),
                        }
                    }
                    j += if wide { NR } else { 16 };
                }
                i += r;
            }
            if k == 0 {
                break;
            }
            p0 = p1;
        }
        j0 = j1;
    }
    if full < w {
        // The last columns (fewer than 16): the reference loop.
        // SAFETY: the same block, shifted to its last `w - full` columns.
        unsafe {
            scalar::gemm(
                m,
                w - full,
                k,
                a,
                &b[full.min(b.len())..],
                ldb,
                c.add(full),
                ldc,
            )
        }
    }
}

/// The most rows of a register tile of [`gemm_packed`] (14 rows × 2 vectors: 28 accumulators,
/// 2 B vectors and a broadcast of the 32 registers).
const TALL: usize = 14;

/// How far ahead of the row it multiplies [`gemm_packed`]'s one-pass path prefetches a panel:
/// 64 rows (8 KB; past a panel's end, the next panel's start, which it reads next).
const PREFETCH: usize = 64 * PANEL;

/// The depth of [`gemm_packed`]'s blocks: a row tile's block of A (14 × 512 values, 28 KB)
/// stays in L1 while a panel's block streams past it.
const KC_PACKED: usize = 512;

/// # Safety
/// See [`super::GemmPackedFn`]; the CPU must have AVX-512F (checked by the dispatch point).
pub unsafe fn gemm_packed(
    m: usize,
    w: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs with AVX-512F.
    unsafe { gemm_packed_avx512(m, w, k, a, b, c, ldc) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_packed_avx512(
    m: usize,
    w: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    assert!(a.len() >= m * k);
    assert!(b.len() >= w.div_ceil(PANEL) * k * PANEL);
    // B's element (p, j): its panel, then row p of it.
    let at = |p: usize, j: usize| (j / PANEL) * k * PANEL + p * PANEL + j % PANEL;
    // Tiles of 32 columns (a panel), then of 16, then the reference loop for the last few, as
    // in `gemm`: each column the same chain of multiply-adds over k.
    let full = w - w % 16;
    // Row tiles of at most TALL, as even as they come.
    let mr = super::even_tile(m, TALL);
    // Panel by panel, each in order of its rows (depth blocks of KC_PACKED, each multiplied
    // by every row tile while it is in cache): the weights stream through once, in order,
    // prefetched ahead.
    let mut j = 0;
    while j < full {
        let wide = j + PANEL <= full;
        let mut p0 = 0;
        while p0 < k || (p0 == 0 && k == 0) {
            let p1 = (p0 + KC_PACKED).min(k);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(mr);
                // SAFETY: rows i..i+r, columns j..j+32 (or j+16) of C; rows p0..p1 of those
                // columns of B (within the panels asserted above).
                unsafe {
                    let args = (
                        p1 - p0,
                        a.as_ptr().add(i * k + p0),
                        k,
                        b.as_ptr().add(at(p0, j)),
                        PANEL,
                        c.add(i * ldc + j),
                        ldc,
                        p0 > 0,
                    );
                    if wide {
                        rows::<2, true>(r, args);
                    } else {
                        rows::<1, true>(r, args);
                    }
                }
                i += r;
            }
            if k == 0 {
                break;
            }
            p0 = p1;
        }
        j += if wide { PANEL } else { 16 };
    }
    if full < w {
        // The last columns (fewer than 16), in the last panel: the reference loop.
        // SAFETY: those columns of B at row stride PANEL, and of C.
        unsafe {
            scalar::gemm(
                m,
                w - full,
                k,
                a,
                &b[at(0, full).min(b.len())..],
                PANEL,
                c.add(full),
                ldc,
            )
        }
    }
}

/// [`tile_pf`] for `r` (1 to [`TALL`]) rows of `16V` columns.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn rows<const V: usize, const PF: bool>(r: usize, args: TileArgs) {
    // SAFETY: the caller's bounds, for r rows.
    unsafe {
        match r {
            1 => tile_pf::<1, V, PF>(args),
            2 => tile_pf::<2, V, PF>(args),
            3 => tile_pf::<3, V, PF>(args),
            4 => tile_pf::<4, V, PF>(args),
            5 => tile_pf::<5, V, PF>(args),
            6 => tile_pf::<6, V, PF>(args),
            7 => tile_pf::<7, V, PF>(args),
            8 => tile_pf::<8, V, PF>(args),
            9 => tile_pf::<9, V, PF>(args),
            10 => tile_pf::<10, V, PF>(args),
            11 => tile_pf::<11, V, PF>(args),
            12 => tile_pf::<12, V, PF>(args),
            13 => tile_pf::<13, V, PF>(args),
            _ => tile_pf::<14, V, PF>(args),
        }
    }
}

/// The arguments of [`tile`]: `(kc, a, lda, b, ldb, c, ldc, accumulate)`.
type TileArgs = (
    usize,
    *const f32,
    usize,
    *const f32,
    usize,
    *mut f32,
    usize,
    bool,
);

/// `C[R×16V] (+)= A[R×kc] · B[kc×16V]` in registers: V vectors of B per step, shared by the R
/// rows (R ≤ 6, V ≤ 4: 24 accumulators, 4 B vectors and one broadcast of the 32 registers).
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn tile<const R: usize, const V: usize>(args: TileArgs) {
    // SAFETY: forwarded.
    unsafe { tile_pf::<R, V, false>(args) }
}

/// [`tile`] for R ≤ [`TALL`] (V ≤ 2 then), prefetching B [`PREFETCH`] values ahead when `PF`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn tile_pf<const R: usize, const V: usize, const PF: bool>(
    (kc, a, lda, b, ldb, c, ldc, accumulate): TileArgs,
) {
    // SAFETY: the caller's bounds: R rows of A (kc each), kc rows of 16V in B, R rows of 16V
    // in C.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(c.add(r * ldc + 16 * v));
                }
            }
        }
        for p in 0..kc {
            let bp = b.add(p * ldb);
            if PF {
                for v in 0..V {
                    // A prefetch never faults: past the matrix's end it is only wasted.
                    _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH + 16 * v).cast());
                }
            }
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bp.add(16 * v));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + p));
                for (v, y) in row.iter_mut().enumerate() {
                    *y = _mm512_fmadd_ps(x, bv[v], *y);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * ldc + 16 * v), *x);
            }
        }
    }
}

/// # Safety
/// See [`super::GemmNtFn`]; AVX-512F required.
pub unsafe fn gemm_nt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize) {
    // SAFETY: AVX-512F checked by the dispatch point; bounds as the caller promises.
    unsafe { gemm_nt_avx512(m, n, k, a, b, c, ldc) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_nt_avx512(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    assert!(a.len() >= m * k && b.len() >= n * k);
    const BR: usize = 4;
    let mut i = 0;
    while i < m {
        let r = (m - i).min(6);
        let mut j = 0;
        // SAFETY: rows i..i+r of A, rows j..j+BR (or j) of B, and that block of C, all within
        // the bounds asserted above and the caller's C.
        unsafe {
            let ap = a.as_ptr().add(i * k);
            while j + BR <= n {
                let (bp, cp) = (b.as_ptr().add(j * k), c.add(i * ldc + j));
                match r {
                    6 => nt_tile::<6, BR>(k, ap, bp, cp, ldc),
                    5 => nt_tile::<5, BR>(k, ap, bp, cp, ldc),
                    4 => nt_tile::<4, BR>(k, ap, bp, cp, ldc),
                    3 => nt_tile::<3, BR>(k, ap, bp, cp, ldc),
                    2 => nt_tile::<2, BR>(k, ap, bp, cp, ldc),
                    _ => nt_tile::<1, BR>(k, ap, bp, cp, ldc),
                }
                j += BR;
            }
            while j < n {
                let (bp, cp) = (b.as_ptr().add(j * k), c.add(i * ldc + j));
                match r {
                    6 => nt_tile::<6, 1>(k, ap, bp, cp, ldc),
                    5 => nt_tile::<5, 1>(k, ap, bp, cp, ldc),
                    4 => nt_tile::<4, 1>(k, ap, bp, cp, ldc),
                    3 => nt_tile::<3, 1>(k, ap, bp, cp, ldc),
                    2 => nt_tile::<2, 1>(k, ap, bp, cp, ldc),
                    _ => nt_tile::<1, 1>(k, ap, bp, cp, ldc),
                }
                j += 1;
            }
        }
        i += r;
    }
}

/// `C[R×BR] = A[R×k] · B[BR×k]ᵀ`: R·BR dot products side by side, each row of B loaded once
/// per step for all R rows of A, reduced once at the end.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn nt_tile<const R: usize, const BR: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: R rows of A and BR rows of B of k floats each; R × BR outputs of C at stride ldc.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); BR]; R];
        let full = k - k % 16;
        let mut p = 0;
        while p < full {
            let mut bv = [_mm512_setzero_ps(); BR];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(b.add(q * k + p));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_loadu_ps(a.add(r * k + p));
                for (q, x) in row.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(av, bv[q], *x);
                }
            }
            p += 16;
        }
        for (r, row) in acc.iter().enumerate() {
            for (q, x) in row.iter().enumerate() {
                let mut s = _mm512_reduce_add_ps(*x);
                for t in full..k {
                    s += *a.add(r * k + t) * *b.add(q * k + t);
                }
                *c.add(r * ldc + q) = s;
            }
        }
    }
}

// exp(x) = 2^n · e^r, n = round(x / ln 2), r = x − n ln 2 (ln 2 split in two, Cody–Waite), e^r
// by Cephes' degree-6 polynomial on [−ln2/2, ln2/2].
const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// e^x for one vector.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn exp_v(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(EXP_LO)),
        _mm512_set1_ps(EXP_HI),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
    );
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    let mut p = _mm512_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let poly = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    _mm512_scalef_ps(poly, n)
}

pub fn exp(x: &mut [f32]) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs that run them.
    unsafe { exp_avx512(x) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn exp_avx512(x: &mut [f32]) {
    let n = x.len();
    let full = n - n % 16;
    let px = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: 16 floats at i < full <= n.
    unsafe {
        while i < full {
            _mm512_storeu_ps(px.add(i), exp_v(_mm512_loadu_ps(px.add(i))));
            i += 16;
        }
    }
    // The last values through the same vector code (padded), so that a value's result does not
    // depend on where it falls in the slice.
    let mut buf = [0.0f32; 16];
    buf[..n - full].copy_from_slice(&x[full..]);
    // SAFETY: 16 floats of `buf`.
    unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), exp_v(_mm512_loadu_ps(buf.as_ptr()))) };
    x[full..].copy_from_slice(&buf[..n - full]);
}

pub fn gelu_tanh(x: &mut [f32]) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs that run them.
    unsafe { gelu_tanh_avx512(x) }
}

/// `0.5 x (1 + tanh(u))` as `x − x / (1 + e^{2u})`: one exp, one division.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn gelu_tanh_v(v: __m512) -> __m512 {
    let v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    let u = _mm512_mul_ps(
        _mm512_set1_ps(GELU_C),
        _mm512_fmadd_ps(_mm512_set1_ps(GELU_A), v3, v),
    );
    let e = exp_v(_mm512_add_ps(u, u));
    _mm512_sub_ps(v, _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0), e)))
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn gelu_tanh_avx512(x: &mut [f32]) {
    let n = x.len();
    let full = n - n % 16;
    let px = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: 16 floats at i < full <= n.
    unsafe {
        while i < full {
            _mm512_storeu_ps(px.add(i), gelu_tanh_v(_mm512_loadu_ps(px.add(i))));
            i += 16;
        }
    }
    // The last values through the same vector code (padded), so that a value's result does not
    // depend on where it falls in the slice.
    let mut buf = [0.0f32; 16];
    buf[..n - full].copy_from_slice(&x[full..]);
    // SAFETY: 16 floats of `buf`.
    unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), gelu_tanh_v(_mm512_loadu_ps(buf.as_ptr()))) };
    x[full..].copy_from_slice(&buf[..n - full]);
}

// erf by Abramowitz & Stegun 7.1.26: 1 − (a1 t + … + a5 t⁵) e^(−x²), t = 1 / (1 + p |x|),
// odd in x; absolute error below 1.5e-7.
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_7,
    -1.453_152_1,
    1.061_405_4,
];

pub fn gelu_erf(x: &mut [f32]) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs that run them.
    unsafe { gelu_erf_avx512(x) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn gelu_erf_v(v: __m512) -> __m512 {
    let u = _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let a = _mm512_abs_ps(u);
    let sign = _mm512_castsi512_ps(_mm512_and_si512(
        _mm512_castps_si512(u),
        _mm512_set1_epi32(i32::MIN),
    ));
    let t = _mm512_div_ps(
        _mm512_set1_ps(1.0),
        _mm512_fmadd_ps(_mm512_set1_ps(ERF_P), a, _mm512_set1_ps(1.0)),
    );
    let mut poly = _mm512_set1_ps(ERF_A[4]);
    for &c in ERF_A[..4].iter().rev() {
        poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
    }
    poly = _mm512_mul_ps(poly, t);
    let ex = exp_v(_mm512_sub_ps(_mm512_set1_ps(0.0), _mm512_mul_ps(a, a)));
    let e = _mm512_sub_ps(_mm512_set1_ps(1.0), _mm512_mul_ps(poly, ex));
    let erf = _mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(e),
        _mm512_castps_si512(sign),
    ));
    _mm512_mul_ps(
        _mm512_mul_ps(_mm512_set1_ps(0.5), v),
        _mm512_add_ps(_mm512_set1_ps(1.0), erf),
    )
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn gelu_erf_avx512(x: &mut [f32]) {
    let n = x.len();
    let full = n - n % 16;
    let px = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: 16 floats at i < full <= n.
    unsafe {
        while i < full {
            _mm512_storeu_ps(px.add(i), gelu_erf_v(_mm512_loadu_ps(px.add(i))));
            i += 16;
        }
    }
    // The last values through the same vector code (padded), so that a value's result does not
    // depend on where it falls in the slice.
    let mut buf = [0.0f32; 16];
    buf[..n - full].copy_from_slice(&x[full..]);
    // SAFETY: 16 floats of `buf`.
    unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), gelu_erf_v(_mm512_loadu_ps(buf.as_ptr()))) };
    x[full..].copy_from_slice(&buf[..n - full]);
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: AVX-512F checked by the dispatch point.
    unsafe { dot_avx512(a, b) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    // One chain of 16 lanes, reduced, then the last values in order: exactly what `nt_tile`
    // computes for each of its dot products, so attention's scores do not depend on which of
    // the two computed them.
    let n = a.len().min(b.len());
    let full = n - n % 16;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 16 floats at i < full <= n of both slices.
    unsafe {
        let mut acc = _mm512_setzero_ps();
        while i < full {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc);
            i += 16;
        }
        let mut total = _mm512_reduce_add_ps(acc);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }
}

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: AVX-512F checked by the dispatch point.
    unsafe { axpy_avx512(alpha, x, y) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn axpy_avx512(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    // SAFETY: every access is 16 floats at i < n - 15 of both slices.
    unsafe {
        let va = _mm512_set1_ps(alpha);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        while i + 16 <= n {
            let v = _mm512_fmadd_ps(va, _mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(py.add(i)));
            _mm512_storeu_ps(py.add(i), v);
            i += 16;
        }
    }
    while i < n {
        y[i] += alpha * x[i];
        i += 1;
    }
}
