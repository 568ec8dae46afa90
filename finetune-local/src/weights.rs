//! Reading safetensors checkpoints, single or sharded, one tensor at a time.
//!
//! Only the headers are read up front. Each weight is then read from its
//! file into a staging buffer, turned into a tensor of the compute dtype on
//! the target device and handed to the model, so peak memory is the model
//! plus its largest single tensor, never two copies of the weights.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{LocalError, Result};

#[derive(Debug, Clone, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

#[derive(Debug)]
struct Located {
    file: usize,
    entry: Entry,
}

/// The tensors of a checkpoint directory, indexed by name.
#[derive(Debug)]
pub struct SafetensorsFiles {
    dir: PathBuf,
    files: Vec<(PathBuf, u64)>,
    /// Open handles, one per file, opened on first use.
    handles: Vec<Option<File>>,
    tensors: HashMap<String, Located>,
    buffer: Vec<u8>,
}

impl SafetensorsFiles {
    /// Indexes `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_names: Vec<String> = if index.is_file() {
            #[derive(Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let text = std::fs::read_to_string(&index).map_err(|e| LocalError::io(&index, e))?;
            let parsed: Index = serde_json::from_str(&text).map_err(|e| {
                LocalError::invalid(&index, Some("weight_map"), format!("line {}: {e}", e.line()))
            })?;
            let mut names: Vec<String> = parsed.weight_map.into_values().collect();
            names.sort();
            names.dedup();
            names
        } else if single.is_file() {
            vec!["model.safetensors".to_owned()]
        } else {
            return Err(LocalError::invalid(
                dir,
                None,
                "holds neither model.safetensors nor model.safetensors.index.json \
                 (PyTorch .bin checkpoints are not read; convert them to safetensors)",
            ));
        };
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        for name in shard_names {
            if name.contains('/') || name.contains("..") {
                return Err(LocalError::invalid(
                    &index,
                    Some("weight_map"),
                    format!("bad shard `{name}`"),
                ));
            }
            let path = dir.join(&name);
            let (header, data_start) = read_header(&path)?;
            let file_idx = files.len();
            files.push((path, data_start));
            for (tensor, entry) in header {
                tensors.insert(tensor, Located { file: file_idx, entry });
            }
        }
        let handles = files.iter().map(|_| None).collect();
        Ok(Self { dir: dir.to_path_buf(), files, handles, tensors, buffer: Vec::new() })
    }

    /// Indexes one safetensors file (e.g. a PEFT adapter).
    pub fn open_file(path: &Path) -> Result<Self> {
        let (header, data_start) = read_header(path)?;
        let tensors =
            header.into_iter().map(|(name, entry)| (name, Located { file: 0, entry })).collect();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let files = vec![(path.to_path_buf(), data_start)];
        Ok(Self { dir, files, handles: vec![None], tensors, buffer: Vec::new() })
    }

    /// The names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads tensor `name`, checks it has `shape`, and returns it as `kind`
    /// on `device`.
    pub fn load(
        &mut self,
        name: &str,
        shape: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let located = self.tensors.get(name).ok_or_else(|| LocalError::MissingWeight {
            name: name.to_owned(),
            dir: self.dir.clone(),
        })?;
        let (path, data_start) = &self.files[located.file];
        let entry = &located.entry;
        if entry.shape != shape {
            return Err(LocalError::ShapeMismatch {
                name: name.to_owned(),
                path: path.clone(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let stored = dtype_kind(&entry.dtype).ok_or_else(|| {
            LocalError::invalid(path, Some(name), format!("dtype {} is not supported", entry.dtype))
        })?;
        let [begin, end] = entry.data_offsets;
        let numel: i64 = shape.iter().product();
        let expected_len = u64::try_from(numel).unwrap_or(0) * stored.elt_size_in_bytes() as u64;
        if end < begin || end - begin != expected_len {
            return Err(LocalError::invalid(
                path,
                Some(name),
                format!("data_offsets {begin}..{end} do not hold {numel} {} values", entry.dtype),
            ));
        }
        let len = usize::try_from(end - begin).map_err(|_| {
            LocalError::invalid(path, Some(name), "tensor too large for this platform")
        })?;
        self.buffer.resize(len, 0);
        let file = match &mut self.handles[located.file] {
            Some(file) => file,
            slot => slot.insert(File::open(path).map_err(|e| LocalError::io(path, e))?),
        };
        file.seek(SeekFrom::Start(data_start + begin)).map_err(|e| LocalError::io(path, e))?;
        file.read_exact(&mut self.buffer).map_err(|e| LocalError::io(path, e))?;
        let staged = Tensor::f_from_data_size(&self.buffer, shape, stored)?;
        let out = tch::no_grad(|| staged.f_to_device(device)?.f_to_kind(kind))?;
        Ok(out)
    }
}

fn read_header(path: &Path) -> Result<(HashMap<String, Entry>, u64)> {
    let mut file = File::open(path).map_err(|e| LocalError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| LocalError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(|e| LocalError::io(path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(LocalError::invalid(path, None, "not a safetensors file (bad header length)"));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| LocalError::io(path, e))?;
    let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| LocalError::invalid(path, None, format!("safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut out = HashMap::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let entry: Entry = serde_json::from_value(value).map_err(|e| {
            LocalError::invalid(path, Some(&name), format!("safetensors header: {e}"))
        })?;
        if entry.data_offsets[1] > data_len {
            return Err(LocalError::invalid(
                path,
                Some(&name),
                "data lies past the end of the file",
            ));
        }
        out.insert(name, entry);
    }
    Ok((out, data_start))
}

fn dtype_kind(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

/// Writes `tensors` as a safetensors file with `{"format": "pt"}` metadata
/// (what transformers and PEFT expect), atomically: a temporary file beside
/// `path`, renamed over it once complete.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    let mut blobs = Vec::with_capacity(sorted.len());
    for (name, tensor) in sorted {
        let t = tensor.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let kind = t.f_kind()?;
        let dtype = kind_dtype(kind).ok_or_else(|| {
            LocalError::InvalidArgument(format!("cannot write `{name}` of {kind:?}"))
        })?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let end = offset + bytes.len() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.size(), "data_offsets": [offset, end] }),
        );
        offset = end;
        blobs.push(bytes);
    }
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| LocalError::InvalidArgument(format!("safetensors header: {e}")))?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let partial = path.with_extension("safetensors.partial");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(File::create(&partial)?);
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        for blob in &blobs {
            file.write_all(blob)?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().map_err(|e| LocalError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| LocalError::io(path, e))
}

fn kind_dtype(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        _ => return None,
    })
}
