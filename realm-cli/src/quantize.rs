//! `realm quantize INPUT OUTPUT TYPE`: a model file quantized to another
//! type, as llama.cpp's `llama-quantize` writes it (the same tensor types,
//! the same bytes: realm-core's `gguf::quantize` chooses, its quantizers
//! round as ggml's reference ones do).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use realm_core::gguf::quantize::{self, FileType, ImatrixInfo, PlannedTensor, QuantizeOptions};
use realm_core::gguf::{GgufFile, GgufWriter, MetadataValue};
use realm_core::imatrix::Imatrix;
use realm_core::GgmlType;

/// Arguments of `realm quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// The GGUF file to quantize.
    pub input: std::path::PathBuf,
    /// Where to write the quantized file.
    pub output: std::path::PathBuf,
    /// The file type: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
    /// Q2_K_S (with --imatrix), Q3_K_S, Q3_K_M (Q3_K), Q3_K_L, Q4_K_S, Q4_K_M
    /// (Q4_K), Q5_K_S, Q5_K_M (Q5_K), Q6_K, IQ4_NL, IQ4_XS, IQ3_S, IQ3_M,
    /// IQ3_XS, IQ3_XXS, IQ2_M, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_M, IQ1_S (these
    /// six and IQ3_XXS with --imatrix), TQ1_0, TQ2_0, MXFP4_MOE, or
    /// llama.cpp's number for one.
    #[arg(value_parser = parse_file_type)]
    pub file_type: FileType,
    /// Quantize tensors that are quantized already (dequantizing them first
    /// loses more than quantizing the original would).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Every quantized matrix the file type's default type: no mix.
    #[arg(long)]
    pub pure: bool,
    /// Copy output.weight as it is.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// The output matrix's type (f16, q8_0, ...), instead of the mix's.
    #[arg(long, value_parser = parse_tensor_type)]
    pub output_tensor_type: Option<GgmlType>,
    /// The token embedding's type, instead of the mix's.
    #[arg(long, value_parser = parse_tensor_type)]
    pub token_embedding_type: Option<GgmlType>,
    /// An importance matrix (`realm imatrix`'s or llama-imatrix's file):
    /// each matrix it has an entry for is quantized with its columns'
    /// importance, as llama-quantize --imatrix quantizes.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<String>,
    /// Use the importance matrix only for tensors whose name contains this
    /// (repeat).
    #[arg(
        long,
        value_name = "NAME",
        requires = "imatrix",
        conflicts_with = "exclude_weights"
    )]
    pub include_weights: Vec<String>,
    /// Do not use the importance matrix for tensors whose name contains this
    /// (repeat).
    #[arg(long, value_name = "NAME", requires = "imatrix")]
    pub exclude_weights: Vec<String>,
    /// Quantize the matrices whose names match PATTERN (a regular
    /// expression, matched anywhere in the name) to TYPE, in place of the
    /// mix's type: `attn_v=q8_0`, `blk\.[0-3]\.ffn_down=q6_k` (repeat; the
    /// first match wins).
    #[arg(long, value_name = "PATTERN=TYPE", value_parser = parse_tensor_rule)]
    pub tensor_type: Vec<(String, GgmlType)>,
    /// A file of `PATTERN=TYPE` rules, separated by spaces or lines, after
    /// any `--tensor-type`.
    #[arg(long, value_name = "FILE")]
    pub tensor_type_file: Option<std::path::PathBuf>,
    /// Set a metadata key in the output: KEY=int:N (written as a u32 of
    /// |N|, as llama-quantize writes it), KEY=float:X, KEY=bool:true|false
    /// or KEY=str:TEXT (repeat).
    #[arg(long, value_name = "KEY=TYPE:VALUE", value_parser = parse_override)]
    pub override_kv: Vec<(String, MetadataValue)>,
    /// Print each tensor's type and the sizes; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
}

fn parse_file_type(s: &str) -> Result<FileType, String> {
    FileType::parse(s).ok_or_else(|| {
        let names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
        format!("unknown file type `{s}` (one of {})", names.join(", "))
    })
}

pub(crate) fn parse_tensor_type(s: &str) -> Result<GgmlType, String> {
    (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| t.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown tensor type `{s}`"))
}

/// A `--tensor-type` rule: the pattern (lowercased, as llama-quantize
/// reads it) and the type.
fn parse_tensor_rule(s: &str) -> Result<(String, GgmlType), String> {
    let (pattern, ty) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not PATTERN=TYPE"))?;
    if pattern.is_empty() {
        return Err(format!("`{s}` names no tensor"));
    }
    Ok((pattern.to_lowercase(), parse_tensor_type(ty)?))
}

/// An `--override-kv` rule, read as llama.cpp reads one.
pub(crate) fn parse_override(s: &str) -> Result<(String, MetadataValue), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=TYPE:VALUE"))?;
    if key.is_empty() || key.len() >= 128 {
        return Err(format!("`{s}`: a key has 1 to 127 bytes"));
    }
    let bad = |what: &str| format!("`{s}`: {what}");
    let v = if let Some(v) = value.strip_prefix("int:") {
        let n: i64 = v.trim().parse().map_err(|_| bad("not an integer"))?;
        let n = u32::try_from(n.unsigned_abs()).map_err(|_| bad("beyond a u32"))?;
        MetadataValue::U32(n)
    } else if let Some(v) = value.strip_prefix("float:") {
        MetadataValue::F32(v.trim().parse().map_err(|_| bad("not a number"))?)
    } else if let Some(v) = value.strip_prefix("bool:") {
        match v {
            "true" => MetadataValue::Bool(true),
            "false" => MetadataValue::Bool(false),
            _ => return Err(bad("a bool is true or false")),
        }
    } else if let Some(v) = value.strip_prefix("str:") {
        if v.len() > 127 {
            return Err(bad("a string has at most 127 bytes"));
        }
        MetadataValue::String(v.to_string())
    } else {
        return Err(bad("the type is int, float, bool or str"));
    };
    Ok((key.to_string(), v))
}

/// Rows converted per task: enough values that a task outweighs handing
/// it to a thread.
const TASK_VALUES: u64 = 1 << 16;

const MIB: f64 = (1 << 20) as f64;

/// Bytes of a tensor of `shape` as `dtype`.
fn bytes(dtype: GgmlType, shape: &[u64]) -> u64 {
    dtype.row_bytes(shape.iter().product()).unwrap_or(u64::MAX)
}

pub fn run(args: &QuantizeArgs) -> Result<()> {
    let start = Instant::now();
    if let (Ok(a), Ok(b)) = (args.input.canonicalize(), args.output.canonicalize()) {
        if a == b {
            bail!("the output would overwrite the input ({})", a.display());
        }
    }
    let file =
        GgufFile::open(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let imatrix = args
        .imatrix
        .as_deref()
        .map(|f| read_imatrix(args, f))
        .transpose()?;
    let mut tensor_types = args.tensor_type.clone();
    if let Some(f) = &args.tensor_type_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for rule in text.split_whitespace() {
            tensor_types.push(
                parse_tensor_rule(rule)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("in {}", f.display()))?,
            );
        }
    }
    let opts = QuantizeOptions {
        allow_requantize: args.allow_requantize,
        pure: args.pure,
        quantize_output: !args.leave_output_tensor,
        output_type: args.output_tensor_type,
        token_embedding_type: args.token_embedding_type,
        imatrix: imatrix.as_ref().map(|(info, _)| info.clone()),
        tensor_types,
        overrides: args.override_kv.clone(),
        ..QuantizeOptions::new(args.file_type)
    };
    let plan = quantize::plan(&file, &opts)?;
    // Each quantized matrix's importance, checked before anything is
    // written.
    let mut importance = Vec::with_capacity(plan.tensors.len());
    for t in &plan.tensors {
        let cols = t.shape.first().copied().unwrap_or(1) as usize;
        // A mixture's 3-D tensor has one entry an expert.
        let cols = cols * t.shape.get(2).copied().unwrap_or(1) as usize;
        let w = match &imatrix {
            Some((_, m)) if t.to != t.from => m.importance(&t.name),
            _ => None,
        };
        importance.push(match w {
            // A token embedding's entry (of its use as the output matrix)
            // is not its rows' importance: llama-quantize ignores it too.
            Some(w) if w.len() != cols && t.name == "token_embd.weight" => None,
            Some(w) if w.len() != cols => bail!(
                "the importance matrix has {} values for {}, whose rows have {cols}",
                w.len(),
                t.name
            ),
            w => w,
        });
        if t.needs_imatrix && importance.last().is_some_and(Option::is_none) {
            let why = format!(
                "{} would be {} without an importance matrix, which ruins it: \
                 {} needs one (--imatrix) with an entry for every such matrix",
                t.name,
                t.to.name().to_uppercase(),
                args.file_type.name()
            );
            if !args.dry_run {
                bail!(why);
            }
            eprintln!("realm: warning: {why}");
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let n = plan.tensors.len();
    let (mut before, mut after, mut elements) = (0u64, 0u64, 0u64);
    for (i, t) in plan.tensors.iter().enumerate() {
        before += bytes(t.from, &t.shape);
        after += bytes(t.to, &t.shape);
        elements += t.shape.iter().product::<u64>();
        if args.dry_run {
            eprintln!("{}", describe(i, n, t));
        }
    }
    let fell_back = plan.tensors.iter().filter(|t| t.fell_back).count();
    let sizes = format!(
        "{:.2} MiB ({:.2} bits per weight) -> {:.2} MiB ({:.2} bits per weight)",
        before as f64 / MIB,
        before as f64 * 8.0 / elements as f64,
        after as f64 / MIB,
        after as f64 * 8.0 / elements as f64
    );
    if args.dry_run {
        eprintln!("realm: {sizes}; {fell_back} of {n} tensors fell back to a type that fits");
        return Ok(());
    }
    let mut w = GgufWriter::new();
    for (k, v) in plan.metadata.iter() {
        w.set(k, v.clone());
    }
    for ((i, t), imp) in plan.tensors.iter().enumerate().zip(importance) {
        let src = file.tensor(&t.name)?.data();
        if t.to == t.from {
            eprintln!("{}", describe(i, n, t));
            w.add_tensor(&t.name, t.to, &t.shape, src)?;
            continue;
        }
        let pool = &pool;
        w.add_tensor_with(&t.name, t.to, &t.shape, move || {
            let weighted = if imp.is_some() { " (imatrix)" } else { "" };
            eprintln!("{}{weighted}", describe(i, n, t));
            let cols = t.shape.first().copied().unwrap_or(1);
            let row = t.from.row_bytes(cols).unwrap_or(1).max(1) as usize;
            let rows_per_task = (TASK_VALUES / cols.max(1)).max(1) as usize;
            // Each expert of a 3-D tensor with its own importance.
            let experts = t.shape.get(2).copied().unwrap_or(1).max(1) as usize;
            let slice = src.len() / experts;
            let mut out = Vec::with_capacity(bytes(t.to, &t.shape) as usize);
            for e in 0..experts {
                let imp = imp
                    .as_deref()
                    .map(|w| &w[e * cols as usize..(e + 1) * cols as usize]);
                let parts: Vec<Vec<u8>> = pool.install(|| {
                    src[e * slice..(e + 1) * slice]
                        .par_chunks(row * rows_per_task)
                        .map(|rows| quantize::convert_rows_weighted(t.from, t.to, rows, imp))
                        .collect::<realm_core::Result<_>>()
                })?;
                out.extend(parts.into_iter().flatten());
            }
            Ok(out)
        })?;
    }
    let written = w.write_file(&args.output);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&args.output);
        return Err(e).with_context(|| format!("writing {}", args.output.display()));
    }
    eprintln!(
        "realm: wrote {} ({}) in {:.1} s: {sizes}; {fell_back} of {n} tensors fell back to a \
         type that fits",
        args.output.display(),
        args.file_type.name(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The importance matrix in `file`, with `--include-weights` and
/// `--exclude-weights` applied, and what the output's metadata records of
/// it.
fn read_imatrix(args: &QuantizeArgs, file: &str) -> Result<(ImatrixInfo, Imatrix)> {
    let mut m = Imatrix::open(file).with_context(|| format!("reading {file}"))?;
    if !m.has_metadata() {
        bail!("{file} lacks the imatrix.* metadata llama-imatrix writes");
    }
    let named = |n: &str, list: &[String]| list.iter().any(|s| n.contains(s.as_str()));
    if !args.exclude_weights.is_empty() {
        m.retain(|n| !named(n, &args.exclude_weights));
    }
    if !args.include_weights.is_empty() {
        m.retain(|n| named(n, &args.include_weights));
    }
    if let Some(n) = m.names().find(|n| {
        m.importance(n)
            .is_some_and(|w| w.iter().any(|v| !v.is_finite()))
    }) {
        bail!("{file}: the importance of {n} is not finite");
    }
    let info = ImatrixInfo {
        file: file.to_string(),
        dataset: m.datasets.first().cloned(),
        entries: m.len() as u32,
        chunks: m.chunk_count,
    };
    eprintln!(
        "realm: {} importance matrix entries from {file}, collected on {} chunks",
        m.len(),
        m.chunk_count
    );
    Ok((info, m))
}

/// A progress line: `[  3/272] blk.0.attn_k.weight [576, 192] q4_1 -> q8_0`.
fn describe(i: usize, n: usize, t: &PlannedTensor) -> String {
    let change = if t.to == t.from {
        format!("{} (copied)", t.from)
    } else {
        format!(
            "{} -> {}{}",
            t.from,
            t.to,
            if t.fell_back { " (fallback)" } else { "" }
        )
    };
    format!("[{:>4}/{n}] {:<36} {:?} {change}", i + 1, t.name, t.shape)
}
