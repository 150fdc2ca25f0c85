//! What the model loaders share: the one place checkpoint tensors are taken by name (with the
//! prefix a `*For*` model writes, or without), LayerNorm and linear layers built from them,
//! and the typed reads of `config.json` fields.

use std::path::Path;

use serde_json::Value;

use crate::io::safetensors::{Checkpoint, F32Data, F32Tensor};
use crate::{Error, Result};

/// A LayerNorm's gain and bias.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub(crate) w: F32Tensor,
    pub(crate) b: F32Tensor,
}

/// `y = x @ w + b` with `w` `[in, out]` (GPT-2's Conv1D layout; `nn.Linear` weights are
/// transposed into it at load).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) w: F32Tensor,
    pub(crate) b: F32Tensor,
    pub(crate) n_in: usize,
    pub(crate) n_out: usize,
}

/// How a checkpoint stores a linear layer's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `[in, out]` (GPT-2's Conv1D): used in place.
    InOut,
    /// `[out, in]` (`nn.Linear`): transposed once at load.
    OutIn,
}

/// The tensors of a checkpoint, named with or without `prefix`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Weights<'a> {
    pub(crate) ck: &'a Checkpoint,
    pub(crate) prefix: &'static str,
}

impl<'a> Weights<'a> {
    /// Uses `prefix` when the checkpoint names `probe` with it.
    pub(crate) fn new(ck: &'a Checkpoint, prefix: &'static str, probe: &str) -> Self {
        let prefix = if ck.contains(&format!("{prefix}{probe}")) {
            prefix
        } else {
            ""
        };
        Weights { ck, prefix }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.ck.contains(&format!("{}{name}", self.prefix))
    }

    /// The tensor `name`, checked to have `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<F32Tensor> {
        self.ck.f32(&format!("{}{name}", self.prefix), shape)
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
        let w = match layout {
            Layout::InOut => self.get(&format!("{name}.weight"), &[n_in, n_out])?,
            Layout::OutIn => transposed(
                &self.get(&format!("{name}.weight"), &[n_out, n_in])?,
                n_out,
                n_in,
            ),
        };
        Ok(Linear {
            w,
            b: self.get(&format!("{name}.bias"), &[n_out])?,
            n_in,
            n_out,
        })
    }
}

/// An `[out, in]` matrix as `[in, out]`, in memory.
fn transposed(t: &F32Tensor, n_out: usize, n_in: usize) -> F32Tensor {
    let w = t.values();
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

/// A `config.json`'s contents, checked to be of `model_type`.
pub(crate) fn parse_config(what: &str, data: &[u8], model_type: &str) -> Result<Value> {
    let v: Value =
        serde_json::from_slice(data).map_err(|e| Error::format(what, format!("not JSON: {e}")))?;
    let found = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    if found != model_type {
        return Err(Error::Unsupported(format!(
            "architecture: {what} has model_type {found:?}; this loader reads {model_type:?}"
        )));
    }
    Ok(v)
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
