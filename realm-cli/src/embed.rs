//! `realm embed MODEL -p TEXT`: a text's embedding, as llama.cpp's
//! `llama-embedding` computes it (the final hidden states after the output
//! norm, pooled, then normalised).

use std::io::Write;

use anyhow::{bail, Result};
use realm_core::backend::Backend;
use realm_models::embedding::{self, Pooling};
use realm_models::Model;
use serde_json::json;

use crate::{device, load};

/// Arguments of `realm embed`.
#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    /// A text to embed (repeatable; special tokens' text is read as them).
    #[arg(short, long, required = true)]
    pub prompt: Vec<String>,
    /// none, mean, cls or last (default: the model's `pooling_type`, else
    /// mean).
    #[arg(long, value_parser = parse_pooling)]
    pub pooling: Option<Pooling>,
    /// Normalisation: -1 none, 0 int16 range, 2 unit length, p unit p-norm.
    #[arg(long, default_value_t = 2, allow_hyphen_values = true)]
    pub embd_normalize: i32,
    /// Print OpenAI-style JSON (`{"data": [{"embedding": [...]}]}`).
    #[arg(long)]
    pub json: bool,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Prefill batch size.
    #[arg(short, long, default_value_t = 512)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: device::DeviceArgs,
    #[command(flatten)]
    pub lora: load::LoraArgs,
}

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    Pooling::parse(s)
        .filter(|&p| p != Pooling::Rank)
        .ok_or_else(|| format!("unknown pooling `{s}` (none, mean, cls, last)"))
}

/// The pooling a model's metadata names, else mean (a generative model's
/// usual embedding).
pub fn model_pooling(l: &load::Loaded) -> Pooling {
    let md = l.file.metadata();
    md.get_str("general.architecture")
        .ok()
        .and_then(|arch| md.get_u32(&format!("{arch}.pooling_type")).ok())
        .and_then(Pooling::from_gguf)
        .filter(|&p| p != Pooling::None)
        .unwrap_or(Pooling::Mean)
}

pub fn run(args: &EmbedArgs) -> Result<()> {
    let l = load::open(&args.model, args.threads)?;
    match args.device.device {
        device::Device::Cpu => embed_all(args, &l, &l.backend),
        device::Device::Gpu(_) => embed_all(args, &l, &args.device.gpu()?),
    }
}

fn embed_all<B: Backend>(args: &EmbedArgs, l: &load::Loaded, backend: &B) -> Result<()> {
    let adapters = args.lora.open()?;
    let mut model = Model::load(&l.file, backend)?;
    let loras = load::add_loras(&mut model, &adapters)?;
    let pooling = args.pooling.unwrap_or_else(|| model_pooling(l));
    if pooling == Pooling::Rank {
        bail!("the model ranks (a reranker): score documents with `realm rerank`");
    }
    let prompts = args
        .prompt
        .iter()
        .map(|p| l.tokenizer.encode(p, true, true))
        .collect::<Result<Vec<_>, _>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.iter().any(Vec::is_empty) {
        bail!("a prompt tokenizes to no tokens");
    }
    // (Bidirectional attention reads each prompt in one batch.)
    let batch = match model.config().bidirectional {
        true => longest,
        false => args.batch_size.min(longest),
    };
    let mut session = model.session(longest, batch)?;
    session.set_loras(&loras);
    let mut vectors = Vec::new();
    for ids in &prompts {
        for mut v in embedding::embed(&model, &mut session, ids, pooling)? {
            embedding::normalize(&mut v, args.embd_normalize);
            vectors.push(v);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let data: Vec<_> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
            .collect();
        writeln!(out, "{}", json!({"object": "list", "data": data}))?;
    } else {
        for (i, v) in vectors.iter().enumerate() {
            let values: Vec<String> = v.iter().map(|x| format!("{x:.6}")).collect();
            writeln!(out, "embedding {i}: {}", values.join(" "))?;
        }
    }
    eprintln!(
        "realm: {} embeddings of {} values ({pooling:?} pooling)",
        vectors.len(),
        model.config().d_model
    );
    Ok(())
}
