//! Reading a GGUF file from any `Read + Seek` source, tensor by tensor, for
//! targets without mmap (wasm32) or sources that are not files.

use std::io::{BufReader, Read, Seek, SeekFrom};

use super::header::{GgufHeader, TensorInfo};
use crate::Result;

/// A GGUF file read from a stream: the header is parsed up front, tensor data
/// is read on request.
///
/// ```
/// use std::io::Cursor;
/// use realm_core::gguf::{GgufReader, GgufWriter};
/// use realm_core::GgmlType;
///
/// let mut w = GgufWriter::new();
/// w.add_tensor("bias", GgmlType::F32, &[4], &[0u8; 16]).unwrap();
/// let mut r = GgufReader::new(Cursor::new(w.to_bytes().unwrap())).unwrap();
/// assert_eq!(r.read_tensor_data("bias").unwrap(), vec![0u8; 16]);
/// ```
#[derive(Debug)]
pub struct GgufReader<R> {
    header: GgufHeader,
    source: R,
}

impl<R: Read + Seek> GgufReader<R> {
    /// Parses and validates the header of the GGUF stream `source`.
    pub fn new(mut source: R) -> Result<Self> {
        let len = source.seek(SeekFrom::End(0))?;
        source.seek(SeekFrom::Start(0))?;
        let header = GgufHeader::read(BufReader::new(&mut source), len)?;
        Ok(Self { header, source })
    }

    /// The parsed header (metadata, tensor infos).
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// Reads the bytes of the tensor called `name`.
    pub fn read_tensor_data(&mut self, name: &str) -> Result<Vec<u8>> {
        let info: &TensorInfo = self.header.tensor_info(name)?;
        // Header validation bounded offset + n_bytes by the stream's length.
        let (offset, n) = (self.header.data_offset() + info.offset, info.n_bytes);
        let mut data = vec![0u8; n as usize];
        self.source.seek(SeekFrom::Start(offset))?;
        self.source.read_exact(&mut data)?;
        Ok(data)
    }

    /// Gives the source back.
    pub fn into_inner(self) -> R {
        self.source
    }
}
