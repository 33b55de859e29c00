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
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

impl MetaValue {
    fn type_id(&self) -> u32 {
        match self {
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::StrArray(_) | MetaValue::I32Array(_) => 9,
            MetaValue::U64(_) => 10,
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
    let pad = padding(w.written);
    w.write_all(&vec![0u8; pad as usize])?;
    Ok(w.written)
}

fn write_string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, value: &MetaValue) -> io::Result<()> {
    match value {
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
