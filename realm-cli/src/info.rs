//! `realm info MODEL [--json]`: metadata and tensor table of a GGUF file.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use realm_core::catalog;
use realm_core::gguf::{GgufFile, MetadataArray, MetadataValue};
use serde_json::{json, Value};

/// Arguments of `realm info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    model: String,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Show at most this many items of each metadata array.
    #[arg(long, default_value_t = 8)]
    max_items: usize,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&to_json(&file, args.max_items))?
        )?;
        return Ok(());
    }
    let h = file.header();
    writeln!(out, "file: {}", path.display())?;
    writeln!(
        out,
        "GGUF v{}, {} bytes, alignment {}, data at offset {}",
        h.version(),
        h.file_len(),
        h.alignment(),
        h.data_offset()
    )?;
    let files = file.split_headers().count();
    if files > 1 {
        writeln!(
            out,
            "split over {files} files, {} bytes in all (each tensor's offset is in its own file)",
            file.len()
        )?;
    }
    writeln!(out, "\nmetadata ({} keys):", file.metadata().len())?;
    for (key, value) in file.metadata().iter() {
        let summary = value.display_summary(args.max_items);
        writeln!(
            out,
            "  {key:<44} {:<16} {}",
            value.type_description(),
            one_line(&summary, 160)
        )?;
    }
    let infos = file.tensor_infos();
    writeln!(out, "\ntensors ({}):", infos.len())?;
    writeln!(
        out,
        "  {:<5} {:<40} {:<7} {:<22} {:>12}",
        "#", "name", "type", "shape", "bytes"
    )?;
    for (i, t) in infos.iter().enumerate() {
        let shape = format!("{:?}", t.shape);
        writeln!(
            out,
            "  {i:<5} {:<40} {:<7} {shape:<22} {:>12}",
            t.name,
            t.dtype.name(),
            t.n_bytes
        )?;
    }
    writeln!(out, "\nby type:")?;
    for (ty, (count, bytes)) in by_type(&file) {
        writeln!(out, "  {ty:<7} {count:>5} tensors {bytes:>14} bytes")?;
    }
    let total: u64 = infos.iter().map(|t| t.n_bytes).sum();
    let params: u64 = infos.iter().map(|t| t.n_elements()).sum();
    writeln!(
        out,
        "  total   {:>5} tensors {total:>14} bytes, {params} parameters",
        infos.len()
    )?;
    Ok(())
}

fn by_type(file: &GgufFile) -> BTreeMap<&'static str, (usize, u64)> {
    let mut m = BTreeMap::new();
    for t in file.tensor_infos() {
        let e = m.entry(t.dtype.name()).or_insert((0, 0));
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    m
}

/// Escapes newlines and cuts a long value so each key stays on one line.
fn one_line(s: &str, max_chars: usize) -> String {
    let flat = s.replace('\n', "\\n");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let cut: String = flat.chars().take(max_chars).collect();
    format!("{cut}... ({} chars)", flat.chars().count())
}

fn value_json(v: &MetadataValue, max_items: usize) -> Value {
    match v {
        MetadataValue::String(s) => json!(s),
        MetadataValue::Bool(b) => json!(b),
        MetadataValue::F32(f) => json!(f),
        MetadataValue::F64(f) => json!(f),
        MetadataValue::Array(a) => array_json(a, max_items),
        MetadataValue::U64(x) => json!(x),
        int => match int.as_i128().and_then(|i| i64::try_from(i).ok()) {
            Some(i) => json!(i),
            None => json!(int.to_string()),
        },
    }
}

fn array_json(a: &MetadataArray, max_items: usize) -> Value {
    let items: Vec<Value> = match a {
        MetadataArray::Array(v) => v
            .iter()
            .take(max_items)
            .map(|x| array_json(x, max_items))
            .collect(),
        MetadataArray::String(v) => v.iter().take(max_items).map(|s| json!(s)).collect(),
        other => {
            let text = other.display_summary(max_items);
            return json!({ "type": other.element_type().name(), "len": other.len(), "summary": text });
        }
    };
    json!({ "type": a.element_type().name(), "len": a.len(), "items": items })
}

fn to_json(file: &GgufFile, max_items: usize) -> Value {
    let metadata: serde_json::Map<String, Value> = file
        .metadata()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!({ "type": v.type_description(), "value": value_json(v, max_items) }),
            )
        })
        .collect();
    let tensors: Vec<Value> = file
        .tensor_infos()
        .iter()
        .map(|t| json!({ "name": t.name, "type": t.dtype.name(), "shape": t.shape, "offset": t.offset, "bytes": t.n_bytes }))
        .collect();
    let counts: serde_json::Map<String, Value> = by_type(file)
        .into_iter()
        .map(|(k, (n, b))| (k.to_string(), json!({ "tensors": n, "bytes": b })))
        .collect();
    let h = file.header();
    json!({
        "version": h.version(),
        "file_len": h.file_len(),
        "alignment": h.alignment(),
        "data_offset": h.data_offset(),
        "files": file.split_headers().count(),
        "metadata": metadata,
        "tensor_count": tensors.len(),
        "tensors_by_type": counts,
        "tensors": tensors,
    })
}
