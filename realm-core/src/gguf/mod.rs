//! GGUF files: a strict reader (memory-mapped, over a byte buffer, or over any
//! `Read + Seek` stream) and a writer.
//!
//! The reader accepts GGUF versions 2 and 3 and checks every count, length,
//! offset and shape against the file's size before using it: a malformed or
//! truncated file is an [`Error`](crate::Error), never a panic, and no
//! allocation is sized by an unchecked field.

mod file;
mod header;
mod metadata;
#[cfg(not(target_arch = "wasm32"))]
pub mod quantize;
mod reader;
mod split;
mod value;
mod writer;

#[cfg(not(target_arch = "wasm32"))]
pub use file::GgufFile;
pub use file::{split_suffix, Gguf, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY};
pub use header::{
    GgufHeader, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DIMS, MAX_NAME_LEN,
};
pub use metadata::Metadata;
pub use reader::GgufReader;
pub use split::{merge_writer, plan_split, split_writers, SplitLimit, SplitOptions};
pub use value::{MetadataArray, MetadataValue, ValueType};
pub use writer::GgufWriter;
