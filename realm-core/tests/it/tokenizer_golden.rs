//! Golden tests against llama.cpp: every fixture in
//! `tests/fixtures/tokenizer/` (written by `scripts/gen_tokenizer_fixtures.py`)
//! holds a corpus of strings with llama.cpp's ids and detokenized text for one
//! model. The model files are read from `$REALM_MODELS` (default
//! `~/.cache/realm/models`); a missing file skips its fixture with a message.
//! A fixture with a `metadata` field was made from a copy of its model's
//! file with those keys set; the test sets them on the vocabulary too. A
//! fixture with a `vocab` field instead of a model file holds a hand-made
//! vocabulary's GGUF keys whole: the test reads them as the metadata.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use realm_core::gguf::{GgufFile, Metadata, MetadataArray, MetadataValue};
use realm_core::tokenizer::{Tokenizer, Vocab};
use serde_json::Value;

fn models_dir() -> PathBuf {
    match std::env::var_os("REALM_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/realm/models")
        }
    }
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/tokenizer/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// The metadata a fixture's `vocab` field describes (GGUF keys; the
/// character map in hex).
fn toy_metadata(keys: &Value) -> Metadata {
    let list = |v: &Value| v.as_array().expect("array").clone();
    let mut md = Metadata::new();
    for (key, value) in keys.as_object().expect("vocab keys") {
        let v = match (key.as_str(), value) {
            ("tokenizer.ggml.tokens", v) => MetadataValue::Array(MetadataArray::String(
                list(v)
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect(),
            )),
            ("tokenizer.ggml.scores", v) => MetadataValue::Array(MetadataArray::F32(
                list(v).iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            )),
            ("tokenizer.ggml.token_type", v) => MetadataValue::Array(MetadataArray::I32(
                list(v).iter().map(|x| x.as_i64().unwrap() as i32).collect(),
            )),
            ("tokenizer.ggml.precompiled_charsmap", Value::String(hex)) => {
                MetadataValue::Array(MetadataArray::U8(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                ))
            }
            (_, Value::Bool(b)) => MetadataValue::Bool(*b),
            (_, Value::String(s)) => MetadataValue::String(s.clone()),
            (_, other) => panic!("vocab key `{key}` holds {other}"),
        };
        md.insert(key.as_str(), v);
    }
    md
}

/// The tokenizer of the fixture's model, or `None` (with a message) when the
/// model file is not there.
fn load(fx: &Value) -> Option<Tokenizer> {
    if let Some(keys) = fx.get("vocab") {
        return Some(Tokenizer::from_metadata(&toy_metadata(keys)).expect("tokenizer"));
    }
    let path = models_dir().join(fx["model"].as_str().expect("model"));
    if !path.exists() {
        eprintln!(
            "skipping: model file {} not found (set REALM_MODELS)",
            path.display()
        );
        return None;
    }
    let file = GgufFile::open(&path).expect("open model");
    let mut vocab = Vocab::from_metadata(file.metadata()).expect("vocabulary");
    if let Some(keys) = fx.get("metadata").and_then(Value::as_object) {
        for (key, value) in keys {
            let value = value.as_bool();
            match key.as_str() {
                "tokenizer.ggml.normalizer.lowercase" => vocab.lowercase = value,
                "tokenizer.ggml.normalizer.strip_accents" => vocab.strip_accents = value,
                "tokenizer.ggml.remove_extra_whitespaces" => vocab.remove_extra_whitespaces = value,
                "tokenizer.ggml.add_space_prefix" => vocab.add_space_prefix = value,
                other => panic!("fixture sets `{other}`, which the test cannot set"),
            }
        }
    }
    Some(Tokenizer::from_parts(vocab).expect("tokenizer"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn check(name: &str) {
    let fx = fixture(name);
    let Some(tok) = load(&fx) else { return };
    assert_eq!(
        tok.n_vocab() as u64,
        fx["n_vocab"].as_u64().unwrap(),
        "{name}: n_vocab"
    );
    let id_or_none = |v: &Value| u32::try_from(v.as_i64().unwrap()).ok();
    assert_eq!(tok.bos(), id_or_none(&fx["bos"]), "{name}: bos");
    assert_eq!(tok.eos(), id_or_none(&fx["eos"]), "{name}: eos");
    // Without an `eot_token_id` key llama.cpp picks the first end-of-turn
    // looking token in hash-map order; realm picks by a fixed preference. Both
    // are end-of-generation tokens.
    if tok.eot() != id_or_none(&fx["eot"]) {
        println!("{name}: eot {:?} (llama.cpp: {})", tok.eot(), fx["eot"]);
    }
    assert!(
        tok.eot().is_none_or(|id| tok.is_eog(id)),
        "{name}: eot is not end-of-generation"
    );
    assert_eq!(tok.eog_ids(), ids(&fx["eog"]).as_slice(), "{name}: eog");

    let cases = fx["cases"].as_array().unwrap();
    let (mut plain_ok, mut special_ok, mut decode_ok, mut round_trips) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let want_special = ids(&case["ids_special"]);
        let got = tok.encode(text, false, false).unwrap();
        let got_special = tok.encode(text, true, true).unwrap();
        if got == want {
            plain_ok += 1;
        } else {
            failures.push(format!("plain {text:?}: got {got:?}, llama.cpp {want:?}"));
        }
        if got_special == want_special {
            special_ok += 1;
        } else {
            failures.push(format!(
                "special {text:?}: got {got_special:?}, llama.cpp {want_special:?}"
            ));
        }
        let dec = tok.decode(&want, false, false).unwrap();
        let dec_special = tok.decode(&want_special, true, true).unwrap();
        if dec == case["decoded"].as_str().unwrap()
            && dec_special == case["decoded_special"].as_str().unwrap()
        {
            decode_ok += 1;
        } else {
            failures.push(format!(
                "decode {text:?}: got {dec:?} / {dec_special:?}, llama.cpp {} / {}",
                case["decoded"], case["decoded_special"]
            ));
        }
        if case["decoded"].as_str() == Some(text) {
            round_trips += 1;
            assert_eq!(
                tok.decode(&got, false, false).unwrap(),
                text,
                "{name}: round trip"
            );
        }
    }
    let n = cases.len();
    println!(
        "{name}: ids {plain_ok}/{n}, ids with special parsing {special_ok}/{n}, \
         decode {decode_ok}/{n}, round trips {round_trips}"
    );
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gemma3_matches_llama_cpp() {
    check("gemma3");
}

#[test]
fn smollm2_matches_llama_cpp() {
    check("smollm2");
}

#[test]
fn gpt2_vocab_matches_llama_cpp() {
    check("gpt2");
}

#[test]
fn llama_bpe_vocab_matches_llama_cpp() {
    check("llama-bpe");
}

#[test]
fn qwen2_vocab_matches_llama_cpp() {
    check("qwen2");
}

#[test]
fn starcoder_vocab_matches_llama_cpp() {
    check("starcoder");
}

#[test]
fn falcon_vocab_matches_llama_cpp() {
    check("falcon");
}

#[test]
fn deepseek_llm_vocab_matches_llama_cpp() {
    check("deepseek-llm");
}

#[test]
fn llama_spm_vocab_matches_llama_cpp() {
    check("llama-spm");
}

#[test]
fn bert_bge_vocab_matches_llama_cpp() {
    check("bert-bge");
}

/// The same WordPiece vocabulary, cased: no lowercasing, and so no accent
/// stripping.
#[test]
fn bert_bge_cased_vocab_matches_llama_cpp() {
    check("bert-bge-cased");
}

/// The same WordPiece vocabulary, lowercased with its accents kept.
#[test]
fn bert_bge_accents_vocab_matches_llama_cpp() {
    check("bert-bge-accents");
}

/// XLM-RoBERTa's unigram vocabulary (250k pieces and its precompiled
/// character map), as nomic-embed-text-v2-moe ships it: llama.cpp's UGM.
#[test]
fn nomic_bert_moe_vocab_matches_llama_cpp() {
    check("nomic-bert-moe");
}

/// The same unigram vocabulary keeping every space
/// (`remove_extra_whitespaces` off).
#[test]
fn nomic_bert_moe_spaces_vocab_matches_llama_cpp() {
    check("nomic-bert-moe-spaces");
}

/// The same unigram vocabulary without the space in front
/// (`add_space_prefix` off).
#[test]
fn nomic_bert_moe_no_prefix_vocab_matches_llama_cpp() {
    check("nomic-bert-moe-no-prefix");
}

/// A hand-made unigram vocabulary where the unknown token's score decides
/// splits (characters found only inside longer pieces), with user-defined,
/// unused and undefined pieces and a small character map; space prefix
/// and extra-space removal on.
#[test]
fn ugm_toy_vocab_matches_llama_cpp() {
    check("ugm-toy");
}

/// The same toy vocabulary with both space options off.
#[test]
fn ugm_toy_raw_vocab_matches_llama_cpp() {
    check("ugm-toy-raw");
}

/// llama.cpp's own test strings for the BERT vocabulary (`.inp`) and the
/// ids its test-tokenizer-0 expects (`.out`, without special tokens), when
/// `cargo xtask fetch-vocab` has put them beside the vocabulary.
#[test]
fn bert_bge_vocab_passes_llama_cpps_own_test() {
    let path = models_dir().join("vocab/ggml-vocab-bert-bge.gguf");
    let (inp, out) = (
        path.with_extension("gguf.inp"),
        path.with_extension("gguf.out"),
    );
    if !(path.exists() && inp.exists() && out.exists()) {
        eprintln!("skipping: {} or its .inp/.out not found", path.display());
        return;
    }
    let inp = std::fs::read_to_string(&inp).expect("read .inp");
    let out = std::fs::read_to_string(&out).expect("read .out");
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let want: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(texts.len(), want.len(), "test strings and id lines");
    let file = GgufFile::open(&path).expect("open vocabulary");
    let tok = Tokenizer::from_metadata(file.metadata()).expect("tokenizer");
    for (text, want) in texts.iter().zip(&want) {
        assert_eq!(&tok.encode(text, false, false).unwrap(), want, "{text:?}");
    }
    println!(
        "bert-bge: llama.cpp's {} test strings all match",
        texts.len()
    );
}
