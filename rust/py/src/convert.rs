//! Fast conversions of token-id lists between Rust and Python.
//!
//! Performance notes: creating a Python `int` costs about 20 ns here, a third of GPT-2 encoding
//! time on English text. A tokenizer's ids are few (tens of thousands) and `int`s are immutable,
//! so each tokenizer keeps one `int` object per id, made on first use, and a list of ids holds
//! new references to those (an increment instead of an allocation). Reading ids back from a
//! list walks the list directly instead of going through the generic sequence protocol.

use pyo3::exceptions::{PyIndexError, PyOverflowError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple};

/// One Python `int` per token id, shared by every list a tokenizer returns.
#[derive(Default)]
pub struct IntCache {
    ints: PyOnceLock<Vec<Py<PyAny>>>,
}

impl std::fmt::Debug for IntCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntCache")
    }
}

impl IntCache {
    fn get(&self, py: Python<'_>, size: usize) -> PyResult<&[Py<PyAny>]> {
        self.ints
            .get_or_try_init(py, || {
                (0..size as u64)
                    .map(|i| Ok(i.into_pyobject(py)?.into_any().unbind()))
                    .collect::<PyResult<Vec<_>>>()
            })
            .map(Vec::as_slice)
    }

    /// A new `list` of the ids (as `int`s).
    pub fn to_list<'py>(
        &self,
        py: Python<'py>,
        vocab_size: usize,
        ids: &[u32],
    ) -> PyResult<Bound<'py, PyList>> {
        let cache = self.get(py, vocab_size)?;
        let n = isize::try_from(ids.len())
            .map_err(|_| PyOverflowError::new_err("too many ids for one list"))?;
        // SAFETY: PyList_New returns a new reference (or NULL with an exception set). Each slot
        // is filled exactly once with a new reference, which PyList_SetItem steals; the list is
        // complete before any Python code can see it.
        unsafe {
            let list = ffi::PyList_New(n);
            if list.is_null() {
                return Err(PyErr::fetch(py));
            }
            let list = Bound::from_owned_ptr(py, list);
            advise_items(list.as_ptr(), n);
            for (k, &id) in ids.iter().enumerate() {
                let obj = match cache.get(id as usize) {
                    Some(cached) => {
                        let p = cached.as_ptr();
                        ffi::Py_IncRef(p);
                        p
                    }
                    None => ffi::PyLong_FromUnsignedLongLong(u64::from(id)),
                };
                if obj.is_null() {
                    return Err(PyErr::fetch(py));
                }
                ffi::PyList_SetItem(list.as_ptr(), k as isize, obj);
            }
            Ok(list.cast_into_unchecked())
        }
    }
}

/// For a list of millions of ids, asks for huge pages under its item array before it is written
/// (see `ferrolm_core::runtime::mem::advise_huge`): the array is fresh memory from the
/// allocator, and faulting it in 4 KB pages was a sixth of the time of a 2^24-character
/// `encode`. The limited API does not expose the array, so this reads CPython's list layout
/// (`PyObject_VAR_HEAD`, then `ob_item`) only after checking that the header is that layout:
/// the type and size fields hold this list's. Otherwise (another layout) it does nothing.
///
/// # Safety
/// `list` is a list just returned by `PyList_New(n)`, which is at least the header's size.
unsafe fn advise_items(list: *mut ffi::PyObject, n: isize) {
    if (n as usize) < (1 << 20) {
        return;
    }
    #[repr(C)]
    struct Head {
        refcnt: isize,
        ty: *mut ffi::PyTypeObject,
        size: isize,
        items: *mut *mut ffi::PyObject,
    }
    // SAFETY: a list object is larger than `Head` (the caller's contract), so these reads stay
    // inside it; the item pointer is only used as an address for a hint, never dereferenced.
    unsafe {
        let head = list.cast::<Head>();
        if (*head).ty == std::ptr::addr_of_mut!(ffi::PyList_Type) && (*head).size == n {
            ferrolm_core::runtime::mem::advise_huge((*head).items as usize, n as usize * 8);
        }
    }
}

/// The error for an int that is no token id at all (negative, or past 2^32 - 1): the
/// `IndexError` an id past the vocabulary gets, so every out-of-range id raises the same.
fn not_an_id(id: impl std::fmt::Display) -> PyErr {
    PyIndexError::new_err(format!("token id {id} is not in the vocabulary"))
}

/// One token id argument: `Some(id)`, or None for an int that cannot be one (negative, or
/// past 2^32 - 1, however large); `TypeError` for what is not an int.
pub fn id_arg(obj: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
    match obj.extract::<i64>() {
        Ok(v) => Ok(u32::try_from(v).ok()),
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(None),
        Err(_) => Err(PyTypeError::new_err(format!(
            "a token id must be an int, got {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))),
    }
}

/// [`id_arg`], with an int that cannot be an id raising `IndexError` naming it.
pub fn id_or_index_error(obj: &Bound<'_, PyAny>) -> PyResult<u32> {
    id_arg(obj)?.ok_or_else(|| not_an_id(obj))
}

/// Token ids from a list, tuple or any iterable of `int`s (a numpy array too). An int that
/// cannot be an id (negative, past 2^32 - 1) raises `IndexError`, as one past the vocabulary
/// does where the ids are used.
pub fn ids_from(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    let one = |item: &Bound<'_, PyAny>| -> PyResult<u32> {
        match id_arg(item) {
            Err(_) => Err(PyTypeError::new_err(format!(
                "token ids must be ints, got {}",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))),
            Ok(id) => id.ok_or_else(|| not_an_id(item)),
        }
    };
    if let Ok(list) = obj.cast::<PyList>() {
        let py = list.py();
        let n = list.len();
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            // SAFETY: PyList_GetItem checks the index and returns a borrowed reference, or NULL
            // with an IndexError set (if converting an item shrank the list). PyLong_AsLongLong
            // accepts any object with `__index__` and returns -1 with an error set on failure.
            let (item, v) = unsafe {
                let item = ffi::PyList_GetItem(list.as_ptr(), k as isize);
                if item.is_null() {
                    return Err(PyErr::fetch(py));
                }
                (item, ffi::PyLong_AsLongLong(item))
            };
            if let Ok(id) = u32::try_from(v) {
                out.push(id);
                continue;
            }
            let failed = PyErr::take(py);
            // SAFETY: `item` is still valid: no Python code ran since it was read.
            let owned = unsafe { Bound::from_borrowed_ptr(py, item) };
            return Err(match failed {
                Some(e) if !e.is_instance_of::<PyOverflowError>(py) => {
                    one(&owned).err().unwrap_or(e)
                }
                _ => not_an_id(&owned),
            });
        }
        return Ok(out);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return tuple.iter().map(|item| one(&item)).collect();
    }
    if obj.is_instance_of::<pyo3::types::PyString>() || obj.is_instance_of::<pyo3::types::PyBytes>()
    {
        return Err(PyTypeError::new_err(
            "token ids must be a sequence of ints, not a str or bytes",
        ));
    }
    obj.try_iter()
        .map_err(|_| PyTypeError::new_err("token ids must be a sequence of ints"))?
        .map(|item| one(&item?))
        .collect()
}
