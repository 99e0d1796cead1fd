//! `realm perplexity MODEL -f TEXT`: a model's perplexity on a text, as
//! llama.cpp's `llama-perplexity` measures it, so that the two figures
//! compare.
//!
//! The text is tokenized whole (with the model's beginning-of-sequence
//! token if it adds one) and cut into chunks of `-c` tokens; a chunk's
//! first token is replaced by the beginning-of-sequence token when the
//! model adds one. Each chunk runs in a fresh KV cache, and only the
//! tokens of its second half are scored, so that every scored token has at
//! least half a context before it. Perplexity is `exp` of the mean negative
//! log-likelihood; its uncertainty is that of the mean, carried through
//! `exp`.
//!
//! With `--kl-divergence BASE` a second model (the same vocabulary: the
//! original of a quantized file, say) runs every chunk too, and each scored
//! token compares the two distributions ([`crate::divergence`]): the
//! figures llama-perplexity's `--kl-divergence` prints, without its file of
//! the base's log-probabilities.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use realm_core::backend::Backend;
use realm_core::gguf::GgufFile;
use realm_models::{LogProbs, Model};

use crate::divergence::Stats;
use crate::{device, load};

/// Arguments of `realm perplexity`.
#[derive(Debug, clap::Args)]
pub struct PerplexityArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    /// The text to score (UTF-8; special tokens in it are plain text).
    #[arg(short, long)]
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub run: ChunkArgs,
    /// A base model (same vocabulary) to compare with: KL divergence, top
    /// token agreement and probability differences per scored token.
    #[arg(long, value_name = "BASE")]
    pub kl_divergence: Option<String>,
    /// LoRA adapters of the model scored (not of the base: `--lora A
    /// --kl-divergence MODEL` measures what the adapter changes).
    #[command(flatten)]
    pub lora: load::LoraArgs,
    #[command(flatten)]
    pub device: device::DeviceArgs,
}

/// How a text is cut and run: llama-perplexity's and llama-imatrix's
/// options of the same names.
#[derive(Debug, clap::Args)]
pub struct ChunkArgs {
    /// Tokens per chunk (llama.cpp's default).
    #[arg(short = 'c', long, default_value_t = 512)]
    pub ctx_size: usize,
    /// Prefill batch size (at most a chunk).
    #[arg(short, long, default_value_t = 512)]
    pub batch_size: usize,
    /// Run only the first N chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// KV cache element type (llama.cpp's default is f16).
    #[arg(long, value_enum, default_value_t = load::CacheType::F32)]
    pub cache_type: load::CacheType,
}

/// Sums of negative log-likelihoods over scored tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Nll {
    sum: f64,
    sum_sq: f64,
    count: usize,
}

impl Nll {
    /// Adds one scored token's negative log-likelihood.
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum_sq += nll * nll;
        self.count += 1;
    }

    /// `exp` of the mean negative log-likelihood.
    pub fn perplexity(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama.cpp's last line: `Final estimate: PPL = X +/- Y`.
    pub fn final_estimate(&self) -> String {
        match self.uncertainty() {
            Some(u) => format!("Final estimate: PPL = {:.4} +/- {u:.5}", self.perplexity()),
            None => format!("Final estimate: PPL = {:.4}", self.perplexity()),
        }
    }

    /// The standard error of the perplexity: that of the mean negative
    /// log-likelihood, times the perplexity (none for fewer than two
    /// tokens).
    pub fn uncertainty(&self) -> Option<f64> {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        (self.count > 1 && var > 0.0).then(|| (var / (n - 1.0)).sqrt() * self.perplexity())
    }
}

pub fn run(args: &PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let l = load::open(&args.model, args.run.threads)?;
    match args.device.device {
        device::Device::Cpu => score(args, &l, &l.backend, &text),
        device::Device::Gpu(_) => score(args, &l, &args.device.gpu()?, &text),
    }
}

fn score<B: Backend>(
    args: &PerplexityArgs,
    l: &load::Loaded,
    backend: &B,
    text: &str,
) -> Result<()> {
    let adapters = args.lora.open()?;
    let mut model = Model::load(&l.file, backend)?;
    model.check_logits()?;
    let loras = load::add_loras(&mut model, &adapters)?;
    let base_file = match &args.kl_divergence {
        Some(name) => {
            let path = realm_core::catalog::resolve_model(name).map_err(anyhow::Error::msg)?;
            Some(GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let base = base_file
        .as_ref()
        .map(|f| Model::load(f, backend))
        .transpose()?;
    if let Some(b) = &base {
        let (v, vb) = (model.config().vocab_size, b.config().vocab_size);
        if v != vb {
            bail!("the base model's vocabulary has {vb} tokens, this model's {v}: no comparison");
        }
    }
    let text = Chunks::new(l, text, &args.file, &args.run)?;
    let (ctx, n_chunks) = (text.ctx, text.n_chunks);
    let first = ctx / 2;
    eprintln!(
        "realm: {} tokens; scoring {n_chunks} chunks of {ctx}, the last {} tokens of each",
        text.tokens.len(),
        ctx - first - 1
    );
    let batch = args.run.batch_size.min(ctx);
    let mut session = model.session_with_kv(ctx, batch, args.run.cache_type.into())?;
    session.set_loras(&loras);
    let mut base_session = base
        .as_ref()
        .map(|b| b.session_with_kv(ctx, batch, args.run.cache_type.into()))
        .transpose()?;
    let mut nll = Nll::default();
    let mut stats = Stats::default();
    let vocab = model.config().vocab_size;
    let mut base_rows: Vec<f32> = Vec::new();
    let mut out = std::io::stdout().lock();
    if base.is_some() {
        writeln!(out, "{}", Stats::header())?;
    }
    let start = Instant::now();
    for c in 0..n_chunks {
        let chunk = text.chunk(c);
        // The base's logits of the scored positions, kept for the model's.
        base_rows.clear();
        if let (Some(b), Some(s)) = (&base, base_session.as_mut()) {
            s.truncate(0);
            b.forward_outputs(s, &chunk, first, |i, logits| {
                if i + 1 < chunk.len() {
                    base_rows.extend_from_slice(logits);
                }
            })?;
        }
        session.truncate(0);
        let mut missing = None;
        model.forward_outputs(&mut session, &chunk, first, |i, logits| {
            // The last position predicts the next chunk's first token: not
            // scored, as in llama-perplexity.
            let Some(&next) = chunk.get(i + 1) else {
                return;
            };
            let lp = LogProbs::new(logits);
            match lp.of(next) {
                Some(v) => nll.add(-v),
                None => missing = Some(next),
            }
            let row = base_rows.get((i - first) * vocab..(i - first + 1) * vocab);
            if let Some(d) = row.and_then(|r| lp.divergence(&LogProbs::new(r), next)) {
                stats.add(&d);
            }
        })?;
        if let Some(t) = missing {
            bail!("token {t} has no logit");
        }
        if base.is_some() {
            writeln!(out, "{}", stats.line(c + 1))?;
        } else {
            write!(out, "[{}]{:.4},", c + 1, nll.perplexity())?;
            out.flush()?;
        }
    }
    writeln!(out)?;
    if let Some(summary) = stats.summary() {
        write!(out, "{summary}")?;
    }
    let secs = start.elapsed().as_secs_f64();
    writeln!(out, "{}", nll.final_estimate())?;
    eprintln!(
        "realm: {} tokens run, {} scored, in {secs:.2} s ({:.1} t/s)",
        n_chunks * ctx,
        nll.count,
        (n_chunks * ctx) as f64 / secs
    );
    Ok(())
}

/// A text tokenized whole and cut into chunks, as llama-perplexity and
/// llama-imatrix cut it.
pub struct Chunks {
    /// The text's tokens (with the model's beginning-of-sequence token if
    /// it adds one).
    pub tokens: Vec<u32>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks to run.
    pub n_chunks: usize,
    bos: Option<u32>,
}

impl Chunks {
    /// `text` (read from `file`) in chunks of `run.ctx_size` tokens, at
    /// most `run.chunks` of them; the text must fill two.
    pub fn new(
        l: &load::Loaded,
        text: &str,
        file: &std::path::Path,
        run: &ChunkArgs,
    ) -> Result<Self> {
        let (ctx, limit) = (run.ctx_size, run.chunks);
        if ctx < 4 {
            bail!("a chunk needs at least 4 tokens (-c)");
        }
        let tokens = l.tokenizer.encode(text, true, false)?;
        if tokens.len() < 2 * ctx {
            bail!(
                "{} tokenizes to {} tokens; a context of {ctx} needs at least {} (lower -c)",
                file.display(),
                tokens.len(),
                2 * ctx
            );
        }
        let n_chunks = (tokens.len() / ctx).min(limit.unwrap_or(usize::MAX));
        if n_chunks == 0 {
            bail!("--chunks must be at least 1");
        }
        let bos = match (l.tokenizer.add_bos(), l.tokenizer.bos()) {
            (true, Some(b)) => Some(b),
            (true, None) => bail!("the model adds a beginning-of-sequence token but has none"),
            (false, _) => None,
        };
        Ok(Self {
            tokens,
            ctx,
            n_chunks,
            bos,
        })
    }

    /// Chunk `c`: its first token replaced by the beginning-of-sequence
    /// token when the model adds one.
    pub fn chunk(&self, c: usize) -> Vec<u32> {
        let mut chunk = self.tokens[c * self.ctx..(c + 1) * self.ctx].to_vec();
        if let Some(b) = self.bos {
            chunk[0] = b;
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_and_its_uncertainty() {
        let mut n = Nll::default();
        n.add(1.0);
        assert_eq!(n.uncertainty(), None);
        n.add(3.0);
        // Mean 2, population variance 1, standard error sqrt(1 / 1).
        assert!((n.perplexity() - 2f64.exp()).abs() < 1e-12);
        assert!((n.uncertainty().unwrap() - 2f64.exp()).abs() < 1e-12);
    }
}
