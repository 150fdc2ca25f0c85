//! The reference kernels: plain loops, no SIMD. Every ISA file has the same functions with the
//! same signatures, checked against these by the tests. Also the fallback on CPUs without AVX2.

// BLAS-shaped signatures: sizes, operands and strides.
#![allow(clippy::too_many_arguments)]

use super::Kernels;

pub const KERNELS: Kernels = Kernels {
    name: "scalar",
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
    qgemm: super::quant::scalar::QGEMM,
    quantize_acts: super::quant::scalar::quantize_acts,
    narrow_acts: false,
};

/// `C[m×w] = A[m×k] · B[k×w]` (see [`super::GemmFn`]).
///
/// # Safety
/// See [`super::GemmFn`].
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
    for i in 0..m {
        // SAFETY: the caller gives `m` rows of `w` writable elements at stride `ldc`.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), w) };
        row.fill(0.0);
        for p in 0..k {
            let x = a[i * k + p];
            let brow = &b[p * ldb..p * ldb + w];
            for (o, &v) in row.iter_mut().zip(brow) {
                *o += x * v;
            }
        }
    }
}

/// `C[m×n] = A[m×k] · B[n×k]ᵀ` (see [`super::GemmNtFn`]).
///
/// # Safety
/// See [`super::GemmNtFn`].
pub unsafe fn gemm_nt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize) {
    for i in 0..m {
        for j in 0..n {
            let v = dot(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]);
            // SAFETY: within the caller's `m × n` block at stride `ldc`.
            unsafe { *c.add(i * ldc + j) = v };
        }
    }
}

pub fn exp(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.exp());
}

pub fn gelu_tanh(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + (C * (u + 0.044_715 * u * u * u)).tanh());
    }
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
    for v in x.iter_mut() {
        let u = *v * std::f32::consts::FRAC_1_SQRT_2;
        let a = u.abs();
        let t = 1.0 / (1.0 + ERF_P * a);
        let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
        let e = 1.0 - poly * (-a * a).exp();
        let erf = if u < 0.0 { -e } else { e };
        *v = 0.5 * *v * (1.0 + erf);
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// `Σ a[i] · f16(b[i])`: attention scores over an f16 KV cache.
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, &h)| x * crate::io::half::f16_to_f32(h))
        .sum()
}

/// `y += alpha · f16(x)`.
pub fn axpy_f16(alpha: f32, x: &[u16], y: &mut [f32]) {
    for (o, &h) in y.iter_mut().zip(x) {
        *o += alpha * crate::io::half::f16_to_f32(h);
    }
}

/// `out = f16(x)`, rounding to nearest even.
pub fn to_f16(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = crate::io::half::f32_to_f16(v);
    }
}
