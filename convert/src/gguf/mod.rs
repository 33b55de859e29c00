//! GGUF files: the typed metadata model, a streaming v3 writer, and (in [`read`]) the
//! validating reader every GGUF glm opens goes through.
//!
//! Written by hand rather than with gguf-rs's writer because that one zero-fills the
//! whole data section up front and seeks back for every tensor, which doubles the disk
//! writes of a 100+ GB model; here the header is computed from the plan and the tensor
//! data follows in one sequential pass.

use std::io::{self, Write};

use crate::tensor_type::GgmlType;

pub mod check;
pub mod read;

pub use read::{read_file, read_header, read_model_header, read_split_files, split_part_paths, GgufFile, GgufHeader};

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
    /// Arrays are stored by element type, so that a million-element array costs what
    /// its elements cost (no boxed value per element).
    Array(ArrayValue),
}

/// A metadata array (GGUF has no arrays of arrays that llama.cpp reads).
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayValue {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// GGUF's value type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    Str = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, Str, Array, U64, I64, F64]
            .into_iter()
            .find(|t| *t as u32 == id)
    }

    /// Bytes of one value in the file; strings are at least their 8-byte length.
    pub fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | Str => 8,
            // Element type and count.
            Array => 12,
        }
    }
}

/// Runs `$body` with `$v` bound to the elements of whichever array `$array` is.
macro_rules! each_array {
    ($array:expr, $v:ident => $body:expr) => {
        match $array {
            ArrayValue::U8($v) => $body,
            ArrayValue::I8($v) => $body,
            ArrayValue::U16($v) => $body,
            ArrayValue::I16($v) => $body,
            ArrayValue::U32($v) => $body,
            ArrayValue::I32($v) => $body,
            ArrayValue::F32($v) => $body,
            ArrayValue::Bool($v) => $body,
            ArrayValue::Str($v) => $body,
            ArrayValue::U64($v) => $body,
            ArrayValue::I64($v) => $body,
            ArrayValue::F64($v) => $body,
        }
    };
}

impl ArrayValue {
    pub fn element_type(&self) -> ValueType {
        match self {
            ArrayValue::U8(_) => ValueType::U8,
            ArrayValue::I8(_) => ValueType::I8,
            ArrayValue::U16(_) => ValueType::U16,
            ArrayValue::I16(_) => ValueType::I16,
            ArrayValue::U32(_) => ValueType::U32,
            ArrayValue::I32(_) => ValueType::I32,
            ArrayValue::F32(_) => ValueType::F32,
            ArrayValue::Bool(_) => ValueType::Bool,
            ArrayValue::Str(_) => ValueType::Str,
            ArrayValue::U64(_) => ValueType::U64,
            ArrayValue::I64(_) => ValueType::I64,
            ArrayValue::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        each_array!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Integer elements as i128 (wide enough for every integer type); `None` for other
    /// element types.
    pub fn integers(&self) -> Option<Vec<i128>> {
        fn widen<T: Copy + Into<i128>>(v: &[T]) -> Option<Vec<i128>> {
            Some(v.iter().map(|&x| x.into()).collect())
        }
        match self {
            ArrayValue::U8(v) => widen(v),
            ArrayValue::I8(v) => widen(v),
            ArrayValue::U16(v) => widen(v),
            ArrayValue::I16(v) => widen(v),
            ArrayValue::U32(v) => widen(v),
            ArrayValue::I32(v) => widen(v),
            ArrayValue::U64(v) => widen(v),
            ArrayValue::I64(v) => widen(v),
            ArrayValue::F32(_) | ArrayValue::F64(_) | ArrayValue::Bool(_) | ArrayValue::Str(_) => None,
        }
    }
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::Str(_) => ValueType::Str,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value, widened.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any float value, widened.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// `From` conversions into metadata values, one variant each.
macro_rules! meta_from {
    ($($t:ty => $variant:expr),* $(,)?) => {
        $(impl From<$t> for MetaValue {
            fn from(v: $t) -> Self {
                $variant(v)
            }
        })*
    };
}

meta_from!(
    Vec<String> => |v| MetaValue::Array(ArrayValue::Str(v)),
    Vec<i32> => |v| MetaValue::Array(ArrayValue::I32(v)),
    Vec<f32> => |v| MetaValue::Array(ArrayValue::F32(v)),
    String => MetaValue::Str,
    u32 => MetaValue::U32,
    f32 => MetaValue::F32,
    bool => MetaValue::Bool,
);

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::Str(s.to_owned())
    }
}

/// Ordered key/value metadata. `set` replaces the value of a key already present, so a
/// file never holds a key twice (a hard load error in llama.cpp).
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
        w.write_all(&(value.value_type() as u32).to_le_bytes())?;
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
        MetaValue::U32(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::I32(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::F32(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::Bool(v) => w.write_all(&[u8::from(*v)]),
        MetaValue::Str(s) => write_string(w, s),
        MetaValue::U64(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::I64(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::F64(v) => w.write_all(&v.to_le_bytes()),
        MetaValue::Array(items) => write_array(w, items),
    }
}

fn write_array<W: Write>(w: &mut W, items: &ArrayValue) -> io::Result<()> {
    w.write_all(&(items.element_type() as u32).to_le_bytes())?;
    w.write_all(&(items.len() as u64).to_le_bytes())?;
    each_array!(items, v => v.iter().try_for_each(|x| x.write_le(w)))
}

/// One array element in GGUF's little-endian encoding.
trait WriteLe {
    fn write_le<W: Write>(&self, w: &mut W) -> io::Result<()>;
}

macro_rules! write_le_bytes {
    ($($t:ty),*) => {
        $(impl WriteLe for $t {
            fn write_le<W: Write>(&self, w: &mut W) -> io::Result<()> {
                w.write_all(&self.to_le_bytes())
            }
        })*
    };
}

write_le_bytes!(u8, i8, u16, i16, u32, i32, f32, u64, i64, f64);

impl WriteLe for bool {
    fn write_le<W: Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&[u8::from(*self)])
    }
}

impl WriteLe for String {
    fn write_le<W: Write>(&self, w: &mut W) -> io::Result<()> {
        write_string(w, self)
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
