//! Glue for `ferrolm_core::runtime`: CPU features and the global thread pool.

use ferrolm_core::runtime::{cpu, pool};
use ferrolm_core::Error;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{attached, detached};

/// The CPU's SIMD extensions that matter to ferrolm, as a dict of flag name to bool.
#[pyfunction]
pub fn cpu_features(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (name, on) in cpu::features().flags() {
        d.set_item(name, on)?;
    }
    Ok(d)
}

/// The kernel paths this CPU runs (`scalar` first, the best last).
#[pyfunction]
pub fn available_isas() -> Vec<&'static str> {
    ferrolm_core::kernels::available()
}

/// The kernel path in use (chosen once: the best, or `FERROLM_ISA`).
#[pyfunction]
pub fn kernel_isa() -> &'static str {
    ferrolm_core::kernels::get().name
}

/// The number of threads ferrolm's parallel work runs on.
#[pyfunction]
pub fn get_num_threads(py: Python<'_>) -> PyResult<usize> {
    attached(py, pool::num_threads)
}

/// Sets the number of threads for all later parallel work in this process.
#[pyfunction]
pub fn set_num_threads(py: Python<'_>, n: i64) -> PyResult<()> {
    attached(py, || {
        let n = usize::try_from(n).map_err(|_| {
            Error::invalid(format!(
                "set_num_threads: the number of threads must be between 1 and {}, got {n}",
                pool::MAX_THREADS
            ))
        })?;
        pool::set_num_threads(n)
    })
}

/// Test support: runs one task on every worker of the pool (building it if needed) and returns
/// how many distinct OS threads ran them. After `fork()` this proves the child's pool is alive.
#[pyfunction]
pub fn _pool_workers(py: Python<'_>) -> PyResult<usize> {
    detached(py, || {
        let ids = pool::broadcast(|_| std::thread::current().id())?;
        let distinct: std::collections::HashSet<_> = ids.into_iter().collect();
        Ok(distinct.len())
    })
}

/// Test support: the quantized matmul alone. `tiles` (a saved `*.qweight`) is a `[n × k]`
/// matrix of format `fmt`; `x` holds `m × k` little-endian f32. Returns `x · Wᵀ` (`m × n` f32
/// bytes), activations quantized per block as in every forward pass.
#[pyfunction]
pub fn _qmatmul<'py>(
    py: Python<'py>,
    tiles: Vec<u8>,
    fmt: &str,
    n: usize,
    k: usize,
    x: Vec<u8>,
    m: usize,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    use ferrolm_core::io::safetensors::ByteData;
    use ferrolm_core::quant::{QActs, QMatrix, QType};
    let out = detached(py, move || {
        let ty = QType::parse(fmt).ok_or_else(|| Error::invalid(format!("format {fmt:?}")))?;
        let w = QMatrix::from_bytes(ty, n, k, ByteData::Owned(tiles), "tiles")?;
        if x.len() != m * k * 4 {
            return Err(Error::invalid("x must hold m × k f32"));
        }
        let xs: Vec<f32> = x
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let kern = ferrolm_core::kernels::get();
        let mut qa = QActs::default();
        qa.quantize(kern, &xs, m, k);
        let mut out = vec![0.0f32; m * n];
        // SAFETY: `out` is m × n, owned here.
        unsafe { kern.qgemm(&w, 0, w.groups(), &qa, 0, m, out.as_mut_ptr(), n) };
        Ok(out
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>())
    })?;
    Ok(pyo3::types::PyBytes::new(py, &out))
}

/// Test support: makes the core fail in a chosen way, to check the exception mapping.
/// `kind` is one of the names below; `"panic"` panics inside a pool worker.
#[pyfunction]
pub fn _fail_for_tests(py: Python<'_>, kind: &str) -> PyResult<()> {
    let kind = kind.to_owned();
    detached(py, move || match kind.as_str() {
        "not_found" => Err(Error::io(
            "/nonexistent/ferrolm-test",
            std::io::Error::from_raw_os_error(2),
        )),
        "permission" => Err(Error::io(
            "/root/ferrolm-test",
            std::io::Error::from_raw_os_error(13),
        )),
        "io" => Err(Error::from(std::io::Error::other("disk on fire"))),
        "format" => Err(Error::format("test.json", "missing field `model`")),
        "unsupported" => Err(Error::Unsupported("normalizer `Precompiled`".into())),
        "invalid" => Err(Error::invalid("bad value")),
        "type" => Err(Error::Type("expected a list of ints".into())),
        "index" => Err(Error::OutOfRange("token id 99 out of range".into())),
        "internal" => Err(Error::Internal("broken invariant".into())),
        "panic" => pool::install(|| -> () { panic!("deliberate panic in a worker") }),
        other => Err(Error::invalid(format!("unknown failure kind {other:?}"))),
    })
}

/// Test support: holds the calling thread for `seconds` with the GIL released, as every long
/// call does; other Python threads run meanwhile.
#[pyfunction]
pub fn _sleep_detached(py: Python<'_>, seconds: f64) -> PyResult<()> {
    detached(py, move || {
        if !(0.0..=60.0).contains(&seconds) {
            return Err(Error::invalid("seconds must be between 0 and 60"));
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
        Ok(())
    })
}

/// Bench support: the bytes/s the pool reads from a buffer of `bytes` (memory bandwidth).
#[pyfunction]
pub fn _read_bandwidth(py: Python<'_>, bytes: usize) -> PyResult<f64> {
    detached(py, || ferrolm_core::kernels::read_bandwidth(bytes))
}

/// `MemoryError` (naming `what`) unless `count` items of `item_bytes` each fit in the memory
/// this process can still get (`ferrolm_core::runtime::mem::check`): for the Python code that
/// builds large lists; returns their size in bytes. A count past 2^64 is refused as well.
#[pyfunction]
pub fn _check_memory(count: &Bound<'_, PyAny>, item_bytes: usize, what: &str) -> PyResult<usize> {
    let py = count.py();
    let n = count.extract::<usize>().unwrap_or(usize::MAX);
    attached(py, || {
        ferrolm_core::runtime::mem::check(n, item_bytes, what)
    })
}
