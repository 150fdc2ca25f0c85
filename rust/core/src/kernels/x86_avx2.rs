//! The kernels with AVX2 + FMA (8 f32 lanes). Same functions and signatures as [`super::scalar`].
//!
//! `gemm` is blocked for the caches: columns in panels of [`NC`], the shared dimension in slices
//! of [`KC`] (a `KC × NC` panel of B, 256 KB, stays in L2 while every row block of A passes over
//! it), and a register tile of up to 6 rows × 16 columns accumulated with FMA. For one row (a
//! decoded token) this streams each weight once, which is what bounds decoding.

// BLAS-shaped signatures: sizes, operands and strides.
#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{scalar, Kernels};

pub const KERNELS: Kernels = Kernels {
    name: "avx2",
    gemm,
    gemm_packed: None,
    gemm_nt,
    exp,
    gelu_tanh,
    gelu_erf,
    dot,
    axpy,
    dot_f16,
    axpy_f16,
    to_f16,
    qgemm: super::quant::x86_avx2::QGEMM,
    quantize_acts: super::quant::x86_avx2::quantize_acts,
    narrow_acts: true,
};

const KC: usize = 256;
const NC: usize = 256;
const NR: usize = 16;

/// # Safety
/// See [`super::GemmFn`]; the CPU must have AVX2 and FMA (checked by the dispatch point).
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
    // SAFETY: the dispatch point hands out these kernels only on CPUs with AVX2 and FMA.
    unsafe { gemm_avx2(m, w, k, a, b, ldb, c, ldc) }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2(
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
    // Tiles of 16 columns, then of 8, then the reference loop for the last few: each column
    // always goes through the same arithmetic (one chain of fused multiply-adds over k, or the
    // reference's), whatever `m`, `w`'s split across threads or the caller's blocking.
    let full = w - w % 8;
    let tall = super::even_tile(m, 6);
    let mut j0 = 0;
    while j0 < full {
        let j1 = (j0 + NC).min(full);
        let mut p0 = 0;
        while p0 < k || (p0 == 0 && k == 0) {
            let p1 = (p0 + KC).min(k);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(tall);
                let mut j = j0;
                while j < j1 {
                    let wide = j + NR <= j1;
                    // SAFETY: rows i..i+r, columns j..j+16 (or j+8) of C; rows p0..p1 and the
                    // same columns of B; all within the bounds asserted above and the caller's C.
                    unsafe {
                        let ap = a.as_ptr().add(i * k + p0);
                        let bp = b.as_ptr().add(p0 * ldb + j);
                        let cp = c.add(i * ldc + j);
                        let args = (p1 - p0, ap, k, bp, ldb, cp, ldc, p0 > 0);
                        match (wide, r) {
                            (true, 6) => tile::<6, 2>(args),
                            (true, 5) => tile::<5, 2>(args),
                            (true, 4) => tile::<4, 2>(args),
                            (true, 3) => tile::<3, 2>(args),
                            (true, 2) => tile::<2, 2>(args),
                            (true, _) => tile::<1, 2>(args),
                            (false, 6) => tile::<6, 1>(args),
                            (false, 5) => tile::<5, 1>(args),
                            (false, 4) => tile::<4, 1>(args),
                            (false, 3) => tile::<3, 1>(args),
                            (false, 2) => tile::<2, 1>(args),
                            (false, _) => tile::<1, 1>(args),
                        }
                    }
                    j += if wide { NR } else { 8 };
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
        // The last columns (fewer than 8): the reference loop.
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

/// `C[R×8V] (+)= A[R×kc] · B[kc×8V]` in registers (R ≤ 6, V ≤ 2).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize, const V: usize>((kc, a, lda, b, ldb, c, ldc, accumulate): TileArgs) {
    // SAFETY: the caller's bounds: R rows of A (kc each), kc rows of 8V in B, R rows of 8V in C.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(c.add(r * ldc + 8 * v));
                }
            }
        }
        for p in 0..kc {
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(b.add(p * ldb + 8 * v));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
                for (v, y) in row.iter_mut().enumerate() {
                    *y = _mm256_fmadd_ps(x, bv[v], *y);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * ldc + 8 * v), *x);
            }
        }
    }
}

/// # Safety
/// See [`super::GemmNtFn`]; AVX2 and FMA required.
pub unsafe fn gemm_nt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize) {
    // SAFETY: AVX2 + FMA checked by the dispatch point; bounds as the caller promises.
    unsafe { gemm_nt_avx2(m, n, k, a, b, c, ldc) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_nt_avx2(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    assert!(a.len() >= m * k && b.len() >= n * k);
    const BR: usize = 2;
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
#[target_feature(enable = "avx2,fma")]
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
        let mut acc = [[_mm256_setzero_ps(); BR]; R];
        let full = k - k % 8;
        let mut p = 0;
        while p < full {
            let mut bv = [_mm256_setzero_ps(); BR];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(b.add(q * k + p));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(a.add(r * k + p));
                for (q, x) in row.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(av, bv[q], *x);
                }
            }
            p += 8;
        }
        for (r, row) in acc.iter().enumerate() {
            for (q, x) in row.iter().enumerate() {
                let mut s = hsum256(*x);
                for t in full..k {
                    s += *a.add(r * k + t) * *b.add(q * k + t);
                }
                *c.add(r * ldc + q) = s;
            }
        }
    }
}

/// The sum of the 8 lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let q = _mm_add_ps(lo, hi);
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
    _mm_cvtss_f32(q)
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
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp_v(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
        _mm256_set1_ps(EXP_HI),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let poly = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    _mm256_mul_ps(
        poly,
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ))),
    )
}

pub fn exp(x: &mut [f32]) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs that run them.
    unsafe { exp_avx2(x) }
}

#[target_feature(enable = "avx2,fma")]
fn exp_avx2(x: &mut [f32]) {
    let n = x.len();
    let full = n - n % 8;
    let px = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: 8 floats at i < full <= n.
    unsafe {
        while i < full {
            _mm256_storeu_ps(px.add(i), exp_v(_mm256_loadu_ps(px.add(i))));
            i += 8;
        }
    }
    // The last values through the same vector code (padded), so that a value's result does not
    // depend on where it falls in the slice.
    let mut buf = [0.0f32; 8];
    buf[..n - full].copy_from_slice(&x[full..]);
    // SAFETY: 8 floats of `buf`.
    unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), exp_v(_mm256_loadu_ps(buf.as_ptr()))) };
    x[full..].copy_from_slice(&buf[..n - full]);
}

pub fn gelu_tanh(x: &mut [f32]) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs that run them.
    unsafe { gelu_tanh_avx2(x) }
}

/// `0.5 x (1 + tanh(u))` as `x − x / (1 + e^{2u})`: one exp, one division.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn gelu_tanh_v(v: __m256) -> __m256 {
    let v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
    let u = _mm256_mul_ps(
        _mm256_set1_ps(GELU_C),
        _mm256_fmadd_ps(_mm256_set1_ps(GELU_A), v3, v),
    );
    let e = exp_v(_mm256_add_ps(u, u));
    _mm256_sub_ps(v, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0), e)))
}

#[target_feature(enable = "avx2,fma")]
fn gelu_tanh_avx2(x: &mut [f32]) {
    let n = x.len();
    let full = n - n % 8;
    let px = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: 8 floats at i < full <= n.
    unsafe {
        while i < full {
            _mm256_storeu_ps(px.add(i), gelu_tanh_v(_mm256_loadu_ps(px.add(i))));
            i += 8;
        }
    }
    // The last values through the same vector code (padded), so that a value's result does not
    // depend on where it falls in the slice.
    let mut buf = [0.0f32; 8];
    buf[..n - full].copy_from_slice(&x[full..]);
    // SAFETY: 8 floats of `buf`.
    unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), gelu_tanh_v(_mm256_loadu_ps(buf.as_ptr()))) };
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
    unsafe { gelu_erf_avx2(x) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn gelu_erf_v(v: __m256) -> __m256 {
    let u = _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), u);
    let sign = _mm256_and_ps(_mm256_set1_ps(-0.0), u);
    let t = _mm256_div_ps(
        _mm256_set1_ps(1.0),
        _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), a, _mm256_set1_ps(1.0)),
    );
    let mut poly = _mm256_set1_ps(ERF_A[4]);
    for &c in ERF_A[..4].iter().rev() {
        poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(c));
    }
    poly = _mm256_mul_ps(poly, t);
    let ex = exp_v(_mm256_sub_ps(_mm256_set1_ps(0.0), _mm256_mul_ps(a, a)));
    let e = _mm256_sub_ps(_mm256_set1_ps(1.0), _mm256_mul_ps(poly, ex));
    let erf = _mm256_xor_ps(e, sign);
    _mm256_mul_ps(
        _mm256_mul_ps(_mm256_set1_ps(0.5), v),
        _mm256_add_ps(_mm256_set1_ps(1.0), erf),
    )
}

#[target_feature(enable = "avx2,fma")]
fn gelu_erf_avx2(x: &mut [f32]) {
    let n = x.len();
    let full = n - n % 8;
    let px = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: 8 floats at i < full <= n.
    unsafe {
        while i < full {
            _mm256_storeu_ps(px.add(i), gelu_erf_v(_mm256_loadu_ps(px.add(i))));
            i += 8;
        }
    }
    // The last values through the same vector code (padded), so that a value's result does not
    // depend on where it falls in the slice.
    let mut buf = [0.0f32; 8];
    buf[..n - full].copy_from_slice(&x[full..]);
    // SAFETY: 8 floats of `buf`.
    unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), gelu_erf_v(_mm256_loadu_ps(buf.as_ptr()))) };
    x[full..].copy_from_slice(&buf[..n - full]);
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: AVX2 + FMA checked by the dispatch point.
    unsafe { dot_avx2(a, b) }
}

#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // One chain of 8 lanes, reduced, then the last values in order: exactly what `nt_tile`
    // computes for each of its dot products, so attention's scores do not depend on which of
    // the two computed them.
    let n = a.len().min(b.len());
    let full = n - n % 8;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i < full <= n of both slices.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        while i < full {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc);
            i += 8;
        }
        let mut total = hsum256(acc);
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }
}

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: AVX2 + FMA checked by the dispatch point.
    unsafe { axpy_avx2(alpha, x, y) }
}

#[target_feature(enable = "avx2,fma")]
fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    // SAFETY: every access is 8 floats at i < n - 7 of both slices.
    unsafe {
        let va = _mm256_set1_ps(alpha);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
    }
    while i < n {
        y[i] += alpha * x[i];
        i += 1;
    }
}

/// See [`super::scalar::dot_f16`].
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    // SAFETY: AVX2, FMA and F16C checked by the dispatch point.
    unsafe { dot_f16_avx2(a, b) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16_avx2(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    let mut i = 0;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 8 values at i <= n - 8 of both slices.
    let mut s = unsafe {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        while i + 16 <= n {
            let h0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast()));
            let h1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8).cast()));
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), h0, s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), h1, s1);
            i += 16;
        }
        if i + 8 <= n {
            let h0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast()));
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), h0, s0);
            i += 8;
        }
        hsum256(_mm256_add_ps(s0, s1))
    };
    s += super::scalar::dot_f16(&a[i..n], &b[i..n]);
    s
}

/// See [`super::scalar::axpy_f16`].
pub fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    // SAFETY: AVX2, FMA and F16C checked by the dispatch point.
    unsafe { axpy_f16_avx2(alpha, x, y) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_f16_avx2(alpha: f32, x: &[u16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let mut i = 0;
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    // SAFETY: 8 values at i <= n - 8 of both slices.
    unsafe {
        let a = _mm256_set1_ps(alpha);
        while i + 8 <= n {
            let h = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i).cast()));
            _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(a, h, _mm256_loadu_ps(py.add(i))));
            i += 8;
        }
    }
    super::scalar::axpy_f16(alpha, &x[i..n], &mut y[i..n]);
}

/// See [`super::scalar::to_f16`]; bit-identical (round to nearest even).
pub fn to_f16(x: &[f32], out: &mut [u16]) {
    // SAFETY: AVX2 and F16C checked by the dispatch point.
    unsafe { to_f16_avx2(x, out) }
}

#[target_feature(enable = "avx2,f16c")]
fn to_f16_avx2(x: &[f32], out: &mut [u16]) {
    let n = x.len().min(out.len());
    let mut i = 0;
    let (px, po) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: 8 values at i <= n - 8 of both slices.
    unsafe {
        while i + 8 <= n {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(px.add(i)));
            _mm_storeu_si128(po.add(i).cast(), h);
            i += 8;
        }
    }
    super::scalar::to_f16(&x[i..n], &mut out[i..n]);
}
