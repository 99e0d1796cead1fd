//! Opening a model for the commands that run one.

use anyhow::{Context, Result};
use realm_compute_cpu::{CpuBackend, CpuConfig};
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;

/// A mapped model file, its tokenizer and a CPU backend.
pub struct Loaded {
    pub file: GgufFile,
    pub tokenizer: Tokenizer,
    pub backend: CpuBackend,
    pub name: String,
    /// The chat template given instead of the model's (`--chat-template`):
    /// a built-in name or Jinja source.
    pub chat_template: Option<String>,
}

/// Opens MODEL (a path or a short name) with `threads` CPU threads (0: all
/// cores), telling stderr how long it took.
pub fn open(model: &str, threads: usize) -> Result<Loaded> {
    let start = std::time::Instant::now();
    let path = catalog::resolve_model(model).map_err(anyhow::Error::msg)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let tokenizer = Tokenizer::from_metadata(file.metadata()).context("building the tokenizer")?;
    let backend = CpuBackend::with_config(CpuConfig {
        threads,
        ..Default::default()
    })?;
    eprintln!(
        "realm: loaded {} ({} tensors, {} threads, {}) in {:.0} ms",
        path.display(),
        file.tensor_infos().len(),
        backend.threads(),
        realm_core::backend::BackendCore::name(&backend),
        start.elapsed().as_secs_f64() * 1e3
    );
    let name = path
        .file_name()
        .map_or_else(|| model.to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Loaded {
        file,
        tokenizer,
        backend,
        name,
        chat_template: None,
    })
}

/// `--cache-type`: how the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheType {
    /// 32-bit floats (exact).
    #[default]
    F32,
    /// 16-bit floats (half the memory; llama.cpp's default).
    F16,
    /// ggml's Q8_0 (8.5 bits a value, about a quarter of f32's memory; the
    /// CPU backend's).
    #[value(name = "q8_0")]
    Q8_0,
}

impl CacheType {
    /// The type's name, as llama-bench's `type_k` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }
}

impl From<CacheType> for realm_core::backend::KvDtype {
    fn from(c: CacheType) -> Self {
        match c {
            CacheType::F32 => Self::F32,
            CacheType::F16 => Self::F16,
            CacheType::Q8_0 => Self::Q8_0,
        }
    }
}
