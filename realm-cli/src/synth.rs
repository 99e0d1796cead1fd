//! `realm synth LAYOUT -o FILE`: a synthetic-weight model with a real
//! model's exact layout, for benchmarks and backend comparisons where the
//! real file is not at hand.

use anyhow::{Context, Result};
use realm_core::gguf::GgufFile;
use realm_models::synthetic::SyntheticLayout;

/// Arguments of `realm synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// A built-in layout (smollm2, gemma3) or a GGUF file whose layout to copy.
    pub layout: String,
    /// Where to write the model.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
    /// Seed of the weights (same seed, same file).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: &SynthArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let layout = match SyntheticLayout::by_name(&args.layout) {
        Some(l) => l,
        None => {
            let file = GgufFile::open(&args.layout).with_context(|| {
                format!(
                    "`{}` is neither a built-in layout (smollm2, gemma3) nor a GGUF file",
                    args.layout
                )
            })?;
            SyntheticLayout::of(&file)?
        }
    };
    let bytes = layout.write(args.seed)?;
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "realm: wrote {} ({} layout, {} tensors, {:.1} MiB) in {:.1} s",
        args.output.display(),
        layout.arch,
        layout.tensors.len(),
        bytes.len() as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
