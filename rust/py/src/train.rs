//! Glue for `ferrolm_core::tokenizer::train`: `train_bpe` and `train_wordpiece` return the
//! trained `tokenizer.json` text; `ferrolm.train` wraps it in a `Tokenizer`.

use std::borrow::Cow;

use ferrolm_core::tokenizer::train::{self, TrainOptions, Trained, WordPieceOptions};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::detached;
use crate::tokenizer::text_of;

/// `(tokenizer.json text, vocab_size, merges, distinct words)`.
type TrainedTuple = (String, usize, usize, usize);

fn collect<'py>(texts: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if texts.is_instance_of::<PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "expected a list of str, got a single str",
        ));
    }
    texts.try_iter()?.collect()
}

/// Runs a trainer on the `str`s of `texts` with the GIL released. `progress(stage, done,
/// total)` is called from any thread (taking the GIL for the call); an exception it raises is
/// reported as unraisable and dropped, since progress is only a display.
fn train_on(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    progress: Option<Py<PyAny>>,
    f: impl FnOnce(&[&str], train::Progress<'_>) -> ferrolm_core::Result<Trained> + Send,
) -> PyResult<TrainedTuple> {
    let owned = collect(texts)?;
    let strs: Vec<Cow<'_, str>> = owned.iter().map(text_of).collect::<PyResult<_>>()?;
    let refs: Vec<&str> = strs.iter().map(AsRef::as_ref).collect();
    let report = move |stage: &str, done: u64, total: u64| {
        if let Some(cb) = &progress {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (stage, done, total)) {
                    e.write_unraisable(py, None);
                }
            });
        }
    };
    detached(py, move || {
        f(&refs, &report).map(|t| (t.json, t.vocab_size, t.merges, t.distinct_words))
    })
}

/// Trains a byte-level BPE tokenizer on `texts`.
#[pyfunction]
#[pyo3(signature = (texts, vocab_size, *, pattern, special_tokens, min_frequency, progress = None))]
pub fn train_bpe(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    vocab_size: usize,
    pattern: &str,
    special_tokens: Vec<String>,
    min_frequency: u64,
    progress: Option<Py<PyAny>>,
) -> PyResult<TrainedTuple> {
    let opts = TrainOptions {
        vocab_size,
        min_frequency,
        special_tokens,
    };
    train_on(py, texts, progress, |texts, p| {
        train::train_bpe(texts, pattern, &opts, p)
    })
}

/// Trains a BERT WordPiece tokenizer on `texts`.
#[pyfunction]
#[pyo3(signature = (texts, vocab_size, *, special_tokens, unk_token, lowercase, min_frequency, prefix, max_input_chars_per_word, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn train_wordpiece(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    vocab_size: usize,
    special_tokens: Vec<String>,
    unk_token: String,
    lowercase: bool,
    min_frequency: u64,
    prefix: String,
    max_input_chars_per_word: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<TrainedTuple> {
    let opts = TrainOptions {
        vocab_size,
        min_frequency,
        special_tokens,
    };
    let wp = WordPieceOptions {
        lowercase,
        prefix,
        unk_token,
        max_input_chars_per_word,
    };
    train_on(py, texts, progress, |texts, p| {
        train::train_wordpiece(texts, &opts, &wp, p)
    })
}
