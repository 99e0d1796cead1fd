//! The GPT-4o pre-tokenizer (`tokenizer.ggml.pre` gpt-4o: gpt-oss, Llama 4)
//! and tekken's (Mistral Nemo, Mistral Small 3, Ministral 3), and LLaMA
//! 3's as llama.cpp runs it for GLM-4 (`glm4`) and Seed-Coder
//! (`seed-coder`), and BLOOM's (`bloom`), against
//! llama.cpp, on the byte-level BPE vocabularies their fixtures carry
//! (`scripts/gen_gpt4o_fixtures.py`: GPT-2's bytes and first merges,
//! declared gpt-4o or tekken). Merges never cross the pre-tokenizer's
//! words, so any difference in splitting shows in the ids. The gpt-4o
//! vocabulary has o200k_harmony's control tokens too: the tokens that end
//! generation are llama.cpp's (`<|end|>` not among them beside
//! `<|return|>` and `<|call|>`); the tekken one has Mistral's control
//! tokens first, as its files do, and a BOS added by default.
#![cfg(not(target_arch = "wasm32"))]

use crate::bpe_fixture;

use bpe_fixture::{fixture, ids, vocabulary};
use realm_core::gguf::{Gguf, MetadataValue};
use realm_core::tokenizer::Tokenizer;
use serde_json::Value;

/// The fixture's vocabulary as a GGUF file's metadata, read back.
fn tokenizer(fx: &Value) -> Tokenizer {
    let eot = fx["eot"].as_u64().unwrap() as u32;
    let bos = fx["bos"].as_u64().unwrap() as u32;
    let mut w = vocabulary(fx, "gpt2", fx["pre"].as_str().unwrap());
    w.set("tokenizer.ggml.bos_token_id", MetadataValue::U32(bos));
    w.set("tokenizer.ggml.eos_token_id", MetadataValue::U32(eot));
    let file = Gguf::from_bytes(w.to_bytes().unwrap()).unwrap();
    Tokenizer::from_metadata(file.metadata()).unwrap()
}

/// Every text of fixture `pre` tokenizes (without and with special
/// tokens, and with the BOS where the fixture has it) and decodes as
/// llama.cpp's.
fn splits_as_llama_cpp(pre: &str) {
    let fx = fixture(pre);
    let tok = tokenizer(&fx);
    assert_eq!(
        tok.eog_ids(),
        ids(&fx["eog"]).as_slice(),
        "end-of-generation tokens"
    );
    assert_eq!(tok.add_bos(), fx["add_bos"].as_bool().unwrap(), "add_bos");
    let cases = fx["cases"].as_array().unwrap();
    let (mut failures, mut checks) = (Vec::new(), 0);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        checks += 1;
        let shown = tok
            .decode(&ids(&case["ids_special"]), false, false)
            .unwrap();
        if shown != case["decoded_special"].as_str().unwrap() {
            failures.push(format!(
                "decoded {text:?}: got {shown:?}, llama.cpp {}",
                case["decoded_special"]
            ));
        }
        for (bos, special, key) in [
            (false, false, "ids"),
            (false, true, "ids_special"),
            (true, false, "ids_bos"),
        ] {
            if case.get(key).is_none() {
                continue;
            }
            checks += 1;
            let got = tok.encode(text, bos, special).unwrap();
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
        checks,
        failures.join("\n")
    );
}

#[test]
fn gpt4o_splits_as_llama_cpp() {
    splits_as_llama_cpp("gpt-4o");
}

/// MiniMax-M2's name, which llama.cpp splits with GPT-4o's expression.
#[test]
fn minimax_m2_splits_as_llama_cpp() {
    splits_as_llama_cpp("minimax-m2");
}

#[test]
fn tekken_splits_as_llama_cpp() {
    splits_as_llama_cpp("tekken");
}

#[test]
fn glm4_splits_as_llama_cpp() {
    splits_as_llama_cpp("glm4");
}

#[test]
fn seed_coder_splits_as_llama_cpp() {
    splits_as_llama_cpp("seed-coder");
}

#[test]
fn bailingmoe2_splits_as_llama_cpp() {
    splits_as_llama_cpp("bailingmoe2");
}

#[test]
fn deepseek_v3_splits_as_llama_cpp() {
    splits_as_llama_cpp("deepseek-v3");
}

#[test]
fn kimi_k2_splits_as_llama_cpp() {
    splits_as_llama_cpp("kimi-k2");
}

#[test]
fn qwen35_splits_as_llama_cpp() {
    splits_as_llama_cpp("qwen35");
}

/// BLOOM's expression, with the text between its matches (punctuation
/// it leaves out, whitespace) as words of their own.
#[test]
fn bloom_splits_as_llama_cpp() {
    splits_as_llama_cpp("bloom");
}

/// GLM-4's names leave no BOS token but the one the file names, as
/// llama.cpp drops the default.
#[test]
fn glm4_has_no_default_bos() {
    let fx = fixture("glm4");
    assert_eq!(tokenizer(&fx).bos(), fx["bos"].as_u64().map(|b| b as u32));
    // (No BOS id in the file.)
    let w = vocabulary(&fx, "gpt2", "glm4");
    let file = Gguf::from_bytes(w.to_bytes().unwrap()).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    assert_eq!(tok.bos(), None);
    assert!(!tok.add_bos());
}
