//! Grammar-constrained greedy generation on the real models against
//! llama.cpp's: `scripts/gen_grammar_fixtures.py` stored llama.cpp's
//! greedy tokens under its grammar sampler, for GBNF grammars and JSON
//! schemas (whose conversion it checked against llama.cpp's own), with
//! each step's top-2 margin. Realm, with its own parser, converter and
//! matcher, must allow every one of those tokens and choose the same
//! ones, but at near ties.

use crate::common;

use std::sync::Arc;

use realm_compute_cpu::CpuBackend;
use realm_core::catalog::{self, KnownModel};
use realm_core::tokenizer::Tokenizer;
use realm_models::grammar::{Grammar, Matcher};
use realm_models::sampling::argmax;
use realm_models::{generate, GenerateParams, Model, SamplingParams, StopReason};
use serde_json::Value;

/// Largest logit difference between Realm and llama.cpp on these models
/// (see golden.rs): a greedy step whose top-2 margin is below it
/// is a near tie either engine may break either way.
fn tie(m: &KnownModel) -> f32 {
    if m.short_name == "gemma3" {
        2.25
    } else {
        1.5
    }
}

fn check(mm: &KnownModel) {
    let Some(file) = common::open(mm) else {
        return;
    };
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grammar.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut same, mut cases, mut steps, mut diverged) = (0, 0, 0, 0);
    for case in fx["cases"].as_array().unwrap() {
        if case["model"] != mm.short_name {
            continue;
        }
        cases += 1;
        let grammar = Arc::new(match case.get("grammar") {
            Some(g) => Grammar::parse(g.as_str().unwrap()).unwrap(),
            None => Grammar::from_json_schema(&case["json_schema"]).unwrap(),
        });
        let want = case["text"].as_str().unwrap();
        // llama.cpp's text is in Realm's grammar: whole where it ended
        // with an end-of-generation token.
        let mut theirs = Matcher::new(grammar.clone());
        theirs
            .accept(want.as_bytes())
            .unwrap_or_else(|_| panic!("{want:?} is outside Realm's grammar"));
        if case["end_of_text"] == true {
            assert!(
                theirs.is_complete(),
                "{want:?} is not a whole sentence of Realm's grammar"
            );
        }

        let ids = tok
            .encode(case["prompt"].as_str().unwrap(), true, true)
            .unwrap();
        let n = case["n_predict"].as_u64().unwrap() as usize;
        let eog_end = case["end_of_text"] == true;

        // Follow llama.cpp's tokens. Realm's grammar must allow each of
        // them (an end-of-generation token only where llama.cpp ended), and
        // Realm's choice, the best allowed token, must be llama.cpp's or
        // the step a near tie in llama.cpp's allowed logits.
        let tokens: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let margins = case["margins"].as_array().unwrap();
        let mut m = Matcher::new(grammar.clone());
        let mut s = model.session(ids.len() + n + 1, 64).unwrap();
        let mut logits = model.forward(&mut s, &ids).unwrap().to_vec();
        let mut ties = Vec::new();
        for (step, &theirs) in tokens.iter().enumerate() {
            let mut masked = logits.clone();
            m.mask(&tok, &mut masked);
            assert!(
                masked[theirs as usize].is_finite(),
                "{}: step {step}: llama.cpp's token {theirs} is outside Realm's grammar",
                mm.short_name
            );
            let ours = argmax(&masked);
            if ours != theirs {
                let margin = margins[step].as_f64().unwrap() as f32;
                eprintln!(
                    "{}: step {step} of {:?}: ours {:?}, llama.cpp's {:?}; llama.cpp's top-2 margin {margin:.3}",
                    mm.short_name,
                    case["prompt"],
                    String::from_utf8_lossy(tok.token_to_piece(ours, true).unwrap()),
                    String::from_utf8_lossy(tok.token_to_piece(theirs, true).unwrap()),
                );
                assert!(margin < tie(mm), "a divergence at margin {margin}");
                ties.push(step);
            }
            m.accept_token(&tok, theirs).unwrap();
            if tok.is_eog(theirs) {
                break;
            }
            logits = model.forward(&mut s, &[theirs]).unwrap().to_vec();
        }
        assert_eq!(tok.is_eog(*tokens.last().unwrap()), eog_end);
        if eog_end {
            assert!(m.is_complete());
        }
        steps += tokens.len();
        diverged += ties.len();

        // Realm's own generation: where no step was a near tie, the same
        // text, ended the same way.
        let params = GenerateParams {
            max_tokens: n,
            sampling: SamplingParams::greedy(),
            grammar: Some(grammar.clone()),
            ..GenerateParams::default()
        };
        let mut s = model.session(ids.len() + n + 1, 64).unwrap();
        let g = generate(&model, &tok, &mut s, &ids, &params, |_| true).unwrap();
        if ties.is_empty() {
            assert_eq!(g.text, want, "{}", mm.short_name);
            assert_eq!(
                g.stop_reason == StopReason::EndOfGeneration,
                eog_end,
                "{:?}",
                g.stop_reason
            );
            same += 1;
        }
        if case.get("json_schema").is_some() && g.stop_reason == StopReason::EndOfGeneration {
            let v: Result<Value, _> = serde_json::from_str(&g.text);
            assert!(v.is_ok(), "{:?} is not JSON", g.text);
        }
    }
    eprintln!(
        "{}: {same} of {cases} constrained generations identical to llama.cpp's; \
         Realm chose llama.cpp's token at {} of {steps} steps, the rest near ties",
        mm.short_name,
        steps - diverged
    );
    assert!(cases > 0);
}

#[test]
fn smollm2_constrained_generation_matches_llama_cpp() {
    check(&catalog::SMOLLM2);
}

#[test]
fn gemma3_constrained_generation_matches_llama_cpp() {
    check(&catalog::GEMMA3);
}
