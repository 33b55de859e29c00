//! A Hugging Face safetensors checkpoint (single file or sharded), read through memory
//! maps. Tensors are located by name across shards; their bytes are read in row ranges
//! so that a converter never has to hold a whole tensor, and pages already consumed are
//! handed back to the kernel so the resident set stays small on 100+ GB checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{read_json, ConvertError, Result};

/// Element types we can read from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    BF16,
}

impl SourceDtype {
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
        }
    }

    /// Decodes little-endian elements into `out` (which has the matching length).
    pub fn decode_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            SourceDtype::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            SourceDtype::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            SourceDtype::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: SourceDtype,
    /// PyTorch order: slowest dimension first.
    pub shape: Vec<usize>,
    shard: usize,
    /// Absolute byte range inside the shard file.
    start: usize,
    end: usize,
}

impl TensorEntry {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of one row (the last PyTorch dimension); 1-D tensors are a single row.
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// The GGUF dimension list: the PyTorch shape reversed.
    pub fn ne(&self) -> Vec<u64> {
        self.shape.iter().rev().map(|&d| d as u64).collect()
    }

    pub fn n_rows(&self) -> usize {
        self.n_elements() / self.row_len().max(1)
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorEntry>,
}

impl Checkpoint {
    /// Opens `model.safetensors.index.json` + shards, or `model.safetensors`, or every
    /// `*.safetensors` file of the folder.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        let mut checkpoint = Checkpoint {
            shards: Vec::with_capacity(files.len()),
            tensors: BTreeMap::new(),
        };
        for path in files {
            checkpoint.add_shard(path)?;
        }
        Ok(checkpoint)
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let file = crate::files::open_regular(&path)?;
        // SAFETY: the map is read-only and private to this process; a checkpoint that is
        // modified while we convert it yields wrong values, never memory unsafety in
        // safe code, because all reads go through bounds-checked slices.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ConvertError::io(&path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| ConvertError::Safetensors {
            path: path.clone(),
            reason: describe_safetensors_error(&e, &map),
        })?;
        let data_start = 8 + header_len;
        let data_end = metadata
            .tensors()
            .values()
            .map(|info| info.data_offsets.1)
            .max()
            .unwrap_or(0);
        let invalid = |reason: String| ConvertError::Safetensors {
            path: path.clone(),
            reason,
        };
        let file_len = map.len();
        match (data_start.checked_add(data_end), file_len) {
            (Some(end), len) if end > len => {
                return Err(invalid(format!(
                    "truncated: the tensors need {end} bytes, the file has {len}"
                )))
            }
            (Some(end), len) if end < len => {
                return Err(invalid(format!(
                    "{} trailing bytes after the last tensor's data",
                    len - end
                )))
            }
            (None, _) => return Err(invalid("tensor offsets overflow".into())),
            _ => {}
        }
        let shard = self.shards.len();
        for (name, info) in metadata.tensors() {
            let dtype = match info.dtype {
                Dtype::F32 => SourceDtype::F32,
                Dtype::F16 => SourceDtype::F16,
                Dtype::BF16 => SourceDtype::BF16,
                other => {
                    return Err(ConvertError::Safetensors {
                        path: path.clone(),
                        reason: format!("tensor {name} has dtype {other:?}; only F32, F16 and BF16 are supported"),
                    })
                }
            };
            let (begin, end) = info.data_offsets;
            let entry = TensorEntry {
                name: name.clone(),
                dtype,
                shape: info.shape.clone(),
                shard,
                start: data_start + begin,
                end: data_start + end,
            };
            if self.tensors.insert(name.clone(), entry).is_some() {
                return Err(ConvertError::Safetensors {
                    path: path.clone(),
                    reason: format!("tensor {name} appears in more than one shard"),
                });
            }
        }
        self.shards.push(Shard { path, map });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn entries(&self) -> impl Iterator<Item = &TensorEntry> {
        self.tensors.values()
    }

    /// Raw bytes of rows `rows` of `entry`.
    pub fn row_bytes(&self, entry: &TensorEntry, rows: std::ops::Range<usize>) -> &[u8] {
        let row_bytes = entry.row_len() * entry.dtype.size();
        let start = entry.start + rows.start * row_bytes;
        let end = (entry.start + rows.end * row_bytes).min(entry.end);
        &self.shards[entry.shard].map[start..end]
    }

    /// Raw bytes `bytes` (relative to the tensor's start) of `entry`.
    pub fn row_bytes_raw(&self, entry: &TensorEntry, bytes: std::ops::Range<usize>) -> &[u8] {
        &self.shards[entry.shard].map[entry.start + bytes.start..(entry.start + bytes.end).min(entry.end)]
    }

    /// Tells the kernel we are done with these rows, so that their pages leave our
    /// resident set; without this a streamed conversion would still end up with the
    /// whole checkpoint counted as resident memory.
    pub fn release_rows(&self, entry: &TensorEntry, rows: std::ops::Range<usize>) {
        let row_bytes = entry.row_len() * entry.dtype.size();
        let start = entry.start + rows.start * row_bytes;
        let end = (entry.start + rows.end * row_bytes).min(entry.end);
        crate::files::release_pages(&self.shards[entry.shard].map, start..end);
    }

    pub fn shard_path(&self, entry: &TensorEntry) -> &Path {
        &self.shards[entry.shard].path
    }
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let index = read_json(&index_path)?;
        let Some(Value::Object(weight_map)) = index.get("weight_map") else {
            return Err(ConvertError::config(&index_path, "no `weight_map` object"));
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for file in weight_map.values() {
            let Some(file) = file.as_str() else {
                return Err(ConvertError::config(
                    &index_path,
                    "`weight_map` values must be file names",
                ));
            };
            if !is_plain_relative(file) {
                return Err(ConvertError::config(
                    &index_path,
                    format!("names shard {file:?}, which is not a file inside the checkpoint folder"),
                ));
            }
            let path = dir.join(file);
            if !files.contains(&path) {
                // Anything that exists is opened (and refused there if it is not a file).
                if std::fs::symlink_metadata(&path).is_err() {
                    return Err(ConvertError::config(
                        &index_path,
                        format!("names shard {file}, which does not exist"),
                    ));
                }
                files.push(path);
            }
        }
        files.sort();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ConvertError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConvertError::config(
            dir,
            "no model.safetensors, model.safetensors.index.json or *.safetensors file",
        ));
    }
    Ok(files)
}

/// A file name inside the folder: relative, with no `..`, root or prefix part.
fn is_plain_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Where the header says the tensor data ends, if the header can be read at all.
fn declared_end(bytes: &[u8]) -> Option<usize> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: Value = serde_json::from_slice(bytes.get(8..8usize.checked_add(len)?)?).ok()?;
    let data_end = header
        .as_object()?
        .values()
        .filter_map(|info| info.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    (8 + len).checked_add(usize::try_from(data_end).ok()?)
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError, bytes: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => match declared_end(bytes) {
            Some(end) if end < bytes.len() => {
                format!("{} trailing bytes after the last tensor's data", bytes.len() - end)
            }
            _ => "truncated (file shorter than its header says)".to_owned(),
        },
        E::InvalidHeaderLength | E::HeaderTooSmall => "truncated (file shorter than its header says)".to_owned(),
        other => other.to_string(),
    }
}
