//! A streaming GGUF v3 writer.
//!
//! Written by hand rather than with gguf-rs's writer because that one zero-fills the
//! whole data section up front and seeks back for every tensor, which doubles the disk
//! writes of a 100+ GB model; here the header is computed from the plan and the tensor
//! data follows in one sequential pass.

use std::io::{self, Write};

use crate::tensor_type::GgmlType;

pub const ALIGNMENT: u64 = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
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
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    /// Any other array, with its element type id (kept for empty arrays).
    Array(u32, Vec<MetaValue>),
}

impl MetaValue {
    fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::StrArray(_) | MetaValue::I32Array(_) | MetaValue::Array(..) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }
}

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::Str(s.to_owned())
    }
}
impl From<String> for MetaValue {
    fn from(s: String) -> Self {
        MetaValue::Str(s)
    }
}
impl From<u32> for MetaValue {
    fn from(v: u32) -> Self {
        MetaValue::U32(v)
    }
}
impl From<f32> for MetaValue {
    fn from(v: f32) -> Self {
        MetaValue::F32(v)
    }
}
impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        MetaValue::Bool(v)
    }
}

/// Ordered key/value metadata that refuses duplicate keys (a hard load error in llama.cpp).
#[derive(Debug, Default, Clone)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
}

impl Metadata {
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, MetaValue)> {
        self.entries.iter()
    }
}

/// What the header says about one tensor.
#[derive(Debug, Clone)]
pub struct TensorHeader {
    pub name: String,
    /// ggml order: `ne[0]` is the contiguous dimension.
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorHeader {
    pub fn n_bytes(&self) -> u64 {
        let elements: u64 = self.ne.iter().product();
        elements / self.ggml_type.block_elems() * self.ggml_type.block_bytes()
    }
}

pub fn padding(len: u64) -> u64 {
    (ALIGNMENT - len % ALIGNMENT) % ALIGNMENT
}

/// Pads what follows `written` bytes to `ALIGNMENT`; returns the padded length.
pub fn write_padding<W: Write>(out: &mut W, written: u64) -> io::Result<u64> {
    let pad = padding(written);
    out.write_all(&vec![0u8; pad as usize])?;
    Ok(written + pad)
}

/// Writes magic, version, counts, metadata and tensor infos, then pads to the data
/// section. Offsets follow the order of `tensors`, each padded to `ALIGNMENT`.
pub fn write_header<W: Write>(out: &mut W, meta: &Metadata, tensors: &[TensorHeader]) -> io::Result<u64> {
    let mut counter = CountingWriter { inner: out, written: 0 };
    let w = &mut counter;
    w.write_all(b"GGUF")?;
    w.write_all(&3u32.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(meta.entries.len() as u64).to_le_bytes())?;
    for (key, value) in &meta.entries {
        write_string(w, key)?;
        w.write_all(&value.type_id().to_le_bytes())?;
        write_value(w, value)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        write_string(w, &t.name)?;
        w.write_all(&(t.ne.len() as u32).to_le_bytes())?;
        for d in &t.ne {
            w.write_all(&d.to_le_bytes())?;
        }
        w.write_all(&t.ggml_type.id().to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        let n = t.n_bytes();
        offset += n + padding(n);
    }
    let written = w.written;
    write_padding(w, written)
}

fn write_string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, value: &MetaValue) -> io::Result<()> {
    match value {
        MetaValue::U8(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::I8(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::U16(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::I16(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::I64(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::F64(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::Array(element_type, items) => {
            w.write_all(&element_type.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|v| write_value(w, v))
        }
        MetaValue::U32(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::I32(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::U64(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::F32(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::Bool(v) => w.write_all(&[u8::from(*v)]),
        MetaValue::Str(s) => write_string(w, s),
        MetaValue::StrArray(items) => {
            w.write_all(&8u32.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|s| write_string(w, s))
        }
        MetaValue::I32Array(items) => {
            w.write_all(&5u32.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
        }
    }
}

/// A GGUF file's header as read back: typed metadata and where each tensor's data is.
pub struct GgufHeader {
    pub meta: Metadata,
    /// Each tensor with its absolute byte offset in the file.
    pub tensors: Vec<(TensorHeader, u64)>,
}

/// Reads magic, version, metadata and tensor infos, keeping every value's exact type so
/// that a re-written file says the same thing to llama.cpp's type-strict loader.
pub fn read_header<R: io::Read>(r: &mut R) -> io::Result<GgufHeader> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(bad("not a GGUF file".into()));
    }
    let version = read_u32(r)?;
    if version != 3 {
        return Err(bad(format!("GGUF version {version} is not supported (3 is)")));
    }
    let n_tensors = read_u64(r)?;
    let n_kv = read_u64(r)?;
    let mut meta = Metadata::default();
    let mut position = 24u64;
    let mut counted = CountingReader { inner: r, read: 0 };
    for _ in 0..n_kv {
        let key = read_string(&mut counted)?;
        let type_id = read_u32(&mut counted)?;
        let value = read_value(&mut counted, type_id)?;
        meta.set(key, value);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = read_string(&mut counted)?;
        let n_dims = read_u32(&mut counted)?;
        if !(1..=4).contains(&n_dims) {
            return Err(bad(format!("tensor {name} has {n_dims} dimensions")));
        }
        let ne = (0..n_dims)
            .map(|_| read_u64(&mut counted))
            .collect::<io::Result<Vec<_>>>()?;
        let type_id = read_u32(&mut counted)?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| bad(format!("tensor {name}: ggml type {type_id} is not supported")))?;
        let offset = read_u64(&mut counted)?;
        infos.push((TensorHeader { name, ne, ggml_type }, offset));
    }
    position += counted.read;
    let alignment = match meta.get("general.alignment") {
        Some(MetaValue::U32(a)) => u64::from(*a),
        _ => ALIGNMENT,
    };
    let data_start = position.div_ceil(alignment) * alignment;
    let tensors = infos.into_iter().map(|(t, offset)| (t, data_start + offset)).collect();
    Ok(GgufHeader { meta, tensors })
}

fn read_value<R: io::Read>(r: &mut R, type_id: u32) -> io::Result<MetaValue> {
    Ok(match type_id {
        0 => MetaValue::U8(u8::from_le_bytes(read_bytes(r)?)),
        1 => MetaValue::I8(i8::from_le_bytes(read_bytes(r)?)),
        2 => MetaValue::U16(u16::from_le_bytes(read_bytes(r)?)),
        3 => MetaValue::I16(i16::from_le_bytes(read_bytes(r)?)),
        4 => MetaValue::U32(read_u32(r)?),
        5 => MetaValue::I32(i32::from_le_bytes(read_bytes(r)?)),
        6 => MetaValue::F32(f32::from_le_bytes(read_bytes(r)?)),
        7 => MetaValue::Bool(u8::from_le_bytes(read_bytes(r)?) != 0),
        8 => MetaValue::Str(read_string(r)?),
        9 => read_array(r)?,
        10 => MetaValue::U64(read_u64(r)?),
        11 => MetaValue::I64(i64::from_le_bytes(read_bytes(r)?)),
        12 => MetaValue::F64(f64::from_le_bytes(read_bytes(r)?)),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("metadata type {other} is unknown"),
            ))
        }
    })
}

fn read_array<R: io::Read>(r: &mut R) -> io::Result<MetaValue> {
    let element_type = read_u32(r)?;
    let count = read_u64(r)?;
    let items = (0..count)
        .map(|_| read_value(r, element_type))
        .collect::<io::Result<Vec<_>>>()?;
    // Token lists and types come back in the same shape the converter writes them.
    let strings = || -> Option<Vec<String>> {
        items
            .iter()
            .map(|v| {
                if let MetaValue::Str(s) = v {
                    Some(s.clone())
                } else {
                    None
                }
            })
            .collect()
    };
    let ints = || -> Option<Vec<i32>> {
        items
            .iter()
            .map(|v| if let MetaValue::I32(i) = v { Some(*i) } else { None })
            .collect()
    };
    Ok(match element_type {
        8 => strings().map_or_else(|| MetaValue::Array(8, items.clone()), MetaValue::StrArray),
        5 => ints().map_or_else(|| MetaValue::Array(5, items.clone()), MetaValue::I32Array),
        _ => MetaValue::Array(element_type, items),
    })
}

fn read_bytes<const N: usize, R: io::Read>(r: &mut R) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32<R: io::Read>(r: &mut R) -> io::Result<u32> {
    read_bytes(r).map(u32::from_le_bytes)
}

fn read_u64<R: io::Read>(r: &mut R) -> io::Result<u64> {
    read_bytes(r).map(u64::from_le_bytes)
}

fn read_string<R: io::Read>(r: &mut R) -> io::Result<String> {
    let len = read_u64(r)?;
    if len > 1 << 30 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("string of {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

struct CountingReader<'a, R: io::Read> {
    inner: &'a mut R,
    read: u64,
}

impl<R: io::Read> io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
