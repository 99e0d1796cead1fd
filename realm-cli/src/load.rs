//! Opening a model for the commands that run one.

use std::path::PathBuf;

use anyhow::{Context, Result};
use realm_compute_cpu::{CpuBackend, CpuConfig};
use realm_core::backend::Backend;
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{LoraId, Model};

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

/// LoRA adapters from the command line, as llama.cpp's `--lora` and
/// `--lora-scaled` give them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoraArgs {
    /// A LoRA adapter (a GGUF file in llama.cpp's adapter format, as
    /// convert_lora_to_gguf.py writes it) applied at scale 1. Repeat it, or
    /// separate files by commas, for more.
    #[arg(long = "lora", value_name = "FILE", value_delimiter = ',')]
    pub lora: Vec<PathBuf>,
    /// A LoRA adapter at a scale of its own (0 leaves it out).
    #[arg(long = "lora-scaled", value_name = "FILE:SCALE", value_delimiter = ',', value_parser = parse_scaled)]
    pub lora_scaled: Vec<(PathBuf, f32)>,
}

fn parse_scaled(s: &str) -> Result<(PathBuf, f32), String> {
    let (file, scale) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not FILE:SCALE"))?;
    let scale: f32 = scale
        .parse()
        .map_err(|_| format!("`{scale}` is not a scale"))?;
    if !scale.is_finite() {
        return Err(format!("`{scale}` is not a finite scale"));
    }
    Ok((PathBuf::from(file), scale))
}

/// A LoRA adapter's file, mapped, and its scale.
#[derive(Debug)]
pub struct Adapter {
    pub file: GgufFile,
    /// The path it was given as.
    pub path: String,
    pub scale: f32,
}

impl LoraArgs {
    /// Whether any adapter is given.
    pub fn any(&self) -> bool {
        !self.lora.is_empty() || !self.lora_scaled.is_empty()
    }

    /// The adapters' files and scales, in the order they get their ids:
    /// `--lora`'s (at 1), then `--lora-scaled`'s.
    pub fn list(&self) -> Vec<(PathBuf, f32)> {
        (self.lora.iter().map(|p| (p.clone(), 1.0)))
            .chain(self.lora_scaled.iter().cloned())
            .collect()
    }

    /// The same adapters with every scale 0 (llama.cpp's
    /// `--lora-init-without-apply`), all as `--lora-scaled`'s.
    pub fn unapplied(&self) -> Self {
        Self {
            lora: Vec::new(),
            lora_scaled: self.list().into_iter().map(|(p, _)| (p, 0.0)).collect(),
        }
    }

    /// Maps the adapters' files, in [`LoraArgs::list`]'s order.
    pub fn open(&self) -> Result<Vec<Adapter>> {
        self.list()
            .into_iter()
            .map(|(path, scale)| {
                let file = GgufFile::open(&path)
                    .with_context(|| format!("reading the LoRA adapter {}", path.display()))?;
                Ok(Adapter {
                    file,
                    path: path.display().to_string(),
                    scale,
                })
            })
            .collect()
    }
}

/// Adds `adapters` to `model`, in order: their ids and scales, for
/// [`realm_models::Session::set_loras`].
pub fn add_loras<'a, B: Backend>(
    model: &mut Model<'a, B>,
    adapters: &'a [Adapter],
) -> Result<Vec<(LoraId, f32)>> {
    adapters
        .iter()
        .map(|a| {
            let id = model
                .add_lora(&a.file, a.path.clone())
                .with_context(|| format!("adding the LoRA adapter {}", a.path))?;
            Ok((id, a.scale))
        })
        .collect()
}
