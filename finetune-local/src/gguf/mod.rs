//! GGUF files (llama.cpp's single-file format): reading metadata and
//! tensors, dequantizing them, and importing a model into the model cache.
//!
//! Air-gapped sites often hold models as GGUF files. [`import_gguf`] turns
//! one into a HuggingFace model folder (`config.json`, an f32
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` with the
//! embedded chat template) and [`import_gguf_to_cache`] preloads that folder
//! into a [`ModelCache`](crate::ModelCache) under an id the user picks, after
//! which the model loads, trains and chats like any other.
//!
//! Supported: GGUF v2 and v3; tensors in F32, F16, BF16, Q4_0, Q4_1, Q8_0,
//! Q4_K, Q5_K and Q6_K ([`GgmlType`]); the `llama` architecture; byte-level
//! BPE vocabularies (`tokenizer.ggml.model = gpt2`). Anything else is a
//! [`LocalError::UnsupportedGguf`] naming the file and the tensor or key.
//!
//! ```no_run
//! use finetune_local::gguf::import_gguf_to_cache;
//! use finetune_local::{ModelCache, ModelId};
//!
//! let cache = ModelCache::from_env();
//! let id = ModelId::parse("HuggingFaceTB/SmolLM2-135M-Instruct")?;
//! let snapshot = import_gguf_to_cache("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &cache, &id)?;
//! println!("imported into {}", snapshot.display());
//! # Ok::<(), finetune_local::LocalError>(())
//! ```

mod import;
mod quant;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use import::{ImportReport, import_gguf, import_gguf_to_cache};
pub use quant::{GgmlType, dequantize_into};

use crate::error::{LocalError, Result};

/// The first four bytes of every GGUF file.
const MAGIC: &[u8; 4] = b"GGUF";

/// Where tensor data starts and is aligned, unless `general.alignment` says.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
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
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (integers widen).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in a GGUF file's table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: the first is the fastest-varying (the row
    /// length); a PyTorch shape is this reversed.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Where its data starts, from the start of the file.
    pub offset: u64,
}

impl GgufTensor {
    /// The number of values.
    pub fn len(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape as PyTorch writes it (slowest-varying first).
    pub fn torch_shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// An open GGUF file: its metadata and tensor table, read eagerly; tensor
/// data, read on demand.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensor>,
}

impl GgufFile {
    /// Reads the header, metadata and tensor table of the file at `path`,
    /// and checks that every tensor's data lies inside the file. A file
    /// that is not GGUF, is truncated, or holds a tensor of an unsupported
    /// type gives a typed error naming the file (and the tensor).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| LocalError::io(path, e))?;
        let len = file.metadata().map_err(|e| LocalError::io(path, e))?.len();
        let mut r = Reader { inner: BufReader::new(file), pos: 0, len, path };

        let magic = r.bytes(4, "the magic number")?;
        if magic != MAGIC {
            return Err(r.invalid(None, format!("is not a GGUF file (starts with {magic:02x?})")));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(LocalError::UnsupportedGguf {
                path: path.to_path_buf(),
                tensor: None,
                what: format!("GGUF version {version} (2 and 3 are read)"),
            });
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("a metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        // Each entry takes at least 4 + 8 + 4 + 8 bytes: a count beyond the
        // file is damage, caught before allocating for it.
        if tensor_count > len / 24 {
            return Err(r.truncated("the tensor table"));
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.invalid(Some(&name), format!("has {n_dims} dimensions (1 to 4)")));
            }
            let dims = (0..n_dims).map(|_| r.u64(&name)).collect::<Result<Vec<_>>>()?;
            let ggml_type = GgmlType::from_id(r.u32(&name)?);
            let offset = r.u64(&name)?;
            tensors.push(GgufTensor { name, dims, ggml_type, offset });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(r.invalid(None, "`general.alignment` is not a power of two"));
                }
            },
        };
        let data_start = r.pos.div_ceil(alignment) * alignment;
        for t in &mut tensors {
            let n =
                t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
                    r.invalid(Some(&t.name), "has more values than fit in 64 bits")
                })?;
            let bytes = match t.ggml_type.bytes_for(n) {
                Some(b) => b,
                None if t.ggml_type.block().is_none() => {
                    return Err(LocalError::UnsupportedGguf {
                        path: path.to_path_buf(),
                        tensor: Some(t.name.clone()),
                        what: format!(
                            "tensor type {} (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, \
                             Q4_K, Q5_K, Q6_K)",
                            t.ggml_type
                        ),
                    });
                }
                None => {
                    return Err(r.invalid(
                        Some(&t.name),
                        format!("has {n} values, not a whole number of {} blocks", t.ggml_type),
                    ));
                }
            };
            t.offset = data_start
                .checked_add(t.offset)
                .filter(|start| start.checked_add(bytes).is_some_and(|end| end <= len))
                .ok_or_else(|| {
                    r.truncated_at(
                        Some(&t.name),
                        format!("its {bytes} bytes of {} data end past the file", t.ggml_type),
                    )
                })?;
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads `tensor`'s data and dequantizes it to f32, in ggml order (row
    /// after row of `dims[0]` values).
    pub fn read_f32(&self, tensor: &GgufTensor) -> Result<Vec<f32>> {
        let bytes = tensor.ggml_type.bytes_for(tensor.len()).ok_or_else(|| {
            LocalError::UnsupportedGguf {
                path: self.path.clone(),
                tensor: Some(tensor.name.clone()),
                what: format!("tensor type {}", tensor.ggml_type),
            }
        })?;
        let mut file = File::open(&self.path).map_err(|e| LocalError::io(&self.path, e))?;
        file.seek(SeekFrom::Start(tensor.offset)).map_err(|e| LocalError::io(&self.path, e))?;
        let mut raw = vec![0u8; bytes as usize];
        file.read_exact(&mut raw).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                LocalError::InvalidGguf {
                    path: self.path.clone(),
                    tensor: Some(tensor.name.clone()),
                    message: "the file ends inside this tensor's data (it changed since it \
                              was opened?)"
                        .into(),
                }
            } else {
                LocalError::io(&self.path, e)
            }
        })?;
        let mut out = Vec::with_capacity(tensor.len() as usize);
        dequantize_into(tensor.ggml_type, &raw, &mut out);
        Ok(out)
    }
}

/// Reads the header, counting bytes so a truncated file is named as such.
struct Reader<'a> {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl Reader<'_> {
    fn invalid(&self, tensor: Option<&str>, message: impl Into<String>) -> LocalError {
        LocalError::InvalidGguf {
            path: self.path.to_path_buf(),
            tensor: tensor.map(str::to_owned),
            message: message.into(),
        }
    }

    fn truncated(&self, what: &str) -> LocalError {
        self.truncated_at(None, format!("the file ends inside {what} (at byte {})", self.pos))
    }

    fn truncated_at(&self, tensor: Option<&str>, why: String) -> LocalError {
        self.invalid(tensor, format!("truncated: {why}; the file has {} bytes", self.len))
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if self.len - self.pos < n {
            return Err(self.truncated(what));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| LocalError::io(self.path, e))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let v = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&v);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes).map_err(|_| self.invalid(None, format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(self.array::<1>(key)?[0] as i8),
            2 => GgufValue::U16(self.array(key).map(u16::from_le_bytes)?),
            3 => GgufValue::I16(self.array(key).map(i16::from_le_bytes)?),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(self.array(key).map(i32::from_le_bytes)?),
            6 => GgufValue::F32(self.array(key).map(f32::from_le_bytes)?),
            7 => GgufValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => GgufValue::String(self.string(key)?),
            9 if depth == 0 => {
                let item = self.u32(key)?;
                let n = self.u64(key)?;
                // Every item takes at least one byte.
                if n > self.len - self.pos {
                    return Err(self.truncated(&format!("the array `{key}`")));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(self.array(key).map(i64::from_le_bytes)?),
            12 => GgufValue::F64(self.array(key).map(f64::from_le_bytes)?),
            9 => {
                return Err(LocalError::UnsupportedGguf {
                    path: self.path.to_path_buf(),
                    tensor: None,
                    what: format!("nested array in metadata `{key}`"),
                });
            }
            other => {
                return Err(self.invalid(
                    None,
                    format!("metadata `{key}` has value type {other}, which GGUF does not define"),
                ));
            }
        })
    }
}
