//! What the model loaders share: the one place checkpoint tensors are taken by name (with the
//! prefix a `*For*` model writes, or without), LayerNorm and linear layers built from them,
//! and the typed reads of `config.json` fields.

use std::cell::Cell;
use std::path::Path;

use serde_json::{Map, Value};

use crate::io::safetensors::{Checkpoint, F32Data, F32Tensor, TensorData};
use crate::kernels::PackedB;
use crate::model::decoder::{Decoder, DecoderConfig, Layer};
use crate::model::registry::Arch;
use crate::quant::{QMatrix, QType};
use crate::{Error, Result};

/// A LayerNorm's gain and bias.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub(crate) w: F32Tensor,
    pub(crate) b: F32Tensor,
}

/// A linear layer's weight matrix.
#[derive(Debug, Clone)]
pub(crate) enum Mat {
    /// f32 `[in, out]` (GPT-2's Conv1D layout; `nn.Linear` weights are transposed into it at
    /// load).
    F32(F32Tensor),
    /// f32 `[in, out]` packed in panels for the kernels' `gemm_packed` (BERT's).
    Packed(PackedB),
    /// Quantized `[out × in]` ([`crate::quant`]).
    Q(QMatrix),
}

impl Mat {
    /// Bytes of weights.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Mat::F32(t) => t.values().len() * 4,
            Mat::Packed(p) => p.bytes(),
            Mat::Q(q) => q.bytes().len(),
        }
    }

    /// The quantized format, if any.
    pub(crate) fn qtype(&self) -> Option<QType> {
        match self {
            Mat::Q(q) => Some(q.ty),
            Mat::F32(_) | Mat::Packed(_) => None,
        }
    }
}

/// `y = x @ w + b`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) w: Mat,
    pub(crate) b: F32Tensor,
    pub(crate) n_in: usize,
    pub(crate) n_out: usize,
}

/// An embedding table `[rows, d]` (which may double as a tied output head).
#[derive(Debug, Clone)]
pub(crate) enum Table {
    F32(F32Tensor),
    Q(QMatrix),
}

impl Table {
    /// Rows (tokens).
    pub(crate) fn rows(&self) -> usize {
        match self {
            Table::F32(t) => t.shape[0],
            Table::Q(q) => q.n,
        }
    }

    /// Row `r` into `out` (`d` values).
    #[inline]
    pub(crate) fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Table::F32(t) => {
                let d = out.len();
                out.copy_from_slice(&t.values()[r * d..(r + 1) * d]);
            }
            Table::Q(q) => q.dequantize_row(r, out),
        }
    }
}

/// The quantized format a saved folder's `config.json` declares (`quantization_config` with
/// `quant_method` "ferrolm"); any other quantization method is refused by name.
pub(crate) fn stored_quant(v: &Value, what: &str) -> Result<Option<QType>> {
    let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(None);
    };
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
    if method != "ferrolm" {
        return Err(Error::Unsupported(format!(
            "quantization method {method:?} ({what}); ferrolm reads its own (\"ferrolm\") \
             and quantizes f32 / f16 / bf16 checkpoints itself"
        )));
    }
    let fmt = q.get("format").and_then(Value::as_str).unwrap_or("");
    let layout = q.get("layout").and_then(Value::as_str).unwrap_or("");
    match (QType::parse(fmt), layout) {
        (Some(t), "r16") if t.name() == fmt => Ok(Some(t)),
        _ => Err(Error::format(
            what,
            format!(
                "quantization_config format {fmt:?} / layout {layout:?} is not one ferrolm writes"
            ),
        )),
    }
}

/// A model folder opened for loading: `config.json` (its name for errors, and its contents,
/// checked to be of `model_type`), what to do with the matrices (as stored, or quantized to
/// `quantize`), and the checkpoint.
pub(crate) fn open_folder(
    folder: &Path,
    model_type: &str,
    quantize: Option<QType>,
) -> Result<(String, Value, Quant, Checkpoint)> {
    let (what, v) = read_config(folder, model_type)?;
    let quant = resolve_quant(stored_quant(&v, &what)?, quantize)?;
    let ck = Checkpoint::open_folder(folder)?;
    Ok((what, v, quant, ck))
}

/// What to do with a folder's matrices: as stored, or quantized to `requested`.
pub(crate) fn resolve_quant(stored: Option<QType>, requested: Option<QType>) -> Result<Quant> {
    Ok(match (stored, requested) {
        (None, None) => Quant::None,
        (None, Some(t)) => Quant::To(t),
        (Some(s), None) => Quant::Stored(s),
        (Some(s), Some(t)) if s == t => Quant::Stored(s),
        (Some(s), Some(t)) => {
            return Err(Error::invalid(format!(
                "the folder holds {} weights; quantizing them again to {} would compound the \
                 rounding errors: quantize from the f32 folder instead",
                s.name(),
                t.name()
            )))
        }
    })
}

/// A tensor to save: name, shape, data.
pub type Named<'a> = (String, Vec<usize>, TensorData<'a>);

pub(crate) fn f32_entry<'a>(name: &str, t: &'a F32Tensor) -> Named<'a> {
    (
        name.to_owned(),
        t.shape.clone(),
        TensorData::F32(t.values()),
    )
}

fn q_entry<'a>(name: &str, q: &'a QMatrix) -> Named<'a> {
    (
        qweight_name(name),
        vec![q.bytes().len()],
        TensorData::U8(q.bytes()),
    )
}

/// A matrix as stored: f32 `[in, out]` as `{name}.weight` (GPT-2's Conv1D layout), quantized
/// tiles as `{name}.qweight`. Packed panels are not saved (their source checkpoint is the
/// file).
pub(crate) fn mat_entry<'a>(name: &str, m: &'a Mat) -> Result<Named<'a>> {
    match m {
        Mat::F32(t) => Ok(f32_entry(&format!("{name}.weight"), t)),
        Mat::Q(q) => Ok(q_entry(name, q)),
        Mat::Packed(_) => Err(Error::invalid(format!(
            "{name}: an f32 matrix packed at load is not saved (copy the source checkpoint)"
        ))),
    }
}

pub(crate) fn table_entry<'a>(name: &str, t: &'a Table) -> Named<'a> {
    match t {
        Table::F32(t) => f32_entry(&format!("{name}.weight"), t),
        Table::Q(q) => q_entry(name, q),
    }
}

pub(crate) fn norm_entries<'a>(out: &mut Vec<Named<'a>>, name: &str, n: &'a Norm) {
    out.push(f32_entry(&format!("{name}.weight"), &n.w));
    out.push(f32_entry(&format!("{name}.bias"), &n.b));
}

/// Writes `tensors` as `folder/model.safetensors`, noting the matrices' format in its metadata.
pub(crate) fn save(folder: &Path, tensors: &[Named<'_>], quant: Option<QType>) -> Result<()> {
    let refs: Vec<(&str, Vec<usize>, TensorData<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), *d))
        .collect();
    let meta = quant.map_or("f32", QType::name);
    crate::io::safetensors::write(
        &folder.join("model.safetensors"),
        &refs,
        &[("format", "pt"), ("ferrolm.weights", meta)],
    )
}

/// How a loader treats the weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// f32, as stored.
    None,
    /// Quantized at load from f32 / f16 / bf16.
    To(QType),
    /// Stored quantized (a folder ferrolm saved): the tiles are mapped in place.
    Stored(QType),
}

impl Quant {
    /// The format the matrices end up in, if quantized.
    pub fn qtype(self) -> Option<QType> {
        match self {
            Quant::None => None,
            Quant::To(t) | Quant::Stored(t) => Some(t),
        }
    }
}

/// Reports `(matrices done, total)` while a loader quantizes.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// The name under which a quantized matrix `{name}.weight` is saved.
pub fn qweight_name(name: &str) -> String {
    format!("{name}.qweight")
}

/// How a checkpoint stores a linear layer's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `[in, out]` (GPT-2's Conv1D): used in place.
    InOut,
    /// `[out, in]` (`nn.Linear`): transposed once at load.
    OutIn,
    /// `[out, in]` (`nn.Linear`), an f32 matrix transposed and packed in panels at load
    /// ([`Mat::Packed`]).
    OutInPacked,
}

/// The tensors of a checkpoint, named with or without `prefix`.
pub(crate) struct Weights<'a> {
    pub(crate) ck: &'a Checkpoint,
    pub(crate) prefix: &'static str,
    pub(crate) quant: Quant,
    progress: Option<Progress<'a>>,
    done: Cell<usize>,
    total: usize,
}

impl std::fmt::Debug for Weights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("prefix", &self.prefix)
            .field("quant", &self.quant)
            .finish()
    }
}

impl<'a> Weights<'a> {
    /// Uses `prefix` when the checkpoint names `probe` (or its quantized name) with it.
    pub(crate) fn new(ck: &'a Checkpoint, prefix: &'static str, probe: &str) -> Self {
        let qprobe = probe.strip_suffix(".weight").map(qweight_name);
        let prefixed = ck.contains(&format!("{prefix}{probe}"))
            || qprobe.is_some_and(|q| ck.contains(&format!("{prefix}{q}")));
        Weights {
            ck,
            prefix: if prefixed { prefix } else { "" },
            quant: Quant::None,
            progress: None,
            done: Cell::new(0),
            total: 0,
        }
    }

    /// Matrices taken by [`Weights::matrix`] are handled as `quant` says; `progress` hears of
    /// each of the `total` quantized.
    pub(crate) fn with_quant(
        mut self,
        quant: Quant,
        total: usize,
        progress: Option<Progress<'a>>,
    ) -> Self {
        self.quant = quant;
        self.total = total;
        self.progress = progress;
        self
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.ck.contains(&format!("{}{name}", self.prefix))
    }

    /// The tensor `name`, checked to have `shape`. When quantizing at load it is copied out of
    /// the f32 file, so that the file's mapping (most of it read once, to quantize) is released.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<F32Tensor> {
        let t = self.ck.f32(&format!("{}{name}", self.prefix), shape)?;
        Ok(
            if matches!(self.quant, Quant::To(_)) && t.data.is_mapped() {
                F32Tensor {
                    data: F32Data::Owned(t.values().to_vec()),
                    shape: t.shape,
                }
            } else {
                t
            },
        )
    }

    /// The matrix `{name}.weight` of `n_out` rows (features) of `n_in`, stored as `layout` says:
    /// f32, quantized now, or read quantized, as [`Weights::with_quant`] set.
    pub(crate) fn matrix(
        &self,
        name: &str,
        n_in: usize,
        n_out: usize,
        layout: Layout,
    ) -> Result<Mat> {
        self.matrix_at(self.prefix, name, n_in, n_out, layout)
    }

    /// An embedding table `{name}.weight` `[rows, d]`: f32, or quantized like the matrices
    /// (rows dequantized when looked up).
    pub(crate) fn table(&self, name: &str, rows: usize, d: usize, root: bool) -> Result<Table> {
        let prefix = if root { "" } else { self.prefix };
        Ok(match self.quant {
            Quant::None => Table::F32(self.ck.f32(&format!("{prefix}{name}.weight"), &[rows, d])?),
            _ => match self.matrix_at(prefix, name, d, rows, Layout::OutIn)? {
                Mat::Q(q) => Table::Q(q),
                Mat::F32(t) => Table::F32(t),
                Mat::Packed(_) => unreachable!("OutIn is never packed"),
            },
        })
    }

    /// The decoder of `layers` (as many as `config` says: a checkpoint with more is refused)
    /// and the checkpoint's embeddings (`embed_tokens`), head (`lm_head`, or tied) and
    /// `final_norm`, for the Llama-like layouts.
    pub(crate) fn decoder(
        &self,
        arch: &'static Arch,
        info: Map<String, Value>,
        config: DecoderConfig,
        layers: Vec<Layer>,
        final_norm: Norm,
    ) -> Result<Decoder> {
        let (d, n) = (config.hidden_size, config.num_layers);
        if self.contains(&format!("layers.{n}.input_layernorm.weight")) {
            return Err(Error::format(
                "checkpoint",
                format!("it has more layers than the config's num_hidden_layers = {n}"),
            ));
        }
        let embed = self.table("embed_tokens", config.vocab_size, d, false)?;
        let head = if config.tie_word_embeddings {
            None
        } else {
            Some(self.table("lm_head", config.vocab_size, d, true)?)
        };
        let qtype = self.quant.qtype();
        Ok(Decoder::new(
            arch, info, config, embed, None, layers, final_norm, head, qtype,
        ))
    }

    fn matrix_at(
        &self,
        prefix: &str,
        name: &str,
        n_in: usize,
        n_out: usize,
        layout: Layout,
    ) -> Result<Mat> {
        let wname = format!("{name}.weight");
        let get = |n: &str, shape: &[usize]| self.ck.f32(&format!("{prefix}{n}"), shape);
        let m = match self.quant {
            Quant::None => Mat::F32(match layout {
                Layout::InOut => get(&wname, &[n_in, n_out])?,
                Layout::OutIn => transposed(get(&wname, &[n_out, n_in])?.values(), n_out, n_in),
                Layout::OutInPacked => {
                    let w = get(&wname, &[n_out, n_in])?;
                    return Ok(Mat::Packed(PackedB::from_out_in(w.values(), n_out, n_in)));
                }
            }),
            Quant::To(ty) => {
                let shape = match layout {
                    Layout::InOut => [n_in, n_out],
                    Layout::OutIn | Layout::OutInPacked => [n_out, n_in],
                };
                let t = get(&wname, &shape)?;
                let q = QMatrix::quantize(ty, t.values(), n_out, n_in, layout == Layout::InOut);
                self.tick();
                Mat::Q(q)
            }
            Quant::Stored(ty) => {
                let full = format!("{prefix}{}", qweight_name(name));
                let len = ty.matrix_bytes(n_out, n_in).ok_or_else(|| {
                    Error::format(
                        "checkpoint",
                        format!("{full}: [{n_out} × {n_in}] too large"),
                    )
                })?;
                let data = self.ck.bytes(&full, len)?;
                Mat::Q(QMatrix::from_bytes(ty, n_out, n_in, data, &full)?)
            }
        };
        Ok(m)
    }

    fn tick(&self) {
        self.done.set(self.done.get() + 1);
        if let Some(p) = self.progress {
            p(self.done.get(), self.total.max(self.done.get()));
        }
    }

    /// `{name}.weight` and `{name}.bias`, both `[d]`.
    pub(crate) fn norm(&self, name: &str, d: usize) -> Result<Norm> {
        Ok(Norm {
            w: self.get(&format!("{name}.weight"), &[d])?,
            b: self.get(&format!("{name}.bias"), &[d])?,
        })
    }

    /// `{name}.weight` (stored as `layout` says) and `{name}.bias` `[n_out]`.
    pub(crate) fn linear(
        &self,
        name: &str,
        n_in: usize,
        n_out: usize,
        layout: Layout,
    ) -> Result<Linear> {
        Ok(Linear {
            w: self.matrix(name, n_in, n_out, layout)?,
            b: self.get(&format!("{name}.bias"), &[n_out])?,
            n_in,
            n_out,
        })
    }
}

/// An `[out, in]` matrix (`nn.Linear`'s layout) as `[in, out]`, in memory.
pub(crate) fn transposed(w: &[f32], n_out: usize, n_in: usize) -> F32Tensor {
    let mut out = vec![0.0f32; n_in * n_out];
    for (o, row) in w.chunks_exact(n_in).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[i * n_out + o] = v;
        }
    }
    F32Tensor {
        data: F32Data::Owned(out),
        shape: vec![n_in, n_out],
    }
}

/// `folder/config.json`: its name (for errors) and parsed contents, checked to be of
/// `model_type` (anything else is refused naming its type).
pub(crate) fn read_config(folder: &Path, model_type: &str) -> Result<(String, Value)> {
    let path = folder.join("config.json");
    let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let what = path.display().to_string();
    let v = parse_config(&what, &data, model_type)?;
    Ok((what, v))
}

/// `folder/config.json`: its name (for errors) and parsed contents, whatever its `model_type`
/// (a JSON object).
pub(crate) fn read_config_any(folder: &Path) -> Result<(String, Value)> {
    let path = folder.join("config.json");
    let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let what = path.display().to_string();
    let v: Value = serde_json::from_slice(&data)
        .map_err(|e| Error::format(&what, format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::format(&what, "not a JSON object"));
    }
    Ok((what, v))
}

/// A `config.json`'s contents, checked to be of `model_type`.
pub(crate) fn parse_config(what: &str, data: &[u8], model_type: &str) -> Result<Value> {
    let v: Value =
        serde_json::from_slice(data).map_err(|e| Error::format(what, format!("not JSON: {e}")))?;
    check_model_type(&v, what, model_type)?;
    Ok(v)
}

/// A config's token id field (`bos_token_id`, `eos_token_id`): one id or a list of them.
pub(crate) fn token_ids(v: Option<&Value>) -> Vec<u32> {
    let one = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
        Some(x) => one(x).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Checks that a config is of `model_type`.
pub(crate) fn check_model_type(v: &Value, what: &str, model_type: &str) -> Result<()> {
    let found = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    if found != model_type {
        return Err(Error::Unsupported(format!(
            "architecture: {what} has model_type {found:?}; this loader reads {model_type:?}"
        )));
    }
    Ok(())
}

/// A positive integer field of a config; `default` when absent (an error when that is None).
pub(crate) fn positive(v: &Value, what: &str, key: &str, default: Option<usize>) -> Result<usize> {
    match v.get(key) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| Error::format(what, format!("`{key}` is missing")))
        }
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::format(what, format!("`{key}` must be a positive integer"))),
    }
}
