//! `realm synth LAYOUT -o FILE`: a synthetic-weight model with a real
//! model's exact layout, for benchmarks and backend comparisons where the
//! real file is not at hand.

use anyhow::{Context, Result};
use realm_core::gguf::GgufFile;
use realm_models::synthetic::{SyntheticLayout, SyntheticLora};

/// Arguments of `realm synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// A built-in layout (smollm2, gemma3, gpt-oss-20b; tiny-ARCH for a
    /// two-layer model of any architecture Realm runs, tiny-mixtral,
    /// tiny-mistral3-moe) or a
    /// GGUF file whose layout to copy.
    pub layout: String,
    /// Keep only the first N blocks (a cheaper model of the same width).
    #[arg(long, value_name = "N")]
    pub layers: Option<u32>,
    /// Where to write the model.
    #[arg(short, long)]
    pub output: std::path::PathBuf,
    /// Seed of the weights (same seed, same file).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Store every matrix as this type (f32, f16, q8_0, q4_k...).
    #[arg(long, value_name = "TYPE", value_parser = crate::quantize::parse_tensor_type)]
    pub matrix_type: Option<realm_core::GgmlType>,
    /// Add Llama 3.1's RoPE frequency factors (a `rope_freqs.weight`).
    #[arg(long, conflicts_with = "long_rope")]
    pub rope_factors: bool,
    /// Add LongRoPE's factors (Phi 3.5's `rope_factors_short` and
    /// `rope_factors_long`) for an original context of this many tokens,
    /// and the attention factor for the model's context (after
    /// --override-kv).
    #[arg(long, value_name = "TOKENS")]
    pub long_rope: Option<u32>,
    /// Set a hyper-parameter, as llama.cpp's --override-kv writes one
    /// (`gemma3.rope.scaling.factor=float:8`).
    #[arg(long, value_name = "KEY=TYPE:VALUE", value_parser = crate::quantize::parse_override)]
    pub override_kv: Vec<(String, realm_core::gguf::MetadataValue)>,
    /// Take this GGUF file's vocabulary (its `tokenizer.*` keys) for the
    /// synthetic one, the embeddings resized to it: a model that tokenizes
    /// as that file does (llama.cpp's `ggml-vocab-*.gguf`).
    #[arg(long, value_name = "GGUF")]
    pub vocab: Option<std::path::PathBuf>,
    /// Write a LoRA adapter of this rank for the layout's model instead
    /// (llama.cpp's adapter format; seeded values, as `SyntheticLora`).
    #[arg(long, value_name = "RANK")]
    pub lora: Option<usize>,
    /// With --lora: the adapter's alpha (0: no alpha / rank factor).
    #[arg(long, default_value_t = 0.0, requires = "lora")]
    pub alpha: f32,
    /// With --lora: the matrices of each block it changes (default: all
    /// seven; `output` for the output matrix).
    #[arg(long, value_delimiter = ',', requires = "lora",
          value_parser = ["attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "output"])]
    pub targets: Vec<String>,
    /// With --lora: the largest magnitude of lora_b's values (how far the
    /// adapter moves the model).
    #[arg(long, default_value_t = 0.02, requires = "lora")]
    pub amplitude: f32,
}

pub fn run(args: &SynthArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let mut layout = match SyntheticLayout::by_name(&args.layout) {
        Some(l) => l,
        None => {
            let file = GgufFile::open(&args.layout).with_context(|| {
                format!(
                    "`{}` is neither a built-in layout (smollm2, gemma3, gpt-oss-20b, tiny-ARCH) \
                     nor a GGUF file",
                    args.layout
                )
            })?;
            SyntheticLayout::of(&file)?
        }
    };
    if let Some(n) = args.layers {
        layout = layout.with_layers(n)?;
    }
    if let Some(path) = &args.vocab {
        let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
        layout = layout.with_vocab(file.metadata())?;
    }
    if let Some(t) = args.matrix_type {
        layout = layout.with_matrix_type(t);
    }
    for (k, v) in &args.override_kv {
        layout = layout.with_hparam(k, v.clone());
    }
    if args.rope_factors {
        layout = layout.with_rope_factors()?;
    }
    if let Some(n) = args.long_rope {
        layout = layout.with_long_rope(n)?;
    }
    let (bytes, what) = match args.lora {
        Some(rank) => {
            let mut lora = SyntheticLora::new(rank, args.alpha);
            lora.amplitude = args.amplitude;
            if !args.targets.is_empty() {
                lora.targets = args.targets.clone();
            }
            (lora.write_for(&layout, args.seed)?, "LoRA adapter for the ")
        }
        None => (layout.write(args.seed)?, ""),
    };
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "realm: wrote {} ({what}{} layout, {} tensors, {:.1} MiB) in {:.1} s",
        args.output.display(),
        layout.arch,
        GgufFile::open(&args.output)?.tensor_infos().len(),
        bytes.len() as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
