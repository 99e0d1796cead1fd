//! The realm-wasm guest against native generation, and batched decoding
//! against single steps, on the real SmolLM2 model.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realm_compute_cpu::CpuBackend;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{ContextShift, GenerateParams, Model, SamplingParams, Session};
use realm_runtime::{
    Error, GenerateRequest, GenerationStats, KvDtype, Runtime, RuntimeConfig, StopReason, Tenant,
    TenantConfig,
};

const PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

/// Native generation of `PROMPT` with the same settings as `req`.
fn native(path: &std::path::Path, req: &GenerateRequest) -> (String, usize) {
    native_with_kv(path, req, KvDtype::F32)
}

/// [`native`] with the KV cache stored as `kv`.
fn native_with_kv(path: &std::path::Path, req: &GenerateRequest, kv: KvDtype) -> (String, usize) {
    native_of(path, PROMPT, req, kv)
}

/// Native generation of `prompt` with the same settings as `req`, the KV
/// cache stored as `kv`.
fn native_of(
    path: &std::path::Path,
    prompt: &str,
    req: &GenerateRequest,
    kv: KvDtype,
) -> (String, usize) {
    let file = GgufFile::open(path).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let ids = tok
        .encode(prompt, req.add_special, req.parse_special)
        .unwrap();
    let capacity = match req.max_seq_len {
        0 => ids.len() + req.max_tokens as usize,
        n => n as usize,
    };
    let mut session = model.session_with_kv(capacity, 64, kv).unwrap();
    let params = GenerateParams {
        max_tokens: req.max_tokens as usize,
        stop: req.stop.clone(),
        sampling: req.sampling.clone(),
        stop_at_context_end: true,
        grammar: req
            .grammar
            .as_ref()
            .map(|g| Arc::new(realm_models::Grammar::parse(g).unwrap())),
        grammar_triggers: Vec::new(),
        preserved_tokens: Vec::new(),
        lookup: None,
        context_shift: req
            .context_shift
            .map(|n| ContextShift::for_prompt(&ids, tok.bos(), n)),
    };
    let g = realm_models::generate(&model, &tok, &mut session, &ids, &params, |_| true).unwrap();
    (g.text, g.tokens.len())
}

/// `req` through `tenant` (its streamed text and stats), checked to give
/// the text and token count of native generation.
fn generate_as_natively(
    tenant: &mut Tenant,
    path: &std::path::Path,
    req: &GenerateRequest,
) -> (String, GenerationStats) {
    let (want, n) = native(path, req);
    let mut streamed = String::new();
    let stats = tenant
        .generate(PROMPT, req, |t| streamed.push_str(t))
        .unwrap();
    assert_eq!(streamed, want, "{:?}", req.sampling);
    assert_eq!(stats.generated_tokens as usize, n);
    (streamed, stats)
}

/// A tenant of the guest, granted the model at `path`, in a runtime of its
/// own (which it keeps alive).
fn tenant_of(path: &std::path::Path) -> Tenant {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let id = runtime.load_model(path).unwrap();
    runtime
        .tenant(&common::guest_wasm(), TenantConfig::new(vec![id]))
        .unwrap()
}

fn request(sampling: SamplingParams, layered: bool) -> GenerateRequest {
    GenerateRequest {
        max_tokens: 40,
        sampling,
        layered,
        ..GenerateRequest::default()
    }
}

/// A guest keeps to a grammar (a JSON schema's) as native generation does,
/// greedy and sampled; a grammar that does not parse is the guest's status
/// -6.
#[test]
fn guest_generation_keeps_to_a_grammar_as_natively() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let mut tenant = tenant_of(&path);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"]
    });
    let gbnf = realm_models::grammar::schema_to_gbnf(&schema).unwrap();
    let sampled = SamplingParams {
        seed: 11,
        ..SamplingParams::default()
    };
    for sampling in [SamplingParams::greedy(), sampled] {
        let req = GenerateRequest {
            max_tokens: 60,
            sampling,
            grammar: Some(gbnf.clone()),
            ..GenerateRequest::default()
        };
        let (streamed, stats) = generate_as_natively(&mut tenant, &path, &req);
        if stats.stop_reason == StopReason::EndOfGeneration {
            let v: serde_json::Value = serde_json::from_str(&streamed).unwrap();
            assert!(v["city"].is_string() && v["population"].is_i64(), "{v}");
        }
    }
    let bad = GenerateRequest {
        grammar: Some("root ::= missing".into()),
        ..GenerateRequest::default()
    };
    assert!(matches!(
        tenant.generate(PROMPT, &bad, |_| {}),
        Err(Error::GuestStatus(-6))
    ));
}

/// A guest asked for context shifts goes on past its session's end as
/// native generation does (the host shifts the session with the same
/// `Model::shift_context`), fused and layer by layer, greedy and sampled;
/// without them it stops at the context's end.
#[test]
fn guest_context_shifts_generate_as_natively() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let mut tenant = tenant_of(&path);
    for (layered, sampling, n_keep) in [
        (false, SamplingParams::greedy(), 0),
        (true, SamplingParams::greedy(), -1),
        (false, SamplingParams::default(), 4),
    ] {
        // Past the answer's end: the end-of-turn token is never chosen.
        let sampling = SamplingParams {
            ignore_eos: true,
            ..sampling
        };
        let req = GenerateRequest {
            max_tokens: 90,
            max_seq_len: 48,
            context_shift: Some(n_keep),
            ..request(sampling, layered)
        };
        let (_, stats) = generate_as_natively(&mut tenant, &path, &req);
        assert_eq!(stats.generated_tokens, 90);
        assert!(stats.context_shifts >= 3, "{stats:?}");
    }
    let full = GenerateRequest {
        max_tokens: 90,
        max_seq_len: 48,
        ..request(
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy()
            },
            false,
        )
    };
    let stats = tenant.generate(PROMPT, &full, |_| {}).unwrap();
    assert_eq!(stats.stop_reason, StopReason::ContextFull);
    assert_eq!(stats.context_shifts, 0);
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
        let (_, stats) = generate_as_natively(&mut tenant, &path, &req);
        assert!(stats.prompt_tokens > 10);
        assert!(0.0 < stats.prompt_seconds && stats.prompt_seconds < stats.seconds);
        assert!(stats.decode_tokens_per_second().is_some_and(|t| t > 0.0));
        assert_eq!(stats.session_batch, Some(64), "the guest's prefill chunk");
        assert_eq!(tenant.live_sessions(), 0, "the guest drops its sessions");
    }
    assert_eq!(
        runtime.batch_stats().steps,
        0,
        "a lone session's steps run on its tenant's thread, not the scheduler's"
    );
    // A stop string ends generation early, as natively.
    let req = GenerateRequest {
        stop: vec!["France".into()],
        ..request(SamplingParams::greedy(), false)
    };
    let (_, stats) = generate_as_natively(&mut tenant, &path, &req);
    assert_eq!(stats.stop_reason, StopReason::StopString);
}

/// Penalties and logit biases reach the guest (the parameter block's
/// version 2): it generates what a native session with them does, which is
/// not the plain greedy text.
#[test]
fn guest_sampling_takes_penalties_and_logit_bias() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let mut tenant = tenant_of(&path);
    let (greedy, _) = native(&path, &request(SamplingParams::greedy(), false));
    let tok = Tokenizer::from_metadata(GgufFile::open(&path).unwrap().metadata()).unwrap();
    let first = tok.encode(&greedy, false, false).unwrap()[0];
    let req = request(
        SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.5,
            logit_bias: vec![(first, -100.0)],
            ..SamplingParams::greedy()
        },
        false,
    );
    let (streamed, _) = generate_as_natively(&mut tenant, &path, &req);
    assert_ne!(streamed, greedy);
}

/// llama.cpp's other samplers reach the guest (the parameter block's
/// version 4): DRY, with its breakers found in the guest's own vocabulary,
/// typical-p, top-n-sigma, XTC and the dynamic temperature together, then
/// mirostat 2; each generates what a native session with them does, which
/// is not what the same seed gives without them.
#[test]
fn guest_sampling_takes_llama_cpps_samplers() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let mut tenant = tenant_of(&path);
    let base = SamplingParams {
        temperature: 0.9,
        seed: 11,
        ..SamplingParams::default()
    };
    let (plain, _) = native(&path, &request(base.clone(), false));
    for sampling in [
        SamplingParams {
            dry_multiplier: 0.8,
            dry_allowed_length: 1,
            typical_p: 0.9,
            top_n_sigma: 2.0,
            xtc_probability: 0.5,
            xtc_threshold: 0.1,
            dynatemp_range: 0.4,
            min_keep: 2,
            samplers: {
                use realm_models::sampling::SamplerKind::*;
                vec![
                    TopK,
                    Penalties,
                    Dry,
                    TypicalP,
                    TopNSigma,
                    Temperature,
                    Xtc,
                    MinP,
                ]
            },
            ..base.clone()
        },
        SamplingParams {
            mirostat: realm_models::Mirostat::V2,
            mirostat_tau: 3.0,
            ..base.clone()
        },
    ] {
        let req = request(sampling, false);
        let (streamed, _) = generate_as_natively(&mut tenant, &path, &req);
        assert_ne!(streamed, plain);
    }
}

/// A caller that stops reading stops the guest: it ends cancelled, a
/// piece or so later, and the tenant's next call runs whole.
#[test]
fn a_caller_that_stops_reading_cancels_the_guest() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let mut tenant = tenant_of(&path);
    let req = request(SamplingParams::greedy(), false);
    let (_, n) = native(&path, &req);
    assert!(n > 4, "the answer is long enough to cut");
    let mut pieces = Vec::new();
    let stats = tenant
        .generate_while(PROMPT, &req, |t| {
            pieces.push(t.to_string());
            pieces.len() < 2
        })
        .unwrap();
    assert_eq!(pieces.len(), 2, "no text after the caller said stop");
    assert_eq!(stats.stop_reason, StopReason::Cancelled);
    assert!((stats.generated_tokens as usize) < n, "{stats:?}");
    assert_eq!(tenant.live_sessions(), 0);
    let stats = tenant.generate(PROMPT, &req, |_| {}).unwrap();
    assert_eq!(stats.generated_tokens as usize, n);
}

/// A runtime whose tenants keep f16 KV caches generates what a native
/// session with an f16 cache does.
#[test]
fn tenants_with_f16_and_q8_0_kv_caches_generate_as_natively() {
    let Some(path) = common::smollm2() else {
        return;
    };
    for kv_dtype in [KvDtype::F16, KvDtype::Q8_0] {
        let runtime = Runtime::new(RuntimeConfig {
            kv_dtype,
            ..RuntimeConfig::default()
        })
        .unwrap();
        assert_eq!(runtime.models().kv_dtype(), kv_dtype);
        let id = runtime.load_model(&path).unwrap();
        let mut tenant = runtime
            .tenant(&common::guest_wasm(), TenantConfig::new(vec![id]))
            .unwrap();
        let req = request(SamplingParams::greedy(), false);
        let (want, n) = native_with_kv(&path, &req, kv_dtype);
        let mut streamed = String::new();
        let stats = tenant
            .generate(PROMPT, &req, |t| streamed.push_str(t))
            .unwrap();
        assert_eq!(streamed, want, "{kv_dtype:?}");
        assert_eq!(stats.generated_tokens as usize, n);
    }
}

#[test]
fn tenants_share_one_model_and_batched_text_is_unchanged() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let wasm = common::guest_wasm();
    // A batch closes as soon as every live session's step is in, so a long
    // window costs nothing here; it only keeps a loaded machine (tests run
    // side by side on two cores) from splitting steps that belong together.
    let runtime = Runtime::new(RuntimeConfig {
        batch_window: Duration::from_millis(500),
        ..RuntimeConfig::default()
    })
    .unwrap();
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
    // Each tenant waits at its first piece until all three have one, so
    // that their decoding overlaps however the threads are scheduled.
    let started = AtomicUsize::new(0);
    let n = tenants.len();
    std::thread::scope(|s| {
        for mut t in tenants {
            let (want, req, started) = (want.clone(), req.clone(), &started);
            s.spawn(move || {
                let (mut text, mut first) = (String::new(), true);
                t.generate(PROMPT, &req, |p| {
                    if std::mem::take(&mut first) {
                        started.fetch_add(1, Ordering::SeqCst);
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while started.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    text.push_str(p)
                })
                .unwrap();
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

/// Tenants of one model with LoRA adapters of their own (one without, one
/// with an adapter, one with two at other scales) generate what native
/// generation with the same adapters does, their decode steps batched
/// together.
#[test]
fn tenants_with_their_own_lora_adapters_share_one_batch() {
    use realm_models::synthetic::SyntheticLora;
    use realm_runtime::TenantLora;
    let Some(path) = common::smollm2() else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let dir = std::env::temp_dir().join(format!("realm-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut adapters = Vec::new();
    for (i, rank) in [(0u64, 8), (1, 4)] {
        let mut lora = SyntheticLora::new(rank, 2.0 * rank as f32);
        lora.amplitude = 0.15;
        let p = dir.join(format!("adapter{i}.gguf"));
        std::fs::write(&p, lora.write(&file, i + 1).unwrap()).unwrap();
        adapters.push(p);
    }
    let runtime = Runtime::new(RuntimeConfig {
        batch_window: Duration::from_millis(500),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let id = runtime
        .models()
        .load_with_loras(&path, realm_runtime::ModelId::new("smol"), &adapters)
        .unwrap();
    // The same id with other adapters is refused.
    assert!(runtime
        .models()
        .load_with_loras(&path, id.clone(), &adapters[..1])
        .is_err());
    let sets: [&[(usize, f32)]; 3] = [&[], &[(0, 1.0)], &[(1, 0.7), (0, 0.5)]];
    let req = request(SamplingParams::greedy(), false);
    // Native generation with the same adapters.
    let cpu = CpuBackend::new().unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let lora_files: Vec<GgufFile> = adapters
        .iter()
        .map(|p| GgufFile::open(p).unwrap())
        .collect();
    let mut model = Model::load(&file, &cpu).unwrap();
    let ids: Vec<_> = lora_files
        .iter()
        .map(|f| model.add_lora(f, "a").unwrap())
        .collect();
    let story = "Once upon a time, in a small village by the sea,";
    let prompt = tok
        .encode(story, req.add_special, req.parse_special)
        .unwrap();
    let wants: Vec<String> = sets
        .iter()
        .map(|set| {
            let mut s = model.session(prompt.len() + 40, 64).unwrap();
            s.set_loras(&set.iter().map(|&(i, x)| (ids[i], x)).collect::<Vec<_>>());
            let params = GenerateParams {
                max_tokens: 40,
                sampling: SamplingParams::greedy(),
                ..GenerateParams::default()
            };
            realm_models::generate(&model, &tok, &mut s, &prompt, &params, |_| true)
                .unwrap()
                .text
        })
        .collect();
    assert_ne!(wants[0], wants[1], "the adapter changes the answer");
    assert_ne!(wants[1], wants[2]);
    // A tenant naming an adapter the model lacks is refused.
    let mut bad = TenantConfig::new(vec![id.clone()]);
    bad.loras.push(TenantLora {
        model: id.clone(),
        adapter: 2,
        scale: 1.0,
    });
    assert!(runtime.tenant(&common::guest_wasm(), bad).is_err());

    let before = runtime.batch_stats();
    let started = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for (set, want) in sets.iter().zip(&wants) {
            let mut config = TenantConfig::new(vec![id.clone()]);
            config.loras = set
                .iter()
                .map(|&(adapter, scale)| TenantLora {
                    model: id.clone(),
                    adapter,
                    scale,
                })
                .collect();
            let mut t = runtime.tenant(&common::guest_wasm(), config).unwrap();
            let (req, started) = (req.clone(), &started);
            sc.spawn(move || {
                let (mut text, mut first) = (String::new(), true);
                t.generate(story, &req, |p| {
                    if std::mem::take(&mut first) {
                        started.fetch_add(1, Ordering::SeqCst);
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while started.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    text.push_str(p)
                })
                .unwrap();
                assert_eq!(&text, want, "adapters {set:?}");
            });
        }
    });
    let stats = runtime.batch_stats();
    let (steps, batches) = (stats.steps - before.steps, stats.batches - before.batches);
    eprintln!("{steps} decode steps with adapters in {batches} batched forwards");
    assert!(
        steps > 0 && batches < steps,
        "steps of different adapters were merged"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn batched_decode_steps_are_bit_identical_to_single_ones() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let file = GgufFile::open(path).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    // Sequences of different lengths, so every row is at its own position.
    let prompts: [&[u32]; 3] = [&[1, 504, 3458], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], &[42]];
    let fresh = || -> Vec<Session<CpuBackend>> {
        prompts
            .iter()
            .map(|p| {
                let mut s = model.session(64, 8).unwrap();
                model.forward(&mut s, p).unwrap();
                s
            })
            .collect()
    };
    let (mut alone, mut batched) = (fresh(), fresh());
    let mut scratch = model.batch_scratch(4).unwrap();
    for step in 0..6u32 {
        let next: Vec<u32> = (0..3).map(|i| 100 + 37 * step + i).collect();
        let want: Vec<Vec<u32>> = alone
            .iter_mut()
            .zip(&next)
            .map(|(s, &t)| bits(model.forward(s, &[t]).unwrap()))
            .collect();
        let mut rows: Vec<(&mut Session<CpuBackend>, u32)> =
            batched.iter_mut().zip(next.iter().copied()).collect();
        model.forward_batch(&mut rows, &mut scratch).unwrap();
        for (i, s) in batched.iter_mut().enumerate() {
            assert_eq!(bits(s.logits()), want[i], "step {step}, row {i}");
            assert_eq!(s.position(), alone[i].position());
            // The step's logits stay the session's, as after `forward`.
            assert_eq!(bits(model.compute_logits(s).unwrap()), want[i]);
        }
    }
    // Layer by layer gives the fused result too.
    let mut a = model.session(16, 4).unwrap();
    let mut b = model.session(16, 4).unwrap();
    let want = bits(model.forward(&mut a, &[1, 2, 3]).unwrap());
    model.embed_tokens(&mut b, &[1, 2, 3]).unwrap();
    assert!(
        model.compute_logits(&mut b).is_err(),
        "logits before the layers ran"
    );
    assert!(model.forward_layer(&mut b, 1).is_err(), "layers in order");
    for layer in 0..model.config().n_layers {
        model.forward_layer(&mut b, layer).unwrap();
    }
    assert_eq!(bits(model.compute_logits(&mut b).unwrap()), want);
    assert_eq!(b.position(), 3);
    // A full session in a batch is an error that advances nobody.
    let mut full = model.session(1, 1).unwrap();
    model.forward(&mut full, &[5]).unwrap();
    let mut other = model.session(4, 1).unwrap();
    let mut rows = [(&mut other, 7u32), (&mut full, 8)];
    assert!(model.forward_batch(&mut rows, &mut scratch).is_err());
    assert_eq!(other.position(), 0);
}

/// The runtime with its models on the GPU backend (candle's CPU device here;
/// `REALM_GPU_TEST_DEVICE` picks another): tenants, batched decode steps and
/// the layered host functions give the text the CPU backend gives, on a
/// synthetic model with f32 matrices (where the two backends agree to float
/// precision, so greedy choices cannot differ).
#[test]
fn tenants_run_on_the_gpu_backend() {
    use realm_core::GgmlType;
    use realm_models::synthetic::SyntheticLayout;
    let wasm = common::guest_wasm();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-f32.gguf");
    let layout = SyntheticLayout::tiny("llama")
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    std::fs::write(&path, layout.write(11).unwrap()).unwrap();
    let device = std::env::var("REALM_GPU_TEST_DEVICE")
        .map(|s| realm_runtime::GpuDevice::parse(&s).unwrap())
        .unwrap_or(realm_runtime::GpuDevice::Cpu);
    let prompt = "t300 t301 t302";
    let mut texts = Vec::new();
    // The CPU backend, the GPU backend in its default step mode, and in
    // static steps (batched steps too; on CUDA, recorded as graphs).
    for (gpu, gpu_steps) in [
        (None, None),
        (Some(device), None),
        (Some(device), Some(realm_runtime::StepMode::Static)),
    ] {
        let runtime = Runtime::new(RuntimeConfig {
            gpu,
            gpu_steps,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let id = runtime.load_model(&path).unwrap();
        let mut a = runtime
            .tenant(&wasm, TenantConfig::new(vec![id.clone()]))
            .unwrap();
        let mut b = runtime.tenant(&wasm, TenantConfig::new(vec![id])).unwrap();
        let run = |t: &mut realm_runtime::Tenant, layered: bool| {
            let mut text = String::new();
            let req = GenerateRequest {
                max_tokens: 12,
                layered,
                ..GenerateRequest::default()
            };
            t.generate(prompt, &req, |p| text.push_str(p)).unwrap();
            text
        };
        // Two tenants at once: their decode steps may be batched.
        let (ta, tb) = std::thread::scope(|s| {
            let ha = s.spawn(|| run(&mut a, false));
            let hb = s.spawn(|| run(&mut b, true));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert_eq!(ta, tb, "gpu: {gpu:?}, steps: {gpu_steps:?}");
        assert!(!ta.is_empty());
        texts.push(ta);
    }
    assert_eq!(texts[0], texts[1], "cpu and gpu backends");
    assert_eq!(
        texts[1], texts[2],
        "the gpu backend op by op and in static steps"
    );
}

/// With a module cache, the first runtime compiles the guest and keeps it;
/// a later one loads it and its tenant generates the native text; a
/// damaged file is compiled over, not run.
#[test]
fn compiled_guests_are_kept_and_reused() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let req = request(SamplingParams::greedy(), false);
    let (want, _) = native(&path, &req);
    let run = || {
        let runtime = Runtime::new(RuntimeConfig {
            module_cache: Some(dir.path().join("modules")),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let id = runtime.load_model(&path).unwrap();
        let mut t = runtime
            .tenant(&common::guest_wasm(), TenantConfig::new(vec![id]))
            .unwrap();
        let mut text = String::new();
        t.generate(PROMPT, &req, |p| text.push_str(p)).unwrap();
        assert_eq!(text, want);
        runtime.module_counts()
    };
    assert_eq!(run(), (1, 0), "compiled");
    let files: Vec<_> = std::fs::read_dir(dir.path().join("modules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(run(), (0, 1), "loaded");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&files[0], &bytes).unwrap();
    assert_eq!(run(), (1, 0), "a damaged file is compiled over");
    assert_eq!(run(), (0, 1), "and written again");
}

/// Tenants of models whose blocks keep a recurrent state (tiny Qwen 3.5,
/// LFM2, Granite 4.0 hybrid and Falcon-H1, synthetic), of Gemma 3n
/// (whose streams go from block to block on the host) and of Gemma 4
/// (whose blocks' inputs do, and whose blocks differ in their heads): two
/// at once (their
/// steps batched), one through the fused host functions and one layer by
/// layer, each generates the native text.
#[test]
fn tenants_of_recurrent_models_generate_as_natively() {
    use realm_models::synthetic::SyntheticLayout;
    let wasm = common::guest_wasm();
    let dir = tempfile::tempdir().unwrap();
    let prompt = "t300 t301 t302 t303";
    for arch in [
        "qwen35",
        "lfm2",
        "granitehybrid",
        "falcon-h1",
        "gemma3n",
        "gemma4",
    ] {
        let path = dir.path().join(format!("{arch}.gguf"));
        let layout = SyntheticLayout::tiny(arch).unwrap();
        std::fs::write(&path, layout.write(11).unwrap()).unwrap();
        let req = |layered| GenerateRequest {
            max_tokens: 12,
            layered,
            ..request(SamplingParams::greedy(), layered)
        };
        let (want, n) = native_of(&path, prompt, &req(false), KvDtype::F32);
        assert!(n > 0, "{arch}");
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let id = runtime.load_model(&path).unwrap();
        let mut a = runtime
            .tenant(&wasm, TenantConfig::new(vec![id.clone()]))
            .unwrap();
        let mut b = runtime.tenant(&wasm, TenantConfig::new(vec![id])).unwrap();
        let run = |t: &mut Tenant, layered: bool| {
            let mut text = String::new();
            t.generate(prompt, &req(layered), |p| text.push_str(p))
                .unwrap();
            text
        };
        let (ta, tb) = std::thread::scope(|s| {
            let ha = s.spawn(|| run(&mut a, false));
            let hb = s.spawn(|| run(&mut b, true));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert_eq!(ta, want, "{arch}, fused");
        assert_eq!(tb, want, "{arch}, layer by layer");
    }
}
