//! Whole models on the GPU backend against the CPU backend: synthetic
//! weights in the real models' exact layouts (and small layouts of every
//! architecture), a greedy generation compared position by position.
//!
//! The device is candle's CPU device unless `REALM_GPU_TEST_DEVICE` names
//! another; `REALM_GPU_TEST_TOKENS` sets the generation length (default 8;
//! the GPU machine runs 64).

use realm_compute_cpu::CpuBackend;
use realm_compute_gpu::{Dequantized, GpuBackend, GpuDevice};
use realm_core::backend::Backend;
use realm_core::catalog;
use realm_core::gguf::{Gguf, GgufFile, GgufWriter, MetadataValue};
use realm_core::tokenizer::Tokenizer;
use realm_core::{quant, GgmlType};
use realm_models::synthetic::SyntheticLayout;
use realm_models::{Model, ModelConfig};

fn gpu() -> GpuBackend {
    let dev = std::env::var("REALM_GPU_TEST_DEVICE")
        .map(|s| GpuDevice::parse(&s).expect("REALM_GPU_TEST_DEVICE"))
        .unwrap_or(GpuDevice::Cpu);
    GpuBackend::new(dev).expect("device")
}

fn gen_tokens() -> usize {
    std::env::var("REALM_GPU_TEST_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// The gap between the best and second-best logit.
fn margin(v: &[f32]) -> f32 {
    let best = argmax(v);
    let second = v
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .fold(f32::NEG_INFINITY, |m, (_, &x)| m.max(x));
    v[best] - second
}

/// Every generative architecture's `SyntheticLayout::tiny` (the encoders
/// are [`encoders_match_the_cpu`]'s).
const ARCHS: [&str; 78] = [
    "grok",
    "maincoder",
    "apertus",
    "bitnet",
    "jais",
    "dbrx",
    "deepseek",
    "qwen",
    "deci",
    "chatglm",
    "gpt-oss",
    "llama4",
    "bloom",
    "mpt",
    "refact",
    "llama",
    "arcee",
    "internlm2",
    "minicpm",
    "mistral",
    "mistral3",
    "olmo2",
    "olmoe",
    "exaone4",
    "ernie4_5",
    "glm4",
    "seed_oss",
    "qwen2",
    "qwen2moe",
    "qwen3",
    "qwen3moe",
    "qwen3vl",
    "qwen3vlmoe",
    "hunyuan-moe",
    "hunyuan-dense",
    "phi3",
    "smollm3",
    "granite",
    "granitemoe",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3n",
    "gemma4",
    "glm4moe",
    "ernie4_5-moe",
    "minimax-m2",
    "dots1",
    "bailingmoe2",
    "deepseek2",
    "qwen35",
    "qwen35moe",
    "qwen3next",
    "lfm2",
    "granitehybrid",
    "falcon-h1",
    "lfm2moe",
    "nemotron_h",
    "nemotron_h_moe",
    "starcoder2",
    "phi2",
    "stablelm",
    "gptneox",
    "command-r",
    "cohere2",
    "falcon",
    "gpt2",
    "starcoder",
    "orion",
    "nemotron",
    "codeshell",
    "exaone",
    "mamba2",
    "xverse",
    "plamo",
    "olmo",
    "baichuan",
    "mamba",
];

/// Prefill of `prompt` in chunks of `batch`, then greedy decoding fed with
/// the CPU's tokens; returns every position's logits.
fn run<B: Backend>(
    model: &Model<'_, B>,
    prompt: &[u32],
    follow: Option<&[u32]>,
    n: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = model.session(prompt.len() + n + 1, 4).unwrap();
    let mut all = vec![model.forward(&mut s, prompt).unwrap().to_vec()];
    let mut tokens = Vec::new();
    for i in 0..n {
        let t = match follow {
            Some(f) => f[i],
            None => argmax(all.last().unwrap()) as u32,
        };
        tokens.push(t);
        all.push(model.forward(&mut s, &[t]).unwrap().to_vec());
    }
    (tokens, all)
}

/// The same file with every tensor dequantized to f32: the exact math the
/// quantized weights stand for.
fn dequantized(file: &Gguf<Vec<u8>>) -> Gguf<Vec<u8>> {
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata().iter() {
        w.set(k, v.clone());
    }
    for info in file.tensor_infos() {
        let t = file.tensor(&info.name).unwrap();
        let mut v = vec![0f32; t.n_elements() as usize];
        quant::dequantize(t.dtype(), t.data(), &mut v).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(&info.name, GgmlType::F32, &info.shape, bytes)
            .unwrap();
    }
    Gguf::from_bytes(w.to_bytes().unwrap()).unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Compares a generation on both backends; returns the largest logit
/// difference. Greedy tokens must agree wherever the CPU's top two logits
/// are further apart than twice that difference.
fn compare(layout: &SyntheticLayout, seed: u64, tol: f32) -> f32 {
    compare_on(&gpu(), layout, seed, tol)
}

/// [`compare`] on the GPU backend `g`.
fn compare_on(g: &GpuBackend, layout: &SyntheticLayout, seed: u64, tol: f32) -> f32 {
    let bytes = layout.write(seed).unwrap();
    let file = Gguf::from_bytes(bytes).unwrap();
    let vocab = layout.vocab_size as u32;
    let prompt: Vec<u32> = (0..11).map(|i| (i * 7919 + 3) % vocab).collect();
    let what = format!("{} ({} tensors)", layout.arch, layout.tensors.len());
    compare_file(g, &what, &file, &prompt, tol)
}

/// [`compare`] of the model in `file`, after `prompt`, on `g`.
fn compare_file<S: AsRef<[u8]>>(
    g: &GpuBackend,
    what: &str,
    file: &Gguf<S>,
    prompt: &[u32],
    tol: f32,
) -> f32 {
    let cpu = CpuBackend::new().unwrap();
    let (cm, gm) = (
        Model::load(file, &cpu).unwrap(),
        Model::load(file, g).unwrap(),
    );
    let n = gen_tokens();
    let (tokens, want) = run(&cm, prompt, None, n);
    let (_, got) = run(&gm, prompt, Some(&tokens), n);
    let mut worst = 0f32;
    for (pos, (w, g)) in want.iter().zip(&got).enumerate() {
        let diff = w.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(diff);
        let (wa, ga) = (argmax(w), argmax(g));
        assert!(
            wa == ga || margin(w) <= 2.0 * diff,
            "{what} position {pos}: cpu picks {wa}, gpu {ga}; margin {} > 2 x diff {diff}",
            margin(w)
        );
    }
    let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let std = {
        let w = &want[0];
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        (w.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt()
    };
    eprintln!(
        "{what}: {} positions, max |logit difference| {worst:.2e}, max |logit| {scale:.3}, std {std:.3}",
        want.len()
    );
    assert!(worst <= tol, "{what}: max difference {worst} > {tol}");
    worst
}

/// With f32 matrices neither backend rounds activations: every op of the
/// forward pass (norms, RoPE, attention, gating, biases, QK-norm, sandwich
/// norms, embedding scale) must agree to float precision.
#[test]
fn every_architecture_matches_the_cpu_in_f32() {
    for arch in ARCHS {
        let layout = SyntheticLayout::tiny(arch)
            .unwrap()
            .with_matrix_type(GgmlType::F32);
        compare(&layout, 3, 1e-3);
    }
    // A llama with experts, as Mixtral.
    let layout = SyntheticLayout::by_name("tiny-mixtral")
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    compare(&layout, 3, 1e-3);
    // YaRN's scaling (its pair divisors are RoPE factors).
    let layout = SyntheticLayout::tiny("qwen3")
        .unwrap()
        .with_hparam(
            "qwen3.rope.scaling.type",
            MetadataValue::String("yarn".into()),
        )
        .with_hparam("qwen3.rope.scaling.factor", MetadataValue::F32(4.0))
        .with_hparam(
            "qwen3.rope.scaling.original_context_length",
            MetadataValue::U32(64),
        )
        .with_matrix_type(GgmlType::F32);
    compare(&layout, 3, 1e-3);
    // Llama 3.1's RoPE frequency factors.
    let layout = SyntheticLayout::tiny("llama")
        .unwrap()
        .with_rope_factors()
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    compare(&layout, 3, 1e-3);
    // LongRoPE's long factors and attention factor, on three quarters of
    // each head (Phi 4 mini's).
    let layout = SyntheticLayout::tiny("phi3")
        .unwrap()
        .with_hparam("phi3.context_length", MetadataValue::U32(4096))
        .with_hparam("phi3.rope.dimension_count", MetadataValue::U32(12))
        .with_long_rope(8)
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    compare(&layout, 3, 1e-3);
}

/// Quantized matrices: both backends round activations to 8-bit blocks
/// before integer dot products, with different rounding details, so their
/// logits differ; each must stay as close to the exact math (the
/// dequantized weights in f32) as the other, within a factor of 2.
#[test]
fn every_architecture_matches_the_cpu_quantized() {
    let cpu = CpuBackend::new().unwrap();
    let g = gpu();
    for arch in ARCHS {
        let layout = SyntheticLayout::tiny(arch).unwrap();
        compare(&layout, 3, 0.15);
        let file = Gguf::from_bytes(layout.write(3).unwrap()).unwrap();
        let exact_file = dequantized(&file);
        let prompt: Vec<u32> = (0..11).map(|i| (i * 37 + 3) % 300).collect();
        let exact = Model::load(&exact_file, &cpu).unwrap();
        let (tokens, want) = run(&exact, &prompt, None, 8);
        let (_, c) = run(
            &Model::load(&file, &cpu).unwrap(),
            &prompt,
            Some(&tokens),
            8,
        );
        let (_, q) = run(&Model::load(&file, &g).unwrap(), &prompt, Some(&tokens), 8);
        let (ce, ge) = (max_diff(&c, &want), max_diff(&q, &want));
        eprintln!("{arch}: distance from exact math: cpu {ce:.4}, gpu {ge:.4}");
        assert!(
            ge <= 2.0 * ce && ce <= 2.0 * ge,
            "{arch}: cpu {ce} gpu {ge}"
        );
    }
}

/// The fused ops' results as Q8_1 blocks for the next product (on by
/// default on CUDA, where they change nothing, so the tests above cover
/// them there). On candle's CPU device the product quantizes the blocks'
/// values again, a second rounding: a looser bound, and every decode step's
/// products take blocks (a model's with LayerNorms may not: its norms
/// have no fused kernel, and its products after them quantize their
/// inputs themselves).
#[test]
fn products_of_blocks_match_the_cpu() {
    let g = gpu().with_q8_blocks(true);
    for arch in ARCHS {
        let before = g.blocks_products();
        let layout = SyntheticLayout::tiny(arch).unwrap();
        compare_on(&g, &layout, 3, 0.3);
        let file = Gguf::from_bytes(layout.write(3).unwrap()).unwrap();
        let layer_norm = ModelConfig::from_metadata(file.metadata())
            .unwrap()
            .layer_norm;
        assert!(
            g.blocks_products() > before || layer_norm,
            "{arch}: no product took blocks"
        );
    }
}

/// Models with matrices candle cannot multiply (MXFP4, IQ4_NL), on a
/// backend asked to take them dequantized: in f32 the GPU's logits are
/// the exact math of the file's weights (the CPU's on the dequantized
/// file, to float precision); in f16 they stay within a quarter of the
/// CPU's distance from it (the CPU rounds its inputs to 8 bits). Not
/// asked, the model is refused at load, naming the tensor and its type.
#[test]
fn dequantized_matrices_match_the_exact_math() {
    let cpu = CpuBackend::new().unwrap();
    let prompt: Vec<u32> = (0..11).map(|i| (i * 37 + 3) % 300).collect();
    for (arch, t) in [
        ("llama", GgmlType::MXFP4),
        ("gpt-oss", GgmlType::MXFP4),
        ("qwen3", GgmlType::IQ4_NL),
    ] {
        let layout = SyntheticLayout::tiny(arch).unwrap().with_matrix_type(t);
        let file = Gguf::from_bytes(layout.write(3).unwrap()).unwrap();
        let err = Model::load(&file, &gpu()).unwrap_err().to_string();
        assert!(err.contains(&t.to_string()), "{arch}: {err}");
        let exact_file = dequantized(&file);
        let exact = Model::load(&exact_file, &cpu).unwrap();
        let (tokens, want) = run(&exact, &prompt, None, 8);
        let (_, c) = run(
            &Model::load(&file, &cpu).unwrap(),
            &prompt,
            Some(&tokens),
            8,
        );
        let ce = max_diff(&c, &want);
        for to in [Dequantized::F32, Dequantized::F16] {
            let g = gpu().with_dequantized(Some(to));
            let (_, q) = run(&Model::load(&file, &g).unwrap(), &prompt, Some(&tokens), 8);
            let ge = max_diff(&q, &want);
            eprintln!("{arch} {t} as {to:?}: distance from exact math: cpu {ce:.4}, gpu {ge:.2e}");
            match to {
                Dequantized::F32 => assert!(ge <= 1e-3, "{arch}: {ge}"),
                Dequantized::F16 => assert!(ge <= ce / 4.0, "{arch}: cpu {ce} gpu {ge}"),
            }
        }
    }
}

/// f16 matrices stay f16 on the device (half of f32's memory), their
/// products rounding the input to f16: the logits stay within that
/// rounding of the CPU backend's, which multiplies f32 inputs.
#[test]
fn f16_matrices_match_the_cpu() {
    for arch in ["llama", "gemma3", "qwen3"] {
        let layout = SyntheticLayout::tiny(arch)
            .unwrap()
            .with_matrix_type(GgmlType::F16);
        compare(&layout, 3, 0.02);
    }
}

/// An encoder's final hidden states of `tokens` (one batch).
fn hidden<B: Backend>(model: &Model<'_, B>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut s = model.session(tokens.len(), tokens.len()).unwrap();
    let mut out = Vec::new();
    model
        .forward_embeddings(&mut s, tokens, 0, |_, h| out.push(h.to_vec()))
        .unwrap();
    out
}

/// The encoders' bidirectional attention and norms after the residual:
/// their hidden states agree in f32 to float precision and, quantized,
/// each backend stays as close to the exact math as the other (within a
/// factor of 2); neither makes logits.
#[test]
fn encoders_match_the_cpu() {
    let (cpu, g) = (CpuBackend::new().unwrap(), gpu());
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 297 + 3).collect();
    for arch in [
        "bert",
        "nomic-bert",
        "nomic-bert-moe",
        "gemma-embedding",
        "llama-embed",
        "neo-bert",
        "modern-bert",
        "eurobert",
        "jina-bert-v2",
        "jina-bert-v3",
    ] {
        let layout = SyntheticLayout::tiny(arch).unwrap();
        let f32_file = Gguf::from_bytes(
            layout
                .clone()
                .with_matrix_type(GgmlType::F32)
                .write(3)
                .unwrap(),
        )
        .unwrap();
        let want = hidden(&Model::load(&f32_file, &cpu).unwrap(), &tokens);
        let gm = Model::load(&f32_file, &g).unwrap();
        let d = max_diff(&hidden(&gm, &tokens), &want);
        eprintln!("{arch}: f32 hidden states differ by {d:.2e}");
        assert!(d <= 1e-3, "{arch}: {d}");
        let mut s = gm.session(8, 8).unwrap();
        let err = gm.forward(&mut s, &tokens[..4]).unwrap_err().to_string();
        assert!(err.contains("embedding model"), "{err}");

        let file = Gguf::from_bytes(layout.write(3).unwrap()).unwrap();
        let exact = hidden(&Model::load(&dequantized(&file), &cpu).unwrap(), &tokens);
        let c = max_diff(&hidden(&Model::load(&file, &cpu).unwrap(), &tokens), &exact);
        let q = max_diff(&hidden(&Model::load(&file, &g).unwrap(), &tokens), &exact);
        eprintln!("{arch}: distance from exact math: cpu {c:.4}, gpu {q:.4}");
        assert!(q <= 2.0 * c && c <= 2.0 * q, "{arch}: cpu {c} gpu {q}");
    }
}

/// SmolLM2-135M's exact layout (30 layers, Q4_1, Q8_0 tied embedding).
#[test]
fn smollm2_layout_matches_the_cpu() {
    compare(&SyntheticLayout::smollm2_135m(), 5, 0.3);
}

/// Gemma 3 270M's exact layout (Q8_0, Q5_0, Q4_K, Q6_K; sliding windows;
/// a 262,144-token vocabulary).
#[test]
fn gemma3_layout_matches_the_cpu() {
    compare(&SyntheticLayout::gemma3_270m(), 7, 0.3);
}

/// The real models (when `cargo xtask fetch-model` has cached them), their
/// real weights and a real prompt: the GPU code path against the CPU
/// backend, which `realm-models/tests/it/golden.rs` checks against llama.cpp.
/// The bounds are golden.rs's against llama.cpp: both backends round
/// activations to 8-bit blocks before their products, with different
/// details, and these small models amplify the difference.
#[test]
fn real_models_match_the_cpu() {
    for (m, tol) in [(&catalog::SMOLLM2, 1.5), (&catalog::GEMMA3, 2.25)] {
        let Some(path) = catalog::cached_path(m).filter(|p| p.is_file()) else {
            eprintln!("skipped: {} is not cached", m.file_name);
            continue;
        };
        let file = GgufFile::open(path).unwrap();
        let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
        let prompt = tok.encode("The capital of France is", true, false).unwrap();
        compare_file(&gpu(), m.short_name, &file, &prompt, tol);
    }
}

/// A session state saved on the GPU backend restores there bit for bit
/// (f32 and f16 caches), and one saved on the CPU restores on the GPU: the
/// same keys and values, whichever backend wrote them.
#[test]
fn session_states_move_between_sessions_and_backends() {
    use realm_core::backend::KvDtype;
    // f32 matrices: the backends then agree to 1e-3 (above).
    let layout = SyntheticLayout::tiny("gemma3")
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    let file = Gguf::from_bytes(layout.write(3).unwrap()).unwrap();
    let (g, cpu) = (gpu(), CpuBackend::new().unwrap());
    let on_gpu = Model::load(&file, &g).unwrap();
    let on_cpu = Model::load(&file, &cpu).unwrap();
    assert_eq!(on_gpu.fingerprint(), on_cpu.fingerprint());
    let prompt = [1u32, 5, 9, 2, 7, 3, 8];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for dtype in [KvDtype::F32, KvDtype::F16] {
        let mut s = on_gpu.session_with_kv(32, 4, dtype).unwrap();
        on_gpu.forward(&mut s, &prompt).unwrap();
        let mut saved = Vec::new();
        on_gpu.save_state(&s, &prompt, &mut saved).unwrap();
        let mut r = on_gpu.session_with_kv(16, 8, dtype).unwrap();
        assert_eq!(
            on_gpu.load_state(&mut r, &mut saved.as_slice()).unwrap(),
            prompt
        );
        for t in [4u32, 6, 1] {
            let a = on_gpu.forward(&mut s, &[t]).unwrap().to_vec();
            let b = on_gpu.forward(&mut r, &[t]).unwrap().to_vec();
            assert_eq!(bits(&a), bits(&b), "{dtype:?}");
        }

        // Saved on the CPU: restored on the GPU, it decodes as the GPU's
        // own prefill does, within the backends' usual difference.
        let mut c = on_cpu.session_with_kv(32, 4, dtype).unwrap();
        on_cpu.forward(&mut c, &prompt).unwrap();
        let mut from_cpu = Vec::new();
        on_cpu.save_state(&c, &prompt, &mut from_cpu).unwrap();
        let mut r = on_gpu.session_with_kv(32, 4, dtype).unwrap();
        on_gpu.load_state(&mut r, &mut from_cpu.as_slice()).unwrap();
        let mut fresh = on_gpu.session_with_kv(32, 4, dtype).unwrap();
        on_gpu.forward(&mut fresh, &prompt).unwrap();
        let a = on_gpu.forward(&mut fresh, &[4]).unwrap().to_vec();
        let b = on_gpu.forward(&mut r, &[4]).unwrap().to_vec();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "{dtype:?}: {diff}");
    }
}

/// A context shift (forget a stretch, turn the later keys back) on the GPU
/// decodes as the CPU backend's does, within the backends' usual
/// difference, with either cache type.
#[test]
fn context_shifts_match_the_cpu() {
    use realm_core::backend::KvDtype;
    for arch in ["llama", "gemma3"] {
        let layout = SyntheticLayout::tiny(arch)
            .unwrap()
            .with_matrix_type(GgmlType::F32);
        let file = Gguf::from_bytes(layout.write(5).unwrap()).unwrap();
        let (g, cpu) = (gpu(), CpuBackend::new().unwrap());
        let on_gpu = Model::load(&file, &g).unwrap();
        let on_cpu = Model::load(&file, &cpu).unwrap();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 50).collect();
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let mut a = on_gpu.session_with_kv(48, 16, dtype).unwrap();
            let mut b = on_cpu.session_with_kv(48, 16, dtype).unwrap();
            on_gpu.forward(&mut a, &prompt).unwrap();
            on_cpu.forward(&mut b, &prompt).unwrap();
            on_gpu.shift_context(&mut a, 3, 17).unwrap();
            on_cpu.shift_context(&mut b, 3, 17).unwrap();
            assert_eq!(a.position(), 23);
            for t in [4u32, 6, 1] {
                let x = on_gpu.forward(&mut a, &[t]).unwrap().to_vec();
                let y = on_cpu.forward(&mut b, &[t]).unwrap();
                let diff = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-3, "{arch} {dtype:?}: {diff}");
            }
        }
    }
}

/// LoRA adapters (two at once, and rows of a batch each with its own) on
/// f32 layouts: the GPU's logits are the CPU's to float precision.
#[test]
fn lora_adapters_match_the_cpu() {
    use realm_models::synthetic::SyntheticLora;
    use realm_models::LoraId;
    let (cpu, g) = (CpuBackend::new().unwrap(), gpu());
    for arch in ["llama", "gemma3"] {
        let layout = SyntheticLayout::tiny(arch)
            .unwrap()
            .with_matrix_type(GgmlType::F32);
        let file = Gguf::from_bytes(layout.write(3).unwrap()).unwrap();
        let one = SyntheticLora::new(4, 8.0).write(&file, 1).unwrap();
        let mut two = SyntheticLora::new(2, 0.0);
        two.targets = vec!["attn_v".into(), "ffn_down".into()];
        two.amplitude = 0.1;
        let two = two.write(&file, 2).unwrap();
        let (one, two) = (
            Gguf::from_bytes(one).unwrap(),
            Gguf::from_bytes(two).unwrap(),
        );
        // Each backend's model, its adapters' ids, and what it computes.
        fn logits<B: Backend>(
            b: &B,
            file: &Gguf<Vec<u8>>,
            adapters: [&Gguf<Vec<u8>>; 2],
        ) -> Vec<Vec<f32>> {
            let mut m = Model::load(file, b).unwrap();
            let ids: Vec<LoraId> = adapters
                .iter()
                .map(|a| m.add_lora(*a, "a").unwrap())
                .collect();
            let sets: [Vec<(LoraId, f32)>; 3] = [
                vec![(ids[0], 1.0), (ids[1], -0.5)],
                vec![],
                vec![(ids[1], 2.0)],
            ];
            let mut out = Vec::new();
            let mut sessions = Vec::new();
            for set in &sets {
                let mut s = m.session(16, 4).unwrap();
                s.set_loras(set);
                let p: Vec<u32> = (0..6).map(|t| (t * 37 + 11) % 96).collect();
                out.push(m.forward(&mut s, &p).unwrap().to_vec());
                sessions.push(s);
            }
            let mut scratch = m.batch_scratch(3).unwrap();
            for step in 0..2 {
                let mut rows: Vec<_> = sessions
                    .iter_mut()
                    .enumerate()
                    .map(|(i, s)| (s, (5 + 13 * i + step) as u32))
                    .collect();
                m.forward_batch(&mut rows, &mut scratch).unwrap();
                out.extend(sessions.iter().map(|s| s.logits().to_vec()));
            }
            out
        }
        let want = logits(&cpu, &file, [&one, &two]);
        let got = logits(&g, &file, [&one, &two]);
        let diff = max_diff(&want, &got);
        eprintln!("{arch} with adapters: max |logit difference| {diff:.2e}");
        assert!(diff < 1e-3, "{arch}: {diff}");
        // The adapters did something: the same prompt without them.
        assert!(max_diff(&want[..1], &want[1..2]) > 0.01);
        assert!(max_diff(&want[2..3], &want[1..2]) > 0.01);
    }
}

/// An importance matrix collected on the GPU backend (each product's input
/// read back to the host) is the CPU's to float precision, whatever the
/// chunking.
#[test]
fn importance_matrices_match_the_cpu() {
    use realm_core::imatrix::Imatrix;
    fn collect<B: Backend>(b: &B, file: &Gguf<Vec<u8>>, batch: usize) -> Imatrix {
        let m = Model::load(file, b).unwrap();
        let mut s = m.session(16, batch).unwrap();
        s.collect_imatrix(Imatrix::new(10), false);
        let p: Vec<u32> = (0..10).map(|t| (t * 37 + 11) % 96).collect();
        m.forward(&mut s, &p).unwrap();
        s.take_imatrix().unwrap()
    }
    let (cpu, g) = (CpuBackend::new().unwrap(), gpu());
    for arch in ["llama", "gemma3"] {
        let layout = SyntheticLayout::tiny(arch)
            .unwrap()
            .with_matrix_type(GgmlType::F32);
        let file = Gguf::from_bytes(layout.write(4).unwrap()).unwrap();
        let (want, got) = (collect(&cpu, &file, 16), collect(&g, &file, 4));
        assert_eq!(want.len(), got.len());
        let mut worst = 0f32;
        for name in want.names() {
            let (a, b) = (want.entry(name).unwrap(), got.entry(name).unwrap());
            assert_eq!(a.counts, [10], "{arch} {name}");
            assert_eq!(a.counts, b.counts, "{arch} {name}");
            for (x, y) in a.sums.iter().zip(&b.sums) {
                worst = worst.max((x - y).abs() / x.abs().max(1e-3));
            }
        }
        eprintln!("{arch}: worst relative difference {worst:.2e}");
        assert!(worst < 1e-3, "{arch}: {worst}");
    }
}
