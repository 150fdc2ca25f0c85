//! Glue for `ferrolm_core::model`: the `CausalLM` class (forward pass over an explicit `Cache`,
//! generation run entirely in Rust) and `Generation`, a step-by-step generation for streaming.
//!
//! Performance notes: token ids cross the boundary as lists of ints (small); logits come back as
//! `bytes` of little-endian f32 that Python wraps with `numpy.frombuffer` without a copy.
//! `generate` checks for Ctrl-C between steps (`PyErr_CheckSignals`, no Python code runs).

use std::sync::Arc;

use ferrolm_core::model::generate::{Adjust, GenerateParams, Generation};
use ferrolm_core::model::lstm::Lstm;
use ferrolm_core::model::registry;
use ferrolm_core::model::sampling::Sampling;
use ferrolm_core::model::{Cache, CausalLm, KvDtype};
use ferrolm_core::quant::QType;
use ferrolm_core::tokenizer::Tokenizer;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};
use serde_json::Value;

use crate::errors::{attached, detached, detached_interruptible};
use crate::tokenizer::PyTokenizer;

/// A KV cache for some number of sequences; pass it back to `forward` to continue them.
#[derive(Debug)]
#[pyclass(frozen, module = "ferrolm._core", name = "Cache")]
pub struct PyCache {
    inner: Mutex<Cache>,
}

#[pymethods]
impl PyCache {
    /// The number of sequences.
    #[getter]
    fn batch(&self) -> usize {
        self.inner.lock().slots()
    }

    /// Positions filled in each sequence (padding included).
    #[getter]
    fn lengths(&self) -> Vec<usize> {
        let c = self.inner.lock();
        (0..c.slots()).map(|s| c.len(s)).collect()
    }

    /// Bytes held by keys and values.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.lock().bytes()
    }

    /// A recurrent model's state of sequence `i` (`h` and `c` of every layer, f32 bytes);
    /// empty for the Transformers.
    fn get_state<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyByteArray>> {
        let c = self.inner.lock();
        if i >= c.slots() {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "sequence {i} of a cache of {}",
                c.slots()
            )));
        }
        f32_bytes(py, c.state(i))
    }

    /// Replaces a recurrent model's state of sequence `i` (f32 bytes, as `get_state` gives).
    fn set_state(&self, i: usize, values: &[u8]) -> PyResult<()> {
        let v: Vec<f32> = values
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if !values.len().is_multiple_of(4) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "state bytes must be a whole number of float32 values",
            ));
        }
        self.inner
            .lock()
            .set_state(i, &v)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
    }

    /// A cache of `len(rows)` sequences, each a copy of sequence `rows[i]` of this one.
    fn select(&self, py: Python<'_>, rows: Vec<usize>) -> PyResult<PyCache> {
        let guard = self.inner.lock();
        let c: &Cache = &guard;
        let out = detached(py, || c.expand(&rows))?;
        Ok(PyCache {
            inner: Mutex::new(out),
        })
    }
}

/// A decoder-only language model (any architecture of the registry, or an LSTM) loaded from a
/// folder or a GGUF file (immutable; share it across threads).
#[derive(Debug)]
#[pyclass(frozen, module = "ferrolm._core", name = "CausalLM")]
pub struct PyCausalLm {
    model: Arc<dyn CausalLm>,
}

fn kv_dtype_of(name: &str) -> PyResult<KvDtype> {
    KvDtype::parse(name).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "kv_cache_dtype={name:?}: expected \"float32\" or \"float16\""
        ))
    })
}

/// The decoder architectures `CausalLM.load` reads, in registration order: `(name,
/// transformers class name, config.json model_types, GGUF architectures)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn decoder_architectures() -> Vec<(
    &'static str,
    &'static str,
    Vec<&'static str>,
    Vec<&'static str>,
)> {
    registry::ARCHS
        .iter()
        .map(|a| {
            let gguf = if a.load_gguf.is_some() {
                a.gguf_archs.to_vec()
            } else {
                Vec::new()
            };
            (a.name, a.class_name, a.model_types.to_vec(), gguf)
        })
        .collect()
}

/// The decoder architecture (its name) of a GGUF file, from its header.
#[pyfunction]
pub fn gguf_architecture(py: Python<'_>, path: std::path::PathBuf) -> PyResult<&'static str> {
    detached(py, || registry::gguf_arch(&path).map(|a| a.name))
}

impl PyCausalLm {
    /// The model.
    fn model(&self) -> Arc<dyn CausalLm> {
        Arc::clone(&self.model)
    }
}

/// `v` as a Python object (a config field: null, a bool, a number, a string or a list).
fn json_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_pyobject(py)?.into_any(),
            (None, Some(i)) => i.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(a) => {
            let items = a
                .iter()
                .map(|x| json_to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// The sampling and stopping arguments, as `generate` receives them from Python.
#[derive(Debug, Clone)]
struct GenArgs {
    params: GenerateParams,
    stop: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn gen_args(
    max_new_tokens: usize,
    min_new_tokens: usize,
    num_return_sequences: usize,
    do_sample: bool,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    no_repeat_ngram_size: usize,
    eos: Vec<u32>,
    pad: u32,
    seed: u64,
    stop: Vec<String>,
) -> GenArgs {
    GenArgs {
        params: GenerateParams {
            max_new_tokens,
            min_new_tokens,
            num_return_sequences,
            sampling: Sampling {
                do_sample,
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty,
                no_repeat_ngram_size,
            },
            eos,
            pad,
            seed,
        },
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
    }
}

/// `stop(i, new_tokens)`: true when the text of the last tokens contains a stop string.
fn stop_check<'a>(
    tokenizer: Option<&'a Tokenizer>,
    stop: &'a [String],
) -> impl Fn(usize, &[u32]) -> bool + 'a {
    let window = stop.iter().map(String::len).max().unwrap_or(0) + 1;
    move |_i, new| {
        let Some(tok) = tokenizer else { return false };
        if stop.is_empty() {
            return false;
        }
        let tail = &new[new.len().saturating_sub(window)..];
        match tok.decode_bytes(tail, false) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                stop.iter().any(|s| text.contains(s.as_str()))
            }
            Err(_) => false,
        }
    }
}

/// The format a `quantize=` argument names (`None`: as stored).
fn parse_quantize(quantize: Option<&str>) -> PyResult<Option<QType>> {
    quantize
        .map(|q| {
            QType::parse(q).ok_or_else(|| {
                pyo3::exceptions::PyValueError::new_err(format!(
                    "quantize={q:?}: expected \"int8\" (= \"q8_0\"), \"int4\" (= \"q4_0\"), \
                     \"q4_1\", or None"
                ))
            })
        })
        .transpose()
}

/// A loader's progress as calls of `progress(done, total)` (taking the GIL for each; an
/// exception is reported as unraisable, since progress is only a display).
fn progress_fn(progress: Option<Py<PyAny>>) -> impl Fn(usize, usize) + Sync {
    move |done, total| {
        if let Some(cb) = &progress {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (done, total)) {
                    e.write_unraisable(py, None);
                }
            });
        }
    }
}

#[pymethods]
impl PyCausalLm {
    /// Loads a decoder: a Hugging Face folder (`config.json` + safetensors) of any
    /// architecture of the registry (`decoder_model_types()`), or with `gguf=True` a GGUF file
    /// (its quantized tensors used as they are). The matrices are quantized to `quantize` as
    /// they load (`progress(done, total)` per matrix); a folder saved quantized by ferrolm loads
    /// as it is. `kv_cache_dtype`: `"float32"` (default) or `"float16"` for the caches it makes.
    #[staticmethod]
    #[pyo3(signature = (path, quantize = None, progress = None, kv_cache_dtype = "float32", *, gguf = false))]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        quantize: Option<&str>,
        progress: Option<Py<PyAny>>,
        kv_cache_dtype: &str,
        gguf: bool,
    ) -> PyResult<PyCausalLm> {
        let q = parse_quantize(quantize)?;
        let kv = kv_dtype_of(kv_cache_dtype)?;
        let report = progress_fn(progress);
        let mut model = detached(py, || {
            if gguf {
                registry::load_gguf(&path, q, Some(&report))
            } else {
                registry::load_folder(&path, q, Some(&report))
            }
        })?;
        model.set_kv_dtype(kv);
        Ok(PyCausalLm {
            model: Arc::new(model),
        })
    }

    /// Loads an LSTM or GRU language model folder (`config.json` with `model_type` "lstm" and
    /// safetensors in PyTorch's layout), the matrices quantized to `quantize` if given.
    #[staticmethod]
    #[pyo3(signature = (path, *, quantize = None))]
    fn load_lstm(
        py: Python<'_>,
        path: std::path::PathBuf,
        quantize: Option<&str>,
    ) -> PyResult<PyCausalLm> {
        let q = parse_quantize(quantize)?;
        let model = detached(py, || Lstm::load(&path, q))?;
        Ok(PyCausalLm {
            model: Arc::new(model),
        })
    }

    /// The architecture's name: `"gpt2"`, `"llama"`, `"lstm"`, ...
    #[getter]
    fn model_type(&self) -> &'static str {
        self.model.model_type()
    }

    /// The config key that names the longest sequence (in errors).
    #[getter]
    fn ctx_key(&self) -> &'static str {
        self.model.ctx_key()
    }

    /// The element type of the KV caches: `"float32"` or `"float16"`.
    #[getter]
    fn kv_cache_dtype(&self) -> &'static str {
        self.model.kv_dtype().name()
    }

    /// The matrices' quantized format (`"q8_0"`, `"q4_0"`, `"q4_1"`), or None for f32.
    #[getter]
    fn quantization(&self) -> Option<&'static str> {
        self.model.quantization().map(QType::name)
    }

    /// Whether `save` can write this model (its architecture has a saver).
    #[getter]
    fn can_save(&self) -> bool {
        self.model.can_save()
    }

    /// Writes `model.safetensors` into the folder `path` (which must exist), where the
    /// architecture can be saved.
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let model = self.model();
        detached(py, move || model.save(&path))
    }

    /// The config fields the forward pass uses, under `config.json`'s names, and `n_ctx`.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.model.info() {
            d.set_item(k, json_to_py(py, v)?)?;
        }
        d.set_item("n_ctx", self.model.n_ctx())?;
        Ok(d)
    }

    /// Bytes of weights read per decoded token.
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// A new, empty cache for `batch` sequences (it grows as they do).
    #[pyo3(signature = (batch, capacity = None))]
    fn new_cache(
        &self,
        py: Python<'_>,
        batch: usize,
        capacity: Option<usize>,
    ) -> PyResult<PyCache> {
        let model = self.model();
        let cache = detached(py, || model.new_cache(batch, capacity))?;
        Ok(PyCache {
            inner: Mutex::new(cache),
        })
    }

    /// Advances every sequence of `cache` by `t` tokens (`tokens`, `mask`: `batch × t`,
    /// row-major). Returns the logits as a `bytearray` of little-endian f32, `[batch, t, vocab]` or with
    /// `last_only` `[batch, vocab]`.
    #[pyo3(signature = (cache, tokens, mask, t, *, last_only = false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        cache: &PyCache,
        tokens: Vec<u32>,
        mask: Vec<u8>,
        t: usize,
        last_only: bool,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let mut guard = cache.inner.lock();
        let c: &mut Cache = &mut guard;
        let model = self.model();
        let logits = if tokens.len() < INTERRUPTIBLE_ROWS {
            detached(py, || model.forward(c, &tokens, &mask, t, last_only))?
        } else {
            // A long input: Ctrl-C stops it between layers (the cache stays as it was).
            detached_interruptible(py, |int| {
                c.set_cancel(Some(int.flag()));
                let out = model.forward(c, &tokens, &mask, t, last_only);
                c.set_cancel(None);
                out
            })?
        };
        f32_bytes(py, &logits)
    }

    /// Generates continuations of `prompts` (lists of ids, none empty), entirely in Rust with
    /// the GIL released. Returns `(ids as little-endian u32 bytes, rows, cols)`.
    ///
    /// `logits_hook(ids: bytes, rows, cols, logits: bytearray) -> bytes-like` (optional) is
    /// called with the GIL on every step and returns the adjusted logits (f32, same size).
    #[pyo3(signature = (prompts, *, max_new_tokens, min_new_tokens, num_return_sequences, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram_size, eos, pad, seed, stop, tokenizer = None, logits_hook = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: usize,
        min_new_tokens: usize,
        num_return_sequences: usize,
        do_sample: bool,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        no_repeat_ngram_size: usize,
        eos: Vec<u32>,
        pad: u32,
        seed: u64,
        stop: Vec<String>,
        tokenizer: Option<&PyTokenizer>,
        logits_hook: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
        let args = gen_args(
            max_new_tokens,
            min_new_tokens,
            num_return_sequences,
            do_sample,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            no_repeat_ngram_size,
            eos,
            pad,
            seed,
            stop,
        );
        let tok = tokenizer.map(PyTokenizer::core);
        let model = self.model();
        let (ids, cols) = detached_interruptible(py, |int| {
            let mut g =
                Generation::new_with(model, &prompts, args.params.clone(), Some(int.flag()))?;
            let stop = stop_check(tok.as_deref(), &args.stop);
            let mut hook =
                |ids: &[u32], cols: usize, logits: &mut [f32]| -> ferrolm_core::Result<()> {
                    let Some(h) = &logits_hook else {
                        return Ok(());
                    };
                    Python::attach(|py| call_hook(py, h, ids, cols, logits))
                        .map_err(|e| int.keep(e))
                };
            loop {
                // Ctrl-C: checked between steps, in C (no Python code runs).
                int.check()?;
                let adjust: Option<Adjust<'_>> = if logits_hook.is_some() {
                    Some(&mut hook)
                } else {
                    None
                };
                if g.step_with(&stop, adjust)?.is_none() {
                    break;
                }
            }
            Ok(g.output())
        })?;
        let rows = ids.len().checked_div(cols).unwrap_or(0);
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok((PyBytes::new(py, &bytes), rows, cols))
    }

    /// A generation to run step by step (for streaming): see `Generation.step`.
    #[pyo3(signature = (prompts, *, max_new_tokens, min_new_tokens, num_return_sequences, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram_size, eos, pad, seed, stop, tokenizer = None))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: usize,
        min_new_tokens: usize,
        num_return_sequences: usize,
        do_sample: bool,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        no_repeat_ngram_size: usize,
        eos: Vec<u32>,
        pad: u32,
        seed: u64,
        stop: Vec<String>,
        tokenizer: Option<&PyTokenizer>,
    ) -> PyResult<PyGeneration> {
        let args = gen_args(
            max_new_tokens,
            min_new_tokens,
            num_return_sequences,
            do_sample,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            no_repeat_ngram_size,
            eos,
            pad,
            seed,
            stop,
        );
        let model = self.model();
        let params = args.params.clone();
        let g = detached_interruptible(py, move |int| {
            let mut g = Generation::new_with(model, &prompts, params, Some(int.flag()))?;
            // The steps run later, one call each (Ctrl-C arrives between them).
            g.set_cancel(None);
            Ok(g)
        })?;
        Ok(PyGeneration {
            state: Mutex::new(g),
            stop: args.stop,
            tokenizer: tokenizer.map(PyTokenizer::core),
        })
    }
}

/// A generation in progress (from `CausalLM.start`): `step()` until it returns None.
#[derive(Debug)]
#[pyclass(frozen, module = "ferrolm._core", name = "Generation")]
pub struct PyGeneration {
    state: Mutex<Generation>,
    stop: Vec<String>,
    tokenizer: Option<Arc<Tokenizer>>,
}

#[pymethods]
impl PyGeneration {
    /// One token for each sequence (None for those that have ended), or None at the end.
    fn step(&self, py: Python<'_>) -> PyResult<Option<Vec<Option<u32>>>> {
        let mut guard = self.state.lock();
        let g: &mut Generation = &mut guard;
        let stop = stop_check(self.tokenizer.as_deref(), &self.stop);
        detached(py, || Ok(g.step(&stop)?.map(<[Option<u32>]>::to_vec)))
    }

    /// The output so far: `(ids as little-endian u32 bytes, rows, cols)`.
    fn output<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
        let g = self.state.lock();
        let (ids, cols) = attached(py, || Ok(g.output()))?;
        let rows = g.sequences();
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok((PyBytes::new(py, &bytes), rows, cols))
    }
}

/// From this many tokens on, `forward` runs interruptibly (on a thread of its own, the caller
/// watching for Ctrl-C).
const INTERRUPTIBLE_ROWS: usize = 64;

/// A `bytearray` (so that numpy arrays over it are writable, as torch logits are).
fn f32_bytes<'py>(py: Python<'py>, v: &[f32]) -> PyResult<Bound<'py, PyByteArray>> {
    PyByteArray::new_with(py, v.len() * 4, |buf| {
        for (chunk, x) in buf.chunks_exact_mut(4).zip(v) {
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        Ok(())
    })
}

/// Calls a `logits_hook` and copies the logits it returns back.
fn call_hook(
    py: Python<'_>,
    hook: &Py<PyAny>,
    ids: &[u32],
    cols: usize,
    logits: &mut [f32],
) -> PyResult<()> {
    let id_bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let rows = ids.len().checked_div(cols).unwrap_or(0);
    let scores = f32_bytes(py, logits)?;
    let out = hook.call1(py, (PyBytes::new(py, &id_bytes), rows, cols, scores))?;
    let raw: Vec<u8> = out.extract(py)?;
    if raw.len() != logits.len() * 4 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "logits_processor returned {} values for {} logits",
            raw.len() / 4,
            logits.len()
        )));
    }
    for (o, c) in logits.iter_mut().zip(raw.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

/// `(last_hidden_state, pooler_output, logits)`.
type BertTuple<'py> = (
    Bound<'py, PyByteArray>,
    Option<Bound<'py, PyByteArray>>,
    Option<Bound<'py, PyByteArray>>,
);

/// A BERT encoder loaded from a folder (immutable; share it across threads).
#[derive(Debug)]
#[pyclass(frozen, module = "ferrolm._core", name = "Bert")]
pub struct PyBert {
    model: Arc<ferrolm_core::model::bert::Bert>,
}

#[pymethods]
impl PyBert {
    /// Loads `config.json` and `model.safetensors` (or its shards) from a folder, the
    /// encoder's matrices quantized to `quantize` (`progress(done, total)` per matrix).
    #[staticmethod]
    #[pyo3(signature = (path, quantize = None, progress = None))]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        quantize: Option<&str>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<PyBert> {
        let q = parse_quantize(quantize)?;
        let report = progress_fn(progress);
        let model = detached(py, || {
            ferrolm_core::model::bert::Bert::load_with(&path, q, Some(&report))
        })?;
        Ok(PyBert {
            model: Arc::new(model),
        })
    }

    /// The matrices' quantized format, or None for f32.
    #[getter]
    fn quantization(&self) -> Option<&'static str> {
        self.model.quantization().map(QType::name)
    }

    /// Writes a quantized model's `model.safetensors` into the folder `path`.
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let model = Arc::clone(&self.model);
        detached(py, move || model.save(&path))
    }

    /// The config fields the forward pass uses.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.model.config;
        let d = PyDict::new(py);
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("hidden_size", c.hidden_size)?;
        d.set_item("num_hidden_layers", c.num_hidden_layers)?;
        d.set_item("num_attention_heads", c.num_attention_heads)?;
        d.set_item("intermediate_size", c.intermediate_size)?;
        d.set_item("max_position_embeddings", c.max_position_embeddings)?;
        d.set_item("type_vocab_size", c.type_vocab_size)?;
        d.set_item("num_labels", c.num_labels)?;
        Ok(d)
    }

    /// True when the checkpoint has a classification head (`logits` come out of `forward`).
    #[getter]
    fn has_classifier(&self) -> bool {
        self.model.has_classifier()
    }

    /// Sentence embeddings: the sequences `ids` (each its own length, with its special
    /// tokens) padded on the right into one batch, run through the encoder, pooled
    /// (`pooling` = "mean" over the real tokens or "cls") and, when `normalize`, scaled to
    /// unit length. Returns `[len(ids) × hidden]` little-endian f32 as a bytearray.
    #[pyo3(signature = (ids, type_ids = None, pooling = "mean", normalize = false))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<Vec<u32>>,
        type_ids: Option<Vec<Vec<u32>>>,
        pooling: &str,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        use ferrolm_core::model::bert::Pooling;
        let pooling = match pooling {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "pooling must be \"mean\" or \"cls\", got {other:?}"
                )))
            }
        };
        let out = detached(py, || {
            self.model
                .embed(&ids, type_ids.as_deref(), pooling, normalize)
        })?;
        f32_bytes(py, &out)
    }

    /// The encoder over `batch × seq` ids (row-major, mask 1 for real tokens). Returns
    /// `(last_hidden_state, pooler_output or None, logits or None)` as bytearrays of
    /// little-endian f32 (logits: a classification checkpoint's).
    fn forward<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
        type_ids: Vec<u32>,
        mask: Vec<u8>,
        batch: usize,
        seq: usize,
    ) -> PyResult<BertTuple<'py>> {
        let out = detached(py, || {
            self.model.forward(&ids, &type_ids, &mask, batch, seq)
        })?;
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map(|p| f32_bytes(py, p)).transpose();
        Ok((
            f32_bytes(py, &out.last_hidden_state)?,
            opt(&out.pooler_output)?,
            opt(&out.logits)?,
        ))
    }
}
