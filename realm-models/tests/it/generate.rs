//! The generation loop on SmolLM2: greedy text identical to llama.cpp's,
//! seeded sampling reproducible, stop strings, token limits and a full
//! context handled.

use realm_compute_cpu::CpuBackend;
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{generate, Error, GenerateParams, Model, SamplingParams, StopReason};
use serde_json::Value;

fn with_smollm2(f: impl FnOnce(&Model<'_, CpuBackend>, &Tokenizer)) {
    let Some(path) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
        eprintln!("skipped: SmolLM2 is not cached; run `cargo xtask fetch-model`");
        return;
    };
    let file = GgufFile::open(path).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    f(&model, &tok);
}

#[test]
fn greedy_answer_matches_llama_cpp() {
    with_smollm2(|model, tok| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2.json");
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for case in fx["cases"].as_array().unwrap() {
            let prompt = tok
                .encode(case["prompt"].as_str().unwrap(), true, true)
                .unwrap();
            let want: Vec<u32> = case["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(prompt, want, "our tokenizer disagrees with llama.cpp's");
            let mut s = model.session(256, 64).unwrap();
            let params = GenerateParams {
                max_tokens: 32,
                sampling: SamplingParams::greedy(),
                ..Default::default()
            };
            let mut streamed = String::new();
            let g = generate(model, tok, &mut s, &prompt, &params, |p| {
                streamed.push_str(p);
                true
            })
            .unwrap();
            assert_eq!(streamed, g.text);
            let want_text = case["greedy_text"].as_str().unwrap();
            eprintln!("ours:      {:?}\nllama.cpp: {want_text:?}", g.text);
            // The fixture's greedy run includes the end-of-turn token when it stopped on one.
            let want_ids: Vec<u32> = case["greedy"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let same = g
                .tokens
                .iter()
                .zip(&want_ids)
                .take_while(|(a, b)| a == b)
                .count();
            if same < g.tokens.len().min(want_ids.len()) {
                let margin = case["greedy_margins"][same].as_f64().unwrap();
                eprintln!("diverged at token {same}; llama.cpp's top-2 margin there was {margin}");
                assert!(margin < 1.0, "divergence at token {same} is not a near tie");
            } else {
                assert!(
                    want_text.starts_with(&g.text) || g.text.starts_with(want_text),
                    "{:?}",
                    g.text
                );
            }
            assert_eq!(g.stats.prompt_tokens, prompt.len());
            assert_eq!(g.stats.generated_tokens, g.tokens.len());
        }
    });
}

#[test]
fn the_demo_question_is_answered_with_paris() {
    with_smollm2(|model, tok| {
        let prompt = "<|im_start|>user\nWhich city is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
        let ids = tok.encode(prompt, true, true).unwrap();
        let mut s = model.session(256, 64).unwrap();
        let params = GenerateParams {
            max_tokens: 48,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let g = generate(model, tok, &mut s, &ids, &params, |_| true).unwrap();
        assert!(g.text.contains("Paris"), "{:?}", g.text);
        assert_eq!(g.stop_reason, StopReason::EndOfGeneration);
    });
}

#[test]
fn seeds_stops_limits_and_full_contexts() {
    with_smollm2(|model, tok| {
        let ids = tok.encode("Once upon a time", true, false).unwrap();
        let sample = |seed| {
            let mut s = model.session(128, 64).unwrap();
            let params = GenerateParams {
                max_tokens: 24,
                sampling: SamplingParams {
                    seed,
                    temperature: 1.0,
                    ..Default::default()
                },
                ..Default::default()
            };
            generate(model, tok, &mut s, &ids, &params, |_| true).unwrap()
        };
        let (a, b, c) = (sample(7), sample(7), sample(8));
        assert_eq!(a.tokens, b.tokens);
        assert_ne!(a.tokens, c.tokens);
        assert_eq!(a.stop_reason, StopReason::MaxTokens);
        assert_eq!(a.tokens.len(), 24);

        // A stop string: the text ends before it, and it is never streamed.
        let mut s = model.session(128, 64).unwrap();
        let full = a.text.clone();
        let stop = full.split_whitespace().nth(3).unwrap().to_string();
        let params = GenerateParams {
            max_tokens: 24,
            stop: vec![stop.clone()],
            sampling: SamplingParams {
                seed: 7,
                temperature: 1.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut streamed = String::new();
        let g = generate(model, tok, &mut s, &ids, &params, |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
        assert_eq!(g.stop_reason, StopReason::StopString);
        assert!(
            !streamed.contains(&stop) && full.starts_with(&streamed),
            "{streamed:?} / {stop:?}"
        );

        // A context that fills up stops generation quietly, or fails if asked to.
        let mut s = model.session(ids.len() + 5, 64).unwrap();
        let params = GenerateParams {
            max_tokens: 50,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let g = generate(model, tok, &mut s, &ids, &params, |_| true).unwrap();
        assert_eq!(g.stop_reason, StopReason::ContextFull);
        let mut s = model.session(ids.len() + 5, 64).unwrap();
        let strict = GenerateParams {
            stop_at_context_end: false,
            ..params
        };
        assert!(matches!(
            generate(model, tok, &mut s, &ids, &strict, |_| true),
            Err(Error::ContextFull { .. })
        ));
        let mut s = model.session(2, 64).unwrap();
        assert!(matches!(
            model.forward(&mut s, &ids),
            Err(Error::ContextFull { capacity: 2, .. })
        ));
        assert_eq!(s.position(), 0);
        assert!(matches!(
            model.forward(&mut s, &[49152]),
            Err(Error::BadToken { .. })
        ));
    });
}

/// Prompt lookup drafts from the context and keeps what the model would
/// have chosen anyway: on a rewrite that repeats its prompt, greedy,
/// sampled, under a grammar, with a stop string, a token limit, a small
/// context, and a caller that stops reading, the tokens and text are
/// those of plain decoding, and drafts are accepted.
#[test]
fn prompt_lookup_changes_nothing_but_the_passes() {
    with_smollm2(|model, tok| {
        let paragraph = "Tom had kept the lighthouse on the northern rock for eleven years. \
            Every evening he climbed the ninety-two steps, wiped the salt from the great lens, \
            trimmed the wick and lit the lamp.";
        let prompt = format!(
            "<|im_start|>user\nRepeat this paragraph exactly:\n\n{paragraph}<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let ids = tok.encode(&prompt, true, true).unwrap();
        let grammar = realm_models::Grammar::parse(r#"root ::= [A-Z] [a-z ,.-]+ "." "#).unwrap();
        let cases = [
            (SamplingParams::greedy(), None, vec![], 80, 512),
            (
                SamplingParams {
                    seed: 3,
                    ..Default::default()
                },
                None,
                vec![],
                80,
                512,
            ),
            (SamplingParams::greedy(), Some(grammar), vec![], 80, 512),
            (
                SamplingParams::greedy(),
                None,
                vec!["salt".to_string()],
                80,
                512,
            ),
            (SamplingParams::greedy(), None, vec![], 17, 512),
            (SamplingParams::greedy(), None, vec![], 80, ids.len() + 20),
        ];
        let mut accepted = 0;
        for (sampling, grammar, stop, max_tokens, ctx) in cases {
            let run = |lookup: Option<realm_models::Lookup>, stop_after: usize| {
                let mut s = model.session(ctx, 64).unwrap();
                let params = GenerateParams {
                    max_tokens,
                    stop: stop.clone(),
                    sampling: sampling.clone(),
                    grammar: grammar.clone().map(std::sync::Arc::new),
                    lookup,
                    ..Default::default()
                };
                let mut pieces = 0;
                let g = generate(model, tok, &mut s, &ids, &params, |_| {
                    pieces += 1;
                    pieces < stop_after
                })
                .unwrap();
                (g, s.position())
            };
            let (plain, plain_pos) = run(None, usize::MAX);
            let (fast, fast_pos) = run(Some(realm_models::Lookup::new(8)), usize::MAX);
            assert_eq!(fast.tokens, plain.tokens, "{:?}", plain.text);
            assert_eq!(fast.text, plain.text);
            assert_eq!(fast.stop_reason, plain.stop_reason);
            assert_eq!(fast_pos, plain_pos, "the session holds what ran");
            assert!(fast.stats.accepted_tokens <= fast.stats.drafted_tokens);
            accepted += fast.stats.accepted_tokens;
            // Stopped by the caller mid-draft: the same text so far.
            let (plain, plain_pos) = run(None, 6);
            let (fast, fast_pos) = run(Some(realm_models::Lookup::new(8)), 6);
            assert_eq!((fast.text, fast_pos), (plain.text, plain_pos));
            assert_eq!(fast.stop_reason, StopReason::Cancelled);
        }
        assert!(accepted > 20, "only {accepted} drafted tokens accepted");
    });
}

/// A lazy grammar lets text through until its trigger (here spread over
/// several tokens), then holds: the token that goes on where the grammar
/// refuses is drawn again among those it allows, and the end of text
/// waits for the grammar's end. Before the trigger the reply may end.
#[test]
fn lazy_grammar_holds_from_its_trigger() {
    with_smollm2(|_, tok| {
        let grammar =
            realm_models::Grammar::parse(r#"root ::= "<tool_call>" " " [0-9]+ "</tool_call>""#)
                .unwrap();
        let params = GenerateParams {
            grammar: Some(std::sync::Arc::new(grammar)),
            grammar_triggers: vec!["<tool_call>".into()],
            sampling: SamplingParams::greedy(),
            ..GenerateParams::default()
        };
        let prompt = tok.encode("Hi", true, false).unwrap();
        let favour = |first: u32, second: Option<u32>| {
            let mut logits = vec![0.0f32; tok.n_vocab()];
            logits[first as usize] = 10.0;
            if let Some(s) = second {
                logits[s as usize] = 5.0;
            }
            logits
        };
        let one = |text: &str| {
            let ids = tok.encode(text, false, false).unwrap();
            assert_eq!(ids.len(), 1, "{text:?} is one token");
            ids[0]
        };
        let eos = tok.eos().unwrap();

        let mut c = realm_models::generate::Continuation::new(tok, &prompt, &params).unwrap();
        let opening = tok.encode("Sure. <tool_call>", false, false).unwrap();
        assert!(opening.len() > 3, "the trigger spans tokens");
        let text = std::cell::RefCell::new(String::new());
        let run = |c: &mut realm_models::generate::Continuation<'_>, logits: Vec<f32>| match c
            .step(&logits)
            .unwrap()
        {
            realm_models::generate::Step::Token { token, text: t } => {
                text.borrow_mut().push_str(&t);
                Some(token)
            }
            realm_models::generate::Step::End { .. } => None,
        };
        for &t in &opening {
            assert_eq!(
                run(&mut c, favour(t, None)),
                Some(t),
                "free before the trigger"
            );
        }
        // " abc" is refused after the trigger; " " is the best allowed.
        assert_eq!(
            run(&mut c, favour(one(" abc"), Some(one(" ")))),
            Some(one(" "))
        );
        // The end of text is refused until the grammar is complete.
        assert_eq!(run(&mut c, favour(eos, Some(one("7")))), Some(one("7")));
        assert_eq!(run(&mut c, favour(eos, Some(one("</")))), Some(one("</")));
        assert_eq!(*text.borrow(), "Sure. <tool_call> 7</");

        let mut free = realm_models::generate::Continuation::new(tok, &prompt, &params).unwrap();
        assert_eq!(
            run(&mut free, favour(one("Hello"), None)),
            Some(one("Hello"))
        );
        assert_eq!(run(&mut free, favour(eos, None)), None);
    });
}
