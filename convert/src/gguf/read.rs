//! The validating GGUF reader. Every GGUF glm opens (inspect, quantize, importance
//! matrices, and the check before llama.cpp loads a model or projector) is parsed here
//! first, so a malformed file is refused with a precise reason before llama.cpp's own
//! parser, which has had memory-safety bugs, ever reads it.
//!
//! Every count and length is checked against the bytes that remain before anything is
//! allocated, so memory stays proportional to the file's real size; arrays of arrays,
//! which llama.cpp does not read, are refused, which also bounds recursion.

use std::collections::HashSet;
use std::path::Path;

use memmap2::Mmap;

use super::{ArrayValue, MetaValue, Metadata, TensorHeader, ValueType, ALIGNMENT};
use crate::error::{ConvertError, Result};
use crate::tensor_type::GgmlType;

/// ggml's name buffer is 64 bytes with the terminating NUL.
const MAX_TENSOR_NAME: usize = 63;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// A GGUF file's header as read back: typed metadata and where each tensor's data is.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub meta: Metadata,
    /// Each tensor with its absolute byte offset in the file.
    pub tensors: Vec<(TensorHeader, u64)>,
    /// Where the data section starts, and its alignment.
    pub data_start: u64,
    pub alignment: u64,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta.get(key)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorHeader> {
        self.tensors.iter().map(|(t, _)| t).find(|t| t.name == name)
    }
}

/// A GGUF file mapped into memory with its validated header.
pub struct GgufFile {
    pub path: std::path::PathBuf,
    pub header: GgufHeader,
    map: Mmap,
}

impl GgufFile {
    /// The bytes of the file (tensor data lies at the offsets of `header.tensors`, all
    /// checked to be inside the file).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Hands the pages of `range` back to the kernel after a streamed read.
    pub fn release(&self, range: std::ops::Range<usize>) {
        crate::files::release_pages(&self.map, range);
    }
}

/// Opens, maps and validates a GGUF file; every error names the file.
pub fn read_file(path: &Path) -> Result<GgufFile> {
    let file = crate::files::open_regular(path)?;
    // SAFETY: a read-only private map; every access goes through bounds-checked slices,
    // so a file changed under us yields wrong values, never unsafety in safe code.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ConvertError::io(path, e))?;
    let header = parse(&map).map_err(|message| ConvertError::Gguf {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(GgufFile {
        path: path.to_path_buf(),
        header,
        map,
    })
}

/// llama.cpp's limit on the parts of a split model (`LLAMA_MAX_SPLITS`... its `split.count`
/// is a u16; more than this many files is no real model).
const MAX_SPLITS: u64 = 4096;

/// The header of a model that may be split across files (see [`read_split_files`]): the
/// first file's metadata with the tensors of every part. The tensor offsets of later parts
/// point into their own files; the merged header is for checking, not for reading data.
pub fn read_model_header(path: &Path) -> Result<GgufHeader> {
    let mut parts = read_split_files(path)?.into_iter().map(|f| f.header);
    let mut merged = parts.next().ok_or_else(|| ConvertError::Gguf {
        path: path.to_path_buf(),
        message: "no part read (a bug in glm)".into(),
    })?;
    for part in parts {
        merged.tensors.extend(part.tensors);
    }
    Ok(merged)
}

/// Every file of a model named by its first: just that file, or all parts of a set split
/// the way llama.cpp writes them (`<prefix>-00001-of-0000N.gguf`, with `split.no`,
/// `split.count` and `split.tensors.count`), each checked to belong to the set.
pub fn read_split_files(path: &Path) -> Result<Vec<GgufFile>> {
    let first = read_file(path)?;
    let count = split_key(&first.header, "split.count").unwrap_or(1);
    if count <= 1 {
        return Ok(vec![first]);
    }
    let invalid = |message: String| ConvertError::Gguf {
        path: path.to_path_buf(),
        message,
    };
    if count > MAX_SPLITS || split_key(&first.header, "split.no") != Some(0) {
        return Err(invalid(format!(
            "split.count = {count} with split.no ≠ 0: not the first part of a split model"
        )));
    }
    let declared = split_key(&first.header, "split.tensors.count");
    let mut files = vec![first];
    for (index, part) in split_part_paths(path, count)
        .map_err(invalid)?
        .iter()
        .enumerate()
        .skip(1)
    {
        let file = read_file(part)?;
        let belongs = split_key(&file.header, "split.no") == Some(index as u64)
            && split_key(&file.header, "split.count") == Some(count);
        if !belongs {
            return Err(ConvertError::Gguf {
                path: part.clone(),
                message: format!("not part {} of {count} of {}", index + 1, path.display()),
            });
        }
        files.push(file);
    }
    let tensors: usize = files.iter().map(|f| f.header.tensors.len()).sum();
    if declared != Some(tensors as u64) {
        return Err(invalid(format!(
            "split.tensors.count = {declared:?}, but the {count} parts hold {tensors} tensors"
        )));
    }
    let mut names = HashSet::new();
    if let Some(name) = files
        .iter()
        .flat_map(|f| &f.header.tensors)
        .map(|(t, _)| t.name.as_str())
        .find(|name| !names.insert(*name))
    {
        return Err(invalid(format!("tensor {name} is in more than one part")));
    }
    Ok(files)
}

fn split_key(header: &GgufHeader, key: &str) -> Option<u64> {
    header
        .get(key)
        .and_then(MetaValue::as_integer)
        .and_then(|v| u64::try_from(v).ok())
}

/// Every part's path from the first one's, as llama.cpp names them.
pub fn split_part_paths(first: &Path, count: u64) -> std::result::Result<Vec<std::path::PathBuf>, String> {
    let name = first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = format!("-00001-of-{count:05}.gguf");
    let prefix = name
        .strip_suffix(&suffix)
        .ok_or_else(|| format!("a split model's first part must be named <prefix>{suffix}"))?;
    Ok((1..=count)
        .map(|i| first.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
        .collect())
}

/// Reads all of `r` and parses it as a GGUF file (for files already in memory).
pub fn read_header<R: std::io::Read>(r: &mut R) -> std::io::Result<GgufHeader> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes)?;
    parse(&bytes).map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m))
}

/// Parses and validates the header of a whole GGUF file held in `bytes`.
pub fn parse(bytes: &[u8]) -> std::result::Result<GgufHeader, String> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4, "the magic number")?;
    if magic != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic number)".into());
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    // Each key/value takes at least a key length, a type and one byte.
    r.fits(n_kv, 13, "metadata entries")?;
    r.fits(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor infos")?;
    let meta = read_metadata(&mut r, n_kv)?;
    let infos = read_tensor_infos(&mut r, n_tensors)?;
    let alignment = alignment(&meta)?;
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let tensors = place_tensors(infos, data_start, alignment, bytes.len() as u64)?;
    Ok(GgufHeader {
        version,
        meta,
        tensors,
        data_start,
        alignment,
    })
}

fn read_metadata(r: &mut Reader, n_kv: u64) -> std::result::Result<Metadata, String> {
    let mut meta = Metadata::default();
    let mut keys = HashSet::new();
    for index in 0..n_kv {
        let key = r.string(&format!("metadata key #{index}"))?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key `{key}` appears twice"));
        }
        let what = format!("metadata `{key}`");
        let type_id = r.u32(&what)?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| format!("{what}: unknown value type {type_id}"))?;
        let value = if ty == ValueType::Array {
            MetaValue::Array(read_array(r, &what)?)
        } else {
            read_scalar(r, ty, &what)?
        };
        meta.set(key, value);
    }
    Ok(meta)
}

fn read_scalar(r: &mut Reader, ty: ValueType, what: &str) -> std::result::Result<MetaValue, String> {
    Ok(match ty {
        ValueType::U8 => MetaValue::U8(r.array::<1>(what)?[0]),
        ValueType::I8 => MetaValue::I8(i8::from_le_bytes(r.array(what)?)),
        ValueType::U16 => MetaValue::U16(u16::from_le_bytes(r.array(what)?)),
        ValueType::I16 => MetaValue::I16(i16::from_le_bytes(r.array(what)?)),
        ValueType::U32 => MetaValue::U32(r.u32(what)?),
        ValueType::I32 => MetaValue::I32(i32::from_le_bytes(r.array(what)?)),
        ValueType::F32 => MetaValue::F32(f32::from_le_bytes(r.array(what)?)),
        ValueType::Bool => MetaValue::Bool(r.array::<1>(what)?[0] != 0),
        ValueType::Str => MetaValue::Str(r.string(what)?),
        ValueType::U64 => MetaValue::U64(r.u64(what)?),
        ValueType::I64 => MetaValue::I64(i64::from_le_bytes(r.array(what)?)),
        ValueType::F64 => MetaValue::F64(f64::from_le_bytes(r.array(what)?)),
        ValueType::Array => return Err(format!("{what}: arrays of arrays are not supported")),
    })
}

fn read_array(r: &mut Reader, what: &str) -> std::result::Result<ArrayValue, String> {
    let type_id = r.u32(what)?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| format!("{what}: unknown array element type {type_id}"))?;
    if ty == ValueType::Array {
        return Err(format!("{what}: arrays of arrays are not supported"));
    }
    let count = r.u64(what)?;
    r.fits(count, ty.min_size(), &format!("elements of {what}"))?;
    let n = count as usize;
    Ok(match ty {
        ValueType::U8 => ArrayValue::U8(r.take(count, what)?.to_vec()),
        ValueType::I8 => ArrayValue::I8(r.elements(n, what, i8::from_le_bytes)?),
        ValueType::U16 => ArrayValue::U16(r.elements(n, what, u16::from_le_bytes)?),
        ValueType::I16 => ArrayValue::I16(r.elements(n, what, i16::from_le_bytes)?),
        ValueType::U32 => ArrayValue::U32(r.elements(n, what, u32::from_le_bytes)?),
        ValueType::I32 => ArrayValue::I32(r.elements(n, what, i32::from_le_bytes)?),
        ValueType::F32 => ArrayValue::F32(r.elements(n, what, f32::from_le_bytes)?),
        ValueType::Bool => ArrayValue::Bool(r.take(count, what)?.iter().map(|&b| b != 0).collect()),
        ValueType::U64 => ArrayValue::U64(r.elements(n, what, u64::from_le_bytes)?),
        ValueType::I64 => ArrayValue::I64(r.elements(n, what, i64::from_le_bytes)?),
        ValueType::F64 => ArrayValue::F64(r.elements(n, what, f64::from_le_bytes)?),
        ValueType::Str => {
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(r.string(what)?);
            }
            ArrayValue::Str(items)
        }
        ValueType::Array => return Err(format!("{what}: arrays of arrays are not supported")),
    })
}

struct TensorInfo {
    header: TensorHeader,
    offset: u64,
}

fn read_tensor_infos(r: &mut Reader, n_tensors: u64) -> std::result::Result<Vec<TensorInfo>, String> {
    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for index in 0..n_tensors {
        let name = r.string(&format!("the name of tensor #{index}"))?;
        let what = format!("tensor `{name}`");
        if name.len() > MAX_TENSOR_NAME {
            return Err(format!("{what}: name longer than ggml's {MAX_TENSOR_NAME} bytes"));
        }
        if !names.insert(name.clone()) {
            return Err(format!("{what} appears twice"));
        }
        let n_dims = r.u32(&what)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(format!("{what}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(r.u64(&what)?);
        }
        let type_id = r.u32(&what)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| format!("{what}: unknown ggml type {type_id}"))?;
        let offset = r.u64(&what)?;
        let header = TensorHeader { name, ne, ggml_type };
        check_shape(&header).map_err(|m| format!("{what}: {m}"))?;
        infos.push(TensorInfo { header, offset });
    }
    Ok(infos)
}

/// Dimensions non-zero, element count and byte size representable, rows whole blocks.
fn check_shape(t: &TensorHeader) -> std::result::Result<(), String> {
    if t.ne.contains(&0) {
        return Err(format!("a zero dimension in {:?}", t.ne));
    }
    let elements =
        t.ne.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
            .ok_or_else(|| format!("shape {:?} has more elements than ggml can address", t.ne))?;
    let block = t.ggml_type.block_elems();
    if !t.ne[0].is_multiple_of(block) {
        return Err(format!(
            "rows of {} values are not whole {}-value blocks of {}",
            t.ne[0],
            block,
            t.ggml_type.name()
        ));
    }
    (elements / block)
        .checked_mul(t.ggml_type.block_bytes())
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("shape {:?} is too large in bytes", t.ne))?;
    Ok(())
}

fn alignment(meta: &Metadata) -> std::result::Result<u64, String> {
    match meta.get("general.alignment") {
        None => Ok(ALIGNMENT),
        Some(MetaValue::U32(a)) if *a != 0 && a.is_power_of_two() => Ok(u64::from(*a)),
        Some(MetaValue::U32(a)) => Err(format!("general.alignment {a} is not a power of two")),
        Some(other) => Err(format!(
            "general.alignment must be a u32, found {:?}",
            other.value_type()
        )),
    }
}

/// Tensor data must follow the header in order, each tensor padded to the alignment (as
/// llama.cpp requires), and end inside the file.
fn place_tensors(
    infos: Vec<TensorInfo>,
    data_start: u64,
    alignment: u64,
    file_len: u64,
) -> std::result::Result<Vec<(TensorHeader, u64)>, String> {
    let mut expected = 0u64;
    let mut placed = Vec::with_capacity(infos.len());
    for TensorInfo { header, offset } in infos {
        if offset != expected {
            return Err(format!(
                "tensor `{}`: data offset {offset}, expected {expected} (tensor data must follow in order, aligned to {alignment})",
                header.name
            ));
        }
        let size = header.n_bytes();
        let end = data_start
            .checked_add(offset)
            .and_then(|o| o.checked_add(size))
            .ok_or_else(|| format!("tensor `{}`: data offset overflows", header.name))?;
        if end > file_len {
            return Err(format!(
                "truncated: tensor `{}` ends at byte {end}, the file has {file_len}",
                header.name
            ));
        }
        expected = offset
            .checked_add(size.div_ceil(alignment) * alignment)
            .ok_or_else(|| format!("tensor `{}`: data offset overflows", header.name))?;
        placed.push((header, data_start + offset));
    }
    Ok(placed)
}

/// A cursor that checks every read against the bytes that remain.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    /// Refuses `count` items of at least `size` bytes each that cannot fit in what remains.
    fn fits(&self, count: u64, size: u64, what: &str) -> std::result::Result<(), String> {
        match count.checked_mul(size) {
            Some(bytes) if bytes <= self.remaining() => Ok(()),
            _ => Err(format!(
                "truncated or corrupt: {count} {what} cannot fit in the {} bytes that remain",
                self.remaining()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: text is not UTF-8"))
    }

    fn elements<T, const N: usize>(
        &mut self,
        count: usize,
        what: &str,
        from: fn([u8; N]) -> T,
    ) -> std::result::Result<Vec<T>, String> {
        let bytes = self.take(count as u64 * N as u64, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                from(b)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::write_header;

    fn file(meta: &Metadata, tensors: &[TensorHeader]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, meta, tensors).unwrap();
        for t in tensors {
            let n = t.n_bytes();
            out.extend(std::iter::repeat_n(0u8, (n + crate::gguf::padding(n)) as usize));
        }
        out
    }

    fn sample() -> (Metadata, Vec<TensorHeader>) {
        let mut meta = Metadata::default();
        meta.set("general.architecture", "glm4");
        meta.set(
            "tokenizer.ggml.tokens",
            MetaValue::from(vec!["a".to_owned(), "b".to_owned()]),
        );
        let tensors = vec![
            TensorHeader {
                name: "a.weight".into(),
                ne: vec![32, 3],
                ggml_type: GgmlType::Q8_0,
            },
            TensorHeader {
                name: "b.weight".into(),
                ne: vec![5],
                ggml_type: GgmlType::F32,
            },
        ];
        (meta, tensors)
    }

    #[test]
    fn round_trip() {
        let (meta, tensors) = sample();
        let bytes = file(&meta, &tensors);
        let header = parse(&bytes).unwrap();
        assert_eq!(
            header.meta.get("general.architecture"),
            meta.get("general.architecture")
        );
        assert_eq!(header.tensors.len(), 2);
        assert_eq!(header.tensors[1].1 - header.tensors[0].1, 128);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (meta, tensors) = sample();
        let bytes = file(&meta, &tensors);
        for len in 0..bytes.len() - 32 {
            assert!(parse(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn huge_counts_fail_before_allocating() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(9u32.to_le_bytes());
        bytes.extend(8u32.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        let err = parse(&bytes).unwrap_err();
        assert!(err.contains("cannot fit"), "{err}");
    }

    #[test]
    fn bad_shapes_alignment_and_duplicates() {
        let (mut meta, mut tensors) = sample();
        tensors[1].ne = vec![0];
        assert!(parse(&file(&meta, &tensors)).unwrap_err().contains("zero dimension"));
        let huge = TensorHeader {
            name: "huge.weight".into(),
            ne: vec![1 << 32, 1 << 31],
            ggml_type: GgmlType::Q4_0,
        };
        let mut bytes = Vec::new();
        write_header(&mut bytes, &meta, &[huge]).unwrap();
        assert!(parse(&bytes).unwrap_err().contains("address"));
        let (_, good) = sample();
        meta.set("general.alignment", 0u32);
        assert!(parse(&file(&meta, &good)).unwrap_err().contains("power of two"));
        let (meta, mut tensors) = sample();
        tensors[1].name = tensors[0].name.clone();
        assert!(parse(&file(&meta, &tensors)).unwrap_err().contains("twice"));
    }
}
