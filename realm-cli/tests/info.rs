//! `realm info` on the real models, run as a user runs it.

mod common;

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
