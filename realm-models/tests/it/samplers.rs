//! The sampler chain against llama.cpp's on real logits and vocabularies:
//! `scripts/gen_sampler_fixtures.py` ran each model on three prompts that
//! repeat themselves, kept the 200 most likely next tokens, and stored what
//! llama.cpp's chain (penalties, DRY, top-n-sigma, top-k, typical-p, top-p,
//! min-p, XTC, dynamic temperature; or mirostat 1 and 2) leaves of them for
//! twenty-five parameter cases (five in other orders, as `--samplers`
//! gives), with each token's probability. Realm's sampler
//! must leave the same tokens with the same probabilities. It also ran
//! llama.cpp's whole chain, draw included, for seeded generations: Realm's
//! sampler, given the same logits, must draw the same tokens.

use crate::common;

use realm_core::catalog::{self, KnownModel};
use realm_core::tokenizer::Tokenizer;
use realm_models::sampling::SamplerKind;
use std::sync::Arc;

use realm_models::generate::{Continuation, Step};
use realm_models::{GenerateParams, Grammar, Mirostat, Sampler, SamplingParams, StopReason};
use serde_json::Value;

fn params(p: &Value) -> SamplingParams {
    let f = |k: &str, d: f32| p.get(k).and_then(Value::as_f64).map_or(d, |v| v as f32);
    let n = |k: &str, d: usize| p.get(k).and_then(Value::as_u64).map_or(d, |v| v as usize);
    let d = SamplingParams::default();
    SamplingParams {
        temperature: f("temperature", d.temperature),
        top_k: n("top_k", d.top_k),
        top_p: f("top_p", d.top_p),
        min_p: f("min_p", d.min_p),
        min_keep: n("min_keep", d.min_keep),
        typical_p: f("typical_p", d.typical_p),
        top_n_sigma: f("top_n_sigma", d.top_n_sigma),
        xtc_probability: f("xtc_probability", d.xtc_probability),
        xtc_threshold: f("xtc_threshold", d.xtc_threshold),
        dynatemp_range: f("dynatemp_range", d.dynatemp_range),
        dynatemp_exponent: f("dynatemp_exponent", d.dynatemp_exponent),
        repeat_penalty: f("repeat_penalty", d.repeat_penalty),
        presence_penalty: f("presence_penalty", d.presence_penalty),
        frequency_penalty: f("frequency_penalty", d.frequency_penalty),
        dry_multiplier: f("dry_multiplier", d.dry_multiplier),
        dry_base: f("dry_base", d.dry_base),
        dry_allowed_length: n("dry_allowed_length", d.dry_allowed_length),
        dry_penalty_last_n: n("dry_penalty_last_n", d.dry_penalty_last_n),
        dry_sequence_breakers: match p.get("dry_sequence_breakers") {
            Some(b) => serde_json::from_value(b.clone()).unwrap(),
            None => d.dry_sequence_breakers.clone(),
        },
        mirostat: Mirostat::from_version(n("mirostat", 0) as u32).unwrap(),
        mirostat_tau: f("mirostat_tau", d.mirostat_tau),
        mirostat_eta: f("mirostat_eta", d.mirostat_eta),
        seed: p.get("seed").and_then(Value::as_u64).unwrap_or(d.seed),
        samplers: match p.get("samplers") {
            Some(v) => v
                .as_array()
                .unwrap()
                .iter()
                .map(|n| SamplerKind::from_name(n.as_str().unwrap()).unwrap())
                .collect(),
            None => d.samplers.clone(),
        },
        ..d
    }
}

fn check(mm: &KnownModel) {
    let Some(file) = common::open(mm) else {
        return;
    };
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/samplers.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let steps = fx["steps"].as_array().unwrap();
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let step = &steps[case["step"].as_u64().unwrap() as usize];
        if step["model"] != mm.short_name {
            continue;
        }
        let ids: Vec<u64> = serde_json::from_value(step["ids"].clone()).unwrap();
        let values: Vec<f64> = serde_json::from_value(step["logits"].clone()).unwrap();
        let history: Vec<u32> = serde_json::from_value(step["history"].clone()).unwrap();
        // The prompt's tokens are llama.cpp's; Realm's tokenizer agrees.
        let ours = tok
            .encode(step["prompt"].as_str().unwrap(), true, false)
            .unwrap();
        assert_eq!(ours, history, "{}", step["prompt"]);
        let mut logits = vec![f32::NEG_INFINITY; tok.n_vocab()];
        for (&id, &l) in ids.iter().zip(&values) {
            logits[id as usize] = l as f32;
        }
        let p = params(&case["params"]);
        let mut sampler = Sampler::with_tokenizer(p, &tok).unwrap();
        let mut got = sampler.distribution(&logits, &history).to_vec();
        got.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let want_p: Vec<f32> = serde_json::from_value(case["probs"].clone()).unwrap();
        let what = format!("{} {} {}", mm.short_name, step["prompt"], case["params"]);
        let mut got_ids: Vec<u32> = got.iter().map(|t| t.0).collect();
        let mut sorted_want = want_ids.clone();
        got_ids.sort_unstable();
        sorted_want.sort_unstable();
        assert_eq!(got_ids, sorted_want, "tokens left: {what}");
        for (&id, &want) in want_ids.iter().zip(&want_p) {
            let p = got.iter().find(|t| t.0 == id).unwrap().1;
            assert!(
                (p - want).abs() <= 2e-5 + 1e-4 * want,
                "token {id}: {p} against llama.cpp's {want}: {what}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 75, "cases for {}", mm.short_name);
}

#[test]
fn smollm2_samplers_leave_what_llama_cpps_leave() {
    check(&catalog::SMOLLM2);
}

#[test]
fn gemma3_samplers_leave_what_llama_cpps_leave() {
    check(&catalog::GEMMA3);
}

/// llama.cpp's seeded generations (`fixtures/seeded.json`), token for
/// token: at each step the sampler gets the logits llama.cpp's chain got
/// (its 64 most likely, the rest -inf, from `fixtures/seeded.bin`) and the
/// tokens so far, and must draw what llama.cpp drew: the same generator,
/// drawn as often, over the candidates in the same order.
fn seeded(mm: &KnownModel) {
    let Some(file) = common::open(mm) else {
        return;
    };
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/seeded.json")).unwrap())
            .unwrap();
    let blob = std::fs::read(format!("{dir}/seeded.bin")).unwrap();
    let top = fx["top"].as_u64().unwrap() as usize;
    let prompt = tok
        .encode(fx["prompt"].as_str().unwrap(), true, false)
        .unwrap();
    let mut cases = 0;
    for g in fx["generations"].as_array().unwrap() {
        if g["model"] != mm.short_name {
            continue;
        }
        let want_prompt: Vec<u32> = serde_json::from_value(g["prompt_tokens"].clone()).unwrap();
        assert_eq!(prompt, want_prompt);
        let want: Vec<u32> = serde_json::from_value(g["tokens"].clone()).unwrap();
        let what = format!("{} {}", mm.short_name, g["params"]);
        // Generation's own loop: under a grammar, a refused draw is drawn
        // again from what the grammar allows, as llama.cpp's common sampler
        // does.
        let grammar = g["params"]["grammar"]
            .as_str()
            .map(|src| Arc::new(Grammar::parse(src).unwrap()));
        let gp = GenerateParams {
            max_tokens: want.len(),
            sampling: params(&g["params"]),
            grammar,
            ..Default::default()
        };
        let mut text = Continuation::new(&tok, &prompt, &gp).unwrap();
        let mut at = g["offset"].as_u64().unwrap() as usize;
        for (step, &token) in want.iter().enumerate() {
            let mut logits = vec![f32::NEG_INFINITY; tok.n_vocab()];
            for c in blob[at..at + 8 * top].chunks_exact(8) {
                let id = u32::from_le_bytes(c[..4].try_into().unwrap());
                logits[id as usize] = f32::from_le_bytes(c[4..].try_into().unwrap());
            }
            at += 8 * top;
            // The token drawn: generation ends on an end-of-generation
            // token, and after its last one.
            let ours = match text.step(&logits).unwrap() {
                Step::Token { token, .. } => token,
                Step::End {
                    reason: StopReason::EndOfGeneration,
                    ..
                } if tok.is_eog(token) => token,
                Step::End { .. } => *text.history().last().unwrap(),
            };
            assert_eq!(
                ours,
                token,
                "{what}: step {step}, llama.cpp's draw {:.1e} from an edge",
                g["margins"][step].as_f64().unwrap()
            );
        }
        cases += 1;
    }
    assert_eq!(cases, 17, "cases for {}", mm.short_name);
}

#[test]
fn smollm2_seeded_draws_are_llama_cpps() {
    seeded(&catalog::SMOLLM2);
}

#[test]
fn gemma3_seeded_draws_are_llama_cpps() {
    seeded(&catalog::GEMMA3);
}
