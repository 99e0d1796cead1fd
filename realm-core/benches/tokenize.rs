//! Encode throughput of the real tokenizers on ~1 MiB of mixed text, and
//! the time to build the largest one (XLM-RoBERTa's 250k unigram pieces).
//!
//! The text is the SmolLM2 golden corpus (prose, code, numbers, accents,
//! CJK, Arabic, emoji, special-token look-alikes) repeated to 1 MiB, the same
//! text `scripts/bench_llama_tokenize.py` times llama.cpp on. Models come
//! from `$REALM_MODELS` (default `~/.cache/realm/models`); missing ones are
//! skipped.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;

fn bench_text() -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/smollm2.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let texts: Vec<&str> = fx["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect();
    let unit = texts.join("\n");
    let mut text = String::new();
    while text.len() < 1 << 20 {
        text.push_str(&unit);
        text.push('\n');
    }
    text
}

fn bench(c: &mut Criterion) {
    let dir = match std::env::var_os("REALM_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/realm/models")
        }
    };
    let text = bench_text();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for (name, file) in [
        ("gemma3-spm", "gemma-3-270m-q4_k_m.gguf"),
        ("smollm2-bpe", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("nomic-ugm", "vocab/ggml-vocab-nomic-bert-moe.gguf"),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            eprintln!("skipping {name}: {} not found", path.display());
            continue;
        }
        let gguf = GgufFile::open(&path).expect("open");
        let tok = Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer");
        group.bench_function(name, |b| {
            b.iter(|| tok.encode(&text, false, false).expect("encode"))
        });
    }
    group.finish();

    let path = dir.join("vocab/ggml-vocab-nomic-bert-moe.gguf");
    if path.exists() {
        let mut group = c.benchmark_group("load");
        group.sample_size(10);
        let gguf = GgufFile::open(&path).expect("open");
        group.bench_function("nomic-ugm", |b| {
            b.iter(|| Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer"))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
