//! Parsing and validating everything in a GGUF file before its tensor data:
//! the header, the metadata and the tensor infos.
//!
//! Every length, count and offset read from the file is checked against the
//! bytes that remain before it is used, so a malformed file is an error and
//! no allocation is larger than the file itself.

use std::collections::HashMap;
use std::io::Read;

use super::metadata::Metadata;
use super::value::{MetadataArray, MetadataValue, ValueType};
use crate::{Error, GgmlType, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes (ggml's `GGML_MAX_NAME` less its NUL).
pub const MAX_NAME_LEN: usize = 63;
/// Deepest nesting of arrays the reader accepts.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Where one tensor's data is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: GgmlType,
    /// Shape, fastest-varying dimension first (as ggml's `ne`).
    pub shape: Vec<u64>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Length of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        // The header checked that the count fits (zero if any dimension is).
        crate::tensor::element_count(&self.shape).unwrap_or(0)
    }
}

/// The parsed, validated part of a GGUF file before its tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
}

impl GgufHeader {
    /// Reads and validates the header of a GGUF file of `file_len` bytes
    /// from `reader`, positioned at the file's start.
    pub fn read<R: Read>(reader: R, file_len: u64) -> Result<Self> {
        let mut p = Parser {
            r: reader,
            pos: 0,
            len: file_len,
        };
        let magic: [u8; 4] = p.array("magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = p.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion(version));
        }
        let n_tensors = p.u64("tensor count")?;
        let n_kv = p.u64("metadata count")?;

        let mut metadata = Metadata::new();
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        p.need_items("metadata", n_kv, 13)?;
        for _ in 0..n_kv {
            let at = p.pos;
            let key = p.string("metadata key")?;
            let ty = p.value_type("metadata value type")?;
            let value = p.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(p.malformed(at, format!("duplicate metadata key `{key}`")));
            }
        }

        let alignment = match metadata.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some(_) => {
                let a = metadata.get_u64(ALIGNMENT_KEY)?;
                if a == 0 || !a.is_power_of_two() || a > 1 << 30 {
                    return Err(p.malformed(p.pos, format!("alignment {a} is not a power of two")));
                }
                a
            }
        };

        // A tensor info takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset).
        p.need_items("tensor infos", n_tensors, 24)?;
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        for _ in 0..n_tensors {
            let at = p.pos;
            let info = p.tensor_info()?;
            if !info.offset.is_multiple_of(alignment) {
                return Err(p.malformed(
                    at,
                    format!(
                        "tensor `{}` offset {} is not a multiple of the alignment {alignment}",
                        info.name, info.offset
                    ),
                ));
            }
            if by_name.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(p.malformed(at, format!("duplicate tensor name `{}`", info.name)));
            }
            tensors.push(info);
        }

        let data_offset = p.pos.next_multiple_of(alignment);
        if !tensors.is_empty() && data_offset > file_len {
            return Err(Error::Truncated {
                what: "padding before the tensor data".into(),
                offset: p.pos,
                needed: data_offset - p.pos,
                len: file_len,
            });
        }
        let data_len = file_len.saturating_sub(data_offset);
        let mut ranges: Vec<(u64, u64, usize)> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.offset, t.n_bytes, i))
            .collect();
        ranges.sort_unstable();
        let mut end_prev = 0u64;
        for (offset, n_bytes, i) in ranges {
            let name = &tensors[i].name;
            let end = offset.checked_add(n_bytes).filter(|&e| e <= data_len);
            let Some(end) = end else {
                return Err(Error::Truncated {
                    what: format!("data of tensor `{name}`"),
                    offset: data_offset.saturating_add(offset),
                    needed: n_bytes,
                    len: file_len,
                });
            };
            if offset < end_prev {
                return Err(p.malformed(
                    data_offset + offset,
                    format!("data of tensor `{name}` overlaps the tensor before it"),
                ));
            }
            end_prev = end;
        }

        Ok(Self {
            version,
            metadata,
            tensors,
            by_name,
            alignment,
            data_offset,
            file_len,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of the tensor called `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound(name.to_string()))
    }

    /// Alignment of tensor data in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Length of the whole file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
}

struct Parser<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Parser<R> {
    fn malformed(&self, offset: u64, reason: String) -> Error {
        Error::Malformed { offset, reason }
    }

    /// Fails unless `n` more bytes remain in the file.
    fn need(&self, what: &str, n: u64) -> Result<()> {
        if self.len.saturating_sub(self.pos) < n {
            return Err(Error::Truncated {
                what: what.to_string(),
                offset: self.pos,
                needed: n,
                len: self.len,
            });
        }
        Ok(())
    }

    /// Fails unless `count` items of at least `min_size` bytes can fit.
    fn need_items(&self, what: &str, count: u64, min_size: u64) -> Result<()> {
        self.need(what, count.saturating_mul(min_size))
    }

    fn fill(&mut self, what: &str, buf: &mut [u8]) -> Result<()> {
        self.need(what, buf.len() as u64)?;
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Truncated {
                    what: what.to_string(),
                    offset: self.pos,
                    needed: buf.len() as u64,
                    len: self.len,
                }
            } else {
                Error::Read(e)
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(what, &mut b)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads `n` bytes, `n` checked against the remaining file first.
    fn bytes(&mut self, what: &str, n: u64) -> Result<Vec<u8>> {
        self.need(what, n)?;
        let mut v = vec![0u8; n as usize];
        self.fill(what, &mut v)?;
        Ok(v)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let bytes = self.bytes(what, n)?;
        String::from_utf8(bytes)
            .map_err(|e| self.malformed(at, format!("{what} is not UTF-8: {e}")))
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| self.malformed(at, format!("unknown {what} {id}")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<MetadataValue> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(&what)?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => MetadataValue::Bool(self.bool(&what)?),
            ValueType::String => MetadataValue::String(self.string(&what)?),
            ValueType::Array => MetadataValue::Array(self.metadata_array(key, depth)?),
        })
    }

    fn bool(&mut self, what: &str) -> Result<bool> {
        let at = self.pos;
        match self.array::<1>(what)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(self.malformed(at, format!("{what}: bool byte is {b}, not 0 or 1"))),
        }
    }

    /// Reads `count` fixed-size little-endian scalars in one read.
    fn scalars<const N: usize, T>(
        &mut self,
        what: &str,
        count: u64,
        conv: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let raw = self.bytes(what, count.saturating_mul(N as u64))?;
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                conv(b)
            })
            .collect())
    }

    fn metadata_array(&mut self, key: &str, depth: usize) -> Result<MetadataArray> {
        let at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.malformed(
                at,
                format!("`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let elem = self.value_type("array element type")?;
        let count = self.u64("array length")?;
        let what = format!("array `{key}`");
        self.need_items(&what, count, elem.min_size())?;
        Ok(match elem {
            ValueType::U8 => MetadataArray::U8(self.bytes(&what, count)?),
            ValueType::I8 => MetadataArray::I8(self.scalars(&what, count, i8::from_le_bytes)?),
            ValueType::U16 => MetadataArray::U16(self.scalars(&what, count, u16::from_le_bytes)?),
            ValueType::I16 => MetadataArray::I16(self.scalars(&what, count, i16::from_le_bytes)?),
            ValueType::U32 => MetadataArray::U32(self.scalars(&what, count, u32::from_le_bytes)?),
            ValueType::I32 => MetadataArray::I32(self.scalars(&what, count, i32::from_le_bytes)?),
            ValueType::U64 => MetadataArray::U64(self.scalars(&what, count, u64::from_le_bytes)?),
            ValueType::I64 => MetadataArray::I64(self.scalars(&what, count, i64::from_le_bytes)?),
            ValueType::F32 => MetadataArray::F32(self.scalars(&what, count, f32::from_le_bytes)?),
            ValueType::F64 => MetadataArray::F64(self.scalars(&what, count, f64::from_le_bytes)?),
            ValueType::Bool => MetadataArray::Bool(
                (0..count)
                    .map(|_| self.bool(&what))
                    .collect::<Result<_>>()?,
            ),
            ValueType::String => MetadataArray::String(
                (0..count)
                    .map(|_| self.string(&what))
                    .collect::<Result<_>>()?,
            ),
            ValueType::Array => MetadataArray::Array(
                (0..count)
                    .map(|_| self.metadata_array(key, depth + 1))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let at = self.pos;
        let name = self.string("tensor name")?;
        if name.len() > MAX_NAME_LEN {
            return Err(self.malformed(
                at,
                format!("tensor name `{name}` is longer than {MAX_NAME_LEN} bytes"),
            ));
        }
        let n_dims = self.u32("tensor dimension count")? as usize;
        if n_dims > MAX_DIMS {
            return Err(self.malformed(
                at,
                format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"),
            ));
        }
        let mut shape = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            shape.push(self.u64("tensor dimension")?);
        }
        let type_at = self.pos;
        let type_id = self.u32("tensor type")?;
        let offset = self.u64("tensor offset")?;
        let dtype = GgmlType::from_id(type_id).ok_or_else(|| Error::UnknownTensorType {
            tensor: name.clone(),
            id: type_id,
        })?;
        let n_elements = crate::tensor::element_count(&shape)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                self.malformed(at, format!("tensor `{name}` shape {shape:?} overflows"))
            })?;
        let row = shape.first().copied().unwrap_or(1);
        if !row.is_multiple_of(dtype.block_size() as u64) {
            return Err(self.malformed(
                type_at,
                format!(
                    "tensor `{name}`: row length {row} is not a multiple of {dtype}'s block size {}",
                    dtype.block_size()
                ),
            ));
        }
        let n_bytes = dtype
            .row_bytes(n_elements)
            .ok_or_else(|| self.malformed(at, format!("tensor `{name}` size overflows")))?;
        Ok(TensorInfo {
            name,
            dtype,
            shape,
            offset,
            n_bytes,
        })
    }
}
