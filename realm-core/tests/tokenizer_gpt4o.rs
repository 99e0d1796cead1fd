//! The GPT-4o pre-tokenizer (`tokenizer.ggml.pre` gpt-4o: gpt-oss, Llama 4)
//! against llama.cpp, on the byte-level BPE vocabulary its fixture carries
//! (`scripts/gen_gpt4o_fixtures.py`: GPT-2's bytes and first merges,
//! declared gpt-4o). Merges never cross the pre-tokenizer's words, so any
//! difference in splitting shows in the ids. The vocabulary has
//! o200k_harmony's control tokens too: the tokens that end generation are
//! llama.cpp's (`<|end|>` not among them beside `<|return|>` and
//! `<|call|>`).
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use realm_core::gguf::{Gguf, GgufWriter, MetadataArray, MetadataValue};
use realm_core::tokenizer::Tokenizer;
use serde_json::Value;

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/gpt-4o.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// The fixture's vocabulary as a GGUF file's metadata, read back.
fn tokenizer(fx: &Value) -> Tokenizer {
    let tokens = strings(&fx["tokens"]);
    let eot = fx["eot"].as_u64().unwrap() as u32;
    let types: Vec<i32> = fx["token_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap() as i32)
        .collect();
    let mut w = GgufWriter::new();
    let s = |v: &str| MetadataValue::String(v.into());
    w.set("general.architecture", s("gpt2"));
    w.set("tokenizer.ggml.model", s("gpt2"));
    w.set("tokenizer.ggml.pre", s("gpt-4o"));
    w.set(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(tokens)),
    );
    w.set(
        "tokenizer.ggml.token_type",
        MetadataValue::Array(MetadataArray::I32(types)),
    );
    w.set(
        "tokenizer.ggml.merges",
        MetadataValue::Array(MetadataArray::String(strings(&fx["merges"]))),
    );
    w.set("tokenizer.ggml.bos_token_id", MetadataValue::U32(eot));
    w.set("tokenizer.ggml.eos_token_id", MetadataValue::U32(eot));
    let file = Gguf::from_bytes(w.to_bytes().unwrap()).unwrap();
    Tokenizer::from_metadata(file.metadata()).unwrap()
}

#[test]
fn gpt4o_splits_as_llama_cpp() {
    let fx = fixture();
    let tok = tokenizer(&fx);
    assert_eq!(
        tok.eog_ids(),
        ids(&fx["eog"]).as_slice(),
        "end-of-generation tokens"
    );
    let cases = fx["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let shown = tok
            .decode(&ids(&case["ids_special"]), false, false)
            .unwrap();
        if shown != case["decoded_special"].as_str().unwrap() {
            failures.push(format!(
                "decoded {text:?}: got {shown:?}, llama.cpp {}",
                case["decoded_special"]
            ));
        }
        for (special, key) in [(false, "ids"), (true, "ids_special")] {
            let got = tok.encode(text, false, special).unwrap();
            let want = ids(&case[key]);
            if got != want {
                failures.push(format!("{key} {text:?}: got {got:?}, llama.cpp {want:?}"));
            }
        }
    }
    assert!(cases.len() >= 400, "only {} texts", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        3 * cases.len(),
        failures.join("\n")
    );
}
