//! The realm-wasm guest against native generation on the real SmolLM2 model.

mod common;

use std::sync::Arc;

use realm_compute_cpu::CpuBackend;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{GenerateParams, Model, SamplingParams};
use realm_runtime::{Error, GenerateRequest, Runtime, RuntimeConfig, StopReason, TenantConfig};

const PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

/// Native generation of `PROMPT` with the same settings as `req`.
fn native(path: &std::path::Path, req: &GenerateRequest) -> (String, usize) {
    let file = GgufFile::open(path).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let ids = tok
        .encode(PROMPT, req.add_special, req.parse_special)
        .unwrap();
    let mut session = model
        .session(ids.len() + req.max_tokens as usize, 64)
        .unwrap();
    let params = GenerateParams {
        max_tokens: req.max_tokens as usize,
        stop: req.stop.clone(),
        sampling: req.sampling.clone(),
        stop_at_context_end: true,
    };
    let g = realm_models::generate(&model, &tok, &mut session, &ids, &params, |_| true).unwrap();
    (g.text, g.tokens.len())
}

fn request(sampling: SamplingParams, layered: bool) -> GenerateRequest {
    GenerateRequest {
        max_tokens: 40,
        sampling,
        layered,
        ..GenerateRequest::default()
    }
}

#[test]
fn guest_generation_equals_native_fused_layered_and_sampled() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let wasm = common::guest_wasm();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let id = runtime.load_model(&path).unwrap();
    let mut tenant = runtime.tenant(&wasm, TenantConfig::new(vec![id])).unwrap();
    let sampled = SamplingParams {
        seed: 7,
        ..SamplingParams::default()
    };
    for (sampling, layered) in [
        (SamplingParams::greedy(), false),
        (SamplingParams::greedy(), true),
        (sampled, false),
    ] {
        let req = request(sampling, layered);
        let (want, n) = native(&path, &req);
        let mut streamed = String::new();
        let stats = tenant
            .generate(PROMPT, &req, |t| streamed.push_str(t))
            .unwrap();
        assert_eq!(
            streamed, want,
            "layered: {layered}, sampling: {:?}",
            req.sampling
        );
        assert_eq!(stats.generated_tokens as usize, n);
        assert!(stats.prompt_tokens > 10);
        assert_eq!(tenant.live_sessions(), 0, "the guest drops its sessions");
    }
    // A stop string ends generation early, as natively.
    let req = GenerateRequest {
        stop: vec!["France".into()],
        ..request(SamplingParams::greedy(), false)
    };
    let (want, _) = native(&path, &req);
    let mut streamed = String::new();
    let stats = tenant
        .generate(PROMPT, &req, |t| streamed.push_str(t))
        .unwrap();
    assert_eq!(streamed, want);
    assert_eq!(stats.stop_reason, StopReason::StopString);
}

#[test]
fn tenants_share_one_model_and_batched_text_is_unchanged() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let wasm = common::guest_wasm();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let id = runtime.load_model(&path).unwrap();
    assert_eq!(
        runtime.load_model(&path).unwrap(),
        id,
        "the same file loads once"
    );
    assert_eq!(runtime.models().ids(), vec![id.clone()]);
    let file_len = std::fs::metadata(&path).unwrap().len() as usize;
    assert_eq!(runtime.models().mapped_bytes(), file_len, "one mapping");

    let req = request(SamplingParams::greedy(), false);
    let (want, _) = native(&path, &req);
    let tenants: Vec<_> = (0..3)
        .map(|_| {
            runtime
                .tenant(&wasm, TenantConfig::new(vec![id.clone()]))
                .unwrap()
        })
        .collect();
    assert_eq!(runtime.models().holders(&id), Some(3));
    assert!(matches!(
        runtime.models().remove(&id),
        Err(Error::ModelInUse(_, 3))
    ));

    let want = Arc::new(want);
    let before = runtime.batch_stats();
    std::thread::scope(|s| {
        for mut t in tenants {
            let (want, req) = (want.clone(), req.clone());
            s.spawn(move || {
                let mut text = String::new();
                t.generate(PROMPT, &req, |p| text.push_str(p)).unwrap();
                assert_eq!(&text, &*want, "batched decoding changes nothing");
            });
        }
    });
    let stats = runtime.batch_stats();
    let (steps, batches) = (stats.steps - before.steps, stats.batches - before.batches);
    eprintln!("{steps} decode steps in {batches} batched forwards");
    assert!(
        steps > 0 && batches < steps,
        "steps of different tenants were merged"
    );
    assert_eq!(runtime.models().holders(&id), Some(0));
    runtime.models().remove(&id).unwrap();
    assert!(runtime.models().ids().is_empty());
}
