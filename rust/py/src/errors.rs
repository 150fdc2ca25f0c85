//! The Rust/Python boundary: core errors become specific Python exceptions, panics become
//! `ferrolm.InternalError`, and long calls run with the GIL released.
//!
//! PyO3 would turn a panic into `pyo3_runtime.PanicException`, which derives from
//! `BaseException`, so `except Exception` misses it. Every entry point that calls into the core
//! goes through [`detached`] (long work, GIL released) or [`attached`] (short work), which
//! catch panics and map errors, so that never happens.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrolm_core::Error;
use pyo3::exceptions::{
    PyFileNotFoundError, PyIndexError, PyMemoryError, PyOSError, PyPermissionError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The exception classes ferrolm defines are Python classes (`ferrolm._errors`), so that
/// `FormatError` can derive from both `ferrolm.FerrolmError` and `ValueError`.
fn ferrolm_exception<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, "ferrolm._errors", name)
}

fn new_ferrolm_err(py: Python<'_>, which: Which, message: String) -> PyErr {
    static FORMAT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static INTERNAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let (cell, name) = match which {
        Which::Format => (&FORMAT, "FormatError"),
        Which::Internal => (&INTERNAL, "InternalError"),
    };
    match ferrolm_exception(py, cell, name) {
        Ok(cls) => PyErr::from_type(cls.clone(), message),
        // Only if ferrolm/_errors.py is missing from the install: still raise an Exception.
        Err(e) => e,
    }
}

enum Which {
    Format,
    Internal,
}

/// Maps a core error to the Python exception users expect.
pub fn to_pyerr(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::Io { path, source } => match source.kind() {
            std::io::ErrorKind::NotFound => io_err::<PyFileNotFoundError>(path, &source, message),
            std::io::ErrorKind::PermissionDenied => {
                io_err::<PyPermissionError>(path, &source, message)
            }
            _ => io_err::<PyOSError>(path, &source, message),
        },
        Error::Format { .. } | Error::Unsupported(_) => new_ferrolm_err(py, Which::Format, message),
        Error::InvalidArgument(_) => PyValueError::new_err(message),
        Error::Type(_) => PyTypeError::new_err(message),
        Error::OutOfRange(_) => PyIndexError::new_err(message),
        Error::OutOfMemory(_) => PyMemoryError::new_err(message),
        Error::Cancelled => pyo3::exceptions::PyKeyboardInterrupt::new_err(message),
        Error::Internal(_) => new_ferrolm_err(py, Which::Internal, message),
    }
}

/// An `OSError` subclass with `errno`, `strerror` and `filename` set when they are known, as
/// Python's own `open()` raises it.
fn io_err<E: pyo3::PyTypeInfo>(
    path: Option<std::path::PathBuf>,
    source: &std::io::Error,
    message: String,
) -> PyErr {
    match (path, source.raw_os_error()) {
        (Some(p), Some(errno)) => {
            // strerror without Rust's " (os error N)" suffix.
            let text = source.to_string();
            let strerror = text
                .rsplit_once(" (os error")
                .map_or(text.as_str(), |(head, _)| head)
                .to_owned();
            PyErr::new::<E, _>((errno, strerror, p.display().to_string()))
        }
        _ => PyErr::new::<E, _>(message),
    }
}

/// Runs `f` with the GIL released, catching panics, and maps its error. For every call that can
/// take more than a few microseconds.
pub fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> ferrolm_core::Result<T> + Send,
    T: Send,
{
    let out = py.detach(move || catch_unwind(AssertUnwindSafe(f)));
    finish(py, out)
}

/// Runs `f` holding the GIL (short calls only), catching panics, and maps its error.
pub fn attached<T>(py: Python<'_>, f: impl FnOnce() -> ferrolm_core::Result<T>) -> PyResult<T> {
    finish(py, catch_unwind(AssertUnwindSafe(f)))
}

fn finish<T>(py: Python<'_>, out: std::thread::Result<ferrolm_core::Result<T>>) -> PyResult<T> {
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_pyerr(py, e)),
        Err(payload) => Err(to_pyerr(py, Error::from_panic(payload.as_ref()))),
    }
}

/// Ctrl-C for long calls. [`detached_interruptible`] runs the work on a thread of its own while
/// the calling thread (Python's main thread, where signals are handled) checks for pending
/// signals every few milliseconds; when a handler raises (`KeyboardInterrupt`), it sets
/// [`Interrupt::flag`], which the work checks at safe points ([`Interrupt::check`], between
/// layers of a forward pass through [`ferrolm_core::model::Cache::set_cancel`]), and the
/// exception is re-raised as it was once the work has stopped.
pub struct Interrupt {
    raised: parking_lot::Mutex<Option<PyErr>>,
    flag: Arc<AtomicBool>,
}

impl Interrupt {
    /// [`Error::Cancelled`] once a signal handler has raised.
    pub fn check(&self) -> ferrolm_core::Result<()> {
        if self.flag.load(Ordering::Relaxed) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The flag that stops the work (for a cache's forward calls).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Keeps a Python exception raised inside the work (re-raised when the call returns) and
    /// gives the core error that unwinds the work.
    pub fn keep(&self, e: PyErr) -> Error {
        let mut slot = self.raised.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
        self.flag.store(true, Ordering::Relaxed);
        Error::Cancelled
    }
}

/// How often the calling thread looks for pending signals while the work runs.
const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// [`detached`], giving `f` an [`Interrupt`] to check at safe points (see there).
pub fn detached_interruptible<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce(&Interrupt) -> ferrolm_core::Result<T> + Send,
    T: Send,
{
    let interrupt = Interrupt {
        raised: parking_lot::Mutex::new(None),
        flag: Arc::new(AtomicBool::new(false)),
    };
    let int = &interrupt;
    let out = py.detach(|| {
        let caller = std::thread::current();
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("ferrolm-call".into())
                .spawn_scoped(scope, || {
                    let out = catch_unwind(AssertUnwindSafe(|| f(int)));
                    caller.unpark();
                    out
                });
            let worker = match worker {
                Ok(w) => w,
                Err(e) => {
                    return Ok(Err(Error::Io {
                        path: None,
                        source: std::io::Error::new(e.kind(), format!("starting a thread: {e}")),
                    }))
                }
            };
            while !worker.is_finished() {
                std::thread::park_timeout(SIGNAL_POLL);
                if !int.flag.load(Ordering::Relaxed) && !worker.is_finished() {
                    if let Err(e) = Python::attach(|py| py.check_signals()) {
                        int.keep(e);
                    }
                }
            }
            worker.join().unwrap_or_else(Err)
        })
    });
    if let Some(e) = interrupt.raised.lock().take() {
        return Err(e);
    }
    finish(py, out)
}
