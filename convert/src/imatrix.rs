//! Importance matrices (`--imatrix`) in llama.cpp's two formats: the GGUF one written by
//! current `llama-imatrix` (per tensor `<name>.in_sum2` sums and `<name>.counts`) and the
//! legacy `.dat` one (per tensor name, call count and already-summed values).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{ConvertError, Result};
use crate::gguf::read::parse;
use crate::gguf::{self, ArrayValue, MetaValue, Metadata, TensorHeader};
use crate::tensor_type::GgmlType;

/// What `glm imatrix` collected for one weight: per column, the sum of the squared inputs
/// it multiplied, and how many input rows were summed; a stacked expert tensor (or a 3-D
/// weight) has one run of sums and one count per matrix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivationStats {
    pub sums: Vec<f32>,
    pub counts: Vec<i64>,
}

/// How the statistics were gathered, for the file's metadata.
#[derive(Debug, Clone)]
pub struct ImatrixSource {
    /// The text files read.
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
}

/// Writes `stats` (by weight name) in llama-imatrix's GGUF format: `general.type =
/// imatrix`, `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`, and for each
/// weight, in name order, `<name>.in_sum2` (F32, columns × matrices) and `<name>.counts`
/// (F32, one per matrix).
pub fn write_imatrix(path: &Path, stats: &BTreeMap<String, ActivationStats>, source: &ImatrixSource) -> Result<()> {
    let mut meta = Metadata::default();
    meta.set("general.type", "imatrix");
    meta.set(
        "imatrix.datasets",
        MetaValue::Array(ArrayValue::Str(source.datasets.clone())),
    );
    meta.set("imatrix.chunk_count", MetaValue::U32(source.chunk_count));
    meta.set("imatrix.chunk_size", MetaValue::U32(source.chunk_size));
    let mut headers = Vec::new();
    let mut data: Vec<Vec<f32>> = Vec::new();
    for (name, stat) in stats {
        let matrices = stat.counts.len();
        if matrices == 0 || stat.sums.is_empty() || stat.sums.len() % matrices != 0 {
            return Err(ConvertError::tensor(
                name,
                format!("{} sums do not split over {matrices} matrices", stat.sums.len()),
            ));
        }
        let columns = (stat.sums.len() / matrices) as u64;
        headers.push(f32_tensor(format!("{name}.in_sum2"), &[columns, matrices as u64]));
        headers.push(f32_tensor(format!("{name}.counts"), &[1, matrices as u64]));
        data.push(stat.sums.clone());
        data.push(stat.counts.iter().map(|&c| c as f32).collect());
    }
    crate::files::write_atomically(path, |out| -> Result<()> {
        let io = |e| ConvertError::io(path, e);
        gguf::write_header(out, &meta, &headers).map_err(io)?;
        for values in &data {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&bytes).map_err(io)?;
            gguf::write_padding(out, bytes.len() as u64).map_err(io)?;
        }
        Ok(())
    })
}

/// An F32 tensor header with ggml's shape convention: trailing dimensions of 1 dropped.
fn f32_tensor(name: String, ne: &[u64]) -> TensorHeader {
    let mut ne = ne.to_vec();
    while ne.len() > 1 && ne.last() == Some(&1) {
        ne.pop();
    }
    TensorHeader {
        name,
        ne,
        ggml_type: GgmlType::F32,
    }
}

/// Per-column importance weights of each tensor, by GGUF tensor name; a stacked expert
/// tensor has one row of weights per expert, back to back.
#[derive(Debug, Default, Clone)]
pub struct ImportanceMatrix {
    entries: HashMap<String, Vec<f32>>,
}

impl ImportanceMatrix {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_limited(path, crate::files::MAX_IMATRIX_BYTES)?;
        let invalid = |message: String| ConvertError::Config {
            path: path.to_path_buf(),
            message,
        };
        let matrix = if bytes.starts_with(b"GGUF") {
            Self::from_gguf(&bytes).map_err(invalid)?
        } else {
            Self::from_legacy(&bytes)
                .map_err(|e| invalid(format!("not a GGUF or legacy .dat importance matrix: {e}")))?
        };
        if matrix.entries.is_empty() {
            return Err(invalid("the importance matrix has no entries".into()));
        }
        // ggml's quantizers trust the weights; a NaN or negative one breaks their search.
        if let Some((name, _)) = matrix
            .entries
            .iter()
            .find(|(_, w)| w.iter().any(|v| !v.is_finite() || *v < 0.0))
        {
            return Err(invalid(format!(
                "the weights of {name} are not all finite and non-negative"
            )));
        }
        Ok(matrix)
    }

    pub fn get(&self, tensor: &str) -> Option<&[f32]> {
        self.entries.get(tensor).map(Vec::as_slice)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// importance = sum of squared activations / number of times the expert (or the
    /// tensor) was used, which is how llama-quantize turns the file into weights.
    fn from_gguf(bytes: &[u8]) -> Result<Self, String> {
        let header = parse(bytes)?;
        let data = |name: &str| -> Result<Option<Vec<f32>>, String> {
            let Some((t, offset)) = header.tensors.iter().find(|(t, _)| t.name == name) else {
                return Ok(None);
            };
            if t.ggml_type != GgmlType::F32 {
                return Err(format!("{name} must be F32"));
            }
            let start = *offset as usize;
            let raw = bytes
                .get(start..start + t.n_bytes() as usize)
                .ok_or_else(|| format!("{name} lies past the end of the file"))?;
            Ok(Some(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ))
        };
        let mut entries = HashMap::new();
        for (t, _) in &header.tensors {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let sums = data(&t.name)?.unwrap_or_default();
            let counts = data(&format!("{name}.counts"))?.ok_or_else(|| format!("{name} has sums but no counts"))?;
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(format!(
                    "{name}: {} sums do not split over {} counts",
                    sums.len(),
                    counts.len()
                ));
            }
            let per_count = sums.len() / counts.len();
            let weights = sums
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    // llama.cpp stores counts as floats but uses them rounded.
                    let count = counts[j / per_count].round();
                    if count > 0.0 {
                        s / count
                    } else {
                        // Never-routed expert: no evidence, so weigh every column alike.
                        1.0
                    }
                })
                .collect();
            entries.insert(name.to_owned(), weights);
        }
        Ok(Self { entries })
    }

    fn from_legacy(bytes: &[u8]) -> Result<Self, String> {
        let mut r = bytes;
        let read_i32 = |r: &mut &[u8]| -> Result<i32, String> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| "file ends early".to_owned())?;
            Ok(i32::from_le_bytes(b))
        };
        let n_entries = read_i32(&mut r)?;
        if n_entries < 1 {
            return Err(format!("{n_entries} entries"));
        }
        let mut entries = HashMap::new();
        for _ in 0..n_entries {
            let len = usize::try_from(read_i32(&mut r)?).map_err(|_| "negative name length".to_owned())?;
            let name = r.get(..len).ok_or("file ends inside a name")?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| "name is not UTF-8".to_owned())?;
            r = &r[len..];
            let calls = read_i32(&mut r)?;
            let n = usize::try_from(read_i32(&mut r)?).map_err(|_| "negative value count".to_owned())?;
            let raw = r.get(..n * 4).ok_or("file ends inside values")?;
            r = &r[n * 4..];
            let divisor = if calls > 0 { calls as f32 } else { 1.0 };
            let values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) / divisor)
                .collect();
            entries.insert(name, values);
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_values_are_divided_by_calls() {
        let mut file = Vec::new();
        file.extend(1i32.to_le_bytes());
        let name = b"blk.0.ffn_down.weight";
        file.extend((name.len() as i32).to_le_bytes());
        file.extend(name);
        file.extend(4i32.to_le_bytes());
        file.extend(2i32.to_le_bytes());
        file.extend(8.0f32.to_le_bytes());
        file.extend(2.0f32.to_le_bytes());
        let m = ImportanceMatrix::from_legacy(&file).unwrap();
        assert_eq!(m.get("blk.0.ffn_down.weight"), Some(&[2.0f32, 0.5][..]));
    }

    #[test]
    fn written_matrices_read_back_as_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imatrix.gguf");
        let mut stats = BTreeMap::new();
        stats.insert(
            "blk.0.ffn_down.weight".to_owned(),
            ActivationStats {
                sums: vec![8.0, 2.0],
                counts: vec![4],
            },
        );
        stats.insert(
            "blk.0.ffn_down_exps.weight".to_owned(),
            ActivationStats {
                sums: vec![3.0, 6.0, 5.0, 7.0],
                counts: vec![3, 0],
            },
        );
        let source = ImatrixSource {
            datasets: vec!["text.txt".into()],
            chunk_count: 2,
            chunk_size: 64,
        };
        write_imatrix(&path, &stats, &source).unwrap();
        let m = ImportanceMatrix::load(&path).unwrap();
        assert_eq!(m.get("blk.0.ffn_down.weight"), Some(&[2.0f32, 0.5][..]));
        assert_eq!(m.get("blk.0.ffn_down_exps.weight"), Some(&[1.0f32, 2.0, 1.0, 1.0][..]));
        let header = crate::gguf::read_file(&path).unwrap().header;
        assert_eq!(header.get("imatrix.chunk_size"), Some(&MetaValue::U32(64)));
        let counts = header.tensor("blk.0.ffn_down_exps.weight.counts").unwrap();
        assert_eq!(counts.ne, vec![1, 2]);
        assert_eq!(header.tensor("blk.0.ffn_down.weight.in_sum2").unwrap().ne, vec![2]);
    }

    #[test]
    fn truncated_legacy_file_is_an_error() {
        let file = 3i32.to_le_bytes();
        assert!(ImportanceMatrix::from_legacy(&file).is_err());
    }
}
