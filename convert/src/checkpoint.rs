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
use crate::fp8::{Scale, ScaleLayout};

/// Element types we can read from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    BF16,
    /// FP8 (E4M3), with a scale tensor beside it (see `fp8`).
    F8E4M3,
}

impl SourceDtype {
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
            SourceDtype::F8E4M3 => 1,
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
                // The f32 with the same top 16 bits, as ggml widens BF16 (a plain shift the
                // compiler vectorizes; `half` also quiets signalling NaNs, which costs a
                // branch per value and changes NaN bits llama.cpp keeps).
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                }
            }
            SourceDtype::F8E4M3 => crate::fp8::decode_e4m3(bytes, out),
        }
    }
}

/// Decodes rows of one tensor to f32: its element type, and for an FP8 weight its scales
/// (read once per tensor, a few values per block).
#[derive(Debug, Clone)]
pub struct RowDecoder {
    dtype: SourceDtype,
    row_len: usize,
    scales: Option<(ScaleLayout, Vec<f32>, usize)>,
}

impl RowDecoder {
    /// A decoder of plain elements (no scales).
    pub fn plain(dtype: SourceDtype, row_len: usize) -> Self {
        Self {
            dtype,
            row_len,
            scales: None,
        }
    }

    pub fn dtype(&self) -> SourceDtype {
        self.dtype
    }

    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Decodes whole rows, the first of which is row `first_row` of the tensor.
    pub fn decode(&self, first_row: usize, bytes: &[u8], out: &mut [f32]) {
        self.dtype.decode_into(bytes, out);
        if let Some((layout, scales, scale_cols)) = &self.scales {
            crate::fp8::apply(*layout, scales, *scale_cols, self.row_len, first_row, out);
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
    /// The scales of an FP8 weight.
    pub scale: Option<Scale>,
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
    /// `*.safetensors` file of the folder. FP8 weights take their scale tensors, which
    /// then are not tensors of the model; `fp8_block` is the config's
    /// `weight_block_size`, if any.
    pub fn open(dir: &Path, fp8_block: Option<[usize; 2]>) -> Result<Self> {
        let files = shard_files(dir)?;
        let mut checkpoint = Checkpoint {
            shards: Vec::with_capacity(files.len()),
            tensors: BTreeMap::new(),
        };
        for path in files {
            checkpoint.add_shard(path)?;
        }
        checkpoint.attach_fp8_scales(fp8_block)?;
        Ok(checkpoint)
    }

    fn attach_fp8_scales(&mut self, block: Option<[usize; 2]>) -> Result<()> {
        let fp8: Vec<String> = self
            .tensors
            .values()
            .filter(|e| e.dtype == SourceDtype::F8E4M3)
            .map(|e| e.name.clone())
            .collect();
        for name in fp8 {
            let weight = &self.tensors[&name];
            let found = crate::fp8::scale_names(&name)
                .into_iter()
                .find(|candidate| self.tensors.contains_key(candidate));
            let path = self.shards[weight.shard].path.clone();
            let bad = |reason: String| ConvertError::Safetensors {
                path: path.clone(),
                reason: format!("FP8 tensor {name}: {reason}"),
            };
            let Some(scale_name) = found else {
                return Err(bad(format!(
                    "no scale tensor ({name}_scale_inv or {name}_scale) beside it"
                )));
            };
            let scale = self
                .tensors
                .remove(&scale_name)
                .ok_or_else(|| bad("scale vanished".into()))?;
            let layout = crate::fp8::layout(&self.tensors[&name], &scale, block).map_err(bad)?;
            if let Some(weight) = self.tensors.get_mut(&name) {
                weight.scale = Some(Scale {
                    entry: Box::new(scale),
                    layout,
                });
            }
        }
        let has_fp8 = self.tensors.values().any(|e| e.scale.is_some());
        if has_fp8 {
            self.tensors.retain(|name, _| !crate::fp8::is_activation_scale(name));
        }
        Ok(())
    }

    /// The decoder of `entry`'s rows (its FP8 scales read now).
    pub fn row_decoder(&self, entry: &TensorEntry) -> RowDecoder {
        let Some(scale) = &entry.scale else {
            return RowDecoder::plain(entry.dtype, entry.row_len());
        };
        let scale_entry = &scale.entry;
        let bytes = self.row_bytes_raw(scale_entry, 0..scale_entry.n_elements() * scale_entry.dtype.size());
        let mut values = vec![0f32; scale_entry.n_elements()];
        scale_entry.dtype.decode_into(bytes, &mut values);
        let scale_cols = match scale_entry.shape.as_slice() {
            [_, cols] => *cols,
            _ => 1,
        };
        RowDecoder {
            dtype: entry.dtype,
            row_len: entry.row_len(),
            scales: Some((scale.layout, values, scale_cols)),
        }
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let file = crate::files::open_regular(&path)?;
        // SAFETY: the map is read-only and private to this process; a checkpoint that is
        // modified while we convert it yields wrong values, never memory unsafety in
        // safe code, because all reads go through bounds-checked slices.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ConvertError::io(&path, e))?;
        let entries = shard_entries(&map).map_err(|reason| ConvertError::Safetensors {
            path: path.clone(),
            reason,
        })?;
        let shard = self.shards.len();
        for info in entries {
            let name = info.name.clone();
            let entry = TensorEntry {
                name: info.name,
                dtype: info.dtype,
                shape: info.shape,
                shard,
                start: info.start,
                end: info.end,
                scale: None,
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

/// One tensor as a shard's header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntryInfo {
    pub name: String,
    pub dtype: SourceDtype,
    /// PyTorch order: slowest dimension first.
    pub shape: Vec<usize>,
    /// Absolute byte range inside the shard file.
    pub start: usize,
    pub end: usize,
}

/// Validates a whole safetensors shard held in `bytes` and lists its tensors in file
/// order. Kept apart from the file handling so that it can be tested and fuzzed on
/// bytes alone; errors are the reason only, the caller names the file.
pub fn shard_entries(bytes: &[u8]) -> std::result::Result<Vec<TensorEntryInfo>, String> {
    check_offsets_fit(bytes)?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| describe_safetensors_error(&e, bytes))?;
    let data_start = 8 + header_len;
    let data_end = metadata
        .tensors()
        .values()
        .map(|info| info.data_offsets.1)
        .max()
        .unwrap_or(0);
    let file_len = bytes.len();
    match (data_start.checked_add(data_end), file_len) {
        (Some(end), len) if end > len => {
            return Err(format!("truncated: the tensors need {end} bytes, the file has {len}"))
        }
        (Some(end), len) if end < len => {
            return Err(format!("{} trailing bytes after the last tensor's data", len - end))
        }
        (None, _) => return Err("tensor offsets overflow".into()),
        _ => {}
    }
    // File order, so that the first bad tensor reported is the same on every run.
    let mut entries = Vec::new();
    for name in metadata.offset_keys() {
        let Some(info) = metadata.info(&name) else {
            continue;
        };
        let dtype = match info.dtype {
            Dtype::F32 => SourceDtype::F32,
            Dtype::F16 => SourceDtype::F16,
            Dtype::BF16 => SourceDtype::BF16,
            Dtype::F8_E4M3 => SourceDtype::F8E4M3,
            other => {
                return Err(format!(
                    "tensor {name} has dtype {other:?}; only F32, F16, BF16 and F8_E4M3 (FP8) are supported"
                ))
            }
        };
        let (begin, end) = info.data_offsets;
        entries.push(TensorEntryInfo {
            name,
            dtype,
            shape: info.shape.clone(),
            start: data_start + begin,
            end: data_start + end,
        });
    }
    Ok(entries)
}

/// Refuses a header whose tensor data would end beyond the file. safetensors 0.8 adds
/// the header length to the last tensor's end without checking for overflow (found by
/// fuzzing: a panic wherever overflow checks are on), so such ends must not reach it.
/// Headers that are not a JSON object are left for safetensors to describe.
fn check_offsets_fit(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some((_, ends)) = declared_data_ends(bytes) else {
        return Ok(());
    };
    match ends.into_iter().find(|(_, end)| *end > bytes.len() as u64) {
        Some((name, end)) => Err(format!(
            "truncated: tensor {name}'s data ends {end} bytes after the header, the file has {}",
            bytes.len()
        )),
        None => Ok(()),
    }
}

/// The header length and each tensor's declared data end, read from the header JSON
/// directly (before safetensors does its unchecked arithmetic); `None` when the header
/// is not a readable JSON object.
fn declared_data_ends(bytes: &[u8]) -> Option<(usize, Vec<(String, u64)>)> {
    let (len, rest) = bytes.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    let Value::Object(tensors) = serde_json::from_slice::<Value>(rest.get(..len)?).ok()? else {
        return None;
    };
    let ends = tensors
        .iter()
        .filter_map(|(name, info)| Some((name.clone(), info.get("data_offsets")?.get(1)?.as_u64()?)))
        .collect();
    Some((len, ends))
}

/// The shard file names that a `model.safetensors.index.json` lists, each once, in the
/// order of its `weight_map`. Every name must be a plain relative path inside the
/// checkpoint folder; whether the files exist is the caller's business.
pub fn shard_names(index_json: &str) -> std::result::Result<Vec<String>, String> {
    let index: Value = serde_json::from_str(index_json).map_err(|e| format!("not valid JSON: {e}"))?;
    shard_names_in(&index)
}

fn shard_names_in(index: &Value) -> std::result::Result<Vec<String>, String> {
    let Some(Value::Object(weight_map)) = index.get("weight_map") else {
        return Err("no `weight_map` object".into());
    };
    let mut names: Vec<String> = Vec::new();
    for file in weight_map.values() {
        let Some(file) = file.as_str() else {
            return Err("`weight_map` values must be file names".into());
        };
        if !is_plain_relative(file) {
            return Err(format!(
                "names shard {file:?}, which is not a file inside the checkpoint folder"
            ));
        }
        // Compared as paths, as the files they name are: `a//b` and `a/b` are one shard.
        if !names.iter().any(|n| Path::new(n) == Path::new(file)) {
            names.push(file.to_owned());
        }
    }
    Ok(names)
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let index = read_json(&index_path)?;
        let names = shard_names_in(&index).map_err(|message| ConvertError::config(&index_path, message))?;
        let mut files: Vec<PathBuf> = Vec::with_capacity(names.len());
        for file in names {
            let path = dir.join(&file);
            // Anything that exists is opened (and refused there if it is not a file).
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(ConvertError::config(
                    &index_path,
                    format!("names shard {file}, which does not exist"),
                ));
            }
            files.push(path);
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
    let (len, ends) = declared_data_ends(bytes)?;
    let data_end = ends.into_iter().map(|(_, end)| end).max().unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard with one header and the data the header promises.
    fn shard(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        bytes
    }

    #[test]
    fn entries_in_file_order_with_absolute_offsets() {
        let header = r#"{"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let entries = shard_entries(&shard(header, 12)).unwrap();
        let start = 8 + header.len();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].name.as_str(), entries[0].start, entries[0].end),
            ("a", start, start + 8)
        );
        assert_eq!((entries[1].name.as_str(), entries[1].dtype), ("b", SourceDtype::BF16));
    }

    #[test]
    fn bad_shards_are_refused() {
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let err = shard_entries(&shard(header, 7)).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        assert!(shard_entries(&shard(header, 9)).is_err());
        let int = r#"{"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(shard_entries(&shard(int, 8)).unwrap_err().contains("dtype"));
        assert!(shard_entries(b"\x01").is_err());
    }

    /// Offsets whose end, added to the header length, overflows: safetensors' own length
    /// check would overflow on these (a panic where overflow checks are on). These are
    /// the bytes of fuzz/regressions/safetensors_header/offsets-overflow.
    #[test]
    fn offsets_near_the_address_limit_are_an_error() {
        let big = (1usize << 61) - 1;
        let tensors: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    r#""t{i}":{{"dtype":"U8","shape":[{big}],"data_offsets":[{},{}]}}"#,
                    i * big,
                    (i + 1) * big
                )
            })
            .collect();
        let header = format!("{{{}}}", tensors.join(","));
        let err = shard_entries(&shard(&header, 0)).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn index_names_each_shard_once_and_stays_inside_the_folder() {
        let index = r#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors","d":"x//s2.safetensors","e":"x/s2.safetensors"}}"#;
        assert_eq!(
            shard_names(index).unwrap(),
            ["s1.safetensors", "s2.safetensors", "x//s2.safetensors"]
        );
        for bad in ["/etc/passwd", "../up.safetensors", "a/../../b", "./a", ""] {
            let index = serde_json::json!({"weight_map": {"w": bad}}).to_string();
            let err = shard_names(&index).unwrap_err();
            assert!(err.contains("not a file inside"), "{bad}: {err}");
        }
        assert!(shard_names(r#"{"weight_map":{"w":1}}"#).is_err());
        assert!(shard_names(r#"[]"#).unwrap_err().contains("weight_map"));
        assert!(shard_names("{").is_err());
    }
}
