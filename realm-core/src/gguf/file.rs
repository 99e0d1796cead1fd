//! A whole GGUF model in memory (memory-mapped, or any byte buffer), with
//! tensors handed out as borrowed views: loading a model copies no weights.
//! A model split over several files (llama.cpp's `gguf-split`) is one
//! [`Gguf`] of all of them.

use std::collections::HashMap;
use std::io::Cursor;

use super::header::{GgufHeader, TensorInfo};
use super::metadata::Metadata;
use crate::{Error, Result, TensorView};

/// Metadata key: which file of a split model this is (0 for the first).
pub const SPLIT_NO_KEY: &str = "split.no";
/// Metadata key: how many files a split model has.
pub const SPLIT_COUNT_KEY: &str = "split.count";
/// Metadata key: how many tensors a split model has in all.
pub const SPLIT_TENSORS_COUNT_KEY: &str = "split.tensors.count";

/// A parsed GGUF model over storage `S` that holds all of its bytes: one
/// file, or every file of a split model.
///
/// `S` is [`memmap2::Mmap`] for [`GgufFile::open`], or any `AsRef<[u8]>`
/// (a `Vec<u8>`, a `&[u8]`, an `Arc<[u8]>`) through [`Gguf::from_bytes`]
/// and [`Gguf::from_splits`], which work on every target, wasm32 included.
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
    /// Each file's header and bytes, the first (which holds the model's
    /// metadata) first.
    splits: Vec<(GgufHeader, S)>,
    /// Every tensor, file after file, in file order (each offset within
    /// its file's data section).
    infos: Vec<TensorInfo>,
    /// The file of each of `infos`.
    split_of: Vec<usize>,
    /// Tensor names to their place in `infos`.
    by_name: HashMap<String, usize>,
}

/// A GGUF file memory-mapped from disk.
#[cfg(not(target_arch = "wasm32"))]
pub type GgufFile = Gguf<memmap2::Mmap>;

#[cfg(not(target_arch = "wasm32"))]
impl Gguf<memmap2::Mmap> {
    /// Maps the file at `path` and validates it. No tensor data is read or
    /// copied: pages are loaded on first touch.
    ///
    /// The first file of a split model (`NAME-00001-of-00003.gguf`) maps
    /// the others too, named as llama.cpp names them; another file of one
    /// is refused, as llama.cpp refuses it.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let first = map(path)?;
        let header = read_header(&first)?;
        let (no, count) = split_place(header.metadata())?;
        if count <= 1 {
            return Self::joined(vec![(header, first)]);
        }
        if no != 0 {
            return Err(Error::Split(format!(
                "{} is file {} of {count} of a split model: open the first",
                path.display(),
                no + 1
            )));
        }
        let name = path.to_string_lossy();
        let suffix = split_suffix(0, count);
        let prefix = name.strip_suffix(&suffix).ok_or_else(|| {
            Error::Split(format!(
                "{} is the first of {count} files, but not named PREFIX{suffix}",
                path.display()
            ))
        })?;
        let mut splits = vec![(header, first)];
        for i in 1..count {
            let next = map(format!("{prefix}{}", split_suffix(i, count)).as_ref())?;
            splits.push((read_header(&next)?, next));
        }
        Self::joined(splits)
    }
}

/// Maps the file at `path`.
#[cfg(not(target_arch = "wasm32"))]
fn map(path: &std::path::Path) -> Result<memmap2::Mmap> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private to this process. Memory
    // safety would only break if another process truncated or rewrote the
    // file while it is mapped, which model files are not expected to be;
    // this is the same contract every mmap-based model loader relies on.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// The end of the name of file `no` (from 0) of `count`, as llama.cpp's
/// `llama_split_path` writes it: `-00001-of-00003.gguf`.
///
/// ```
/// assert_eq!(realm_core::gguf::split_suffix(0, 3), "-00001-of-00003.gguf");
/// ```
pub fn split_suffix(no: usize, count: usize) -> String {
    format!("-{:05}-of-{count:05}.gguf", no + 1)
}

/// `(split.no, split.count)` of a file's metadata: `(0, 1)` for a file
/// that is not part of a split model.
fn split_place(md: &Metadata) -> Result<(usize, usize)> {
    let get = |key: &str, default: usize| match md.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_i128()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Error::Split(format!("{key} is {v:?}"))),
    };
    Ok((get(SPLIT_NO_KEY, 0)?, get(SPLIT_COUNT_KEY, 1)?.max(1)))
}

impl<S: AsRef<[u8]>> Gguf<S> {
    /// Parses and validates the GGUF file held in `storage`. A file of a
    /// split model is read as it is: its own tensors, its own metadata.
    pub fn from_bytes(storage: S) -> Result<Self> {
        let header = read_header(&storage)?;
        Ok(Self::index(vec![(header, storage)]))
    }

    /// Parses and validates the files of a split model, in order (llama.cpp's
    /// `gguf-split` writes them: the first holds the model's metadata, each
    /// its `split.no` and `split.count`, the first `split.tensors.count`).
    /// Fails on files out of order or missing, a tensor in two of them, or
    /// a count that does not add up. One file that is not part of a split
    /// model is read as [`Gguf::from_bytes`] reads it.
    pub fn from_splits(storages: Vec<S>) -> Result<Self> {
        let splits = storages
            .into_iter()
            .map(|s| Ok((read_header(&s)?, s)))
            .collect::<Result<Vec<_>>>()?;
        Self::joined(splits)
    }

    /// [`Gguf::from_splits`] of files whose headers are read.
    fn joined(splits: Vec<(GgufHeader, S)>) -> Result<Self> {
        let count = splits.len();
        for (i, (header, _)) in splits.iter().enumerate() {
            let (no, of) = split_place(header.metadata())?;
            if (no, of) != (i, count) && !(count == 1 && of == 1) {
                return Err(Error::Split(format!(
                    "file {} of {count} says it is file {} of {of}",
                    i + 1,
                    no + 1
                )));
            }
        }
        if splits.is_empty() {
            return Err(Error::Split("no files".into()));
        }
        let file = Self::index(splits);
        let total = file.infos.len();
        if file.by_name.len() != total {
            let mut seen = std::collections::HashSet::new();
            let twice = file
                .infos
                .iter()
                .find(|t| !seen.insert(&t.name))
                .map_or_else(String::new, |t| t.name.clone());
            return Err(Error::Split(format!("tensor `{twice}` is in two files")));
        }
        if count > 1 {
            let md = file.metadata();
            let want = md
                .get(SPLIT_TENSORS_COUNT_KEY)
                .and_then(|v| v.as_i128())
                .ok_or_else(|| Error::Split(format!("no {SPLIT_TENSORS_COUNT_KEY}")))?;
            if want != total as i128 {
                return Err(Error::Split(format!(
                    "{SPLIT_TENSORS_COUNT_KEY} is {want}, the files hold {total} tensors"
                )));
            }
        }
        Ok(file)
    }

    /// Indexes the tensors of `splits` (a name in two of them maps to the
    /// later: [`Gguf::from_splits`] refuses that).
    fn index(splits: Vec<(GgufHeader, S)>) -> Self {
        let (mut infos, mut split_of) = (Vec::new(), Vec::new());
        for (s, (h, _)) in splits.iter().enumerate() {
            infos.extend_from_slice(h.tensors());
            split_of.resize(infos.len(), s);
        }
        let by_name = infos
            .iter()
            .enumerate()
            .map(|(k, t)| (t.name.clone(), k))
            .collect();
        Self {
            splits,
            infos,
            split_of,
            by_name,
        }
    }

    /// The parsed header of the (first) file: version, alignment, offsets,
    /// the model's metadata.
    pub fn header(&self) -> &GgufHeader {
        &self.splits[0].0
    }

    /// Every file's header, in order (one for a model in one file).
    pub fn split_headers(&self) -> impl Iterator<Item = &GgufHeader> {
        self.splits.iter().map(|(h, _)| h)
    }

    /// The metadata (of the first file, for a split model).
    pub fn metadata(&self) -> &Metadata {
        self.header().metadata()
    }

    /// Every tensor's info, file after file, in file order (each offset
    /// within its own file's data section).
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.infos
    }

    /// A view of the tensor called `name`, borrowing its bytes from the storage.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let &k = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::TensorNotFound(name.to_string()))?;
        self.view(k)
    }

    /// Views of every tensor, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = Result<TensorView<'_>>> {
        (0..self.infos.len()).map(|k| self.view(k))
    }

    /// A view of tensor `k` of `infos`.
    fn view(&self, k: usize) -> Result<TensorView<'_>> {
        let info = &self.infos[k];
        let (header, storage) = &self.splits[self.split_of[k]];
        let bytes = storage.as_ref();
        // The header already checked that the range lies inside the file and
        // that its length is what dtype and shape need; checked again here so
        // that storage whose length changed cannot make this panic.
        let start = header.data_offset().checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes));
        let data = start
            .zip(end)
            .and_then(|(s, e)| bytes.get(s as usize..e as usize));
        data.and_then(|d| TensorView::new(&info.name, info.dtype, &info.shape, d))
            .ok_or_else(|| Error::Truncated {
                what: format!("data of tensor `{}`", info.name),
                offset: start.unwrap_or(u64::MAX),
                needed: info.n_bytes,
                len: bytes.len() as u64,
            })
    }

    /// The length of every file together, in bytes.
    pub fn len(&self) -> usize {
        self.splits.iter().map(|(_, s)| s.as_ref().len()).sum()
    }

    /// Whether the files hold no bytes (never, for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn read_header<S: AsRef<[u8]>>(storage: &S) -> Result<GgufHeader> {
    let bytes = storage.as_ref();
    GgufHeader::read(Cursor::new(bytes), bytes.len() as u64)
}
