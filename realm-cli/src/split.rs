//! `realm gguf-split IN OUT`: a model split into several files, or such
//! files merged into one, as llama.cpp's `llama-gguf-split` writes them
//! (the same bytes). Every command that opens a model opens the first file
//! of a split one as the whole model.

use anyhow::{bail, Context, Result};
use realm_core::gguf::{
    merge_writer, split_suffix, split_writers, GgufFile, SplitLimit, SplitOptions,
};

/// Arguments of `realm gguf-split`.
#[derive(Debug, clap::Args)]
pub struct SplitArgs {
    /// The model (for --merge, the first file of the split one).
    pub input: std::path::PathBuf,
    /// The split files' prefix (`OUT-00001-of-00003.gguf`...), or the
    /// merged file.
    pub output: String,
    /// Merge a split model into one file instead.
    #[arg(long, conflicts_with_all = ["split_max_tensors", "split_max_size", "no_tensor_first_split"])]
    pub merge: bool,
    /// At most this many tensors a file (default 128).
    #[arg(long, value_name = "N", conflicts_with = "split_max_size")]
    pub split_max_tensors: Option<usize>,
    /// At most this much tensor data a file: N followed by M (10^6 bytes)
    /// or G (10^9 bytes).
    #[arg(long, value_name = "N(M|G)", value_parser = parse_size)]
    pub split_max_size: Option<u64>,
    /// The first file holds only the metadata.
    #[arg(long)]
    pub no_tensor_first_split: bool,
    /// Print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `N` followed by `M` or `G`, in decimal units, as llama-gguf-split reads it.
fn parse_size(s: &str) -> Result<u64, String> {
    let unit = match s.chars().last() {
        Some('M') => 1_000_000,
        Some('G') => 1_000_000_000,
        _ => return Err(format!("`{s}`: give a size as N followed by M or G")),
    };
    s[..s.len() - 1]
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{s}`: give a size as N followed by M or G"))
}

pub fn run(args: &SplitArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let file =
        GgufFile::open(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    if args.merge {
        if std::path::Path::new(&args.output).exists() {
            bail!("{} exists: give another output", args.output);
        }
        let w = merge_writer(&file)?;
        eprintln!(
            "realm: {} files, {} tensors",
            file.split_headers().count(),
            file.tensor_infos().len()
        );
        if !args.dry_run {
            w.write_file(&args.output)
                .with_context(|| format!("writing {}", args.output))?;
            eprintln!(
                "realm: wrote {} in {:.1} s",
                args.output,
                start.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    let opts = SplitOptions {
        limit: match args.split_max_size {
            Some(n) => SplitLimit::Bytes(n),
            None => SplitLimit::Tensors(args.split_max_tensors.unwrap_or(128)),
        },
        no_tensor_first_split: args.no_tensor_first_split,
    };
    let writers = split_writers(&file, &opts)?;
    let n = writers.len();
    eprintln!("realm: {n} file{}", if n == 1 { "" } else { "s" });
    for (i, w) in writers.iter().enumerate() {
        let path = format!("{}{}", args.output, split_suffix(i, n));
        if args.dry_run {
            eprintln!("realm: {path}");
            continue;
        }
        w.write_file(&path)
            .with_context(|| format!("writing {path}"))?;
        eprintln!("realm: wrote {path}");
    }
    eprintln!("realm: done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
