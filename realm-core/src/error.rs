//! The error type of `realm-core`.
//!
//! One enum for the crate; each variant carries the facts a caller needs to
//! say what went wrong (the key, the tensor, the offset), not a bare string.

use std::path::PathBuf;

use crate::GgmlType;

/// Everything that can go wrong in `realm-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An I/O operation on a stream failed.
    #[error("read failed: {0}")]
    Read(#[from] std::io::Error),

    // ---- GGUF structure -------------------------------------------------
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },

    /// The GGUF version is not 2 or 3.
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),

    /// The file ends before a structure it declares.
    #[error("truncated GGUF: {what} at offset {offset} needs {needed} bytes, file has {len}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Length of the file.
        len: u64,
    },

    /// A structural field of the file is invalid.
    #[error("malformed GGUF at offset {offset}: {reason}")]
    Malformed {
        /// Where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    // ---- metadata access --------------------------------------------------
    /// A metadata key the caller needs is absent.
    #[error("metadata key `{key}` is missing")]
    MissingKey {
        /// The key.
        key: String,
    },

    /// A metadata key holds a value of another type.
    #[error("metadata key `{key}` holds {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type the caller asked for.
        expected: &'static str,
        /// The type found.
        found: String,
    },

    // ---- tensors ---------------------------------------------------------
    /// A tensor's type id is not a type ggml defines.
    #[error("tensor `{tensor}` has unknown type id {id}")]
    UnknownTensorType {
        /// The tensor's name.
        tensor: String,
        /// The id found.
        id: u32,
    },

    /// No tensor has this name.
    #[error("tensor `{0}` not found")]
    TensorNotFound(String),

    /// The files of a split model do not make one model.
    #[error("split model: {0}")]
    Split(String),

    /// An operation does not support this tensor type.
    #[error("{op} does not support type {dtype}")]
    UnsupportedType {
        /// The operation.
        op: &'static str,
        /// The type.
        dtype: GgmlType,
    },

    /// A buffer's length does not fit the element count or block layout.
    #[error("{what}: expected {expected} bytes/elements, got {got}")]
    SizeMismatch {
        /// What was being checked.
        what: String,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },

    // ---- importance matrices -----------------------------------------------
    /// An importance matrix file is malformed, or does not fit a model.
    #[error("importance matrix: {0}")]
    Imatrix(String),

    /// The type is quantized only with an importance matrix (ggml's
    /// quantizers for it need one); see `quant::quantize_weighted`.
    #[error("quantizing to {0} needs an importance matrix (`realm imatrix` makes one)")]
    ImportanceRequired(GgmlType),

    // ---- tokenizer -------------------------------------------------------
    /// The tokenizer described by the metadata cannot be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
