//! Glue for `ferrolm_core::tokenizer`: the `Tokenizer` class (subclassed in Python by
//! `ferrolm.Tokenizer`, which adds the constructors that find files).
//!
//! Performance notes: a short `encode` is dominated by the Python call itself, so texts under
//! [`DETACH_BYTES`] are encoded holding the GIL (releasing and re-taking it costs more than the
//! work); longer texts and all batches release it. Batches borrow each `str`'s UTF-8 buffer
//! (kept alive by a strong reference) instead of copying it.

use ferrolm_core::runtime::{mem, pool};
use std::sync::Arc;

use ferrolm_core::tokenizer::stream::DecodeStream;
use ferrolm_core::tokenizer::{Allowed, Tokenizer};
use ferrolm_core::Error;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFrozenSet, PyList, PySet, PyString};

use crate::convert::{id_arg, id_or_index_error, ids_from, IntCache};
use crate::errors::{attached, detached, detached_interruptible};

/// Token ids with the character offsets of each.
type IdsWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Texts shorter than this many bytes are encoded without releasing the GIL.
const DETACH_BYTES: usize = 4096;

/// `encode_batch` encodes its texts in groups of about this many bytes per thread, checking for
/// Ctrl-C between groups.
const BATCH_GROUP_BYTES: usize = 1 << 20;

/// The longest text one call takes, in characters: 2^31 - 1. Longer input is refused before
/// anything is copied or allocated.
pub(crate) const MAX_TEXT_CHARS: usize = (1 << 31) - 1;

/// A tokenizer (byte-level BPE or WordPiece; immutable, safe to share across threads).
#[derive(Debug)]
#[pyclass(frozen, subclass, module = "ferrolm._core", name = "Tokenizer")]
pub struct PyTokenizer {
    inner: Arc<Tokenizer>,
    name: String,
    ints: IntCache,
}

/// An incremental decoder: `step(id)` returns the text that id completes. From
/// `Tokenizer.decode_stream()`; safe to share across threads (steps are serialised).
#[derive(Debug)]
#[pyclass(frozen, module = "ferrolm._core", name = "DecodeStream")]
pub struct PyDecodeStream {
    tokenizer: Arc<Tokenizer>,
    state: Mutex<DecodeStream>,
}

#[pymethods]
impl PyDecodeStream {
    /// Adds one token id; returns the text it completes ("" while a character is incomplete).
    fn step(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<String> {
        let id = id_or_index_error(id)?;
        let mut state = self.state.lock();
        attached(py, || state.step(&self.tokenizer, id))
    }

    /// Ends the stream: returns any bytes still held back (as U+FFFD) and resets it.
    fn finish(&self) -> String {
        self.state.lock().finish()
    }
}

/// The set of special tokens named by an `allowed_special` / `disallowed_special` argument.
enum SpecialArg {
    All,
    Ids(Vec<u32>),
}

impl PyTokenizer {
    /// The core tokenizer, shared.
    pub(crate) fn core(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.inner)
    }

    fn special_arg(&self, arg: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<SpecialArg> {
        let Some(arg) = arg else {
            return Ok(SpecialArg::Ids(Vec::new()));
        };
        if let Ok(s) = arg.cast::<PyString>() {
            return if s.to_str()? == "all" {
                Ok(SpecialArg::All)
            } else {
                Err(PyValueError::new_err(format!(
                    "{what} must be \"all\" or a collection of special-token strings, not a str"
                )))
            };
        }
        if !(arg.is_instance_of::<PySet>()
            || arg.is_instance_of::<PyFrozenSet>()
            || arg.is_instance_of::<PyList>()
            || arg.is_instance_of::<pyo3::types::PyTuple>())
        {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "{what} must be \"all\" or a set of special-token strings, not {}",
                arg.get_type().name()?
            )));
        }
        let mut ids = Vec::new();
        for item in arg.try_iter()? {
            let item = item?;
            let name: &str = item.extract()?;
            // Like tiktoken: naming a string that is not a special token has no effect.
            if let Some(id) = self.inner.special_id(name) {
                ids.push(id);
            }
        }
        Ok(SpecialArg::Ids(ids))
    }
}

/// The UTF-8 of a `str`; lone surrogates (which UTF-8 cannot carry) become U+FFFD, as tiktoken
/// does.
pub(crate) fn text_of<'a, 'py>(obj: &'a Bound<'py, PyAny>) -> PyResult<std::borrow::Cow<'a, str>> {
    let s = obj.cast::<PyString>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "expected str, got {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let chars = s.len()?;
    if chars > MAX_TEXT_CHARS {
        return Err(PyValueError::new_err(format!(
            "text of {chars} characters: ferrolm takes at most 2^31 - 1 = {MAX_TEXT_CHARS} per \
             text; split it into parts"
        )));
    }
    match s.to_str() {
        Ok(t) => Ok(std::borrow::Cow::Borrowed(t)),
        Err(_) => {
            let fixed = s
                .call_method1("encode", ("utf-16", "surrogatepass"))?
                .call_method1("decode", ("utf-16", "replace"))?;
            Ok(std::borrow::Cow::Owned(fixed.extract::<String>()?))
        }
    }
}

fn disallowed_error(token: &str) -> PyErr {
    PyValueError::new_err(format!(
        "Encountered text corresponding to disallowed special token '{token}'.\n\
         If you want this text to be encoded as a special token, pass it to `allowed_special`, \
         e.g. `allowed_special={{'{token}', ...}}`.\n\
         If you want this text to be encoded as normal text, disable the check for this token \
         by passing `disallowed_special=(tok.special_tokens_set - {{'{token}'}})`.\n\
         To disable this check for all special tokens, pass `disallowed_special=()`."
    ))
}

#[pymethods]
impl PyTokenizer {
    /// Builds a tokenizer from a file's contents. `kind` says how to read it: "tiktoken" (a rank
    /// file; `pattern` and `special_tokens` apply), "tokenizer.json" (Hugging Face),
    /// "vocab.txt" (BERT WordPiece; `lowercase` applies) or "vocab.json" (GPT-2; `merges` is
    /// merges.txt). `name` is shown in `repr` and errors.
    #[new]
    #[pyo3(signature = (data, kind, *, pattern = None, special_tokens = None, name = "tokenizer".to_owned(), lowercase = true, merges = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data: &[u8],
        kind: &str,
        pattern: Option<&str>,
        special_tokens: Option<std::collections::BTreeMap<String, u32>>,
        name: String,
        lowercase: bool,
        merges: Option<&[u8]>,
    ) -> PyResult<Self> {
        let specials: Vec<(String, u32)> = special_tokens.unwrap_or_default().into_iter().collect();
        let kind = kind.to_owned();
        let inner = detached(py, || {
            match kind.as_str() {
            "tiktoken" => {
                let pattern = pattern.ok_or_else(|| {
                    Error::invalid("a tiktoken rank file needs its split pattern (`pattern`)")
                })?;
                Tokenizer::from_tiktoken_bytes(&name, data, pattern, specials)
            }
            "tokenizer.json" => Tokenizer::from_hf_json(&name, data),
            "vocab.txt" => Tokenizer::bert_from_vocab(&name, data, lowercase),
            "vocab.json" => {
                let merges = merges.ok_or_else(|| {
                    Error::invalid("a GPT-2 vocab.json needs its merges.txt (`merges`)")
                })?;
                Tokenizer::from_gpt2_files(&name, data, merges)
            }
            other => Err(Error::invalid(format!(
                "unknown tokenizer file kind {other:?}: expected \"tiktoken\", \"tokenizer.json\", \"vocab.txt\" or \"vocab.json\""
            ))),
        }
        })?;
        Ok(PyTokenizer {
            inner: Arc::new(inner),
            name,
            ints: IntCache::default(),
        })
    }

    /// An incremental decoder for streaming: feed ids one at a time with `step(id)`.
    #[pyo3(signature = (*, skip_special_tokens = false))]
    fn decode_stream(&self, skip_special_tokens: bool) -> PyDecodeStream {
        PyDecodeStream {
            tokenizer: Arc::clone(&self.inner),
            state: Mutex::new(DecodeStream::new(skip_special_tokens)),
        }
    }

    /// `ids` with the post-processor's special tokens added around them (BERT: [CLS] ids
    /// [SEP]); unchanged for tokenizers without a template.
    fn post_process(&self, ids: Vec<u32>) -> Vec<u32> {
        self.inner.post_process(&ids)
    }

    /// Two sequences' ids joined by the post-processor's pair template (BERT: [CLS] a [SEP] b
    /// [SEP]; others one after the other): `(ids, token_type_ids)`.
    fn post_process_pair(&self, a: Vec<u32>, b: Vec<u32>) -> (Vec<u32>, Vec<u32>) {
        self.inner.post_process_pair(&a, &b)
    }

    /// The batch behind `Tokenizer.__call__`: encode `texts` in parallel; with
    /// `add_special_tokens`, truncate the body so the sequence with its special tokens fits
    /// `truncate_to`; pad to the longest (`pad_to == 0`) or to `pad_to`. With `as_bytes`, the
    /// result is `(ids, mask, rows, cols)` as little-endian int64 bytes (rows must then have
    /// equal lengths); otherwise `(ids, mask)` as lists of lists.
    #[pyo3(signature = (texts, *, add_special_tokens, truncate_to, truncate_left, pad_to, pad_id, pad_left, as_bytes))]
    #[allow(clippy::too_many_arguments)]
    fn _encode_for_call<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        add_special_tokens: bool,
        truncate_to: Option<usize>,
        truncate_left: bool,
        pad_to: Option<usize>,
        pad_id: u32,
        pad_left: bool,
        as_bytes: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let owned: Vec<Bound<'_, PyAny>> = texts.try_iter()?.collect::<PyResult<_>>()?;
        let strs: Vec<std::borrow::Cow<'_, str>> =
            owned.iter().map(text_of).collect::<PyResult<_>>()?;
        let refs: Vec<&str> = strs.iter().map(|c| c.as_ref()).collect();
        let inner = &self.inner;
        let rows: Vec<Vec<u32>> = detached(py, || {
            let n_special = if add_special_tokens {
                inner.num_special_tokens_to_add()
            } else {
                0
            };
            pool::map(&refs, 8, |t| {
                let mut body = inner.encode(t, false, Allowed::None);
                if let Some(limit) = truncate_to {
                    let keep = limit.saturating_sub(n_special);
                    if body.len() > keep {
                        if truncate_left {
                            body.drain(..body.len() - keep);
                        } else {
                            body.truncate(keep);
                        }
                    }
                }
                if add_special_tokens {
                    inner.post_process(&body)
                } else {
                    body
                }
            })
        })?;
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        // As transformers: pad to the longest row, or each row to `pad_to` (rows already longer
        // stay as they are).
        let target = match pad_to {
            Some(0) => longest,
            Some(n) => n,
            None => 0,
        };
        let width_of = |len: usize| len.max(target);
        // What the padded rows will hold, checked before building them: per cell an i64 id and
        // mask here, then as bytes (16) and numpy's copies (24), or as Python lists (16 of
        // pointers, 32 for an id's int object, and the token type ids' list, 8).
        let cells = rows
            .iter()
            .fold(0usize, |sum, r| sum.saturating_add(width_of(r.len())));
        let per_cell = if as_bytes {
            16 + 16 + 24
        } else {
            16 + 16 + 32 + 8
        };
        let what = format!("{} rows padded to {} tokens", rows.len(), width_of(longest));
        mem::check(cells, per_cell, &what).map_err(|e| crate::errors::to_pyerr(py, e))?;
        let pad = |row: &[u32]| -> (Vec<i64>, Vec<i64>) {
            let fill = width_of(row.len()) - row.len();
            let mut ids = Vec::with_capacity(row.len() + fill);
            let mut mask = Vec::with_capacity(row.len() + fill);
            if pad_left {
                ids.extend(std::iter::repeat_n(i64::from(pad_id), fill));
                mask.extend(std::iter::repeat_n(0, fill));
            }
            ids.extend(row.iter().map(|&i| i64::from(i)));
            mask.extend(std::iter::repeat_n(1, row.len()));
            if !pad_left {
                ids.extend(std::iter::repeat_n(i64::from(pad_id), fill));
                mask.extend(std::iter::repeat_n(0, fill));
            }
            (ids, mask)
        };
        if as_bytes {
            let cols = width_of(longest);
            if rows.iter().any(|r| width_of(r.len()) != cols) {
                return Err(PyValueError::new_err(
                    "Unable to create a tensor: the sequences have different lengths; use \
                     padding=True (or padding=\"max_length\") and/or truncation=True",
                ));
            }
            let mut ids = Vec::with_capacity(rows.len() * cols * 8);
            let mut mask = Vec::with_capacity(rows.len() * cols * 8);
            for row in &rows {
                let (i, m) = pad(row);
                ids.extend(i.iter().flat_map(|v| v.to_le_bytes()));
                mask.extend(m.iter().flat_map(|v| v.to_le_bytes()));
            }
            let out = (
                PyBytes::new(py, &ids),
                PyBytes::new(py, &mask),
                rows.len(),
                cols,
            );
            Ok(out.into_pyobject(py)?.into_any())
        } else {
            let (ids, mask): (Vec<Vec<i64>>, Vec<Vec<i64>>) = rows.iter().map(|r| pad(r)).unzip();
            Ok((ids, mask).into_pyobject(py)?.into_any())
        }
    }

    /// "bpe" or "wordpiece".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// How many ids `encode(text)` adds around the text's own (2 for BERT's [CLS] ... [SEP]),
    /// or with `pair=True` around a pair of texts (3 for BERT).
    #[pyo3(signature = (pair = false))]
    fn num_special_tokens_to_add(&self, pair: bool) -> usize {
        if pair {
            self.inner.num_special_tokens_to_add_pair()
        } else {
            self.inner.num_special_tokens_to_add()
        }
    }

    /// The name given at construction (a built-in's name or a file name).
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The split pattern (BPE), or None.
    #[getter]
    fn pattern(&self) -> Option<&str> {
        match &*self.inner {
            Tokenizer::Bpe(t) => Some(t.pattern()),
            Tokenizer::Hf(_) => None,
        }
    }

    /// One more than the largest token id, special tokens included.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// The special tokens, `{text: id}`.
    #[getter]
    fn special_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, id) in self.inner.special_tokens() {
            d.set_item(name, id)?;
        }
        Ok(d)
    }

    /// The ids of `text`.
    ///
    /// BPE: special tokens written in the text follow tiktoken: those in `allowed_special` (a
    /// set of strings, or "all") are encoded as their ids; finding one of `disallowed_special`
    /// (by default "all" the others) raises ValueError; pass `disallowed_special=()` to encode
    /// them as ordinary text. WordPiece: special tokens in the text are recognised, as in
    /// Hugging Face tokenizers, and `add_special_tokens` adds [CLS] ... [SEP].
    ///
    /// `return_tensors="pt"` / `"np"` returns a `[1, n]` torch / numpy int64 tensor instead of
    /// a list, as transformers' `tokenizer.encode(text, return_tensors="pt")` does.
    #[pyo3(signature = (text, *, add_special_tokens = true, allowed_special = None, disallowed_special = None, return_tensors = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'_, PyAny>,
        add_special_tokens: bool,
        allowed_special: Option<&Bound<'_, PyAny>>,
        disallowed_special: Option<&Bound<'_, PyAny>>,
        return_tensors: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let text = text_of(text)?;
        self.check_special_args(allowed_special, disallowed_special)?;
        let allowed = self.special_arg(allowed_special, "allowed_special")?;
        let allowed = match &allowed {
            SpecialArg::All => Allowed::All,
            SpecialArg::Ids(ids) if ids.is_empty() => Allowed::None,
            SpecialArg::Ids(ids) => Allowed::Only(ids),
        };
        self.check_disallowed(&text, allowed, disallowed_special)?;
        let inner = &self.inner;
        let ids = if text.len() < DETACH_BYTES {
            attached(py, || Ok(inner.encode(&text, add_special_tokens, allowed)))?
        } else {
            detached(py, || Ok(inner.encode(&text, add_special_tokens, allowed)))?
        };
        let list = self.list(py, &ids)?;
        match return_tensors {
            None => Ok(list.into_any()),
            Some(kind) => py
                .import("ferrolm.tokenizer")?
                .call_method1("_as_tensor", (list, kind)),
        }
    }

    /// `encode`, also returning each id's character offsets `(start, end)` in `text`, as
    /// tokenizers' `Encoding.offsets` does: `text[start:end]` is the text the token comes from
    /// (a token holding part of a character's bytes spans the whole character; tokens a
    /// template adds get `(0, 0)`).
    #[pyo3(signature = (text, *, add_special_tokens = true, allowed_special = None, disallowed_special = None))]
    fn encode_with_offsets(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        add_special_tokens: bool,
        allowed_special: Option<&Bound<'_, PyAny>>,
        disallowed_special: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<IdsWithOffsets> {
        let text = text_of(text)?;
        self.check_special_args(allowed_special, disallowed_special)?;
        let allowed = self.special_arg(allowed_special, "allowed_special")?;
        let allowed = match &allowed {
            SpecialArg::All => Allowed::All,
            SpecialArg::Ids(ids) if ids.is_empty() => Allowed::None,
            SpecialArg::Ids(ids) => Allowed::Only(ids),
        };
        self.check_disallowed(&text, allowed, disallowed_special)?;
        let inner = &self.inner;
        detached(py, || {
            Ok(inner.encode_with_offsets(&text, add_special_tokens, allowed))
        })
    }

    /// The ids of `text`, with special-token text encoded as ordinary text (tiktoken's
    /// `encode_ordinary`; for WordPiece, `encode(text, add_special_tokens=False)`).
    fn encode_ordinary<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let text = text_of(text)?;
        let inner = &self.inner;
        let ids = if text.len() < DETACH_BYTES {
            attached(py, || Ok(inner.encode(&text, false, Allowed::None)))?
        } else {
            detached(py, || Ok(inner.encode(&text, false, Allowed::None)))?
        };
        self.list(py, &ids)
    }

    /// `encode` for each text, in parallel on ferrolm's thread pool, with the GIL released.
    #[pyo3(signature = (texts, *, add_special_tokens = true, allowed_special = None, disallowed_special = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'_, PyAny>,
        add_special_tokens: bool,
        allowed_special: Option<&Bound<'_, PyAny>>,
        disallowed_special: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if texts.is_instance_of::<PyString>() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "encode_batch expects a list of str, got a single str (use encode)",
            ));
        }
        let owned: Vec<Bound<'_, PyAny>> = texts.try_iter()?.collect::<PyResult<_>>()?;
        let strs: Vec<std::borrow::Cow<'_, str>> =
            owned.iter().map(text_of).collect::<PyResult<_>>()?;
        self.check_special_args(allowed_special, disallowed_special)?;
        let allowed = self.special_arg(allowed_special, "allowed_special")?;
        let allowed = match &allowed {
            SpecialArg::All => Allowed::All,
            SpecialArg::Ids(ids) if ids.is_empty() => Allowed::None,
            SpecialArg::Ids(ids) => Allowed::Only(ids),
        };
        for t in &strs {
            self.check_disallowed(t, allowed, disallowed_special)?;
        }
        let inner = &self.inner;
        let refs: Vec<&str> = strs.iter().map(|c| c.as_ref()).collect();
        let encode_all =
            |group: &[&str]| pool::map(group, 8, |t| inner.encode(t, add_special_tokens, allowed));
        let budget = BATCH_GROUP_BYTES * attached(py, pool::size)?;
        let bytes: usize = refs.iter().map(|t| t.len()).sum();
        // In groups of about BATCH_GROUP_BYTES per thread, checking for Ctrl-C between groups
        // (on a thread of its own); a batch of one group runs as one call.
        let rows: Vec<Vec<u32>> = if bytes <= budget {
            detached(py, || encode_all(&refs))?
        } else {
            detached_interruptible(py, |int| {
                let mut rows = Vec::with_capacity(refs.len());
                let mut rest = &refs[..];
                while !rest.is_empty() {
                    int.check()?;
                    let (mut n, mut bytes) = (0, 0);
                    while n < rest.len() && (n == 0 || bytes + rest[n].len() <= budget) {
                        bytes += rest[n].len();
                        n += 1;
                    }
                    let (group, tail) = rest.split_at(n);
                    rows.extend(encode_all(group)?);
                    rest = tail;
                }
                Ok(rows)
            })?
        };
        let out = PyList::empty(py);
        let mut ids = 0;
        for row in &rows {
            out.append(self.list(py, row)?)?;
            // Building the lists of a large batch takes a while too: Ctrl-C stops it.
            ids += row.len();
            if ids >= 1 << 20 {
                ids = 0;
                py.check_signals()?;
            }
        }
        Ok(out)
    }

    /// The text of `ids`; bytes that do not form valid UTF-8 become U+FFFD. An id outside the
    /// vocabulary raises IndexError naming it.
    #[pyo3(signature = (ids, *, skip_special_tokens = false))]
    fn decode(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<String> {
        let ids = ids_from(ids)?;
        let inner = &self.inner;
        if ids.len() < DETACH_BYTES / 4 {
            attached(py, || inner.decode(&ids, skip_special_tokens))
        } else {
            detached(py, || inner.decode(&ids, skip_special_tokens))
        }
    }

    /// The raw bytes of `ids` (no UTF-8 repair).
    fn decode_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ids = ids_from(ids)?;
        let inner = &self.inner;
        let bytes = detached(py, || inner.decode_bytes(&ids, false))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// `decode` for each list of ids, in parallel.
    #[pyo3(signature = (batch, *, skip_special_tokens = false))]
    fn decode_batch(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<Vec<String>> {
        let batch: Vec<Vec<u32>> = batch
            .try_iter()?
            .map(|row| ids_from(&row?))
            .collect::<PyResult<_>>()?;
        let inner = &self.inner;
        detached(py, || {
            pool::map(&batch, 1, |ids| inner.decode(ids, skip_special_tokens))?
                .into_iter()
                .collect::<Result<Vec<_>, Error>>()
        })
    }

    /// The token `id` as Hugging Face writes it (byte-level characters, e.g. "Ġworld"), or
    /// None when no token has that id.
    fn id_to_token(&self, id: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        Ok(id_arg(id)?.and_then(|id| self.inner.id_to_token(id)))
    }

    /// The id of a token written as `id_to_token` writes it, or None.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The raw bytes of token `id` (tiktoken's `decode_single_token_bytes`).
    fn id_to_bytes<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = id_arg(id)?
            .and_then(|i| self.inner.id_to_bytes(i))
            .ok_or_else(|| {
                crate::errors::to_pyerr(
                    py,
                    Error::OutOfRange(format!("token id {id} is not in the vocabulary")),
                )
            })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// A BPE tokenizer's ordinary tokens as a tiktoken rank file.
    fn to_tiktoken_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let Tokenizer::Bpe(inner) = &*self.inner else {
            return Err(PyValueError::new_err(
                "only a byte-level BPE tokenizer can be written as a tiktoken rank file",
            ));
        };
        let bytes = detached(py, || Ok(inner.to_tiktoken_bytes()))?;
        Ok(PyBytes::new(py, &bytes))
    }
}

impl PyTokenizer {
    /// A Python list of ids, sharing the tokenizer's `int` objects.
    fn list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        self.ints.to_list(py, self.inner.vocab_size(), ids)
    }

    fn check_special_args(
        &self,
        allowed: Option<&Bound<'_, PyAny>>,
        disallowed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if matches!(*self.inner, Tokenizer::Hf(_)) && (allowed.is_some() || disallowed.is_some()) {
            return Err(PyValueError::new_err(
                "allowed_special / disallowed_special apply to tokenizers read from tiktoken \
                 rank files; this tokenizer follows Hugging Face tokenizers, which always \
                 recognises its added tokens in the text",
            ));
        }
        Ok(())
    }

    fn check_disallowed(
        &self,
        text: &str,
        allowed: Allowed<'_>,
        disallowed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        // Default: every special token not allowed is disallowed.
        let found = match disallowed {
            None => self.inner.find_special_not_in(text, allowed),
            Some(arg) => match self.special_arg(Some(arg), "disallowed_special")? {
                SpecialArg::All => self.inner.find_special_not_in(text, allowed),
                SpecialArg::Ids(ids) if ids.is_empty() => None,
                SpecialArg::Ids(ids) => {
                    let check: Vec<u32> = ids
                        .into_iter()
                        .filter(|id| !matches!(allowed, Allowed::All) && !allowed_has(allowed, *id))
                        .collect();
                    // Only these ids are disallowed: look for any special not in the complement.
                    let complement: Vec<u32> = self
                        .inner
                        .special_tokens()
                        .into_iter()
                        .map(|(_, id)| id)
                        .filter(|id| !check.contains(id))
                        .collect();
                    self.inner
                        .find_special_not_in(text, Allowed::Only(&complement))
                }
            },
        };
        match found {
            Some(token) => Err(disallowed_error(token)),
            None => Ok(()),
        }
    }
}

fn allowed_has(allowed: Allowed<'_>, id: u32) -> bool {
    match allowed {
        Allowed::None => false,
        Allowed::All => true,
        Allowed::Only(ids) => ids.contains(&id),
    }
}

/// `(tokenizer.json text, special tokens by role, chat template, add_bos_token)`.
type GgufTokenizer = (String, Vec<(&'static str, String)>, Option<String>, bool);

/// What a GGUF file says about its tokenizer: `(tokenizer.json document as a str, [(role,
/// token)] for bos / eos / unk / pad, the chat template or None, add_bos_token)`, or None when
/// the file carries no tokenizer (no `tokenizer.ggml.model`).
#[pyfunction]
pub fn gguf_tokenizer(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Option<GgufTokenizer>> {
    detached(py, || {
        let g = ferrolm_core::io::gguf::Gguf::open(&path)?;
        if g.meta("tokenizer.ggml.model").is_none() {
            return Ok(None);
        }
        let doc = ferrolm_core::tokenizer::formats::gguf::to_hf_json(&g)?;
        let text = serde_json::to_string(&doc)
            .map_err(|e| Error::Internal(format!("tokenizer document: {e}")))?;
        let template = g
            .meta("tokenizer.chat_template")
            .and_then(ferrolm_core::io::gguf::Value::as_str)
            .map(str::to_owned);
        let add_bos = g
            .meta("tokenizer.ggml.add_bos_token")
            .and_then(ferrolm_core::io::gguf::Value::as_bool)
            .unwrap_or(false);
        Ok(Some((
            text,
            ferrolm_core::tokenizer::formats::gguf::special_tokens(&g),
            template,
            add_bos,
        )))
    })
}

/// A compiled Jinja chat template (rendered as transformers' `apply_chat_template` renders).
#[derive(Debug)]
#[pyclass(frozen, module = "ferrolm._core", name = "ChatTemplate")]
pub struct PyChatTemplate {
    inner: ferrolm_core::tokenizer::chat::ChatTemplate,
}

#[pymethods]
impl PyChatTemplate {
    #[new]
    fn new(py: Python<'_>, source: &str) -> PyResult<Self> {
        let inner = attached(py, || {
            ferrolm_core::tokenizer::chat::ChatTemplate::new(source)
        })?;
        Ok(PyChatTemplate { inner })
    }

    /// Renders with the JSON object `context` (`messages`, `add_generation_prompt`, ...).
    fn render(&self, py: Python<'_>, context: &str) -> PyResult<String> {
        let ctx: serde_json::Value = serde_json::from_str(context)
            .map_err(|e| PyValueError::new_err(format!("chat template context: {e}")))?;
        attached(py, || self.inner.render(&ctx))
    }
}
