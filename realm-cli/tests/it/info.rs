//! `realm info` on the real models, run as a user runs it.

use crate::common;

use common::{cached, realm};
use realm_core::catalog;
use serde_json::Value;

#[test]
fn info_counts_smollm2_tensors_by_type() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let (ok, stdout, stderr) = realm(&["info", "smollm2", "--json"]);
    assert!(ok, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["tensor_count"], 272);
    assert_eq!(doc["tensors_by_type"]["q8_0"]["tensors"], 1);
    assert_eq!(doc["tensors_by_type"]["q4_1"]["tensors"], 210);
    assert_eq!(doc["tensors_by_type"]["f32"]["tensors"], 61);
    assert_eq!(doc["metadata"]["llama.block_count"]["value"], 30);
    assert_eq!(
        doc["metadata"]["tokenizer.ggml.tokens"]["value"]["len"],
        49152
    );
}

#[test]
fn info_prints_gemma3_table() {
    if !cached(&catalog::GEMMA3) {
        return;
    }
    let (ok, stdout, stderr) = realm(&["info", "gemma3"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("tensors (236):"), "{stdout}");
    assert!(stdout.contains("gemma3.attention.sliding_window"));
    assert!(stdout
        .lines()
        .any(|l| l.trim_start().starts_with("q6_K") && l.contains(" 9 tensors")));
}

#[test]
fn unknown_model_and_bad_file_are_clear_errors() {
    let (ok, _, stderr) = realm(&["info", "no-such-model"]);
    assert!(!ok);
    assert!(stderr.contains("not a file nor a known model"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00\xff").unwrap();
    let (ok, _, stderr) = realm(&["info", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("truncated GGUF"), "{stderr}");
}

/// `realm gguf-split` as a user runs it: a synthetic model split by size
/// and count, read back whole by `realm info` from its first file, merged,
/// and its sizes read as llama-gguf-split reads them.
#[test]
fn gguf_split_splits_merges_and_info_reads_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (m, first, joined) = (at("m.gguf"), at("s-00001-of-00003.gguf"), at("j.gguf"));
    let split = |args: &[&str]| realm(&[&["gguf-split"], args].concat());
    // (files, tensors) as `realm info` counts them.
    let counts = |path: &str| {
        let (ok, stdout, stderr) = realm(&["info", path, "--json"]);
        assert!(ok, "{stderr}");
        let doc: Value = serde_json::from_str(&stdout).unwrap();
        (doc["files"].as_u64(), doc["tensor_count"].as_u64())
    };
    let (ok, _, stderr) = realm(&["synth", "tiny-llama", "-o", &m, "--matrix-type", "q8_0"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = split(&["--split-max-tensors", "8", &m, &at("s")]);
    assert!(ok && stderr.contains("3 files"), "{stderr}");
    assert_eq!(counts(&first), (Some(3), Some(20)));
    let (ok, _, stderr) = split(&["--merge", &first, &joined]);
    assert!(ok, "{stderr}");
    assert_eq!(counts(&joined), (Some(1), Some(20)));
    // Merging onto an existing file, and sizes without a unit, are refused.
    let (ok, _, stderr) = split(&["--merge", &first, &joined]);
    assert!(!ok && stderr.contains("exists"), "{stderr}");
    let (ok, _, stderr) = split(&["--split-max-size", "40", &m, &at("t")]);
    assert!(!ok && stderr.contains("M or G"), "{stderr}");
    // 1M holds the whole model: one file.
    let (ok, _, stderr) = split(&["--split-max-size", "1M", &m, &at("u")]);
    assert!(ok && stderr.contains("1 file\n"), "{stderr}");
}
