//! GGUF files (llama.cpp's format), memory-mapped: the header, the metadata, the tensor infos and
//! the aligned tensor data (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>).
//!
//! ```text
//! "GGUF" u32 version (2 or 3) u64 n_tensors u64 n_kv
//! n_kv × (string key, u32 type, value)         string = u64 length + UTF-8 bytes
//! n_tensors × (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
//! padding to `general.alignment` (default 32), then the tensor data
//! ```
//!
//! Every count, length and offset is checked against the bytes that remain before it is used
//! to allocate or index: a crafted file gives a [`crate::Error::Format`] naming what is wrong,
//! never an out-of-bounds read or an allocation the file cannot back (llama.cpp's parser has had
//! a string of heap-overflow CVEs here). Dimensions are listed innermost first, as ggml does: a
//! PyTorch `[out, in]` weight is `dims = [in, out]`.
//!
//! Quantized tensors in ggml's block layouts (`Q8_0`, `Q4_0`, `Q4_1`) are repacked, losslessly,
//! into ferrolm's tile layout ([`crate::quant`]) by [`Gguf::qmatrix`]; f32, f16 and bf16 are read
//! as f32 by [`Gguf::f32`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::io::half::{bf16_to_f32, f16_to_f32};
use crate::io::safetensors::ByteData;
use crate::quant::{put_block, Block, QMatrix, QType, BLOCK, ROWS};
use crate::{Error, Result};

/// Longest key or string value accepted (a tokenizer's longest token is far shorter).
const MAX_STRING: u64 = 1 << 20;
/// Most dimensions a tensor may have.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// An integer value of any width, if non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An integer or float value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(f64::from(v)),
            Value::I16(v) => Some(f64::from(v)),
            Value::I32(v) => Some(f64::from(v)),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml's tensor types that ferrolm reads (others are named in errors by number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
        }
    }

    /// `(elements per block, bytes per block)`.
    fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
        }
    }

    /// The ferrolm format holding the same values.
    pub fn qtype(self) -> Option<QType> {
        match self {
            GgmlType::Q8_0 => Some(QType::Q8_0),
            GgmlType::Q4_0 => Some(QType::Q4_0),
            GgmlType::Q4_1 => Some(QType::Q4_1),
            _ => None,
        }
    }
}

/// The names of ggml's other types, for errors.
fn type_name(id: u32) -> String {
    let known = [
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
    ];
    known
        .iter()
        .find(|(i, _)| *i == id)
        .map_or_else(|| format!("id {id}"), |(_, n)| (*n).to_owned())
}

/// One tensor's description.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first.
    pub dims: Vec<usize>,
    /// `Err(type id)` for a type ferrolm does not read.
    pub ty: std::result::Result<GgmlType, u32>,
    /// Byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    map: Arc<Mmap>,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

/// A bounds-checked reader over the header bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(self.what, format!("at byte {}: {msg}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err(format!(
                "{n} bytes needed, {remaining} left (truncated file?)"
            )));
        }
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(self.err(format!("a string of {n} bytes (more than {MAX_STRING})")));
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("a string is not UTF-8"))
    }

    /// A count of items each at least `min_size` bytes: refused when the rest of the file
    /// cannot hold them (so no allocation is sized by a crafted count).
    fn count(&mut self, min_size: u64, what: &str) -> Result<usize> {
        let n = self.u64()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size.max(1)) > remaining {
            return Err(self.err(format!(
                "{n} {what} cannot fit in the {remaining} bytes left"
            )));
        }
        Ok(n as usize)
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("bool value {b}"))),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 0 {
                    return Err(self.err("nested arrays"));
                }
                let elem = self.u32()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => return Err(self.err(format!("array of value type {elem}"))),
                };
                let n = self.count(min, "array elements")?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.value(elem, depth + 1)?);
                }
                Value::Array(out)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            _ => return Err(self.err(format!("metadata value type {ty}"))),
        })
    }
}

impl Gguf {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only mapping; a file changed by another process while mapped is outside
        // what any mmap loader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        let what = path.display().to_string();
        let mut r = Reader {
            buf: &map[..],
            pos: 0,
            what: &what,
        };
        if r.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(Error::format(&what, "not a GGUF file (no GGUF magic)"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::Unsupported(format!(
                "GGUF version {version} ({what}); ferrolm reads versions 2 and 3"
            )));
        }
        // Each tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes; each key-value 8 + 4 + 1.
        let n_tensors = r.count(32, "tensors")?;
        let n_kv = r.count(13, "metadata entries")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(r.err(format!("metadata key {key:?} appears twice")));
            }
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|&a| a.is_power_of_two() && a <= 1 << 16)
                .ok_or_else(|| {
                    Error::format(&what, "general.alignment must be a power of two <= 65536")
                })? as usize,
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.err(format!("tensor {name:?} has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64()?;
                dims.push(usize::try_from(d).map_err(|_| r.err("dimension too large"))?);
            }
            let ty_id = r.u32()?;
            let offset = r.u64()?;
            infos.push((name, dims, ty_id, offset));
        }
        let data_start = r.pos.div_ceil(align) * align;
        if data_start > map.len() {
            return Err(Error::format(&what, "the tensor data starts past the end"));
        }
        let data_len = map.len() - data_start;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = BTreeMap::new();
        for (name, dims, ty_id, offset) in infos {
            let bad = |m: String| Error::format(&what, format!("tensor {name:?}: {m}"));
            // A zero dimension would leave the others unbounded by the file's size (found by
            // fuzzing: a [2^60, 0] tensor overflowed the size of its repacked tiles).
            if dims.contains(&0) {
                return Err(bad(format!("dimensions {dims:?} include a zero")));
            }
            let elements = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            let ty = GgmlType::from_id(ty_id).ok_or(ty_id);
            // Sizes are checked for the types ferrolm reads; others only when asked for.
            let nbytes = match ty {
                Ok(t) => {
                    let (per, bytes) = t.block();
                    if dims[0] % per != 0 {
                        return Err(bad(format!(
                            "inner dimension {} is not a multiple of {}'s block of {per}",
                            dims[0],
                            t.name()
                        )));
                    }
                    (elements / per)
                        .checked_mul(bytes)
                        .ok_or_else(|| bad("size overflows".into()))?
                }
                Err(_) => 0,
            };
            let offset = usize::try_from(offset).map_err(|_| bad("offset too large".into()))?;
            if offset % align != 0 {
                return Err(bad(format!("offset {offset} is not aligned to {align}")));
            }
            let end = offset
                .checked_add(nbytes)
                .filter(|&e| e <= data_len)
                .ok_or_else(|| {
                    bad(format!(
                        "{nbytes} bytes at offset {offset} run past the {data_len} bytes of data"
                    ))
                })?;
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("appears twice".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                start: data_start + offset,
                end: data_start + end,
            });
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    /// The file's path, for messages.
    pub fn what(&self) -> String {
        self.path.display().to_string()
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor `name`, checked to have `dims` (innermost first) and a type ferrolm reads.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<(&TensorInfo, GgmlType)> {
        let t = self
            .by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::format(self.what(), format!("tensor {name:?} is missing")))?;
        if t.dims != dims {
            return Err(Error::format(
                self.what(),
                format!("tensor {name:?} has dims {:?}, expected {dims:?}", t.dims),
            ));
        }
        let ty = t.ty.map_err(|id| {
            Error::Unsupported(format!(
                "tensor type {} (tensor {name:?} in {}); ferrolm reads F32, F16, BF16, Q8_0, \
                 Q4_0 and Q4_1",
                type_name(id),
                self.what()
            ))
        })?;
        Ok((t, ty))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The dims (innermost first) of tensor `name`, if the file has it.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.by_name
            .get(name)
            .map(|&i| self.tensors[i].dims.as_slice())
    }

    /// The tensor's bytes.
    fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.start..t.end]
    }

    /// The tensor `name` as f32 (F32 / F16 / BF16 converted; quantized blocks dequantized).
    pub fn f32(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        let (t, ty) = self.tensor(name, dims)?;
        let b = self.bytes(t);
        Ok(match ty {
            GgmlType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GgmlType::F16 => b
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            GgmlType::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let qt = ty.qtype().unwrap_or(QType::Q8_0);
                let (_, bytes) = ty.block();
                let mut out = Vec::with_capacity(t.elements());
                for blk in b.chunks_exact(bytes) {
                    let block = ggml_block(ty, blk);
                    out.extend((0..BLOCK).map(|i| block.value(qt, i)));
                }
                out
            }
        })
    }

    /// The 2-D quantized tensor `name` (`dims = [k, n]`: `n` rows of `k`) repacked losslessly
    /// into ferrolm's tiles; an F32 / F16 / BF16 tensor is quantized to `fallback`.
    pub fn qmatrix(&self, name: &str, k: usize, n: usize, fallback: QType) -> Result<QMatrix> {
        self.qmatrix_rows(name, k, n, fallback, &|j| j)
    }

    /// [`Gguf::qmatrix`] with row `j` taken from the file's row `row_of(j)` (a permutation of
    /// `0..n`).
    pub fn qmatrix_rows(
        &self,
        name: &str,
        k: usize,
        n: usize,
        fallback: QType,
        row_of: &(dyn Fn(usize) -> usize + Sync),
    ) -> Result<QMatrix> {
        let (t, ty) = self.tensor(name, &[k, n])?;
        let Some(qt) = ty.qtype() else {
            let w = permute_rows(&self.f32(name, &[k, n])?, k, row_of);
            return Ok(QMatrix::quantize(fallback, &w, n, k, false));
        };
        let (_, bytes) = ty.block();
        let src = self.bytes(t);
        let blocks = k / BLOCK;
        let tb = qt.tile_bytes();
        let mut out = vec![0u8; n.div_ceil(ROWS) * blocks * tb];
        // One row group's tiles are contiguous: groups are repacked in parallel.
        let group = |(g, tiles): (usize, &mut [u8])| {
            for r in 0..ROWS.min(n - g * ROWS) {
                let src_row = row_of(g * ROWS + r);
                for b in 0..blocks {
                    let at = (src_row * blocks + b) * bytes;
                    let block = ggml_block(ty, &src[at..at + bytes]);
                    put_block(qt, &mut tiles[b * tb..(b + 1) * tb], r, &block);
                }
            }
        };
        if blocks > 0 {
            out.par_chunks_mut(blocks * tb).enumerate().for_each(group);
        }
        QMatrix::from_bytes(qt, n, k, ByteData::Owned(out), name)
    }
}

/// The rows of `w` (rows of `k`) reordered: row `j` of the result is row `row_of(j)` of `w`.
pub fn permute_rows(w: &[f32], k: usize, row_of: &dyn Fn(usize) -> usize) -> Vec<f32> {
    let n = w.len() / k.max(1);
    let mut out = Vec::with_capacity(w.len());
    for j in 0..n {
        let src = row_of(j);
        out.extend_from_slice(&w[src * k..(src + 1) * k]);
    }
    out
}

/// One ggml block as a [`Block`]: Q8_0 = f16 d + 32 i8; Q4_0 = f16 d + 16 bytes (quant `i` in
/// the low nibble of byte `i`, quant `i + 16` in its high nibble); Q4_1 = f16 d, f16 m, 16 bytes.
fn ggml_block(ty: GgmlType, b: &[u8]) -> Block {
    let d = u16::from_le_bytes([b[0], b[1]]);
    let mut q = [0u8; BLOCK];
    let (m, qs) = match ty {
        GgmlType::Q4_1 => (u16::from_le_bytes([b[2], b[3]]), &b[4..20]),
        GgmlType::Q4_0 => (0, &b[2..18]),
        _ => {
            q.copy_from_slice(&b[2..34]);
            return Block { d, m: 0, q };
        }
    };
    for (i, &v) in qs.iter().enumerate() {
        q[i] = v & 15;
        q[i + 16] = v >> 4;
    }
    Block { d, m, q }
}

/// Writes a GGUF file (tests and tools): metadata and tensors of the given ggml type ids and
/// raw bytes, aligned to 32.
pub fn write(
    path: &Path,
    metadata: &[(&str, Value)],
    tensors: &[(&str, Vec<usize>, u32, &[u8])],
) -> Result<()> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(u8::from(*x)),
            Value::Str(s) => put_str(out, s),
            Value::Array(a) => {
                out.extend_from_slice(&a.first().map_or(4, type_id).to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    put_value(out, x);
                }
            }
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0usize;
    for (name, dims, ty, data) in tensors {
        put_str(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + data.len()).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rand;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ferrolm-gguf-{}-{name}", std::process::id()))
    }

    /// ggml's Q4_0 block layout for quants `q` (0..15) and scale bits `d`.
    fn q4_0_bytes(d: u16, q: &[u8; 32]) -> Vec<u8> {
        let mut b = d.to_le_bytes().to_vec();
        b.extend((0..16).map(|i| q[i] | (q[i + 16] << 4)));
        b
    }

    #[test]
    fn round_trip_and_repack() {
        let path = tmp("ok.gguf");
        let (k, n) = (64, 3);
        let f: Vec<f32> = rand(k * n, 1);
        let f_bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        // A Q4_0 matrix of 3 rows × 2 blocks with known quants.
        let mut q4 = Vec::new();
        let mut want = Vec::new();
        for j in 0..n {
            for b in 0..2 {
                let q: [u8; 32] = std::array::from_fn(|i| ((i + j + b) % 16) as u8);
                let d = crate::io::half::f32_to_f16(0.5 + j as f32);
                q4.extend(q4_0_bytes(d, &q));
                want.extend(q.iter().map(|&v| f16_to_f32(d) * (f32::from(v) - 8.0)));
            }
        }
        write(
            &path,
            &[
                ("general.architecture", Value::Str("llama".into())),
                ("llama.block_count", Value::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())]),
                ),
            ],
            &[
                ("w.f32", vec![k, n], 0, &f_bytes),
                ("w.q4", vec![k, n], 2, &q4),
            ],
        )
        .unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(
            g.meta("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(g.meta("llama.block_count").unwrap().as_u64(), Some(2));
        assert_eq!(
            g.meta("tokenizer.ggml.tokens")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(g.f32("w.f32", &[k, n]).unwrap(), f);
        assert_eq!(g.f32("w.q4", &[k, n]).unwrap(), want);
        let m = g.qmatrix("w.q4", k, n, QType::Q8_0).unwrap();
        assert_eq!(m.ty, QType::Q4_0);
        assert_eq!(m.dequantize(), want);
        assert!(g
            .f32("w.q4", &[n, k])
            .unwrap_err()
            .to_string()
            .contains("dims"));
        assert!(g
            .f32("nope", &[1])
            .unwrap_err()
            .to_string()
            .contains("missing"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn corrupt_files_are_refused() {
        let path = tmp("bad.gguf");
        let data: Vec<u8> = (0..64u8).collect();
        write(&path, &[("k", Value::U32(1))], &[("t", vec![16], 0, &data)]).unwrap();
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = Gguf::open(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        };
        // Truncated anywhere: a clear error, never a panic.
        for cut in [0, 3, 4, 10, 20, 30, 40, 60, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(Gguf::open(&path).is_err(), "cut at {cut}");
        }
        check(b"GGML\x03\x00\x00\x00", "magic");
        let mut v = good.clone();
        v[4] = 9;
        check(&v, "version 9");
        // Absurd counts: tensors, then metadata entries.
        let mut v = good.clone();
        v[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        check(&v, "tensors cannot fit");
        let mut v = good.clone();
        v[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        check(&v, "metadata entries cannot fit");
        // A key length past the end.
        let mut v = good.clone();
        v[24..32].copy_from_slice(&(1u64 << 19).to_le_bytes());
        check(&v, "bytes needed");
        // The tensor's offset moved past the data.
        let name_at = good.windows(1).position(|w| w == b"t").unwrap();
        let off_at = name_at + 1 + 4 + 8 + 4;
        let mut v = good.clone();
        v[off_at..off_at + 8].copy_from_slice(&(1u64 << 12).to_le_bytes());
        check(&v, "run past");
        // An unaligned offset.
        let mut v = good.clone();
        v[off_at..off_at + 8].copy_from_slice(&3u64.to_le_bytes());
        check(&v, "not aligned");
        // An unknown type is named when the tensor is asked for.
        let ty_at = off_at - 4;
        let mut v = good.clone();
        v[ty_at..ty_at + 4].copy_from_slice(&12u32.to_le_bytes());
        std::fs::write(&path, &v).unwrap();
        let g = Gguf::open(&path).unwrap();
        let err = g.f32("t", &[16]).unwrap_err().to_string();
        assert!(err.contains("Q4_K"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
