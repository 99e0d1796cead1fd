//! A whole GGUF file in memory (memory-mapped, or any byte buffer), with
//! tensors handed out as borrowed views: loading a model copies no weights.

use std::io::Cursor;

use super::header::{GgufHeader, TensorInfo};
use super::metadata::Metadata;
use crate::{Error, Result, TensorView};

/// A parsed GGUF file over storage `S` that holds all of its bytes.
///
/// `S` is [`memmap2::Mmap`] for [`GgufFile::open`], or any `AsRef<[u8]>`
/// (a `Vec<u8>`, a `&[u8]`, an `Arc<[u8]>`) through [`Gguf::from_bytes`],
/// which works on every target, wasm32 included.
///
/// ```
/// use realm_core::gguf::{Gguf, GgufWriter, MetadataValue};
/// use realm_core::GgmlType;
///
/// let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// let mut w = GgufWriter::new();
/// w.set("general.architecture", MetadataValue::String("llama".into()));
/// w.add_tensor("w", GgmlType::F32, &[2, 2], &data).unwrap();
/// let bytes = w.to_bytes().unwrap();
///
/// let file = Gguf::from_bytes(bytes).unwrap();
/// assert_eq!(file.metadata().get_str("general.architecture").unwrap(), "llama");
/// let t = file.tensor("w").unwrap();
/// assert_eq!((t.dtype(), t.shape()), (GgmlType::F32, &[2u64, 2][..]));
/// assert_eq!(t.data(), &data[..]);
/// ```
#[derive(Debug)]
pub struct Gguf<S> {
    header: GgufHeader,
    storage: S,
}

/// A GGUF file memory-mapped from disk.
#[cfg(not(target_arch = "wasm32"))]
pub type GgufFile = Gguf<memmap2::Mmap>;

#[cfg(not(target_arch = "wasm32"))]
impl Gguf<memmap2::Mmap> {
    /// Maps the file at `path` and validates it. No tensor data is read or
    /// copied: pages are loaded on first touch.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Memory
        // safety would only break if another process truncated or rewrote the
        // file while it is mapped, which model files are not expected to be;
        // this is the same contract every mmap-based model loader relies on.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_bytes(map)
    }
}

impl<S: AsRef<[u8]>> Gguf<S> {
    /// Parses and validates the GGUF file held in `storage`.
    pub fn from_bytes(storage: S) -> Result<Self> {
        let bytes = storage.as_ref();
        let header = GgufHeader::read(Cursor::new(bytes), bytes.len() as u64)?;
        Ok(Self { header, storage })
    }

    /// The parsed header: version, alignment, offsets.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        self.header.metadata()
    }

    /// Every tensor's info, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        self.header.tensors()
    }

    /// A view of the tensor called `name`, borrowing its bytes from the storage.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self.header.tensor_info(name)?;
        self.view(info)
    }

    /// Views of every tensor, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = Result<TensorView<'_>>> {
        self.header.tensors().iter().map(|info| self.view(info))
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> Result<TensorView<'a>> {
        // The header already checked that the range lies inside the file and
        // that its length is what dtype and shape need; checked again here so
        // that storage whose length changed cannot make this panic.
        let start = self.header.data_offset().checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes));
        let data = start
            .zip(end)
            .and_then(|(s, e)| self.storage.as_ref().get(s as usize..e as usize));
        data.and_then(|d| TensorView::new(&info.name, info.dtype, &info.shape, d))
            .ok_or_else(|| Error::Truncated {
                what: format!("data of tensor `{}`", info.name),
                offset: start.unwrap_or(u64::MAX),
                needed: info.n_bytes,
                len: self.storage.as_ref().len() as u64,
            })
    }

    /// All bytes of the file.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.as_ref()
    }
}
