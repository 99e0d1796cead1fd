//! `realm imatrix MODEL -f TEXT`: an importance matrix, as llama.cpp's
//! `llama-imatrix` collects it, for `realm quantize --imatrix`.
//!
//! The text is cut into chunks as `realm perplexity` cuts it (`-c` tokens,
//! the first one the beginning-of-sequence token where the model adds one),
//! each chunk runs in a fresh KV cache, and the input rows of every block
//! matrix's product (with `--process-output`, an untied output matrix's
//! too) are squared and summed per column. The perplexity of the chunks'
//! second halves is printed on the way, as llama-imatrix prints it. The
//! matrix is written as llama-imatrix's GGUF file; `--in-file` adds earlier
//! ones (and without `-f` only combines them).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use realm_core::backend::Backend;
use realm_core::imatrix::Imatrix;
use realm_models::{LogProbs, Model};

use crate::perplexity::{ChunkArgs, Chunks, Nll};
use crate::{device, load};

/// Arguments of `realm imatrix`.
#[derive(Debug, clap::Args)]
pub struct ImatrixArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    #[arg(required_unless_present = "show_statistics")]
    pub model: Option<String>,
    /// The text to run (UTF-8; special tokens in it are plain text).
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Where to write the matrix.
    #[arg(short, long, default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Earlier matrices to add this one to (repeat).
    #[arg(long = "in-file", value_name = "FILE")]
    pub in_files: Vec<PathBuf>,
    #[command(flatten)]
    pub run: ChunkArgs,
    /// Collect the output matrix's inputs too (an untied `output.weight`).
    #[arg(long)]
    pub process_output: bool,
    /// Do not compute the perplexity on the way.
    #[arg(long)]
    pub no_ppl: bool,
    /// Print the statistics of the one `--in-file` matrix, as llama-imatrix
    /// prints them, and nothing else: per matrix its mean squared
    /// activations' sum, extremes, mean, deviation, share active, entropy,
    /// share more than a deviation above the mean (ZD) and cosine with the
    /// block before; then per block their averages weighted by size.
    #[arg(long, conflicts_with_all = ["file", "model"], requires = "in_files")]
    pub show_statistics: bool,
    #[command(flatten)]
    pub device: device::DeviceArgs,
}

pub fn run(args: &ImatrixArgs) -> Result<()> {
    if args.show_statistics {
        let [f] = &args.in_files[..] else {
            bail!("--show-statistics reads one matrix (--in-file)");
        };
        let m = Imatrix::open(f).with_context(|| format!("reading {}", f.display()))?;
        return show_statistics(&m, &f.display().to_string());
    }
    let mut matrix = Imatrix::new(args.run.ctx_size.try_into().context("-c is too large")?);
    for f in &args.in_files {
        let m = Imatrix::open(f).with_context(|| format!("reading {}", f.display()))?;
        matrix.merge(&m)?;
        eprintln!(
            "realm: added {} ({} matrices, {} chunks)",
            f.display(),
            m.len(),
            m.chunk_count
        );
    }
    if let Some(file) = &args.file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let model = args.model.as_deref().context("no model")?;
        let l = load::open(model, args.run.threads)?;
        matrix = match args.device.device {
            device::Device::Cpu => collect(args, &l, &l.backend, file, &text, matrix)?,
            device::Device::Gpu(_) => collect(args, &l, &args.device.gpu()?, file, &text, matrix)?,
        };
    } else if args.in_files.is_empty() {
        bail!("nothing to do: give a text (-f) or matrices to combine (--in-file)");
    }
    matrix
        .to_gguf()?
        .write_file(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "realm: wrote {} matrices, {} chunks of {}, to {}",
        matrix.len(),
        matrix.chunk_count,
        matrix.chunk_size,
        args.output.display()
    );
    Ok(())
}

fn collect<B: Backend>(
    args: &ImatrixArgs,
    l: &load::Loaded,
    backend: &B,
    file: &std::path::Path,
    text: &str,
    mut matrix: Imatrix,
) -> Result<Imatrix> {
    let model = Model::load(&l.file, backend)?;
    model.check_logits()?;
    let text = Chunks::new(l, text, file, &args.run)?;
    let (ctx, n_chunks) = (text.ctx, text.n_chunks);
    eprintln!(
        "realm: {} tokens; running {n_chunks} chunks of {ctx}",
        text.tokens.len()
    );
    let mut session = model.session_with_kv(
        ctx,
        args.run.batch_size.min(ctx),
        args.run.cache_type.into(),
    )?;
    // Logits are computed only where they are read: the scored half, or
    // every row when the output matrix is collected.
    let first = ctx / 2;
    let from = if args.process_output { 0 } else { first };
    let mut nll = Nll::default();
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    session.collect_imatrix(matrix, args.process_output);
    for c in 0..n_chunks {
        let chunk = text.chunk(c);
        session.truncate(0);
        if args.no_ppl && !args.process_output {
            model.forward(&mut session, &chunk)?;
            continue;
        }
        let mut missing = None;
        model.forward_outputs(&mut session, &chunk, from, |i, logits| {
            if args.no_ppl || i < first {
                return;
            }
            let Some(&next) = chunk.get(i + 1) else {
                return;
            };
            match LogProbs::new(logits).of(next) {
                Some(v) => nll.add(-v),
                None => missing = Some(next),
            }
        })?;
        if let Some(t) = missing {
            bail!("token {t} has no logit");
        }
        if !args.no_ppl {
            write!(out, "[{}]{:.4},", c + 1, nll.perplexity())?;
            out.flush()?;
        }
    }
    matrix = session
        .take_imatrix()
        .context("the session lost its importance matrix")?;
    matrix.chunk_count = matrix
        .chunk_count
        .saturating_add(n_chunks.try_into().unwrap_or(u32::MAX));
    matrix.datasets.push(file.display().to_string());
    if !args.no_ppl {
        writeln!(out, "\n{}", nll.final_estimate())?;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "realm: {} tokens run in {secs:.2} s ({:.1} t/s)",
        n_chunks * ctx,
        (n_chunks * ctx) as f64 / secs
    );
    Ok(matrix)
}

/// llama-imatrix's `--show-statistics` tables, to stdout.
fn show_statistics(m: &Imatrix, file: &str) -> Result<()> {
    let stats = m.statistics();
    if stats.is_empty() {
        bail!("{file}: no matrix has a count");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "Statistics of {file} ({} matrices)\n", stats.len())?;
    writeln!(
        out,
        "{:>5} {:<20} {:>12} {:>9} {:>11} {:>8} {:>8} {:>9} {:>6} {:>10} {:>9} {:>8} {:>8}",
        "Layer",
        "Tensor",
        "Σ(Act²)",
        "Min",
        "Max",
        "μ",
        "σ",
        "% Active",
        "N",
        "Entropy",
        "E (norm)",
        "ZD",
        "CosSim"
    )?;
    // Per block: sums of size-weighted figures, and the sizes.
    let mut blocks: std::collections::BTreeMap<u32, [f32; 4]> = Default::default();
    for s in &stats {
        let layer = s.layer.map_or("-".to_string(), |l| l.to_string());
        writeln!(
            out,
            "{layer:>5} {:<20} {:>12.2} {:>9.4} {:>11.4} {:>8.2} {:>8.2} {:>8.2}% {:>6} {:>10.4} {:>8.2}% {:>7.2}% {:>8.4}",
            s.tensor,
            s.sum,
            s.min,
            s.max,
            s.mean,
            s.stddev,
            100.0 * s.active,
            s.elements,
            s.entropy,
            s.entropy_norm(),
            100.0 * s.zd,
            s.cossim
        )?;
        if let Some(l) = s.layer {
            let n = s.elements as f32;
            let b = blocks.entry(l).or_default();
            b[0] += n * s.sum;
            b[1] += n * s.zd;
            b[2] += n * s.cossim;
            b[3] += n;
        }
    }
    writeln!(
        out,
        "\nPer block, weighted by size ({} blocks)\n",
        blocks.len()
    )?;
    writeln!(
        out,
        "{:>5} {:>14} {:>10} {:>8}",
        "Layer", "μΣ(Act²)", "μZD", "μCosSim"
    )?;
    for (l, [sum, zd, cos, n]) in blocks {
        writeln!(
            out,
            "{l:>5} {:>14.2} {:>9.4}% {:>8.4}",
            sum / n,
            100.0 * zd / n,
            cos / n
        )?;
    }
    Ok(())
}
