//! What the BPE tokenizer fixture tests share (`tokenizer_o200k.rs`,
//! `tokenizer_gemma4.rs`): a fixture of `tests/fixtures/tokenizer/`, its
//! lists, and its vocabulary as a GGUF file's tokenizer keys.

use std::path::PathBuf;

use realm_core::gguf::{GgufWriter, MetadataArray, MetadataValue};
use serde_json::Value;

/// Fixture `name` (`tests/fixtures/tokenizer/{name}.json`).
pub fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// A GGUF writer holding the fixture's vocabulary (`tokens`,
/// `token_types`, `merges`) as tokenizer `model` with pre-tokenizer
/// `pre`, under architecture `model`; the special ids are the caller's.
pub fn vocabulary(fx: &Value, model: &str, pre: &str) -> GgufWriter<'static> {
    let types: Vec<i32> = fx["token_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap() as i32)
        .collect();
    let mut w = GgufWriter::new();
    let s = |v: &str| MetadataValue::String(v.into());
    w.set("general.architecture", s(model));
    w.set("tokenizer.ggml.model", s(model));
    w.set("tokenizer.ggml.pre", s(pre));
    w.set(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(strings(&fx["tokens"]))),
    );
    w.set(
        "tokenizer.ggml.token_type",
        MetadataValue::Array(MetadataArray::I32(types)),
    );
    w.set(
        "tokenizer.ggml.merges",
        MetadataValue::Array(MetadataArray::String(strings(&fx["merges"]))),
    );
    w
}
