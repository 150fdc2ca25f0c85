//! Linear layers and the parallel scheduler of their matmuls: f32, packed f32 and quantized
//! weights, several matrices that read one input in one parallel region, fused projections,
//! and the transposed product of the output head.

use rayon::prelude::*;

use crate::io::safetensors::{F32Data, F32Tensor};
use crate::kernels::{self, PackedB, SendPtr, PANEL};
use crate::model::act::{act_in_place, add_in, Activation, SERIAL_ELEMS};
use crate::model::weights::{Linear, Mat};
use crate::quant::{QActs, QMatrix, QType, ROWS};

/// Columns per parallel task of a matmul: a multiple of 64 (the widest register tile).
fn column_chunk(n: usize, threads: usize) -> usize {
    let per = n.div_ceil(threads.max(1) * 2);
    per.div_ceil(64).max(1) * 64
}

/// `out[m × n_out] = x[m × n_in] @ w + b`, on the pool: [`linears`] with one matrix.
pub(crate) fn linear(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    lin: &Linear,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    linears(kern, x, m, &mut [(lin, out)], scratch);
}

/// `out = act(x @ w + b)`: [`linear`] with the activation applied by each task to the block it
/// computed (one parallel region, not two; the same values as [`activate`] afterwards).
pub(crate) fn linear_act(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    lin: &Linear,
    act: Activation,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    assert!(out.len() >= m * lin.n_out);
    let job = MatJob {
        w: mat_ref(lin),
        bias: Some(lin.b.values()),
        act: Some(act),
        out: SendPtr(out.as_mut_ptr()),
    };
    matmuls(kern, x, m, lin.n_in, &[job], &mut scratch.qa);
}

/// Reusable buffers of the matmuls: the quantized activations (quantized matmuls).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) qa: QActs,
}

/// Activation rows per parallel task of a quantized matmul over many rows.
const Q_ROW_CHUNK: usize = 64;

/// Columns per unit of work of an f32 matmul split by columns (the widest register tile).
const F32_UNIT: usize = 64;

/// One matrix of [`matmuls`]: `out[m × n] = x · W (+ bias)`.
struct MatJob<'a> {
    w: MatRef<'a>,
    bias: Option<&'a [f32]>,
    /// Applied after the bias.
    act: Option<Activation>,
    out: SendPtr,
}

fn mat_ref(lin: &Linear) -> MatRef<'_> {
    match &lin.w {
        Mat::F32(w) => MatRef::F32(w.values(), lin.n_out),
        Mat::Packed(w) => MatRef::Packed(w),
        Mat::Q(q) => MatRef::Q(q),
    }
}

#[derive(Clone, Copy)]
enum MatRef<'a> {
    /// `[k × n]` f32.
    F32(&'a [f32], usize),
    /// `[k × n]` f32 in panels.
    Packed(&'a PackedB),
    Q(&'a QMatrix),
}

impl MatRef<'_> {
    fn n(&self) -> usize {
        match self {
            MatRef::F32(_, n) => *n,
            MatRef::Packed(w) => w.n(),
            MatRef::Q(w) => w.n,
        }
    }

    /// Columns per unit of work: a quantized row group, a panel, or [`F32_UNIT`].
    fn unit(&self) -> usize {
        match self {
            MatRef::F32(..) => F32_UNIT,
            MatRef::Packed(_) => PANEL,
            MatRef::Q(_) => ROWS,
        }
    }
}

impl MatJob<'_> {
    /// Units of work in the matrix's columns.
    fn units(&self) -> usize {
        self.w.n().div_ceil(self.w.unit())
    }
}

/// `out = x @ w + b` for several matrices that read the same `x` (`m × n_in`, every `n_in`
/// equal) — a layer's query, key and value — in one parallel region: their columns, cut into
/// units of [`F32_UNIT`] columns (f32), a panel (f32 packed) or 16 (a quantized row group),
/// are laid end to end and split into equal runs across the pool (each weight read once); many
/// rows are split by rows as well. A quantized `x` is quantized once for all. Matrices of mixed
/// kinds run one after the other.
///
/// Each output is the same chain of multiply-adds over `n_in` (see the kernels' `gemm` and
/// `qgemm`) whatever the split, then the bias: a row's result does not depend on the other
/// rows of the call or on the number of threads, which makes generation reproducible across
/// batch sizes and thread counts.
pub(crate) fn linears(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    jobs: &mut [(&Linear, &mut [f32])],
    scratch: &mut Scratch,
) {
    let Some((first, _)) = jobs.first() else {
        return;
    };
    let k = first.n_in;
    let kind = |l: &Linear| std::mem::discriminant(&l.w);
    let same = jobs
        .iter()
        .all(|(l, _)| l.n_in == k && kind(l) == kind(first));
    if !same {
        for (lin, out) in jobs.iter_mut() {
            linears(kern, x, m, &mut [(*lin, &mut **out)], scratch);
        }
        return;
    }
    let list: Vec<MatJob> = jobs
        .iter_mut()
        .map(|(lin, out)| {
            assert!(out.len() >= m * lin.n_out);
            MatJob {
                w: mat_ref(lin),
                bias: Some(lin.b.values()),
                act: None,
                out: SendPtr(out.as_mut_ptr()),
            }
        })
        .collect();
    matmuls(kern, x, m, k, &list, &mut scratch.qa);
}

/// The parallel region of [`linears`] and [`qmatmul`] (see there): every job's matrix is
/// `k` inputs wide and of one kind (all f32, all packed or all quantized), each `out` is
/// `m × n`.
fn matmuls(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    k: usize,
    jobs: &[MatJob],
    qa: &mut QActs,
) {
    assert!(x.len() >= m * k);
    let q = matches!(jobs.first().map(|j| j.w), Some(MatRef::Q(_)));
    if q {
        qa.quantize(kern, x, m, k);
    }
    let qa = &*qa;
    let threads = rayon::current_num_threads();
    for j in jobs {
        let w_ok = match j.w {
            MatRef::F32(w, n) => k == 0 || w.len() >= k * n,
            MatRef::Packed(w) => w.k() == k,
            MatRef::Q(w) => w.k == k,
        };
        assert!(w_ok);
    }
    // The jobs' units, end to end: each job owns the next `units()` of them.
    let units: usize = jobs.iter().map(MatJob::units).sum();
    let cols: usize = jobs.iter().map(|j| j.w.n()).sum();
    // (rows per task, unit runs)
    let (row_chunk, runs) = if q {
        let row_chunks = m.div_ceil(Q_ROW_CHUNK);
        let runs = if row_chunks >= 2 * threads {
            1
        } else {
            (2 * threads).div_ceil(row_chunks)
        };
        (Q_ROW_CHUNK, runs)
    } else if m >= ROW_SPLIT_ROWS.max(4 * threads) {
        (m.div_ceil(threads * 2).max(4), 1)
    } else {
        (m.max(1), 2 * threads)
    };
    let runs = runs.clamp(1, units.max(1));
    let row_chunks = m.div_ceil(row_chunk).max(1);
    let run = |t: usize| {
        let (rc, r) = (t / runs, t % runs);
        let (u0, u1) = (units * r / runs, units * (r + 1) / runs);
        let (i0, i1) = (rc * row_chunk, ((rc + 1) * row_chunk).min(m));
        // SAFETY: the tasks' (rows, units) blocks are disjoint; the jobs were checked above.
        unsafe { run_units(kern, x, k, qa, jobs, (u0, u1), (i0, i1)) };
    };
    let tasks = row_chunks * runs;
    if tasks == 1 || (q && cols * k * m < SERIAL_ELEMS * 16) {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Units `u0..u1` of `jobs` (their units laid end to end, as in [`matmuls`]) for rows
/// `i0..i1` of `x` (`m × k`; quantized jobs read `qa`, `x` quantized): the matmul, then the
/// bias and the activation of each job.
///
/// # Safety
/// Each job's `out` holds `m × n` floats that no other thread touches at these rows and
/// columns during the call; `x` holds rows up to `i1`; every job's matrix is `k` inputs wide.
unsafe fn run_units(
    kern: &kernels::Kernels,
    x: &[f32],
    k: usize,
    qa: &QActs,
    jobs: &[MatJob],
    (u0, u1): (usize, usize),
    (i0, i1): (usize, usize),
) {
    let mut start = 0;
    for job in jobs {
        let end = start + job.units();
        let (a, b) = (u0.max(start) - start, u1.min(end).saturating_sub(start));
        start = end;
        if a >= b || i0 >= i1 {
            continue;
        }
        let n = job.w.n();
        let unit = job.w.unit();
        let (c0, c1) = (a * unit, (b * unit).min(n));
        // SAFETY: rows i0..i1 × columns c0..c1 of this job's `out` (m × n), this caller's
        // alone (the caller's promise).
        unsafe {
            let o = job.out.get();
            match job.w {
                MatRef::F32(w, _) => (kern.gemm)(
                    i1 - i0,
                    c1 - c0,
                    k,
                    &x[i0 * k..i1 * k],
                    &w[c0..],
                    n,
                    o.add(i0 * n + c0),
                    n,
                ),
                MatRef::Packed(w) => kern.gemm_packed(
                    i1 - i0,
                    c1 - c0,
                    k,
                    &x[i0 * k..i1 * k],
                    w.from_column(c0),
                    o.add(i0 * n + c0),
                    n,
                ),
                MatRef::Q(w) => kern.qgemm(w, a, b, qa, i0, i1, o, n),
            }
            if job.bias.is_some() || job.act.is_some() {
                for i in i0..i1 {
                    let row = std::slice::from_raw_parts_mut(o.add(i * n + c0), c1 - c0);
                    if let Some(bias) = job.bias {
                        add_in(row, &bias[c0..c1]);
                    }
                    if let Some(act) = job.act {
                        act_in_place(kern, act, row);
                    }
                }
            }
        }
    }
}

/// Columns `c0..c1` of [`linear_act`] (`act` None: [`linear`]) for all `m` rows of `x`, on
/// this thread: a team member's share (see [`crate::runtime::pool::team`]). A quantized
/// matrix reads `qa`, which must hold `x` quantized. Every output element is computed exactly
/// as [`linears`] computes it.
///
/// `c0` must be a multiple of the matrix's unit of work (16 columns quantized, 32 packed, 64
/// plain f32: see [`col_unit`]) and `c1` too, or the matrix's width.
///
/// # Safety
/// `out` holds `m × n_out` floats of which nothing else touches columns `c0..c1` during the
/// call, and nothing writes `x` or `qa`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn linear_cols(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    lin: &Linear,
    out: SendPtr,
    act: Option<Activation>,
    qa: &QActs,
    (c0, c1): (usize, usize),
) {
    let job = MatJob {
        w: mat_ref(lin),
        bias: Some(lin.b.values()),
        act,
        out,
    };
    let (k, n, unit) = (lin.n_in, job.w.n(), job.w.unit());
    assert!(x.len() >= m * k && c0 <= c1 && c1 <= n);
    assert!(c0 % unit == 0 && (c1 % unit == 0 || c1 == n));
    if let MatRef::Q(w) = job.w {
        assert!(qa.m >= m && qa.k == k && w.k == k);
    }
    // SAFETY: the caller's promise; the units cover exactly columns c0..c1.
    unsafe {
        run_units(
            kern,
            x,
            k,
            qa,
            &[job],
            (c0 / unit, c1.div_ceil(unit)),
            (0, m),
        )
    };
}

/// The unit of work of `lin`'s columns in [`linear_cols`].
pub(crate) fn col_unit(lin: &Linear) -> usize {
    mat_ref(lin).unit()
}

/// `out[m × n] = x[m × k] · Wᵀ` for a quantized `W` `[n × k]`: the rows of `x` quantized once
/// (into `qa`), then the weight row groups split across the pool — for a few rows into one
/// contiguous range per thread (each streams its part of the weights once), for many into
/// [`Q_ROW_CHUNK`]-row × row-group tasks.
pub(crate) fn qmatmul(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    w: &QMatrix,
    out: &mut [f32],
    qa: &mut QActs,
) {
    assert!(out.len() >= m * w.n);
    let job = MatJob {
        w: MatRef::Q(w),
        bias: None,
        act: None,
        out: SendPtr(out.as_mut_ptr()),
    };
    matmuls(kern, x, m, w.k, &[job], qa);
}

/// `out[m × n] = x[m × k] · bᵀ` with `b` `[n × k]`, split by rows of `b` across the pool.
///
/// Each output is a dot product computed by the kernels' `gemm_nt` tiles, the same arithmetic
/// for every `m` and split (so a row's logits do not depend on the rest of its batch). Each
/// task walks its rows of `b` in blocks of [`NT_BLOCK`], running all `m` rows of `x` over a
/// block while it is in cache: `b` is read from memory once per call.
pub(crate) fn gemm_nt_parallel(
    kern: &kernels::Kernels,
    x: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let chunk = column_chunk(n, rayon::current_num_threads()).max(256);
    let ptr = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|ci| {
        let (j0, j1) = (ci * chunk, ((ci + 1) * chunk).min(n));
        for j in (j0..j1).step_by(NT_BLOCK) {
            let w = NT_BLOCK.min(j1 - j);
            // SAFETY: columns j..j+w of the m rows of `out` (m × n), within this task's
            // block, disjoint from every other task's.
            unsafe { (kern.gemm_nt)(m, w, k, x, &b[j * k..(j + w) * k], ptr.get().add(j), n) };
        }
    });
}

/// From this many rows on, a matmul splits its rows across threads (each streaming all the
/// weights, amortized over its rows); below, its columns (each weight read once).
const ROW_SPLIT_ROWS: usize = 64;

/// Rows of `b` per cache block of `gemm_nt_parallel` (128 rows of 768 floats: 384 KB).
const NT_BLOCK: usize = 128;

/// A projection whose outputs are several matrices' side by side (`[Wq | Wk | Wv]`, `[Wgate |
/// Wup]`): one fused matrix where they could be joined, else the parts run one by one.
#[derive(Debug)]
pub(crate) enum Proj {
    Fused(Linear),
    Parts(Vec<Linear>),
}

impl Proj {
    /// Joins `parts` (the same input width) into one matrix when they share a format (f32
    /// always; quantized ones of one type whose rows fill whole tiles).
    pub(crate) fn join(parts: Vec<Linear>) -> Proj {
        let n_in = parts[0].n_in;
        let n_out: usize = parts.iter().map(|p| p.n_out).sum();
        let bias = || -> F32Tensor {
            let b: Vec<f32> = parts.iter().flat_map(|p| p.b.values().to_vec()).collect();
            F32Tensor {
                data: F32Data::Owned(b),
                shape: vec![n_out],
            }
        };
        let all_f32 = parts.iter().all(|p| matches!(p.w, Mat::F32(_)));
        if all_f32 {
            let mut w = vec![0.0f32; n_in * n_out];
            let mut col = 0;
            for p in &parts {
                let Mat::F32(t) = &p.w else { unreachable!() };
                for (i, row) in t.values().chunks_exact(p.n_out).enumerate() {
                    w[i * n_out + col..i * n_out + col + p.n_out].copy_from_slice(row);
                }
                col += p.n_out;
            }
            let w = Mat::F32(F32Tensor {
                data: F32Data::Owned(w),
                shape: vec![n_in, n_out],
            });
            return Proj::Fused(Linear {
                w,
                b: bias(),
                n_in,
                n_out,
            });
        }
        let qs: Vec<&QMatrix> = parts
            .iter()
            .filter_map(|p| match &p.w {
                Mat::Q(q) => Some(q),
                Mat::F32(_) | Mat::Packed(_) => None,
            })
            .collect();
        let ty = qs[0].ty;
        if qs.len() == parts.len() && qs.iter().all(|q| q.ty == ty && q.n.is_multiple_of(ROWS)) {
            let bytes: Vec<u8> = qs.iter().flat_map(|q| q.bytes().to_vec()).collect();
            if let Ok(q) = QMatrix::from_bytes(
                ty,
                n_out,
                n_in,
                crate::io::safetensors::ByteData::Owned(bytes),
                "fused projection",
            ) {
                return Proj::Fused(Linear {
                    w: Mat::Q(q),
                    b: bias(),
                    n_in,
                    n_out,
                });
            }
        }
        Proj::Parts(parts)
    }

    /// `out[m × Σ n_out] = x @ [W₀ | W₁ | ...] + b`.
    pub(crate) fn run(
        &self,
        kern: &kernels::Kernels,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        tmp: &mut Vec<f32>,
        scratch: &mut Scratch,
    ) {
        match self {
            Proj::Fused(lin) => linear(kern, x, m, lin, out, scratch),
            Proj::Parts(parts) => {
                let n: usize = parts.iter().map(|p| p.n_out).sum();
                let mut col = 0;
                for p in parts {
                    tmp.resize(m * p.n_out, 0.0);
                    linear(kern, x, m, p, tmp, scratch);
                    for (r, row) in tmp.chunks_exact(p.n_out).enumerate() {
                        out[r * n + col..r * n + col + p.n_out].copy_from_slice(row);
                    }
                    col += p.n_out;
                }
            }
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        let one = |l: &Linear| l.w.bytes();
        match self {
            Proj::Fused(l) => one(l),
            Proj::Parts(ps) => ps.iter().map(one).sum(),
        }
    }

    pub(crate) fn qtype(&self) -> Option<QType> {
        let one = |l: &Linear| l.w.qtype();
        match self {
            Proj::Fused(l) => one(l),
            Proj::Parts(ps) => ps.iter().find_map(one),
        }
    }
}
