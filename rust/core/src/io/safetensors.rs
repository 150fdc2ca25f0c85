//! safetensors checkpoints, memory-mapped: an 8-byte little-endian header length, a JSON header
//! `{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}`, then the
//! tensor bytes (<https://github.com/huggingface/safetensors#format>).
//!
//! f32 tensors are used in place (a slice of the mapping) when they are 4-byte aligned, which
//! files written by `safetensors` are; f16 and bf16 tensors are converted to f32 once, at load.
//! A sharded checkpoint (`model.safetensors.index.json` naming `model-0000N-of-0000M.safetensors`
//! files) reads as one.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::Value;

use crate::io::half::{bf16_to_f32, f16_to_f32};
use crate::{Error, Result};

/// The element types ferrolm reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    /// Raw bytes: ferrolm's quantized tiles (see [`crate::quant`]).
    U8,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            "U8" => Some(Dtype::U8),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U8 => "U8",
        }
    }
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    /// `None` for a type ferrolm does not read (named in errors when the tensor is asked for).
    dtype: Result<Dtype, String>,
    shape: Vec<usize>,
    /// Byte range in the file's mapping.
    start: usize,
    end: usize,
}

/// f32 values, either a slice of a mapped file or converted into memory.
#[derive(Debug, Clone)]
pub enum F32Data {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Vec<f32>),
}

impl F32Data {
    #[inline]
    pub fn as_slice(&self) -> &[f32] {
        match self {
            F32Data::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 4];
                // SAFETY: `offset` is 4-byte aligned within a page-aligned mapping (checked when
                // the tensor was taken), the length is `len` f32s, any bit pattern is an f32, and
                // the mapping lives as long as `map`.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
            F32Data::Owned(v) => v,
        }
    }

    /// True when the values are read from the file in place.
    pub fn is_mapped(&self) -> bool {
        matches!(self, F32Data::Mapped { .. })
    }
}

/// Bytes, either a slice of a mapped file or in memory.
#[derive(Debug, Clone)]
pub enum ByteData {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Vec<u8>),
}

impl ByteData {
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ByteData::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            ByteData::Owned(v) => v,
        }
    }

    /// True when the bytes are read from the file in place.
    pub fn is_mapped(&self) -> bool {
        matches!(self, ByteData::Mapped { .. })
    }
}

/// An f32 tensor: its values (row-major) and shape.
#[derive(Debug, Clone)]
pub struct F32Tensor {
    pub data: F32Data,
    pub shape: Vec<usize>,
}

impl F32Tensor {
    #[inline]
    pub fn values(&self) -> &[f32] {
        self.data.as_slice()
    }
}

/// One checkpoint: one or several safetensors files, their tensors by name.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
    /// Each file's `__metadata__` (string values only, as the format says).
    metadata: Vec<HashMap<String, String>>,
}

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::format(path.display().to_string(), msg)
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards that `model.safetensors.index.json` lists, in
    /// `folder`.
    pub fn open_folder(folder: &Path) -> Result<Self> {
        let single = folder.join("model.safetensors");
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        let index = folder.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read(&index).map_err(|e| Error::io(&index, e))?;
            let v: Value = serde_json::from_slice(&text)
                .map_err(|e| fmt_err(&index, format!("not JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| fmt_err(&index, "no `weight_map` object"))?;
            let mut shards: Vec<String> = Vec::new();
            for f in map.values() {
                let f = f
                    .as_str()
                    .ok_or_else(|| fmt_err(&index, "`weight_map` values must be file names"))?;
                if f.contains('/') || f.contains('\\') || f == ".." {
                    return Err(fmt_err(
                        &index,
                        format!("shard name {f:?} is not a file name"),
                    ));
                }
                if !shards.iter().any(|s| s == f) {
                    shards.push(f.to_owned());
                }
            }
            shards.sort();
            let paths: Vec<PathBuf> = shards.iter().map(|s| folder.join(s)).collect();
            return Self::open_files(&paths);
        }
        let why = if folder.join("pytorch_model.bin").is_file() {
            "only pytorch_model.bin (a pickle, which ferrolm does not load: it can run code); \
             convert it with `ferrolm.torch_ref.convert_to_safetensors(folder)` or \
             transformers' `model.save_pretrained(folder, safe_serialization=True)`"
        } else {
            "no model.safetensors or model.safetensors.index.json"
        };
        Err(Error::io(
            folder,
            std::io::Error::new(std::io::ErrorKind::NotFound, why),
        ))
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        let mut metadata = Vec::with_capacity(paths.len());
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the mapping is read-only; a file changed by another process while mapped
            // is outside what any loader can defend against (as with every mmap loader).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            metadata.push(parse_header(path, &map, i, &mut entries)?);
            files.push((path.clone(), Arc::new(map)));
        }
        Ok(Checkpoint {
            files,
            entries,
            metadata,
        })
    }

    /// The tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }

    /// The tensor `name` as f32, checked to have shape `expected`: in place for aligned f32,
    /// converted otherwise. Errors name the tensor and both shapes.
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<F32Tensor> {
        let e = self.entries.get(name).ok_or_else(|| {
            Error::format(
                self.what(None),
                format!("tensor {name:?} (shape {expected:?}) is missing"),
            )
        })?;
        let path = &self.files[e.file].0;
        if e.shape != expected {
            return Err(fmt_err(
                path,
                format!(
                    "tensor {name:?} has shape {:?}, expected {expected:?}",
                    e.shape
                ),
            ));
        }
        let dtype = e.dtype.clone().map_err(|t| {
            Error::Unsupported(format!(
                "tensor type {t} (tensor {name:?} in {}); ferrolm reads F32, F16 and BF16",
                path.display()
            ))
        })?;
        if dtype == Dtype::U8 {
            return Err(fmt_err(
                path,
                format!("tensor {name:?} is U8 (quantized?), expected floating point"),
            ));
        }
        let map = &self.files[e.file].1;
        let bytes = &map[e.start..e.end];
        let n = e.shape.iter().product::<usize>();
        let data = match dtype {
            Dtype::F32 if e.start % 4 == 0 && cfg!(target_endian = "little") => F32Data::Mapped {
                map: Arc::clone(map),
                offset: e.start,
                len: n,
            },
            Dtype::F32 => F32Data::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::F16 => F32Data::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
            Dtype::BF16 => F32Data::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
            Dtype::U8 => unreachable!("refused above"),
        };
        Ok(F32Tensor {
            data,
            shape: e.shape.clone(),
        })
    }

    /// The `U8` tensor `name` (shape `[len]`), in place. Errors name the tensor.
    pub fn bytes(&self, name: &str, len: usize) -> Result<ByteData> {
        let e = self.entries.get(name).ok_or_else(|| {
            Error::format(
                self.what(None),
                format!("tensor {name:?} ({len} bytes) is missing"),
            )
        })?;
        let path = &self.files[e.file].0;
        if e.dtype != Ok(Dtype::U8) || e.shape != [len] {
            return Err(fmt_err(
                path,
                format!(
                    "tensor {name:?} is {} {:?}, expected U8 [{len}]",
                    e.dtype.clone().map_or_else(|t| t, |d| d.name().to_owned()),
                    e.shape
                ),
            ));
        }
        Ok(ByteData::Mapped {
            map: Arc::clone(&self.files[e.file].1),
            offset: e.start,
            len,
        })
    }

    /// The file's `__metadata__` string `key` (the first file that has it).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find_map(|m| m.get(key).map(String::as_str))
    }

    fn what(&self, file: Option<usize>) -> String {
        match (file, self.files.as_slice()) {
            (Some(i), files) => files[i].0.display().to_string(),
            (None, [(p, _)]) => p.display().to_string(),
            (None, files) => format!("checkpoint of {} safetensors files", files.len()),
        }
    }
}

/// Reads one file's header into `entries`, checking every offset against the file; returns its
/// `__metadata__`.
fn parse_header(
    path: &Path,
    map: &[u8],
    file: usize,
    entries: &mut HashMap<String, Entry>,
) -> Result<HashMap<String, String>> {
    if map.len() < 8 {
        return Err(fmt_err(path, "too short for a safetensors header"));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&map[..8]);
    let hlen = u64::from_le_bytes(len8);
    let data_start = usize::try_from(hlen)
        .ok()
        .and_then(|h| h.checked_add(8))
        .filter(|&s| s <= map.len())
        .ok_or_else(|| {
            fmt_err(
                path,
                format!("header length {hlen} runs past the end of the file"),
            )
        })?;
    let header: Value = serde_json::from_slice(&map[8..data_start])
        .map_err(|e| fmt_err(path, format!("header is not JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| fmt_err(path, "header is not a JSON object"))?;
    let data_len = map.len() - data_start;
    let mut metadata = HashMap::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            let m = info
                .as_object()
                .ok_or_else(|| fmt_err(path, "`__metadata__` is not an object"))?;
            for (k, v) in m {
                if let Some(v) = v.as_str() {
                    metadata.insert(k.clone(), v.to_owned());
                }
            }
            continue;
        }
        let bad = |m: &str| fmt_err(path, format!("tensor {name:?}: {m}"));
        let dtype_s = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no `dtype`"))?;
        let dtype = Dtype::parse(dtype_s).ok_or_else(|| dtype_s.to_owned());
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `shape` list"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("`shape` must be non-negative integers"))?;
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("no `data_offsets` pair"))?;
        let off = |i: usize| {
            offs[i]
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad("`data_offsets` must be non-negative integers"))
        };
        let (s, e) = (off(0)?, off(1)?);
        if s > e || e > data_len {
            return Err(bad(&format!(
                "data_offsets [{s}, {e}] outside the {data_len} bytes of data"
            )));
        }
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape too large"))?;
        if let Ok(dt) = dtype {
            if count.checked_mul(dt.size()) != Some(e - s) {
                return Err(bad(&format!(
                    "shape {shape:?} of {} needs {} bytes, data_offsets give {}",
                    dt.name(),
                    count.saturating_mul(dt.size()),
                    e - s
                )));
            }
        }
        if entries.contains_key(name) {
            return Err(bad("appears in two files"));
        }
        entries.insert(
            name.clone(),
            Entry {
                file,
                dtype,
                shape,
                start: data_start + s,
                end: data_start + e,
            },
        );
    }
    Ok(metadata)
}

/// A tensor to write: f32 values or raw bytes.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

impl TensorData<'_> {
    /// Bytes of data.
    pub fn len_bytes(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len() * 4,
            TensorData::U8(v) => v.len(),
        }
    }
}

/// Writes a safetensors file (used by tests and tools; f32 only).
pub fn write_f32(path: &Path, tensors: &[(&str, &[usize], &[f32])]) -> Result<()> {
    let t: Vec<(&str, Vec<usize>, TensorData<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| (*n, s.to_vec(), TensorData::F32(d)))
        .collect();
    write(path, &t, &[])
}

/// Writes a safetensors file of f32 and U8 tensors with `metadata`. The f32 tensors are laid
/// out first (each then starts 4-byte aligned and maps in place), the byte tensors after them;
/// the data has no gaps, as the format requires.
pub fn write(
    path: &Path,
    tensors: &[(&str, Vec<usize>, TensorData<'_>)],
    metadata: &[(&str, &str)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut order: Vec<&(&str, Vec<usize>, TensorData<'_>)> = tensors.iter().collect();
    order.sort_by_key(|(_, _, d)| matches!(d, TensorData::U8(_)));
    let mut offset = 0usize;
    for (name, shape, data) in &order {
        let (dtype, n) = match data {
            TensorData::F32(v) => ("F32", v.len() * 4),
            TensorData::U8(v) => ("U8", v.len()),
        };
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::Internal(format!("safetensors header: {e}")))?;
    while (h.len() + 8) % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, data) in &order {
        match data {
            TensorData::F32(v) => {
                for x in *v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            TensorData::U8(v) => out.extend_from_slice(v),
        }
    }
    // Atomically: a model that maps the file being replaced keeps reading the old one.
    crate::io::atomic::write(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let dir = std::env::temp_dir().join(format!("ferrolm-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        write_f32(
            &path,
            &[
                ("a", &[2, 3], &[1., 2., 3., 4., 5., 6.]),
                ("b", &[1], &[7.]),
            ],
        )
        .unwrap();
        let ck = Checkpoint::open_folder(&dir).unwrap();
        let a = ck.f32("a", &[2, 3]).unwrap();
        assert!(a.data.is_mapped());
        assert_eq!(a.values(), &[1., 2., 3., 4., 5., 6.]);
        let err = ck.f32("a", &[3, 2]).unwrap_err().to_string();
        assert!(
            err.contains("\"a\" has shape [2, 3], expected [3, 2]"),
            "{err}"
        );
        let err = ck.f32("c", &[1]).unwrap_err().to_string();
        assert!(err.contains("\"c\" (shape [1]) is missing"), "{err}");
        // Truncated file: the offsets no longer fit.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(Checkpoint::open_folder(&dir).is_err());
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
        assert!(Checkpoint::open_folder(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
