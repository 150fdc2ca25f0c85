//! Glue for `ferrolm_core::io`: the folder swap that makes `save_pretrained` atomic.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::detached;

/// Swaps the folders `a` and `b` in one step; False where the system cannot (the caller then
/// replaces the files one by one).
#[pyfunction]
pub fn _exchange_paths(py: Python<'_>, a: PathBuf, b: PathBuf) -> PyResult<bool> {
    detached(py, || ferrolm_core::io::atomic::exchange(&a, &b))
}
