//! The kernels with AVX-512F (16 f32 lanes). Same functions and signatures as [`super::scalar`];
//! the same blocking as [`super::x86_avx2`], with a register tile of up to 6 rows × 32 columns.

// BLAS-shaped signatures: sizes, operands and strides.
#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{scalar, Kernels};

pub const KERNELS: Kernels = Kernels {
    name: "avx512",
    gemm,
    gemm_nt,
    gemv_acc,
    dot,
    axpy,
};

const KC: usize = 256;
const NC: usize = 256;
const NR: usize = 32;

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
    let full = w - w % NR;
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
                    // SAFETY: rows i..i+r, columns j..j+32 of C; rows p0..p1 and the same
                    // columns of B; all within the bounds asserted above and the caller's C.
                    unsafe {
                        let ap = a.as_ptr().add(i * k + p0);
                        let bp = b.as_ptr().add(p0 * ldb + j);
                        let cp = c.add(i * ldc + j);
                        let acc = p0 > 0;
                        match r {
                            6 => tile::<6>(p1 - p0, ap, k, bp, ldb, cp, ldc, acc),
                            5 => tile::<5>(p1 - p0, ap, k, bp, ldb, cp, ldc, acc),
                            4 => tile::<4>(p1 - p0, ap, k, bp, ldb, cp, ldc, acc),
                            3 => tile::<3>(p1 - p0, ap, k, bp, ldb, cp, ldc, acc),
                            2 => tile::<2>(p1 - p0, ap, k, bp, ldb, cp, ldc, acc),
                            _ => tile::<1>(p1 - p0, ap, k, bp, ldb, cp, ldc, acc),
                        }
                    }
                    j += NR;
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
        // The last columns (fewer than 32): the reference loop.
        // SAFETY: the same block, shifted to its last `w - full` columns.
        unsafe { scalar::gemm(m, w - full, k, a, &b[full..], ldb, c.add(full), ldc) }
    }
}

/// `C[R×32] (+)= A[R×kc] · B[kc×32]` in registers.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's bounds: R rows of A (kc each), kc rows of 32 in B, R rows of 32 in C.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                row[0] = _mm512_loadu_ps(c.add(r * ldc));
                row[1] = _mm512_loadu_ps(c.add(r * ldc + 16));
            }
        }
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * ldb));
            let b1 = _mm512_loadu_ps(b.add(p * ldb + 16));
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + p));
                row[0] = _mm512_fmadd_ps(x, b0, row[0]);
                row[1] = _mm512_fmadd_ps(x, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), row[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), row[1]);
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
    let mut i = 0;
    while i < m {
        let r = (m - i).min(4);
        for j in 0..n {
            let brow = &b[j * k..(j + 1) * k];
            for rr in 0..r {
                let arow = &a[(i + rr) * k..(i + rr + 1) * k];
                // SAFETY: row i + rr < m, column j < n of the caller's C.
                unsafe { *c.add((i + rr) * ldc + j) = dot_avx512(arow, brow) };
            }
        }
        i += r;
    }
}

pub fn gemv_acc(m: usize, x: &[f32], ldx: usize, b: &[f32], y: &mut [f32]) {
    // SAFETY: the dispatch point hands out these kernels only on CPUs that run them.
    unsafe { gemv_acc_avx512(m, x, ldx, b, y) }
}

/// Four rows of B at a time, held in registers while each of the `m` rows of `Y` takes them:
/// `Y[r] += X[r,p] B[p] + X[r,p+1] B[p+1] + ...`. B is read once, in order.
#[target_feature(enable = "avx512f,avx2,fma")]
fn gemv_acc_avx512(m: usize, x: &[f32], ldx: usize, b: &[f32], y: &mut [f32]) {
    if m == 0 || y.is_empty() {
        return;
    }
    let n = y.len() / m;
    let k = b.len() / n;
    assert!(b.len() == k * n && y.len() == m * n);
    assert!(k == 0 || x.len() >= (m - 1) * ldx + k);
    let full = n - n % 16;
    let pb = b.as_ptr();
    let py = y.as_mut_ptr();
    let mut p = 0;
    // SAFETY: rows p..p+4 < k of B and columns j..j+16 <= full <= n; row r < m of Y.
    unsafe {
        while p + 4 <= k {
            let (r0, r1, r2, r3) = (
                pb.add(p * n),
                pb.add((p + 1) * n),
                pb.add((p + 2) * n),
                pb.add((p + 3) * n),
            );
            let mut j = 0;
            if m == 1 {
                // One row: its four coefficients stay in registers across the whole row.
                let (x0, x1, x2, x3) = (
                    _mm512_set1_ps(x[p]),
                    _mm512_set1_ps(x[p + 1]),
                    _mm512_set1_ps(x[p + 2]),
                    _mm512_set1_ps(x[p + 3]),
                );
                while j < full {
                    let mut acc = _mm512_loadu_ps(py.add(j));
                    acc = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r0.add(j)), acc);
                    acc = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r1.add(j)), acc);
                    acc = _mm512_fmadd_ps(x2, _mm512_loadu_ps(r2.add(j)), acc);
                    acc = _mm512_fmadd_ps(x3, _mm512_loadu_ps(r3.add(j)), acc);
                    _mm512_storeu_ps(py.add(j), acc);
                    j += 16;
                }
            }
            while j < full {
                let (b0, b1, b2, b3) = (
                    _mm512_loadu_ps(r0.add(j)),
                    _mm512_loadu_ps(r1.add(j)),
                    _mm512_loadu_ps(r2.add(j)),
                    _mm512_loadu_ps(r3.add(j)),
                );
                for r in 0..m {
                    let xr = x.as_ptr().add(r * ldx + p);
                    let yp = py.add(r * n + j);
                    let mut acc = _mm512_loadu_ps(yp);
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(*xr), b0, acc);
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(*xr.add(1)), b1, acc);
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(*xr.add(2)), b2, acc);
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(*xr.add(3)), b3, acc);
                    _mm512_storeu_ps(yp, acc);
                }
                j += 16;
            }
            p += 4;
        }
        while p < k {
            let rp = pb.add(p * n);
            let mut j = 0;
            while j < full {
                let bv = _mm512_loadu_ps(rp.add(j));
                for r in 0..m {
                    let yp = py.add(r * n + j);
                    _mm512_storeu_ps(
                        yp,
                        _mm512_fmadd_ps(_mm512_set1_ps(x[r * ldx + p]), bv, _mm512_loadu_ps(yp)),
                    );
                }
                j += 16;
            }
            p += 1;
        }
    }
    if full < n {
        for r in 0..m {
            for p in 0..k {
                let xp = x[r * ldx + p];
                for j in full..n {
                    y[r * n + j] += xp * b[p * n + j];
                }
            }
        }
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: AVX-512F checked by the dispatch point.
    unsafe { dot_avx512(a, b) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut i = 0;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 16 floats at i < n - 15 of both slices.
    unsafe {
        let mut s0 = _mm512_setzero_ps();
        let mut s1 = _mm512_setzero_ps();
        while i + 32 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                s1,
            );
            i += 32;
        }
        while i + 16 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            i += 16;
        }
        let mut total = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
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
