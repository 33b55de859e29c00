//! Split output: one model in several GGUF files the way llama.cpp's `gguf-split` and
//! converter write them. Part `i` of `n` is `<stem>-<i>-of-<n>.gguf` (five digits each),
//! a whole GGUF file holding a run of the tensors and the keys `split.no` (from 0),
//! `split.count` and `split.tensors.count`; the first part also holds all the metadata.
//! llama.cpp loads the set from its first part.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{ConvertError, Result};
use crate::gguf::{self, MetaValue, Metadata, TensorHeader};

/// The metadata keys of a split set.
pub const SPLIT_NO: &str = "split.no";
pub const SPLIT_COUNT: &str = "split.count";
pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// llama.cpp reads at most this many parts (glm's reader has the same bound).
pub const MAX_PARTS: usize = 4096;

/// When to start a new part; with neither limit the model is one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitLimits {
    /// Tensor data per part, in bytes (a tensor larger than this gets a part of its own).
    pub max_bytes: Option<u64>,
    /// Tensors per part.
    pub max_tensors: Option<usize>,
}

impl SplitLimits {
    pub fn is_none(&self) -> bool {
        self.max_bytes.is_none() && self.max_tensors.is_none()
    }
}

/// Parses a size as llama.cpp's tools take it: a number of bytes, or a number with `K`,
/// `M`, `G` or `T` (powers of 1000, so `50G` stays under the Hub's 50 GB limit), e.g.
/// `50G`, `500M`, `1.5G`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let trimmed = text.trim();
    let (number, scale) = match trimmed.char_indices().last() {
        Some((i, unit)) if unit.is_ascii_alphabetic() => {
            let scale = match unit.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                _ => return Err(format!("{text:?}: the unit must be K, M, G or T")),
            };
            (&trimmed[..i], scale)
        }
        _ => (trimmed, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a size (examples: 50G, 500M, 1000000)"))?;
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?}: a part must hold at least one byte"));
    }
    Ok(bytes as u64)
}

/// The tensors of each part, in order: a part ends before the tensor that would take its
/// data past `max_bytes` or its count past `max_tensors`. Never an empty part.
pub fn plan_parts(headers: &[TensorHeader], limits: SplitLimits) -> Result<Vec<Range<usize>>> {
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0usize, 0u64);
    for (index, header) in headers.iter().enumerate() {
        let size = header.n_bytes() + gguf::padding(header.n_bytes());
        let count = index - start;
        let full_by_bytes = limits.max_bytes.is_some_and(|max| bytes + size > max);
        let full_by_count = limits.max_tensors.is_some_and(|max| count >= max);
        if count > 0 && (full_by_bytes || full_by_count) {
            parts.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    parts.push(start..headers.len());
    if parts.len() > MAX_PARTS {
        return Err(ConvertError::Invalid(format!(
            "the split limits make {} parts; llama.cpp loads at most {MAX_PARTS}: raise --split-max-size or --split-max-tensors",
            parts.len()
        )));
    }
    Ok(parts)
}

/// The file of each part: `output` itself for a single part, else `<stem>-00001-of-0000N.gguf`
/// beside it (a trailing `.gguf` on `output` is left out of the stem).
pub fn part_paths(output: &Path, count: usize) -> Vec<PathBuf> {
    if count <= 1 {
        return vec![output.to_path_buf()];
    }
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    (1..=count)
        .map(|i| output.with_file_name(format!("{stem}-{i:05}-of-{count:05}.gguf")))
        .collect()
}

/// The metadata of part `index` of `count` holding `total_tensors` in all: the model's
/// metadata in the first part only, the split keys in every part of a real split.
pub fn part_metadata(model: &Metadata, index: usize, count: usize, total_tensors: usize) -> Metadata {
    let mut meta = if index == 0 {
        without_split_keys(model)
    } else {
        Metadata::default()
    };
    if count > 1 {
        meta.set(SPLIT_NO, MetaValue::U16(index as u16));
        meta.set(SPLIT_COUNT, MetaValue::U16(count as u16));
        meta.set(SPLIT_TENSORS_COUNT, MetaValue::I32(total_tensors as i32));
    }
    meta
}

/// A model's metadata without the keys that described how its source file was split.
pub fn without_split_keys(meta: &Metadata) -> Metadata {
    let mut kept = Metadata::default();
    for (key, value) in meta.iter() {
        if ![SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT].contains(&key.as_str()) {
            kept.set(key.clone(), value.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_type::GgmlType;

    fn tensor(name: &str, elements: u64) -> TensorHeader {
        TensorHeader {
            name: name.into(),
            ne: vec![elements],
            ggml_type: GgmlType::F32,
        }
    }

    #[test]
    fn sizes_use_powers_of_1000() {
        assert_eq!(parse_size("50G"), Ok(50_000_000_000));
        assert_eq!(parse_size("500m"), Ok(500_000_000));
        assert_eq!(parse_size("1.5K"), Ok(1500));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "G", "-1G", "0", "12X", "1e400", "NaN"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_end_before_a_limit_is_passed() {
        // 32, 64, 32 and 96 bytes of data.
        let headers = [tensor("a", 8), tensor("b", 16), tensor("c", 8), tensor("d", 24)];
        let by_bytes = SplitLimits {
            max_bytes: Some(100),
            max_tensors: None,
        };
        assert_eq!(plan_parts(&headers, by_bytes).unwrap(), vec![0..2, 2..3, 3..4]);
        let by_count = SplitLimits {
            max_bytes: None,
            max_tensors: Some(3),
        };
        assert_eq!(plan_parts(&headers, by_count).unwrap(), vec![0..3, 3..4]);
        // A tensor larger than the limit still gets a part, alone.
        let tiny = SplitLimits {
            max_bytes: Some(1),
            max_tensors: None,
        };
        assert_eq!(plan_parts(&headers, tiny).unwrap().len(), 4);
        assert_eq!(plan_parts(&headers, SplitLimits::default()).unwrap(), vec![0..4]);
    }

    #[test]
    fn part_names_and_keys_follow_llama_cpp() {
        let paths = part_paths(Path::new("/m/GLM-Q4_K_M.gguf"), 3);
        assert_eq!(paths[0], Path::new("/m/GLM-Q4_K_M-00001-of-00003.gguf"));
        assert_eq!(paths[2], Path::new("/m/GLM-Q4_K_M-00003-of-00003.gguf"));
        assert_eq!(part_paths(Path::new("x.gguf"), 1), vec![PathBuf::from("x.gguf")]);
        let mut model = Metadata::default();
        model.set("general.architecture", "glm4");
        model.set(SPLIT_COUNT, MetaValue::U16(9));
        let first = part_metadata(&model, 0, 2, 7);
        assert_eq!(first.get("general.architecture"), Some(&MetaValue::from("glm4")));
        assert_eq!(first.get(SPLIT_COUNT), Some(&MetaValue::U16(2)));
        assert_eq!(first.get(SPLIT_TENSORS_COUNT), Some(&MetaValue::I32(7)));
        let second = part_metadata(&model, 1, 2, 7);
        assert_eq!(second.get("general.architecture"), None);
        assert_eq!(second.get(SPLIT_NO), Some(&MetaValue::U16(1)));
        assert_eq!(part_metadata(&model, 0, 1, 7).get(SPLIT_COUNT), None);
    }
}
