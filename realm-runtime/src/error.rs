//! The runtime's error type.

use std::time::Duration;

use crate::ModelId;

/// What the runtime can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A GGUF file could not be read or parsed.
    #[error("model file: {0}")]
    Core(#[from] realm_core::Error),
    /// A model could not be loaded or run.
    #[error("model: {0}")]
    Model(#[from] realm_models::Error),
    /// The CPU backend could not be set up.
    #[error("backend: {0}")]
    Backend(#[from] realm_core::backend::BackendError),
    /// Wasmtime could not be configured, or a module compiled or instantiated.
    #[error("wasm: {0}")]
    Wasm(String),
    /// The guest trapped (unreachable, out-of-bounds access, stack overflow)
    /// or called a host function wrongly (bad pointer, foreign or dropped
    /// handle, calls out of order). Its instance and sessions were dropped.
    #[error("guest failed: {0}")]
    Guest(String),
    /// The guest ran past its time limit and was interrupted.
    #[error("guest ran past its time limit of {0:?}")]
    TimeLimit(Duration),
    /// The guest tried to grow its memory past its limit.
    #[error("guest exceeded its memory limit of {0} bytes")]
    MemoryLimit(u64),
    /// The guest's `generate` returned a negative status (see `ABI.md`).
    #[error("guest returned status {0}")]
    GuestStatus(i32),
    /// No model with this id is loaded.
    #[error("no model `{0}` is loaded")]
    UnknownModel(ModelId),
    /// The model is still granted to tenants.
    #[error("model `{0}` is still held by {1} tenant(s)")]
    ModelInUse(ModelId, usize),
    /// A request named a model not granted to the tenant.
    #[error("model `{0}` is not granted to this tenant")]
    NotGranted(ModelId),
    /// A configuration value is out of range.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
