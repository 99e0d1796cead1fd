//! Writing GGUF files (version 3): metadata, tensor infos and aligned data.

use std::borrow::Cow;
use std::io::Write;

use super::header::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_NAME_LEN,
};
use super::metadata::Metadata;
use super::value::{MetadataArray, MetadataValue};
use crate::{Error, GgmlType, Result};

/// Builds a GGUF file from metadata and tensors.
///
/// Tensor data is aligned to `general.alignment` (32 unless the metadata
/// sets it). What [`Gguf::from_bytes`](super::Gguf::from_bytes) reads back is
/// exactly what was written.
///
/// ```
/// use realm_core::gguf::{GgufWriter, MetadataValue};
/// use realm_core::GgmlType;
/// let mut w = GgufWriter::new();
/// w.set("general.architecture", MetadataValue::String("llama".into()));
/// w.add_tensor("output_norm.weight", GgmlType::F32, &[8], &[0u8; 32])?;
/// let bytes = w.to_bytes()?;
/// assert_eq!(&bytes[..4], b"GGUF");
/// # Ok::<(), realm_core::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct GgufWriter<'a> {
    metadata: Metadata,
    tensors: Vec<PendingTensor<'a>>,
}

#[derive(Debug)]
struct PendingTensor<'a> {
    name: String,
    dtype: GgmlType,
    shape: Vec<u64>,
    /// The data's length in bytes.
    len: u64,
    data: Data<'a>,
}

/// A tensor's data: at hand, or made when the file is written.
enum Data<'a> {
    Bytes(Cow<'a, [u8]>),
    Made(Box<MakeData<'a>>),
}

/// What makes a tensor's data when the file is written.
type MakeData<'a> = dyn Fn() -> Result<Vec<u8>> + 'a;

impl std::fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "{} bytes", b.len()),
            Self::Made(_) => f.write_str("made when written"),
        }
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata key.
    pub fn set(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        self.metadata.insert(key, value);
        self
    }

    /// The metadata written so far.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Adds a tensor. `shape` is fastest-varying first; `data` must be exactly
    /// the bytes `dtype` and `shape` take. Borrowed data is not copied until
    /// the file is written.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: GgmlType,
        shape: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self> {
        let data = data.into();
        let expected = self.check_tensor(name, dtype, shape)?;
        if expected != data.len() as u64 {
            return Err(Error::SizeMismatch {
                what: format!("data of tensor `{name}` ({dtype} {shape:?})"),
                expected: expected as usize,
                got: data.len(),
            });
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            len: expected,
            data: Data::Bytes(data),
        });
        Ok(self)
    }

    /// Adds a tensor whose data `make` returns when the file is written,
    /// one tensor at a time: a file much larger than memory can be written
    /// (a model being quantized). `make` must return exactly the bytes
    /// `dtype` and `shape` take, or writing fails.
    ///
    /// ```
    /// use realm_core::gguf::{Gguf, GgufWriter};
    /// use realm_core::GgmlType;
    /// let mut w = GgufWriter::new();
    /// w.add_tensor_with("x.weight", GgmlType::F32, &[4], || Ok(vec![7u8; 16]))?;
    /// let file = Gguf::from_bytes(w.to_bytes()?)?;
    /// assert_eq!(file.tensor("x.weight")?.data(), &[7u8; 16]);
    /// // Data of the wrong length fails the write.
    /// let mut bad = GgufWriter::new();
    /// bad.add_tensor_with("y.weight", GgmlType::F32, &[4], || Ok(vec![0u8; 12]))?;
    /// assert!(bad.to_bytes().is_err());
    /// # Ok::<(), realm_core::Error>(())
    /// ```
    pub fn add_tensor_with(
        &mut self,
        name: &str,
        dtype: GgmlType,
        shape: &[u64],
        make: impl Fn() -> Result<Vec<u8>> + 'a,
    ) -> Result<&mut Self> {
        let len = self.check_tensor(name, dtype, shape)?;
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            len,
            data: Data::Made(Box::new(make)),
        });
        Ok(self)
    }

    /// Checks a new tensor's name and shape; the bytes its data takes.
    fn check_tensor(&self, name: &str, dtype: GgmlType, shape: &[u64]) -> Result<u64> {
        let bad = |reason: String| Error::Malformed { offset: 0, reason };
        if name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "tensor name `{name}` is longer than {MAX_NAME_LEN} bytes"
            )));
        }
        if shape.len() > MAX_DIMS {
            return Err(bad(format!(
                "tensor `{name}` has more than {MAX_DIMS} dimensions"
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad(format!("duplicate tensor name `{name}`")));
        }
        let n = crate::tensor::element_count(shape);
        let row = shape.first().copied().unwrap_or(1);
        n.filter(|_| row.is_multiple_of(dtype.block_size() as u64))
            .and_then(|n| dtype.row_bytes(n))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: shape {shape:?} does not fit type {dtype}"
                ))
            })
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.get(ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(_) => {
                let a = self.metadata.get_u64(ALIGNMENT_KEY)?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(Error::Malformed {
                        offset: 0,
                        reason: format!("alignment {a} is not a power of two"),
                    });
                }
                Ok(a)
            }
        }
    }

    /// Writes the file to `out`.
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<()> {
        let alignment = self.alignment()?;
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in self.metadata.iter() {
            put_str(&mut head, key);
            head.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut head, value, 0)?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.dtype.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.len).next_multiple_of(alignment);
        }
        let padded = (head.len() as u64).next_multiple_of(alignment);
        head.resize(padded as usize, 0);
        out.write_all(&head)?;
        let mut written = 0u64;
        for (t, &at) in self.tensors.iter().zip(&offsets) {
            out.write_all(&vec![0u8; (at - written) as usize])?;
            match &t.data {
                Data::Bytes(b) => out.write_all(b)?,
                Data::Made(make) => {
                    let b = make()?;
                    if b.len() as u64 != t.len {
                        return Err(Error::SizeMismatch {
                            what: format!("data made for tensor `{}`", t.name),
                            expected: t.len as usize,
                            got: b.len(),
                        });
                    }
                    out.write_all(&b)?;
                }
            }
            written = at + t.len;
        }
        out.write_all(&vec![0u8; (offset - written) as usize])?;
        out.flush()?;
        Ok(())
    }

    /// The file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Writes the file to `path`.
    pub fn write_file(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut buf = std::io::BufWriter::new(file);
        self.write_to(&mut buf)?;
        buf.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetadataValue, depth: usize) -> Result<()> {
    match v {
        MetadataValue::U8(x) => out.push(*x),
        MetadataValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(u8::from(*x)),
        MetadataValue::String(s) => put_str(out, s),
        MetadataValue::Array(a) => put_array(out, a, depth)?,
    }
    Ok(())
}

fn put_array(out: &mut Vec<u8>, a: &MetadataArray, depth: usize) -> Result<()> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(Error::Malformed {
            offset: out.len() as u64,
            reason: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
        });
    }
    out.extend_from_slice(&(a.element_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T, const N: usize>(out: &mut Vec<u8>, v: &[T], f: fn(&T) -> [u8; N]) {
        v.iter().for_each(|x| out.extend_from_slice(&f(x)));
    }
    match a {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::U16(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::I16(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::U32(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::I32(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::U64(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::I64(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::F32(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::F64(v) => each(out, v, |x| x.to_le_bytes()),
        MetadataArray::Bool(v) => each(out, v, |x| [u8::from(*x)]),
        MetadataArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        MetadataArray::Array(v) => {
            for inner in v {
                put_array(out, inner, depth + 1)?;
            }
        }
    }
    Ok(())
}
