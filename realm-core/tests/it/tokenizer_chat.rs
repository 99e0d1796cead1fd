//! Chat templates render exactly what Python's jinja2 renders (the fixtures
//! hold jinja2's output for a three-turn conversation with a system prompt).
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use realm_core::chat::{ChatMessage, ChatTemplate, TemplateOrigin};
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use serde_json::Value;

fn models_dir() -> PathBuf {
    match std::env::var_os("REALM_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/realm/models")
        }
    }
}

fn check(name: &str, origin: TemplateOrigin) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/tokenizer/{name}.json"));
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let model = models_dir().join(fx["model"].as_str().unwrap());
    if !model.exists() {
        eprintln!(
            "skipping: model file {} not found (set REALM_MODELS)",
            model.display()
        );
        return;
    }
    let file = GgufFile::open(&model).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let template = ChatTemplate::from_metadata(file.metadata(), &tok).unwrap();
    assert_eq!(template.origin(), origin);
    for case in fx["chat"]["cases"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&messages, gen).unwrap();
        assert_eq!(
            got,
            case["expected"].as_str().unwrap(),
            "{name}, add_generation_prompt={gen}"
        );
        // The rendered prompt (which has its own BOS where the model wants
        // one) tokenizes with its control tokens intact.
        let ids = tok.encode(&got, false, true).unwrap();
        assert!(ids.iter().filter(|&&id| tok.is_control(id)).count() >= 6);
        assert_eq!(tok.decode(&ids, false, true).unwrap(), got);
    }
}

#[test]
fn gemma3_builtin_template_matches_jinja2() {
    check("gemma3", TemplateOrigin::Gemma);
}

#[test]
fn smollm2_template_matches_jinja2() {
    check("smollm2", TemplateOrigin::Metadata);
}

#[test]
fn gemma_template_rejects_out_of_order_roles() {
    let md = realm_core::gguf::Metadata::new();
    let mut vocab = realm_core::tokenizer::Vocab::new(
        realm_core::tokenizer::VocabKind::Spm,
        ["<unk>", "<bos>", "<eos>", "<start_of_turn>"]
            .map(String::from)
            .to_vec(),
    );
    vocab.special.bos = Some(1);
    let tok = Tokenizer::from_parts(vocab).unwrap();
    let t = ChatTemplate::from_metadata(&md, &tok).unwrap();
    assert_eq!(t.origin(), TemplateOrigin::Gemma);
    let err = t
        .render(&[ChatMessage::new("assistant", "hi")], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Conversation roles must alternate"), "{err}");
    assert!(err.contains("line"), "{err}");
}
