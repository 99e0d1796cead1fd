//! `realm export-lora MODEL --lora A -o OUT`: LoRA adapters merged into a
//! model's weights, as llama.cpp's `llama-export-lora` writes them.

use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_models::lora;

use crate::load::LoraArgs;

/// Arguments of `realm export-lora`.
#[derive(Debug, clap::Args)]
pub struct ExportLoraArgs {
    /// The base model: a GGUF file, or a short name from the model cache.
    pub model: String,
    /// Where to write the merged model.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub lora: LoraArgs,
}

pub fn run(args: &ExportLoraArgs) -> Result<()> {
    if !args.lora.any() {
        bail!("give the adapters to merge: --lora FILE or --lora-scaled FILE:SCALE");
    }
    let start = std::time::Instant::now();
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let base = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let adapters = args.lora.open()?;
    let with: Vec<_> = adapters.iter().map(|a| (&a.file, a.scale)).collect();
    let out = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let merged = lora::merge(&base, &with, BufWriter::new(out)).with_context(|| {
        format!(
            "merging into {} (the output file is incomplete)",
            path.display()
        )
    })?;
    eprintln!(
        "realm: wrote {} ({} tensors merged, {} copied) in {:.1} s",
        args.output.display(),
        merged.merged,
        merged.copied,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
