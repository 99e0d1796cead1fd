//! The error type of `realm-models`.

use realm_core::backend::BackendError;
use realm_core::GgmlType;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the file or its metadata failed.
    #[error(transparent)]
    Core(#[from] realm_core::Error),

    /// A backend op failed.
    #[error(transparent)]
    Backend(#[from] BackendError),

    /// `general.architecture` names an architecture Realm does not run.
    #[error(
        "unknown architecture `{0}` (supported: {names})",
        names = crate::config::Architecture::names()
    )]
    UnknownArchitecture(String),

    /// The hyper-parameters do not fit together.
    #[error("bad model config: {0}")]
    BadConfig(String),

    /// A tensor has a shape other than the config implies.
    #[error("tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    BadTensorShape {
        /// The tensor.
        tensor: String,
        /// The shape the config implies (ggml order).
        expected: Vec<u64>,
        /// The shape in the file.
        got: Vec<u64>,
    },

    /// The backend cannot multiply a weight of this type.
    #[error("tensor `{tensor}` has type {dtype}, which the {backend} backend cannot multiply")]
    UnsupportedWeight {
        /// The tensor.
        tensor: String,
        /// Its type.
        dtype: GgmlType,
        /// The backend's name.
        backend: String,
    },

    /// An encoder (an embedding model, named) asked for logits or a
    /// generation.
    #[error("{0} is an embedding model (an encoder): it makes embeddings, not logits")]
    NoLogits(&'static str),

    /// The model needs an op the backend does not have.
    #[error("the model needs {what}, which the {backend} backend does not have")]
    UnsupportedOp {
        /// What the model needs.
        what: &'static str,
        /// The backend's name.
        backend: String,
    },

    /// The sequence would not fit in the session's KV cache.
    #[error("context full: {needed} tokens do not fit in a context of {capacity}")]
    ContextFull {
        /// The session's capacity.
        capacity: usize,
        /// Tokens the request would need.
        needed: usize,
    },

    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary ({vocab_size} tokens)")]
    BadToken {
        /// The id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// A grammar or JSON schema that cannot constrain generation.
    #[error(transparent)]
    Grammar(#[from] crate::grammar::GrammarError),

    /// Tools, a tool choice or a tool reply that cannot be used.
    #[error(transparent)]
    Tools(#[from] crate::tools::ToolError),

    /// A saved session state that cannot be written or restored here.
    #[error("session state: {0}")]
    State(String),

    /// A LoRA adapter that cannot be applied to this model.
    #[error("LoRA adapter: {0}")]
    Lora(String),

    /// Sampling parameters out of range.
    #[error("bad sampling parameter: {0}")]
    BadSampling(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
