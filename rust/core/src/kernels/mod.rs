//! The f32 kernels of the forward passes, and THE dispatch point: the best implementation for
//! this CPU is chosen once, at first use, from [`crate::runtime::cpu::features`] (or the
//! environment variable `FERROLM_ISA` = `scalar` | `avx2` | `avx512` | `neon`, for tests and
//! benches),
//! and every call goes through that one table of function pointers.
//!
//! [`scalar`] is the reference: plain loops, the same names and signatures as each ISA file
//! ([`x86_avx2`], [`x86_avx512`]); the tests check each against it.
//!
//! Layouts (row-major everywhere):
//! - `gemm`: `C[m×w] = A[m×k] · B[k×w]`, B a column block of a wider matrix (row stride `ldb`)
//!   and C likewise (row stride `ldc`) — GPT-2's Conv1D weights are stored `[in, out]`, so the
//!   weights are used in place as B. The work is split by columns across threads.
//! - `gemm_packed`: `gemm` with B packed in panels of [`PANEL`] columns ([`PackedB`]), each
//!   panel's rows contiguous: the weights stream from memory in one sequential pass (BERT's
//!   f32 matrices, transposed at load anyway, are packed so).
//! - `gemm_nt`: `C[m×n] = A[m×k] · B[n×k]ᵀ` (each output a dot product) — for the tied LM head,
//!   whose weight is the `[vocab, d]` embedding.
//! - `dot`, `axpy`: attention over the KV cache.

pub mod quant;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;

use std::sync::OnceLock;

/// `C[m×w] = A[m×k] · B[k×w]`. `a` is `m×k` contiguous; `b` starts at B's first element with row
/// stride `ldb`; `c` at C's first element with row stride `ldc`.
///
/// # Safety
/// `c` must be valid for writes of `m` rows of `w` elements at stride `ldc`, and no other thread
/// may touch those elements during the call; `b` must hold `k` rows of `w` at stride `ldb`.
pub type GemmFn = unsafe fn(
    m: usize,
    w: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
);

/// `C[m×w] = A[m×k] · B[k×w]` with B packed ([`PackedB`]): `b` starts at the panel holding
/// the block's first column (the block starts at a multiple of [`PANEL`] columns), `c` at C's
/// first element with row stride `ldc`. Each output is the same chain of multiply-adds as
/// `gemm`'s on the unpacked matrix: the results are bit for bit `gemm`'s.
///
/// # Safety
/// As [`GemmFn`]; `b` must hold the `w.div_ceil(PANEL)` panels of `k × PANEL`.
pub type GemmPackedFn =
    unsafe fn(m: usize, w: usize, k: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize);

/// The height of `rows` split into register tiles of at most `most` rows, as even as can be
/// (15 rows of at most 6: 5 + 5 + 5, not 6 + 6 + 3); at least 1.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn even_tile(rows: usize, most: usize) -> usize {
    rows.div_ceil(rows.div_ceil(most).max(1)).max(1)
}

/// Columns per panel of a [`PackedB`].
pub const PANEL: usize = 32;

/// A `[k × n]` matrix in panels of [`PANEL`] columns: panel `q` holds columns
/// `q·PANEL .. q·PANEL + PANEL` as `k` contiguous rows of `PANEL` values (the last panel padded
/// with zeros), the panels one after the other. `gemm_packed`'s B.
#[derive(Debug, Clone)]
pub struct PackedB {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs `w`, an `[n × k]` matrix (`nn.Linear`'s `[out, in]`), as the `[k × n]` B of
    /// `x · wᵀ`.
    pub fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let mut data = vec![0.0f32; n.div_ceil(PANEL) * k * PANEL];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let panel = &mut data[(j / PANEL) * k * PANEL..];
            for (p, &v) in row.iter().enumerate() {
                panel[p * PANEL + j % PANEL] = v;
            }
        }
        PackedB { data, k, n }
    }

    /// Packs a row-major `[k × n]` matrix.
    pub fn from_rows(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n);
        let mut data = vec![0.0f32; n.div_ceil(PANEL) * k * PANEL];
        if n > 0 {
            for (p, row) in b.chunks_exact(n).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    data[(j / PANEL) * k * PANEL + p * PANEL + j % PANEL] = v;
                }
            }
        }
        PackedB { data, k, n }
    }

    /// Rows (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The panels from the one holding column `j` (a multiple of [`PANEL`]) on.
    pub fn from_column(&self, j: usize) -> &[f32] {
        debug_assert_eq!(j % PANEL, 0);
        &self.data[(j / PANEL) * self.k * PANEL..]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// `C[m×n] = A[m×k] · B[n×k]ᵀ`, `c` row stride `ldc`.
///
/// # Safety
/// As [`GemmFn`]: `c` valid for `m` rows of `n` at stride `ldc`, not shared during the call.
pub type GemmNtFn =
    unsafe fn(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize);

/// `out[i·ldo + j] = Σₖ A[i, k] · W[j, k]` for activation rows `i0..i1` and the weight rows `j`
/// of row groups `g0..g1` (`16·g0 .. min(16·g1, n)`); `out` points at row 0, column 0.
///
/// # Safety
/// `out` must be valid for those writes, which no other thread touches during the call.
pub type QGemmFn = unsafe fn(
    w: &crate::quant::QMatrix,
    g0: usize,
    g1: usize,
    a: &crate::quant::QActs,
    i0: usize,
    i1: usize,
    out: *mut f32,
    ldo: usize,
);

/// Quantizes rows of `k` (contiguous in `x`) per block of 32 to integers within `±levels`
/// (127, or 64 for [`crate::quant::QActs::narrow`]): `m = d.len() / blocks` rows into `q`
/// (`m · blocks · 32`), `d` and `s` (`m · blocks`), laid out as in [`crate::quant::QActs`].
/// Use [`crate::quant::QActs::quantize`].
pub type QuantizeActsFn =
    fn(x: &[f32], k: usize, q: &mut [i8], d: &mut [f32], s: &mut [i32], levels: i32);

impl Kernels {
    /// [`GemmPackedFn`]: the ISA's kernel, or `gemm` called panel by panel (row stride
    /// [`PANEL`]; each column gets `gemm`'s arithmetic either way).
    ///
    /// # Safety
    /// As [`GemmPackedFn`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn gemm_packed(
        &self,
        m: usize,
        w: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
    ) {
        if let Some(packed) = self.gemm_packed {
            // SAFETY: forwarded.
            return unsafe { packed(m, w, k, a, b, c, ldc) };
        }
        assert!(b.len() >= w.div_ceil(PANEL) * k * PANEL);
        for q in 0..w.div_ceil(PANEL) {
            let cols = PANEL.min(w - q * PANEL);
            // SAFETY: panel q holds k rows of PANEL (asserted); its columns of C are within
            // the caller's block.
            unsafe {
                (self.gemm)(
                    m,
                    cols,
                    k,
                    a,
                    &b[q * k * PANEL..],
                    PANEL,
                    c.add(q * PANEL),
                    ldc,
                )
            };
        }
    }

    /// The quantized matmul for `w`'s format ([`QGemmFn`]).
    ///
    /// # Safety
    /// As [`QGemmFn`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn qgemm(
        &self,
        w: &crate::quant::QMatrix,
        g0: usize,
        g1: usize,
        a: &crate::quant::QActs,
        i0: usize,
        i1: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // SAFETY: forwarded.
        unsafe { (self.qgemm[quant::format_index(w.ty)])(w, g0, g1, a, i0, i1, out, ldo) }
    }
}

/// One implementation of every kernel.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    pub name: &'static str,
    pub gemm: GemmFn,
    /// `gemm` on packed panels, where the ISA has a kernel of its own (else
    /// [`Kernels::gemm_packed`] runs `gemm` panel by panel).
    pub gemm_packed: Option<GemmPackedFn>,
    pub gemm_nt: GemmNtFn,
    /// `x = exp(x)` element-wise (within 2 ulp of the reference).
    pub exp: fn(&mut [f32]),
    /// GPT-2's `gelu_new`: `x = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, element-wise.
    pub gelu_tanh: fn(&mut [f32]),
    /// BERT's exact `gelu`: `x = 0.5 x (1 + erf(x / √2))`, element-wise (erf within 2e-7).
    pub gelu_erf: fn(&mut [f32]),
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `y += alpha * x`
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// `dot` against f16 values (an f16 KV cache).
    pub dot_f16: fn(&[f32], &[u16]) -> f32,
    /// `axpy` of f16 values.
    pub axpy_f16: fn(f32, &[u16], &mut [f32]),
    /// f32 to f16, rounding to nearest even (bit-identical on every ISA).
    pub to_f16: fn(&[f32], &mut [u16]),
    /// The quantized matmul ([`quant`]), per format (index: [`quant::format_index`]).
    pub qgemm: [QGemmFn; 3],
    /// Activations to int8 blocks for `qgemm`.
    pub quantize_acts: QuantizeActsFn,
    /// Whether this set's q8_0 kernel runs faster on activations within ±64
    /// ([`crate::quant::QActs::narrow`]): AVX2 without VNNI, where `vpmaddubsw` then takes the
    /// weights as unsigned bytes with no risk of saturating, one instruction fewer per
    /// product. Models that accept 7-bit activations (the BERT encoders) ask for them here.
    pub narrow_acts: bool,
}

/// The kernels for `isa` (`"scalar"`, `"avx2"`, `"avx512"`), if this CPU runs them.
pub fn for_isa(isa: &str) -> Option<Kernels> {
    let f = crate::runtime::cpu::features();
    match isa {
        "scalar" => Some(scalar::KERNELS),
        #[cfg(target_arch = "x86_64")]
        "avx2" if f.avx2 && f.fma && f.f16c => Some(x86_avx2::KERNELS),
        #[cfg(target_arch = "x86_64")]
        "avx512" if f.avx512f && f.avx512bw && f.avx2 && f.fma && f.f16c => {
            if f.avx512_vnni {
                Some(x86_avx512::KERNELS)
            } else {
                // AVX-512 without VNNI (Skylake-X): the f32 kernels, AVX2's integer ones.
                Some(Kernels {
                    qgemm: quant::x86_avx2::QGEMM,
                    quantize_acts: quant::x86_avx2::quantize_acts,
                    narrow_acts: true,
                    ..x86_avx512::KERNELS
                })
            }
        }
        #[cfg(target_arch = "aarch64")]
        "neon" if f.neon => Some(Kernels {
            name: "neon",
            qgemm: quant::aarch64_neon::QGEMM,
            quantize_acts: quant::aarch64_neon::quantize_acts,
            ..scalar::KERNELS
        }),
        _ => {
            let _ = f;
            None
        }
    }
}

/// The ISAs this CPU runs, best last.
pub fn available() -> Vec<&'static str> {
    ["scalar", "neon", "avx2", "avx512"]
        .into_iter()
        .filter(|i| for_isa(i).is_some())
        .collect()
}

/// The kernels every forward pass uses: chosen once.
pub fn get() -> &'static Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        if let Ok(want) = std::env::var("FERROLM_ISA") {
            if let Some(k) = for_isa(want.trim()) {
                return k;
            }
        }
        let best = available().last().copied().unwrap_or("scalar");
        for_isa(best).unwrap_or(scalar::KERNELS)
    })
}

/// The rate (bytes/s) at which the global pool's threads read a `bytes`-sized buffer with
/// these kernels: the memory-bandwidth ceiling that decoding is measured against. Best of 5.
pub fn read_bandwidth(bytes: usize) -> crate::Result<f64> {
    use rayon::prelude::*;
    let n = (bytes / 4).max(1 << 16);
    let buf = vec![1.0f32; n];
    let kern = get();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let total: f32 = crate::runtime::pool::install(|| {
            buf.par_chunks(1 << 16).map(|c| (kern.dot)(c, c)).sum()
        })?;
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(total);
        best = best.max((n * 4) as f64 / secs);
    }
    Ok(best)
}

/// A raw pointer that may cross threads: for kernels writing disjoint blocks of one output.
#[derive(Debug, Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: used only to hand disjoint output blocks to pool threads, which finish before the
// buffer is touched again (rayon's scope joins them).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. (A method, so that closures capture the `SendPtr`, not its raw field.)
    #[inline]
    pub fn get(&self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rand;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn every_isa_agrees_with_scalar() {
        let reference = scalar::KERNELS;
        for isa in available() {
            let kern = for_isa(isa).unwrap();
            for &(m, k, n) in &[
                (1, 1, 1),
                (1, 768, 2304),
                (3, 17, 37),
                (4, 64, 48),
                (5, 300, 33),
                (9, 257, 130),
            ] {
                let a = rand(m * k, 1);
                let b = rand(k * (n + 3), 2);
                // A column block starting at column 1 of a [k, n+3] matrix.
                let (mut c0, mut c1) = (vec![9.0; m * (n + 2)], vec![9.0; m * (n + 2)]);
                unsafe {
                    (reference.gemm)(m, n, k, &a, &b[1..], n + 3, c0.as_mut_ptr().add(1), n + 2);
                    (kern.gemm)(m, n, k, &a, &b[1..], n + 3, c1.as_mut_ptr().add(1), n + 2);
                }
                close(&c1, &c0, 1e-5);
                let bt = rand(n * k, 3);
                let (mut d0, mut d1) = (vec![0.0; m * n], vec![0.0; m * n]);
                unsafe {
                    (reference.gemm_nt)(m, n, k, &a, &bt, d0.as_mut_ptr(), n);
                    (kern.gemm_nt)(m, n, k, &a, &bt, d1.as_mut_ptr(), n);
                }
                close(&d1, &d0, 1e-5);
                let mut e0: Vec<f32> = rand(k + 5, 9).iter().map(|v| v * 40.0).collect();
                let mut e1 = e0.clone();
                let mut g0: Vec<f32> = rand(k + 5, 10).iter().map(|v| v * 12.0).collect();
                let mut g1 = g0.clone();
                (reference.exp)(&mut e0);
                (kern.exp)(&mut e1);
                close(&e1, &e0, 1e-6);
                (reference.gelu_tanh)(&mut g0);
                (kern.gelu_tanh)(&mut g1);
                close(&g1, &g0, 1e-6);
                let mut h0: Vec<f32> = rand(k + 5, 11).iter().map(|v| v * 12.0).collect();
                let mut h1 = h0.clone();
                let exact: Vec<f32> = h0
                    .iter()
                    .map(|&x| crate::model::act::Activation::Gelu.apply(x))
                    .collect();
                (reference.gelu_erf)(&mut h0);
                (kern.gelu_erf)(&mut h1);
                close(&h0, &exact, 1e-6);
                close(&h1, &exact, 1e-6);
                let x = rand(k, 4);
                assert!(((kern.dot)(&a[..k], &x) - (reference.dot)(&a[..k], &x)).abs() < 1e-4);
                let (mut y0, mut y1) = (rand(k, 5), rand(k, 5));
                (reference.axpy)(0.3, &x, &mut y0);
                (kern.axpy)(0.3, &x, &mut y1);
                close(&y1, &y0, 1e-6);
                // f16: conversions bit-identical, dot / axpy to rounding.
                let wide: Vec<f32> = rand(k + 3, 12).iter().map(|v| v * 1e5).collect();
                let (mut h0, mut h1) = (vec![0u16; k + 3], vec![0u16; k + 3]);
                (reference.to_f16)(&wide, &mut h0);
                (kern.to_f16)(&wide, &mut h1);
                assert_eq!(h0, h1, "{isa}: to_f16");
                (reference.to_f16)(&x, &mut h0[..k]);
                let d0 = (reference.dot_f16)(&a[..k], &h0[..k]);
                assert!(((kern.dot_f16)(&a[..k], &h0[..k]) - d0).abs() < 1e-4);
                let (mut y0, mut y1) = (rand(k, 5), rand(k, 5));
                (reference.axpy_f16)(0.3, &h0[..k], &mut y0);
                (kern.axpy_f16)(0.3, &h0[..k], &mut y1);
                close(&y1, &y0, 1e-6);
            }
        }
    }

    #[test]
    fn packed_gemm_is_bit_for_bit_gemm() {
        for isa in available() {
            let kern = for_isa(isa).unwrap();
            for &(m, k, n) in &[
                (1, 1, 1),
                (1, 384, 1152),
                (3, 17, 37),
                (6, 64, 48),
                (9, 257, 130),
                (14, 300, 100),
                (15, 40, 96),
                (30, 384, 300),
                (43, 513, 70),
                (20, 1100, 64),
                (4, 0, 40),
            ] {
                let a = rand(m * k, 1);
                let b = rand(k * n, 2);
                let packed = PackedB::from_rows(&b, k, n);
                let mut bt = vec![0.0; n * k];
                for p in 0..k {
                    for j in 0..n {
                        bt[j * k + p] = b[p * n + j];
                    }
                }
                let again = PackedB::from_out_in(&bt, n, k);
                assert_eq!(packed.data, again.data);
                assert_eq!((packed.k(), packed.n()), (k, n));
                // The whole matrix, and the block from column 32 on (a later panel).
                for j0 in [0, 32] {
                    if j0 >= n {
                        continue;
                    }
                    let w = n - j0;
                    let (mut c0, mut c1) = (vec![9.0; m * n], vec![7.0; m * n]);
                    unsafe {
                        (kern.gemm)(
                            m,
                            w,
                            k,
                            &a,
                            &b[j0.min(b.len())..],
                            n,
                            c0.as_mut_ptr().add(j0),
                            n,
                        );
                        kern.gemm_packed(
                            m,
                            w,
                            k,
                            &a,
                            packed.from_column(j0),
                            c1.as_mut_ptr().add(j0),
                            n,
                        );
                    }
                    for i in 0..m {
                        let (r0, r1) = (&c0[i * n + j0..(i + 1) * n], &c1[i * n + j0..(i + 1) * n]);
                        let same = r0.iter().zip(r1).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{isa} m={m} k={k} n={n} from {j0}: row {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_kernels_agree_with_scalar() {
        use crate::quant::{levels, QActs, QMatrix, QType};
        let reference = scalar::KERNELS;
        #[cfg(target_arch = "aarch64")]
        assert!(
            available().contains(&"neon"),
            "NEON is part of every aarch64 CPU"
        );
        for isa in available() {
            let kern = for_isa(isa).unwrap();
            // Ragged shapes: k not a multiple of 32, n not of 16, one row, many rows.
            for &(m, k, n) in &[
                (1, 32, 16),
                (1, 768, 2304),
                (1, 45, 21),
                (3, 100, 37),
                (5, 64, 1),
                (9, 257, 130),
                (17, 96, 48),
            ] {
                // 8-bit and 7-bit (narrow) activations; random values, then the largest products
                // (every weight and activation at the top of its range, one sign).
                for (narrow, extreme) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let x: Vec<f32> = if extreme {
                        vec![2.5; m * k]
                    } else {
                        rand(m * k, 21).iter().map(|v| v * 3.0).collect()
                    };
                    let (mut a0, mut a1) = (QActs::default(), QActs::default());
                    (a0.narrow, a1.narrow) = (narrow, narrow);
                    a0.quantize(&reference, &x, m, k);
                    a1.quantize(&kern, &x, m, k);
                    assert_eq!(a0.q, a1.q, "{isa}: activation quants");
                    assert_eq!(a0.d, a1.d, "{isa}: activation scales");
                    assert_eq!(a0.s, a1.s, "{isa}: activation sums");
                    let top = levels(narrow) as i8;
                    assert!(a0.q.iter().all(|&v| (-top..=top).contains(&v)));
                    let wf = if extreme {
                        vec![1.5; n * k]
                    } else {
                        rand(n * k, 22)
                    };
                    for ty in [QType::Q8_0, QType::Q4_0, QType::Q4_1] {
                        let w = QMatrix::quantize(ty, &wf, n, k, false);
                        // Into a wider output (stride n + 3), starting at row group 0 or 1.
                        let ldo = n + 3;
                        let g0 = usize::from(w.groups() > 1);
                        let (mut o0, mut o1) = (vec![7.0f32; m * ldo], vec![7.0f32; m * ldo]);
                        unsafe {
                            (reference.qgemm[quant::format_index(ty)])(
                                &w,
                                g0,
                                w.groups(),
                                &a0,
                                0,
                                m,
                                o0.as_mut_ptr(),
                                ldo,
                            );
                            (kern.qgemm[quant::format_index(ty)])(
                                &w,
                                g0,
                                w.groups(),
                                &a0,
                                0,
                                m,
                                o1.as_mut_ptr(),
                                ldo,
                            );
                        }
                        close(&o1, &o0, 1e-5);
                        // Columns outside the row groups are untouched.
                        for i in 0..m {
                            assert!(o1[i * ldo..i * ldo + 16 * g0].iter().all(|&v| v == 7.0));
                            assert!(o1[i * ldo + n..(i + 1) * ldo].iter().all(|&v| v == 7.0));
                        }
                        // And the reference is the dequantized product, to rounding.
                        let wd = w.dequantize();
                        for i in 0..m {
                            for j in 16 * g0..n {
                                let mut e = 0.0f64;
                                let mut mag = 0.0f64;
                                for p in 0..k {
                                    let b = p / 32;
                                    let xa = a0.d[i * a0.blocks + b]
                                        * f32::from(a0.q[i * a0.blocks * 32 + p]);
                                    e += f64::from(xa) * f64::from(wd[j * k + p]);
                                    mag += f64::from((xa * wd[j * k + p]).abs());
                                }
                                let got = f64::from(o0[i * ldo + j]);
                                assert!(
                                    (got - e).abs() <= 1e-5 * (1.0 + mag),
                                    "{ty:?} {i},{j}: {got} vs {e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
