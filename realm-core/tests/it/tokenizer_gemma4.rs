//! Gemma 4's tokenizer (`tokenizer.ggml.model` gemma4) against llama.cpp,
//! on the synthetic vocabulary its fixture carries
//! (`scripts/gen_gemma4_fixtures.py`): BPE by merge rank over characters
//! with spaces as `▁`, line-feed runs taken whole, `<0xXX>` byte fallback,
//! BOS forced on, and Gemma 4's end-of-generation tokens. The file says
//! pre-tokenizer `default` and no BOS, which the model overrides, as in
//! llama.cpp.
#![cfg(not(target_arch = "wasm32"))]

use crate::bpe_fixture;

use bpe_fixture::{ids, vocabulary};
use realm_core::gguf::{Gguf, MetadataValue};
use realm_core::tokenizer::Tokenizer;
use serde_json::Value;

fn fixture() -> Value {
    bpe_fixture::fixture("gemma4")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A decode as the fixture holds it: text, or `{"hex": ...}` where it is
/// not UTF-8.
fn bytes(v: &Value) -> Vec<u8> {
    match v.as_str() {
        Some(s) => s.as_bytes().to_vec(),
        None => hex(v["hex"].as_str().unwrap()),
    }
}

/// The fixture's vocabulary as a Gemma 4 GGUF file's metadata, read back.
fn tokenizer(fx: &Value) -> Tokenizer {
    let mut w = vocabulary(fx, "gemma4", "default");
    w.set("tokenizer.ggml.add_bos_token", MetadataValue::Bool(false));
    w.set("tokenizer.ggml.bos_token_id", MetadataValue::U32(2));
    w.set("tokenizer.ggml.eos_token_id", MetadataValue::U32(1));
    w.set("tokenizer.ggml.unknown_token_id", MetadataValue::U32(3));
    w.set("tokenizer.ggml.padding_token_id", MetadataValue::U32(0));
    let file = Gguf::from_bytes(w.to_bytes().unwrap()).unwrap();
    Tokenizer::from_metadata(file.metadata()).unwrap()
}

/// Every token's piece, and every text's ids (with and without BOS and
/// special tokens) and decodes, are llama.cpp's.
#[test]
fn gemma4_tokenizes_as_llama_cpp() {
    let fx = fixture();
    let tok = tokenizer(&fx);
    assert_eq!(tok.bos(), fx["bos"].as_u64().map(|b| b as u32), "BOS");
    assert_eq!(tok.eos(), fx["eos"].as_u64().map(|b| b as u32), "EOS");
    assert_eq!(tok.add_bos(), fx["add_bos"].as_bool().unwrap(), "add_bos");
    assert_eq!(tok.add_eos(), fx["add_eos"].as_bool().unwrap(), "add_eos");
    assert_eq!(
        tok.eog_ids(),
        ids(&fx["eog"]).as_slice(),
        "end of generation"
    );

    let (mut failures, mut checks, mut compared) = (Vec::new(), 0, 0);
    for (key, special) in [("pieces", true), ("plain_pieces", false)] {
        for (id, want) in fx[key].as_array().unwrap().iter().enumerate() {
            checks += 1;
            let got = tok.token_to_piece(id as u32, special).unwrap();
            if got != hex(want.as_str().unwrap()) {
                failures.push(format!("{key} {id}: got {got:?}, llama.cpp {want}"));
            }
        }
    }
    let cases = fx["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (bos, special, key) in [
            (false, false, "ids"),
            (false, true, "ids_special"),
            (true, false, "ids_bos"),
            (true, true, "ids_bos_special"),
        ] {
            checks += 1;
            let want = ids(&case[key]);
            compared += want.len();
            let got = tok.encode(text, bos, special).unwrap();
            if got != want {
                failures.push(format!("{key} {text:?}: got {got:?}, llama.cpp {want:?}"));
            }
        }
        for (key, remove, unparse, of) in [
            ("decoded", false, false, "ids_special"),
            ("decoded_bos_special", true, true, "ids_bos_special"),
        ] {
            checks += 1;
            let got = tok.decode_bytes(&ids(&case[of]), remove, unparse).unwrap();
            let want = bytes(&case[key]);
            if got != want {
                failures.push(format!(
                    "{key} {text:?}: got {:?}, llama.cpp {:?}",
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want)
                ));
            }
        }
        // Streamed, the text is the same.
        let mut stream = tok.stream_decoder(false);
        let mut shown = String::new();
        for &id in &ids(&case["ids_special"]) {
            shown.push_str(&stream.push(id).unwrap());
        }
        shown.push_str(&stream.finish());
        checks += 1;
        if shown.as_bytes() != String::from_utf8_lossy(&bytes(&case["decoded"])).as_bytes() {
            failures.push(format!("streamed {text:?}: got {shown:?}"));
        }
    }
    assert!(cases.len() >= 400, "only {} texts", cases.len());
    assert!(compared >= 10_000, "only {compared} ids");
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        checks,
        failures.join("\n")
    );
}

/// Line-feed runs that are tokens come whole though no merge makes them;
/// longer ones merge; characters the vocabulary lacks fall back to their
/// bytes' `<0xXX>` tokens.
#[test]
fn gemma4_line_feeds_and_byte_fallback() {
    let tok = tokenizer(&fixture());
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(tok.encode("\n\n\n", false, false).unwrap(), [id("\n\n\n")]);
    assert_eq!(
        tok.encode("\n\n\n\n\n", false, false).unwrap(),
        [id("\n\n"), id("\n\n"), id("\n")]
    );
    assert_eq!(
        tok.encode("a ✓", true, false).unwrap(),
        [
            id("<bos>"),
            id("a"),
            id("▁"),
            id("<0xE2>"),
            id("<0x9C>"),
            id("<0x93>")
        ]
    );
    assert_eq!(
        tok.decode(&tok.encode("a ✓", true, false).unwrap(), true, false)
            .unwrap(),
        "a ✓"
    );
}
