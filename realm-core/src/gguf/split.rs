//! Splitting a model into several GGUF files and merging them back, as
//! llama.cpp's `gguf-split` does (the same bytes): the first file holds the
//! model's metadata, every file `split.no`, `split.count` and
//! `split.tensors.count`, and the tensors go to the files in order.
//! [`Gguf::from_splits`] and [`GgufFile::open`](super::GgufFile::open) read
//! such files as one model.

use super::file::{Gguf, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY};
use super::header::DEFAULT_ALIGNMENT;
use super::value::MetadataValue;
use super::writer::GgufWriter;
use crate::{Error, Result};

/// When a split file is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitLimit {
    /// At most this many tensors a file (`--split-max-tensors`).
    Tensors(usize),
    /// At most this many bytes of tensor data a file, each tensor counted
    /// padded to 32 bytes (`--split-max-size`; the metadata is not
    /// counted).
    Bytes(u64),
}

/// How to split a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitOptions {
    /// When a file is full.
    pub limit: SplitLimit,
    /// The first file holds only the metadata (`--no-tensor-first-split`).
    pub no_tensor_first_split: bool,
}

/// Which tensors (indices into [`Gguf::tensor_infos`]) go to each file of
/// the split, as llama.cpp's `gguf-split` assigns them: a tensor that
/// does not fit the current file starts the next (and has it to itself if
/// it passes the limit alone). Fails where the first tensor passes the
/// byte limit, as `gguf-split` does, or on a limit of 0.
///
/// ```
/// use realm_core::gguf::{plan_split, Gguf, GgufWriter, SplitLimit, SplitOptions};
/// use realm_core::GgmlType;
/// let mut w = GgufWriter::new();
/// for name in ["a", "b", "c"] {
///     w.add_tensor(name, GgmlType::F32, &[4], &[0u8; 16])?;
/// }
/// let file = Gguf::from_bytes(w.to_bytes()?)?;
/// let opts = SplitOptions { limit: SplitLimit::Tensors(2), no_tensor_first_split: false };
/// assert_eq!(plan_split(&file, &opts)?, vec![vec![0, 1], vec![2]]);
/// # Ok::<(), realm_core::Error>(())
/// ```
pub fn plan_split<S: AsRef<[u8]>>(file: &Gguf<S>, opts: &SplitOptions) -> Result<Vec<Vec<usize>>> {
    let mut files: Vec<Vec<usize>> = vec![Vec::new()];
    if opts.no_tensor_first_split {
        files.push(Vec::new());
    }
    let mut used = 0u64;
    for (i, t) in file.tensor_infos().iter().enumerate() {
        // (gguf-split pads by ggml's default, whatever the file's.)
        let size = t.n_bytes.next_multiple_of(DEFAULT_ALIGNMENT);
        let full = match opts.limit {
            SplitLimit::Tensors(0) | SplitLimit::Bytes(0) => {
                return Err(Error::Split("a limit of 0".into()))
            }
            SplitLimit::Tensors(n) => i > 0 && i % n == 0,
            SplitLimit::Bytes(n) => used + size > n,
        };
        if full {
            if files.last().is_some_and(Vec::is_empty) {
                return Err(Error::Split(format!(
                    "tensor `{}` ({size} bytes) does not fit the limit",
                    t.name
                )));
            }
            files.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(f) = files.last_mut() {
            f.push(i);
        }
    }
    Ok(files)
}

/// The files of `file` split by `opts` ([`plan_split`]), ready to write in
/// order (their data borrowed from `file`). Name file `i` of `n` as
/// [`split_suffix`](super::split_suffix) says, for
/// [`GgufFile::open`](super::GgufFile::open) and llama.cpp to find them.
pub fn split_writers<'a, S: AsRef<[u8]>>(
    file: &'a Gguf<S>,
    opts: &SplitOptions,
) -> Result<Vec<GgufWriter<'a>>> {
    let plan = plan_split(file, opts)?;
    let count = split_key(plan.len())?;
    let total = i32::try_from(file.tensor_infos().len())
        .map_err(|_| Error::Split("more than 2^31 tensors".into()))?;
    let infos = file.tensor_infos();
    plan.iter()
        .enumerate()
        .map(|(no, tensors)| {
            let mut w = GgufWriter::new();
            if no == 0 {
                for (k, v) in file.metadata().iter() {
                    w.set(k, v.clone());
                }
            }
            // Last, in gguf-split's order (ggml moves a key it sets again
            // to the end).
            let md = w.metadata_mut();
            for key in [SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY, SPLIT_COUNT_KEY] {
                md.remove(key);
            }
            md.insert(SPLIT_NO_KEY, MetadataValue::U16(split_key(no)?));
            md.insert(SPLIT_TENSORS_COUNT_KEY, MetadataValue::I32(total));
            md.insert(SPLIT_COUNT_KEY, MetadataValue::U16(count));
            for &i in tensors {
                let t = file.tensor(&infos[i].name)?;
                w.add_tensor(t.name(), t.dtype(), t.shape(), t.data())?;
            }
            Ok(w)
        })
        .collect()
}

/// One file of every tensor of `file` (a split model, say), with its
/// metadata: llama.cpp's `gguf-split --merge`, which keeps the split keys,
/// `split.count` last and 0.
pub fn merge_writer<S: AsRef<[u8]>>(file: &Gguf<S>) -> Result<GgufWriter<'_>> {
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata().iter() {
        w.set(k, v.clone());
    }
    let md = w.metadata_mut();
    if md.remove(SPLIT_COUNT_KEY).is_some() {
        md.insert(SPLIT_COUNT_KEY, MetadataValue::U16(0));
    }
    for t in file.tensors() {
        let t = t?;
        w.add_tensor(t.name(), t.dtype(), t.shape(), t.data())?;
    }
    Ok(w)
}

/// `n` as a split key's u16.
fn split_key(n: usize) -> Result<u16> {
    u16::try_from(n).map_err(|_| Error::Split(format!("{n} files: at most 65535")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgmlType;

    /// Tensors of 16, 100 and 16 bytes (32, 128 and 32 padded).
    fn file() -> Gguf<Vec<u8>> {
        let mut w = GgufWriter::new();
        w.set(
            "general.architecture",
            MetadataValue::String("llama".into()),
        );
        w.add_tensor("a", GgmlType::F32, &[4], &[1u8; 16]).unwrap();
        w.add_tensor("b", GgmlType::F32, &[25], &[2u8; 100])
            .unwrap();
        w.add_tensor("c", GgmlType::F32, &[4], &[3u8; 16]).unwrap();
        Gguf::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    fn plan(limit: SplitLimit, no_tensor_first_split: bool) -> Result<Vec<Vec<usize>>> {
        plan_split(
            &file(),
            &SplitOptions {
                limit,
                no_tensor_first_split,
            },
        )
    }

    #[test]
    fn plans_count_tensors_or_padded_bytes() {
        assert_eq!(
            plan(SplitLimit::Tensors(1), false).unwrap(),
            [[0], [1], [2]]
        );
        assert_eq!(
            plan(SplitLimit::Tensors(2), true).unwrap(),
            [vec![], vec![0, 1], vec![2]]
        );
        assert_eq!(
            plan(SplitLimit::Bytes(160), false).unwrap(),
            [vec![0, 1], vec![2]]
        );
        assert_eq!(
            plan(SplitLimit::Bytes(159), false).unwrap(),
            [[0], [1], [2]]
        );
        assert_eq!(
            plan(SplitLimit::Bytes(128), true).unwrap(),
            [vec![], vec![0], vec![1], vec![2]]
        );
        // A tensor past the limit gets a file of its own, unless it is the
        // first (llama.cpp's gguf-split fails there too).
        assert_eq!(
            plan(SplitLimit::Bytes(127), false).unwrap(),
            [[0], [1], [2]]
        );
        assert!(plan(SplitLimit::Bytes(31), false).is_err());
        assert!(plan(SplitLimit::Tensors(0), false).is_err());
    }

    #[test]
    fn split_files_read_back_as_the_model_and_merge_to_it() {
        let whole = file();
        let opts = SplitOptions {
            limit: SplitLimit::Tensors(1),
            no_tensor_first_split: true,
        };
        let parts: Vec<Vec<u8>> = split_writers(&whole, &opts)
            .unwrap()
            .iter()
            .map(|w| w.to_bytes().unwrap())
            .collect();
        assert_eq!(parts.len(), 4);
        let split = Gguf::from_splits(parts.clone()).unwrap();
        assert_eq!(split.tensor_infos().len(), 3);
        for t in whole.tensors() {
            let t = t.unwrap();
            assert_eq!(split.tensor(t.name()).unwrap().data(), t.data());
        }
        let merged = Gguf::from_bytes(merge_writer(&split).unwrap().to_bytes().unwrap()).unwrap();
        assert_eq!(
            merged.metadata().get(SPLIT_COUNT_KEY),
            Some(&MetadataValue::U16(0))
        );
        assert_eq!(merged.tensor_infos(), whole.tensor_infos());
        // Out of order, short of a file, or a file twice: refused.
        let mut swapped = parts.clone();
        swapped.swap(1, 2);
        for bad in [
            swapped,
            parts[..3].to_vec(),
            [&parts[..], &parts[3..]].concat(),
        ] {
            assert!(matches!(Gguf::from_splits(bad), Err(Error::Split(_))));
        }
    }
}
