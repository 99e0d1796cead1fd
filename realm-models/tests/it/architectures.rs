//! Every architecture against llama.cpp, on synthetic-weight models:
//! `scripts/gen_arch_fixtures.py` had llama.cpp evaluate two-layer models
//! that `realm synth tiny-ARCH` wrote, with the options that exercise what
//! each architecture reads from its metadata (RoPE frequency factors,
//! linear, YaRN and LongRoPE scaling, Ministral 3's YaRN corrections and
//! attention temperature, OLMo 2's norms and OLMo 3's window, experts,
//! Gemma 3's local/global pattern and local base), and
//! stored the logits of every position over the whole vocabulary. The test
//! writes the same files with `realm_models::synthetic` (checked by hash)
//! and runs them on the CPU backend.

use realm_compute_cpu::CpuBackend;
use realm_core::gguf::{Gguf, MetadataValue};
use realm_core::GgmlType;
use realm_models::synthetic::SyntheticLayout;
use realm_models::{ExpertActivation, Gating, Model};
use serde_json::Value;

/// Largest difference allowed between a logit of ours and llama.cpp's
/// (logits of about +-4), in one batch, in chunks of 5 and one token at a
/// time, with f32 matrices. Measured worst: 7.6e-6; the two differ only in
/// the order of float sums.
const TOLERANCE: f32 = 1e-4;

/// The same with quantized, f16 or bf16 matrices, whose products both
/// round activations first (to 8 bits with half scales, or to the weights'
/// type), alike: most positions differ by at most 5.2e-6, but a value whose
/// rounding the order of float sums flips moves a logit by up to 3.2e-3
/// (Q4_0, one position of 24) and, through the KV cache, the positions
/// after it (f16: 1.8e-3).
const TOLERANCE_QUANTIZED: f32 = 1e-2;

/// The same for Gemma 1, 2, 3 and 3n's four blocks, whose GELU llama.cpp's
/// CPU backend reads from a table of half inputs and outputs (Realm
/// computes it in f32 unless told to read that table). Measured worst:
/// 2.4e-3 (Gemma 3n), 1.4e-3 (the others).
const TOLERANCE_GELU: f32 = 5e-3;

/// The same for the cases where such a flip lands where it moves the
/// logits most: EXAONE 4's Q8_0 (no norm before its blocks' products, so
/// their inputs are the raw residual stream) differs by 3.9e-2 at
/// positions 14-23 but for two (5.0e-6 before them). With the fixture's
/// seed 3 instead of 7 every case of this file, this one too, agrees
/// within 1.2e-5 but f16's (2.1e-3) and the Gemmas' (their GELU), so it
/// is that flip, not the architecture's math (its f32 case: 6.3e-6).
/// Qwen 3.5 MoE's Q8_0 agrees within 5.0e-6 but at 6 of 24 positions
/// (15 on), which differ by up to 2.1e-2 each on its own: the positions
/// after them agree again, so the flip is in the last block's experts,
/// whose output stays at its position (a delta net's would carry on in
/// its state); its f32 case agrees within 1.6e-5.
/// Nemotron's Q8_0 (squared ReLUs after LayerNorms) agrees within 5.0e-6
/// up to position 11 and differs by up to 3.9e-2 at 11 of the 12 after;
/// with seed 3 it agrees within 5.0e-6 at every position (its f32 case
/// 5.8e-6). BLOOM's Q8_0 so too: within 5.0e-6 up to position 6, up to
/// 3.7e-2 at 15 of the 17 after; with seed 3 within 5.0e-6 everywhere.
/// Qwen 1's Q8_0 so too: within 5.0e-6 up to position 3, up to 4.8e-2
/// at every one of the 20 after; with seed 3 within 5.5e-6 everywhere.
/// The 256-wide llama's IQ3_XXS so too (3.2e-2; with seed 3 5.7e-6), as
/// its IQ2_XXS within the quantized tolerance (5.1e-3; with seed 3
/// 5.5e-6): their other five grid types agree within 6.0e-6 with seed 7.
const TOLERANCE_FLIPPED: f32 = 5e-2;
const FLIPPED: [&str; 6] = [
    "llama-wide-iq3_xxs",
    "exaone4-q8_0",
    "qwen35moe-q8_0",
    "nemotron-q8_0",
    "bloom-q8_0",
    "qwen-q8_0",
];

/// The same for positions past 8192 (Llama 4's long case): llama.cpp
/// turns RoPE's pairs by angles it makes in f32 (the position times the
/// base's power, one multiplication a pair after the last), whose error
/// grows with the position (at 8192 a few thousandths of a radian), and
/// Realm by angles made in f64 and rounded once. There the case differs
/// by up to 2.2e-4, most in the first few positions of a chunk (whose
/// queries attend to few keys); with ggml's f32 angles in Realm's table
/// (tried, not kept) it agrees within 1.0e-5 at every position.
const TOLERANCE_FAR: f32 = 5e-4;
const FAR: [&str; 1] = ["llama4-long"];

/// The same for Gemma 3n's 22 blocks (what its shared caches take:
/// llama.cpp shares from block 20 on) and its Q8_0 case: two GELUs a
/// block, whose table's roundings (above) carry through the four streams
/// and, with Q8_0 matrices, flip the 8-bit roundings of the products'
/// inputs after them, move the logits by up to 0.11 and 0.14 (its 4-block
/// f32 case: 2.4e-3). With llama.cpp's table in Realm's GELU
/// ([`gemmas_match_llama_cpp_with_its_gelu_table`]) the three agree within
/// 4.1e-3, 5.0e-6 and 7.4e-5, and every
/// block's intermediate values at the first two positions (read from
/// llama.cpp through its eval callback: predictions, LAuReL, attention,
/// feed-forward, corrections) within 1e-6 of their size up to block 10,
/// the difference growing from there to 1e-4 at block 21, with no step
/// at the two blocks that read others' caches.
const TOLERANCE_DEEP: f32 = 0.25;
const DEEP: [&str; 2] = ["gemma3n-shared", "gemma3n-q8_0"];

/// Gemma 4's cases run with llama.cpp's GELU table in Realm's
/// ([`CpuBackend::with_ggml_gelu`]): its attention is sharper than the
/// other Gemmas' (its queries, keys and values normed, its scores not
/// scaled) and its GELUs (two a block with its blocks' inputs, one more
/// in its experts) come after it, so Realm's own GELU moves the logits by
/// up to 6.6e-3 (f32; 6.0e-3 as the 31B, 3.7e-3 with experts) and, where
/// it flips the 8-bit roundings of the products after it or an expert's
/// choice, by 0.22 (Q8_0) and 1.2 (Q8_0 with experts). With the table the
/// Q8_0 cases, whose 8-bit inputs absorb the float sums' differences,
/// agree within 5.0e-6; the f32 cases within 2.1e-3, 1.9e-3 and 1.1e-3,
/// the 31B's within 7.2e-6 at its first two positions (which attend to
/// one and two keys): from the third on the attention's sums, in another
/// order than llama.cpp's, flip the f16 roundings of the table's inputs.
const TOLERANCE_SHARP: f32 = 1e-2;
const SHARP: [&str; 5] = [
    "gemma4",
    "gemma4-q8_0",
    "gemma4-31b",
    "gemma4-moe",
    "gemma4-moe-q8_0",
];

/// The feed-forward networks of GELUs without a gate (StarCoder 2's,
/// Phi 2's, GPT-NeoX's, Falcon's, GPT-2's) run with llama.cpp's GELU table too: with Realm's
/// own GELU their logits differ by up to 9.0e-4 (StarCoder 2, f32), the
/// table's f16 rounding of each activation. With the table the Q8_0
/// cases agree within 5.0e-6 and the f32 ones within 1.9e-4 (GPT-NeoX
/// without `use_parallel_residual`; Phi 2 and GPT-2 1.7e-4, Falcon 40B
/// 1.1e-4, StarCoder 2 9.0e-5):
/// as for Gemma 4's, the float sums' order flips the f16 rounding of some
/// of the table's inputs, which the 8-bit inputs of the Q8_0 products
/// after them absorb. Their f32 cases are held to [`TOLERANCE_GELU`].
/// Grok's GELU-gated experts so too: with the table within 5.4e-6 (Grok-2's
/// dense network beside them 5.1e-6; with YaRN over 4096 original
/// positions 3.5e-5, where llama.cpp's default `yarn_beta_fast` of 8 for
/// Grok matters: the usual 32 moves the logits by 8.9e-3).
const GELU_TABLE: [&str; 22] = [
    "tiny-starcoder2",
    "tiny-phi2",
    "tiny-gptneox",
    "tiny-gptneox-sequential",
    "tiny-falcon",
    "tiny-falcon-40b",
    "tiny-gpt2",
    "tiny-starcoder",
    "tiny-codeshell",
    "tiny-bloom",
    "tiny-mpt",
    "tiny-bert",
    "tiny-gemma-embedding",
    "tiny-bert-rank",
    "tiny-modern-bert",
    "tiny-nomic-bert-moe",
    "tiny-jina-bert-v2",
    "tiny-jina-bert-v2-rank",
    "tiny-jina-bert-v3",
    "tiny-modern-bert-rank",
    "tiny-grok",
    "tiny-grok-2",
];

fn fixture() -> Value {
    let text = include_str!("../fixtures/architectures.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

/// The tokens every case runs.
fn fixture_tokens(fx: &Value) -> Vec<u32> {
    fx["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The model file of a case, as `realm synth` wrote it for llama.cpp.
fn model_file(case: &Value, seed: u64) -> Vec<u8> {
    let name = case["layout"].as_str().unwrap();
    let mut layout = SyntheticLayout::by_name(name).unwrap();
    let ty = case["matrix_type"].as_str().unwrap();
    let ty = (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| t.name().eq_ignore_ascii_case(ty))
        .unwrap();
    layout = layout.with_matrix_type(ty);
    for o in case["overrides"].as_array().unwrap() {
        let (key, value) = (o[0].as_str().unwrap(), o[2].as_str().unwrap());
        let value = match o[1].as_str().unwrap() {
            "int" => MetadataValue::U32(value.parse().unwrap()),
            "float" => MetadataValue::F32(value.parse().unwrap()),
            "str" => MetadataValue::String(value.into()),
            "bool" => MetadataValue::Bool(value.parse().unwrap()),
            other => panic!("type {other}"),
        };
        layout = layout.with_hparam(key, value);
    }
    if case["rope_factors"].as_bool().unwrap() {
        layout = layout.with_rope_factors().unwrap();
    }
    if let Some(n) = case["long_rope"].as_u64() {
        layout = layout.with_long_rope(n as u32).unwrap();
    }
    layout.write(seed).unwrap()
}

/// Our logits for every token, through prefill chunks of `batch` rows, in
/// a session of `n_ctx` tokens.
fn logits(
    model: &Model<'_, CpuBackend>,
    tokens: &[u32],
    n_ctx: usize,
    batch: usize,
) -> Vec<Vec<f32>> {
    let mut s = model.session(n_ctx, batch).unwrap();
    let mut out = Vec::new();
    model
        .forward_outputs(&mut s, tokens, 0, |_, l| out.push(l.to_vec()))
        .unwrap();
    out
}

/// Our embedding of every token (an encoder's final hidden states, not
/// pooled, projected as the model asks; a reranker's scores), in a
/// session of `n_ctx` tokens and batches of `batch`.
fn hidden(
    model: &Model<'_, CpuBackend>,
    tokens: &[u32],
    n_ctx: usize,
    batch: usize,
) -> realm_models::Result<Vec<Vec<f32>>> {
    use realm_models::embedding::{embed, Pooling};
    let mut s = model.session(n_ctx, batch)?;
    let pooling = match model.can_rank() {
        true => Pooling::Rank,
        false => Pooling::None,
    };
    embed(model, &mut s, tokens, pooling)
}

/// llama.cpp's logits of a case, a row a position (an encoder's final
/// hidden states).
fn case_logits(case: &Value) -> Vec<Vec<f32>> {
    let key = match case["embedding"].as_bool() {
        Some(true) => "hidden",
        _ => "logits",
    };
    case[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_architecture_matches_llama_cpp() {
    let fx = fixture();
    let seed = fx["seed"].as_u64().unwrap();
    let tokens = fixture_tokens(&fx);
    let cpu = CpuBackend::new().unwrap();
    let table = CpuBackend::new().unwrap().with_ggml_gelu();
    let mut worst = Vec::new();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let layout = case["layout"].as_str().unwrap();
        let cpu = match SHARP.contains(&name) || GELU_TABLE.contains(&layout) {
            true => &table,
            false => &cpu,
        };
        let bytes = model_file(case, seed);
        assert_eq!(
            format!("{:016x}", fnv1a(&bytes)),
            case["fnv1a"].as_str().unwrap(),
            "{name}: the synthetic file is not the one llama.cpp ran"
        );
        let want = case_logits(case);
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tol = match (case["layout"].as_str(), case["matrix_type"].as_str()) {
            _ if FLIPPED.contains(&name) => TOLERANCE_FLIPPED,
            _ if FAR.contains(&name) => TOLERANCE_FAR,
            _ if DEEP.contains(&name) => TOLERANCE_DEEP,
            _ if SHARP.contains(&name) => TOLERANCE_SHARP,
            (Some("tiny-gemma" | "tiny-gemma2" | "tiny-gemma3" | "tiny-gemma3n"), _) => {
                TOLERANCE_GELU
            }
            (Some(l), Some("f32")) if GELU_TABLE.contains(&l) => TOLERANCE_GELU,
            (_, Some("f32")) => TOLERANCE,
            _ => TOLERANCE_QUANTIZED,
        };
        let n_ctx = case["n_ctx"].as_u64().unwrap() as usize;
        if case["embedding"].as_bool() == Some(true) {
            // An embedding model: one batch, as llama.cpp ran it; chunks
            // refused where attention is bidirectional, else alike.
            let got = hidden(&model, &tokens, n_ctx, 64).unwrap();
            let d = max_diff(&got, &want);
            assert!(d <= tol, "{name}: hidden states differ by {d} (> {tol})");
            worst.push((name.to_string(), 64, d));
            match model.config().bidirectional {
                true => {
                    let err = hidden(&model, &tokens, n_ctx, 5).unwrap_err().to_string();
                    assert!(err.contains("one batch"), "{name}: {err}");
                }
                false => assert_eq!(hidden(&model, &tokens, n_ctx, 5).unwrap(), got, "{name}"),
            }
            continue;
        }
        // One batch as llama.cpp ran it, chunks of 5 rows, decode steps.
        // A long case: the tokens' formula carried on, the last positions
        // compared.
        let run: Vec<u32> = match case["long"].as_u64() {
            Some(n) => (0..n as u32).map(|i| (i * 37 + 11) % 297 + 3).collect(),
            None => tokens.clone(),
        };
        for batch in [64, 5, 1] {
            let mut got = logits(&model, &run, n_ctx, batch);
            got.drain(..run.len() - tokens.len());
            assert_eq!(got.len(), want.len(), "{name}");
            let d = max_diff(&got, &want);
            assert!(
                d <= tol,
                "{name}, batch {batch}: logits differ by {d} (> {tol})"
            );
            worst.push((name.to_string(), batch, d));
        }
    }
    eprintln!("worst differences: {worst:?}");
}

/// What the embedding models' variants change moves their embeddings far
/// beyond the tolerance: bidirectional attention (llama-embed's cases with
/// and without it), EmbeddingGemma's windows on both sides (against one
/// window spanning the text) and its dense projections.
#[test]
fn encoder_variants_change_the_embeddings() {
    let fx = fixture();
    let seed = fx["seed"].as_u64().unwrap();
    let tokens = fixture_tokens(&fx);
    let case = |name: &str| {
        fx["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let d = max_diff(
        &case_logits(&case("llama-embed")),
        &case_logits(&case("llama-embed-causal")),
    );
    assert!(
        d > 100.0 * TOLERANCE,
        "bidirectional attention moves them by {d} only"
    );
    let cpu = CpuBackend::new().unwrap().with_ggml_gelu();
    let gemma = case("gemma-embedding");
    let run = |bytes: Vec<u8>| {
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let mut s = model.session(64, 64).unwrap();
        let mut plain = Vec::new();
        model
            .forward_embeddings(&mut s, &tokens, 0, |_, h| plain.push(h.to_vec()))
            .unwrap();
        (hidden(&model, &tokens, 64, 64).unwrap(), plain)
    };
    let (want, plain) = run(model_file(&gemma, seed));
    let d = max_diff(&want, &plain);
    assert!(
        d > 100.0 * TOLERANCE,
        "the dense projections move them by {d} only"
    );
    let wide = SyntheticLayout::by_name("tiny-gemma-embedding")
        .unwrap()
        .with_hparam(
            "gemma-embedding.attention.sliding_window",
            MetadataValue::U32(64),
        )
        .write(seed)
        .unwrap();
    let d = max_diff(&run(wide).0, &want);
    assert!(
        d > 100.0 * TOLERANCE_GELU,
        "the windows move them by {d} only"
    );
    // Jina BERT v2's: its Q/K LayerNorms, its second norm after the
    // attention and its network's up bias each move them.
    let jina = SyntheticLayout::by_name("tiny-jina-bert-v2").unwrap();
    let (want, _) = run(jina.write(seed).unwrap());
    for (what, gone) in [
        ("the Q/K norms", &["attn_q_norm", "attn_k_norm"][..]),
        ("attn_norm_2", &["attn_norm_2"][..]),
        ("the up bias", &["ffn_up.bias"][..]),
    ] {
        let mut l = jina.clone();
        l.tensors
            .retain(|t| !gone.iter().any(|g| t.name.contains(&format!(".{g}"))));
        let d = max_diff(&run(l.write(seed).unwrap()).0, &want);
        assert!(d > 100.0 * TOLERANCE_GELU, "{what} move them by {d} only");
    }
}

/// What each variant changes moves the logits far beyond the tolerance,
/// so that the comparison above fails where a variant is ignored.
#[test]
fn each_variant_changes_the_logits() {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let logits = |name: &str| case_logits(cases.iter().find(|c| c["name"] == name).unwrap());
    for (base, variant) in [
        ("llama", "llama-rope-factors"),
        ("llama", "llama-linear-scaling"),
        ("llama", "llama-yarn"),
        ("llama", "llama-attn-factor"),
        ("qwen3", "qwen3-yarn"),
        ("phi3", "phi3-longrope-short"),
        ("phi3-longrope-short", "phi3-longrope-long"),
        ("phi3-longrope-long", "phi3-longrope-partial"),
        ("phi3", "phi3-yarn-partial"),
        ("gemma3", "gemma3-global-scaled"),
        ("gemma3", "gemma3-final-cap"),
        ("gemma2", "gemma2-tight-caps"),
        ("gpt-oss", "gpt-oss-window-8"),
        ("mistral3", "mistral3-corrections"),
        ("mistral3", "mistral3-temperature"),
        ("mistral3", "mistral3-bias"),
        ("llama", "llama-bias"),
        ("phi3", "phi3-bias"),
        ("olmo2", "olmo3"),
        ("olmo2", "olmo2-window-every-2"),
        ("glm4moe", "glm4moe-air"),
        ("deepseek2", "deepseek2-yarn"),
        ("deepseek2", "deepseek2-lite"),
        ("lfm2", "lfm2-window"),
        ("minicpm", "minicpm-scales"),
        ("stablelm", "stablelm-parallel"),
        ("gptneox", "gptneox-sequential"),
        ("falcon", "falcon-40b"),
        ("mpt", "mpt-clamp"),
        ("olmo", "olmo-clamp"),
        ("mamba", "falcon-mamba"),
    ] {
        let d = max_diff(&logits(base), &logits(variant));
        assert!(
            d > 100.0 * TOLERANCE_GELU,
            "{variant} moves {base}'s logits by {d} only"
        );
    }
    // Granite's logit scale (8) keeps its logits within +-1: RoPE left
    // out moves them by 0.042, past 100 times their f32 tolerance.
    let d = max_diff(&logits("granitehybrid"), &logits("granitehybrid-nope"));
    assert!(d > 100.0 * TOLERANCE, "RoPE moves the logits by {d} only");
    // So does Command R's (0.0625, logits within +-0.25): Command R7B's
    // window and global blocks without RoPE move them by 0.25.
    let d = max_diff(&logits("command-r"), &logits("cohere2"));
    assert!(
        d > 100.0 * TOLERANCE,
        "Command R7B's blocks move the logits by {d} only"
    );
}

/// GPT-2's learned positions bound its sessions, and no context shift
/// moves them; Q/K LayerNorms (StableLM 2 12B's, Command R+'s, MPT's),
/// MPT's activation scales and Baichuan files of other block counts than
/// the 7B's and 13B's are refused by name.
#[test]
fn layer_norm_families_refuse_what_they_cannot_run() {
    let cpu = CpuBackend::new().unwrap();
    let bytes = SyntheticLayout::tiny("gpt2").unwrap().write(3).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let err = model.session(257, 4).unwrap_err().to_string();
    assert!(err.contains("256 positions"), "{err}");
    let mut s = model.session(256, 4).unwrap();
    let prompt: Vec<u32> = (3..43).collect();
    model.forward(&mut s, &prompt).unwrap();
    let err = model.shift_context(&mut s, 4, 16).unwrap_err().to_string();
    assert!(err.contains("learned positions"), "{err}");
    assert_eq!(s.position(), 40);
    // A shift of nothing is no shift.
    model.shift_context(&mut s, 4, 0).unwrap();

    let mut layout = SyntheticLayout::tiny("stablelm").unwrap();
    let norm = |name: &str| realm_models::synthetic::SyntheticTensor {
        name: name.into(),
        shape: vec![16, 4],
        dtype: GgmlType::F32,
    };
    layout.tensors.push(norm("blk.0.attn_q_norm.weight"));
    let bytes = layout.write(3).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let err = Model::load(&file, &cpu).unwrap_err().to_string();
    assert!(err.contains("Q/K LayerNorms"), "{err}");

    // MPT's activation scales; Baichuan of neither of llama.cpp's block
    // counts.
    let layout = SyntheticLayout::tiny("baichuan")
        .unwrap()
        .with_layers(2)
        .unwrap();
    let bytes = layout.write(3).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let err = Model::load(&file, &cpu).unwrap_err().to_string();
    assert!(err.contains("2 blocks"), "{err}");
    let mut layout = SyntheticLayout::tiny("mpt").unwrap();
    layout
        .tensors
        .push(realm_models::synthetic::SyntheticTensor {
            name: "blk.1.ffn_act.scales".into(),
            shape: vec![128],
            dtype: GgmlType::F32,
        });
    let bytes = layout.write(3).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let err = Model::load(&file, &cpu).unwrap_err().to_string();
    assert!(err.contains("activation scales"), "{err}");
}

/// The file types llama.cpp refuses or computes differently are refused
/// by name, not run wrongly.
#[test]
fn unsupported_rope_scaling_is_refused() {
    for (key, value, says) in [
        (
            "llama.rope.scaling.type",
            MetadataValue::String("dynamic".into()),
            "dynamic",
        ),
        (
            "llama.rope.scaling.attn_factor",
            MetadataValue::F32(0.0),
            "attn_factor",
        ),
        ("llama.rope.scaling.factor", MetadataValue::F32(-2.0), "-2"),
    ] {
        let err = load_err(
            SyntheticLayout::tiny("llama")
                .unwrap()
                .with_hparam(key, value),
        );
        assert!(err.contains(says), "{key}: {err}");
    }
    let gemma2 = SyntheticLayout::tiny("gemma2")
        .unwrap()
        .with_hparam("gemma2.final_logit_softcapping", MetadataValue::F32(-3.0));
    let err = load_err(gemma2);
    assert!(err.contains("final_logit_softcapping"), "{err}");
    // Half of LongRoPE's factors (Phi 3.5's).
    let mut layout = SyntheticLayout::tiny("phi3")
        .unwrap()
        .with_long_rope(64)
        .unwrap();
    layout.tensors.remove(2);
    let err = load_err(layout);
    assert!(err.contains("LongRoPE"), "{err}");
    // YaRN over Gemma's local layers.
    let gemma3 = SyntheticLayout::tiny("gemma3")
        .unwrap()
        .with_hparam(
            "gemma3.rope.scaling.type",
            MetadataValue::String("yarn".into()),
        )
        .with_hparam("gemma3.rope.scaling.factor", MetadataValue::F32(4.0));
    let err = load_err(gemma3);
    assert!(err.contains("YaRN"), "{err}");
    // Factors of the wrong count.
    let mut layout = SyntheticLayout::tiny("llama")
        .unwrap()
        .with_rope_factors()
        .unwrap();
    layout.tensors[1].shape = vec![3];
    let err = load_err(layout);
    assert!(err.contains("rope_freqs"), "{err}");
}

/// Why loading a model of `layout` fails (it must).
fn load_err(layout: SyntheticLayout) -> String {
    let bytes = layout.write(1).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let cpu = CpuBackend::new().unwrap();
    Model::load(&file, &cpu).unwrap_err().to_string()
}

/// A mixture of experts batched across sessions (each row routed on its
/// own) gives each session what it gets alone, bit for bit.
#[test]
fn experts_batch_across_sessions() {
    let cpu = CpuBackend::new().unwrap();
    for name in [
        "tiny-qwen2moe",
        "tiny-qwen3moe",
        "tiny-mixtral",
        "tiny-glm4moe",
        "tiny-ernie4_5-moe",
        "tiny-minimax-m2",
        "tiny-bailingmoe2",
        "tiny-deepseek2",
        "tiny-deepseek2-fused",
        "tiny-llama4",
        "tiny-hunyuan-moe",
        "tiny-gemma4-moe",
        // (Not experts: each row's delta nets advance its own state.)
        "tiny-qwen35",
        "tiny-qwen35moe",
        "tiny-qwen3next-fused",
        "tiny-lfm2",
        "tiny-granitehybrid-moe",
        "tiny-falcon-h1",
        "tiny-lfm2moe",
        "tiny-nemotron_h",
        "tiny-nemotron_h_moe",
        "tiny-nemotron_h_moe-latent",
        // (Nor are Gemma 3n's: each row's streams are its own, and its last
        // blocks read each row's own session's cache.)
        "tiny-gemma3n",
        "tiny-gemma3n-shared",
        // (Gemma 4's block inputs are each row's.)
        "tiny-gemma4",
        "tiny-gemma4-31b",
    ] {
        let bytes = SyntheticLayout::by_name(name).unwrap().write(3).unwrap();
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let prompts: [&[u32]; 3] = [&[5, 17, 40], &[260, 3], &[99, 98, 97, 96]];
        let mut alone = Vec::new();
        let mut sessions = Vec::new();
        for p in prompts {
            let mut s = model.session(16, 4).unwrap();
            model.forward(&mut s, p).unwrap();
            let mut own = model.session(16, 4).unwrap();
            model.forward(&mut own, p).unwrap();
            alone.push(model.forward(&mut own, &[7]).unwrap().to_vec());
            sessions.push(s);
        }
        let mut scratch = model.batch_scratch(3).unwrap();
        let mut rows: Vec<_> = sessions.iter_mut().map(|s| (s, 7u32)).collect();
        model.forward_batch(&mut rows, &mut scratch).unwrap();
        for (s, want) in sessions.iter().zip(&alone) {
            assert_eq!(s.logits(), &want[..], "{name}");
        }
    }
}

/// A batch of Ministral 3 sessions before and past the attention
/// temperature's floor (16 positions; two steps past it) gives each the
/// logits it has alone, and the temperature is seen: the rows past the
/// floor move when its scale does.
#[test]
fn temperature_batches_across_its_floor() {
    let cpu = CpuBackend::new().unwrap();
    let layout = SyntheticLayout::tiny("mistral3").unwrap();
    let cooler = layout.clone().with_hparam(
        "mistral3.attention.temperature_scale",
        MetadataValue::F32(0.3),
    );
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 297 + 3).collect();
    let lengths = [5, 16, 17, 35];
    let mut runs = Vec::new();
    for l in [&layout, &cooler] {
        let bytes = l.write(3).unwrap();
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let mut alone = Vec::new();
        let mut sessions = Vec::new();
        for n in lengths {
            let mut s = model.session(64, 8).unwrap();
            model.forward(&mut s, &tokens[..n]).unwrap();
            let mut own = model.session(64, 8).unwrap();
            model.forward(&mut own, &tokens[..n]).unwrap();
            alone.push(model.forward(&mut own, &[7]).unwrap().to_vec());
            sessions.push(s);
        }
        let mut scratch = model.batch_scratch(4).unwrap();
        let mut rows: Vec<_> = sessions.iter_mut().map(|s| (s, 7u32)).collect();
        model.forward_batch(&mut rows, &mut scratch).unwrap();
        for (s, want) in sessions.iter().zip(&alone) {
            assert_eq!(s.logits(), &want[..]);
        }
        runs.push(alone);
    }
    // The step at position 5 (before the floor) alike; at 16, 17, 35 not.
    for (i, n) in lengths.iter().enumerate() {
        let d = max_diff(&runs[0][i..i + 1], &runs[1][i..i + 1]);
        assert_eq!(d > 1e-3, *n >= 16, "a session of {n} tokens: {d}");
    }
}

/// Blocks that predict further tokens (`nextn_predict_layers`, MTP) are
/// not run, as llama.cpp leaves them: a model that declares one more
/// block as such runs as the model without it.
#[test]
fn prediction_blocks_are_not_run() {
    let cpu = CpuBackend::new().unwrap();
    let plain = SyntheticLayout::tiny("exaone4").unwrap();
    let with_mtp = plain
        .clone()
        .with_hparam("exaone4.block_count", MetadataValue::U32(3))
        .with_hparam("exaone4.nextn_predict_layers", MetadataValue::U32(1));
    let tokens = [5, 17, 40, 260];
    let mut out = Vec::new();
    for l in [&plain, &with_mtp] {
        let bytes = l.write(3).unwrap();
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        assert_eq!(model.config().n_layers, 2);
        out.push(logits(&model, &tokens, 16, 4));
    }
    assert_eq!(out[0], out[1]);
    let broken = plain.with_hparam("exaone4.nextn_predict_layers", MetadataValue::U32(3));
    let file = Gguf::from_bytes(broken.write(3).unwrap()).unwrap();
    let err = Model::load(&file, &cpu).unwrap_err().to_string();
    assert!(err.contains("prediction blocks"), "{err}");
}

/// GLM-4's vision models (M-RoPE sections) are refused by name; sections
/// that leave M-RoPE off are not.
#[test]
fn glm4_sections_are_refused() {
    let cpu = CpuBackend::new().unwrap();
    let sections = |v: Vec<i32>| {
        let l = SyntheticLayout::tiny("glm4").unwrap().with_hparam(
            "glm4.rope.dimension_sections",
            MetadataValue::Array(realm_core::gguf::MetadataArray::I32(v)),
        );
        let file = Gguf::from_bytes(l.write(3).unwrap()).unwrap();
        Model::load(&file, &cpu)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = sections(vec![4, 2, 2, 0]).unwrap_err();
    assert!(err.contains("M-RoPE"), "{err}");
    assert!(sections(vec![0, 0, 0, 0]).is_ok());
}

/// A Phi 3 of 4096 tokens with LongRoPE from an original 32.
fn long_rope_phi3() -> Vec<u8> {
    SyntheticLayout::tiny("phi3")
        .unwrap()
        .with_hparam("phi3.context_length", MetadataValue::U32(4096))
        .with_long_rope(32)
        .unwrap()
        .write(5)
        .unwrap()
}

/// A batch of sessions on both sides of LongRoPE's original context
/// gives each the logits it has alone: short and long factors each.
#[test]
fn long_rope_batches_across_context_sizes() {
    let cpu = CpuBackend::new().unwrap();
    let bytes = long_rope_phi3();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    // Longer than the original context, not, longer.
    let lengths = [64, 32, 48];
    let prompt: &[u32] = &[5, 17, 40, 260, 3];
    let mut alone = Vec::new();
    let mut sessions = Vec::new();
    for n in lengths {
        let mut s = model.session(n, 8).unwrap();
        model.forward(&mut s, prompt).unwrap();
        let mut own = model.session(n, 8).unwrap();
        model.forward(&mut own, prompt).unwrap();
        alone.push(model.forward(&mut own, &[7]).unwrap().to_vec());
        sessions.push(s);
    }
    // The factors differ: so do the logits.
    assert!(max_diff(&alone[..1], &alone[1..2]) > 1e-3);
    assert_eq!(alone[0], alone[2]);
    let mut scratch = model.batch_scratch(3).unwrap();
    let mut rows: Vec<_> = sessions.iter_mut().map(|s| (s, 7u32)).collect();
    model.forward_batch(&mut rows, &mut scratch).unwrap();
    for (s, want) in sessions.iter().zip(&alone) {
        assert_eq!(s.logits(), &want[..]);
        assert_eq!(s.position(), prompt.len() + 1);
    }
}

/// A context shift turns the kept keys back without scaling them again:
/// LongRoPE's magnitude is in the cached keys already, and a turn keeps
/// each head's length (llama.cpp's shift scales them a second time).
#[test]
fn long_rope_shift_keeps_the_keys_magnitude() {
    let cpu = CpuBackend::new().unwrap();
    let bytes = long_rope_phi3();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let c = model.config();
    assert!(c.rope_magnitude > 1.2);
    let tokens: Vec<u32> = (0..30).map(|i| (i * 37 + 11) % 297 + 3).collect();
    let (keep, discard) = (4, 20);
    let mut s = model.session(64, 8).unwrap();
    model.forward(&mut s, &tokens).unwrap();
    // Each layer's keys, a row a token, from a saved (f32) state.
    let keys = |s: &realm_models::Session<CpuBackend>, held: &[u32]| {
        let mut state = Vec::new();
        model.save_state(s, held, &mut state).unwrap();
        let n = held.len();
        let width = c.n_kv_heads * c.head_dim;
        let values: Vec<f32> = state[37 + 4 * n..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // Per layer: keys, then values.
        values
            .chunks_exact(2 * n * width)
            .map(|l| l[..n * width].to_vec())
            .collect::<Vec<_>>()
    };
    let before = keys(&s, &tokens);
    model.shift_context(&mut s, keep, discard).unwrap();
    let kept: Vec<u32> = tokens[..keep]
        .iter()
        .chain(&tokens[keep + discard..])
        .copied()
        .collect();
    let after = keys(&s, &kept);
    let norm = |x: &[f32]| x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let width = c.n_kv_heads * c.head_dim;
    for (b, a) in before.iter().zip(&after) {
        for (t, row) in a.chunks_exact(width).enumerate().skip(keep) {
            let was = &b[(t + discard) * width..][..width];
            assert_ne!(row, was, "token {t} did not turn");
            for (h, w) in row
                .chunks_exact(c.head_dim)
                .zip(was.chunks_exact(c.head_dim))
            {
                let (n, m) = (norm(h), norm(w));
                assert!(
                    (n - m).abs() <= 1e-5 * m,
                    "a head's length went from {m} to {n}"
                );
            }
        }
    }
}

/// Experts where Realm does not run them, or in numbers that cannot be,
/// and adapters of the dense matrices an expert model lacks, are refused.
#[test]
fn unsupported_experts_are_refused() {
    let cpu = CpuBackend::new().unwrap();
    let qwen2 = SyntheticLayout::tiny("qwen2")
        .unwrap()
        .with_experts(4, 2)
        .unwrap();
    assert!(load_err(qwen2).contains("experts is not supported"));
    let too_many = SyntheticLayout::tiny("qwen3moe")
        .unwrap()
        .with_hparam("qwen3moe.expert_used_count", MetadataValue::U32(5));
    assert!(load_err(too_many).contains("5 of 4 experts"));
    // GLM-4.5's blocks of experts need their selection bias; ERNIE 4.5's
    // experts in every block, their routing as llama.cpp knows it.
    let mut unbiased = SyntheticLayout::tiny("glm4moe").unwrap();
    unbiased.tensors.retain(|t| !t.name.contains("exp_probs_b"));
    assert!(load_err(unbiased).contains("blk.1.exp_probs_b.bias"));
    let interleaved = SyntheticLayout::tiny("ernie4_5-moe").unwrap().with_hparam(
        "ernie4_5-moe.interleave_moe_layer_step",
        MetadataValue::U32(2),
    );
    assert!(load_err(interleaved).contains("interleave_moe_layer_step 2"));
    let softplus = SyntheticLayout::tiny("glm4moe")
        .unwrap()
        .with_hparam("glm4moe.expert_gating_func", MetadataValue::U32(4));
    assert!(load_err(softplus).contains("expert_gating_func 4"));
    let mut ungated = SyntheticLayout::tiny("minimax-m2").unwrap();
    ungated
        .hparams
        .retain(|(k, _)| k != "minimax-m2.expert_gating_func");
    assert!(load_err(ungated).contains("needs an expert_gating_func"));
    // DeepSeek files of the form before absorbed latent attention, and
    // Mistral Large 3's temperature.
    let mut legacy = SyntheticLayout::tiny("deepseek2").unwrap();
    legacy
        .hparams
        .retain(|(k, _)| k != "deepseek2.attention.key_length_mla");
    assert!(load_err(legacy).contains("convert it again"));
    let tempered = SyntheticLayout::tiny("deepseek2").unwrap().with_hparam(
        "deepseek2.attention.temperature_scale",
        MetadataValue::F32(0.1),
    );
    assert!(load_err(tempered).contains("attention temperature"));
    // Groups that cannot be.
    for (groups, used) in [(3, 1), (2, 2), (4, 1)] {
        let bad = SyntheticLayout::tiny("bailingmoe2")
            .unwrap()
            .with_hparam("bailingmoe2.expert_group_count", MetadataValue::U32(groups))
            .with_hparam(
                "bailingmoe2.expert_group_used_count",
                MetadataValue::U32(used),
            );
        let err = load_err(bad);
        assert!(err.contains(&format!("{used} of {groups} groups")), "{err}");
    }
    // A LoRA of blk.0.ffn_up on a model whose blocks are experts.
    let dense = SyntheticLayout::tiny("llama").unwrap();
    let mut lora = realm_models::synthetic::SyntheticLora::new(4, 8.0);
    lora.targets = vec!["ffn_up".into()];
    let adapter = Gguf::from_bytes(lora.write_for(&dense, 1).unwrap()).unwrap();
    let bytes = SyntheticLayout::by_name("tiny-mixtral")
        .unwrap()
        .write(1)
        .unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let mut model = Model::load(&file, &cpu).unwrap();
    let err = model.add_lora(&adapter, "ffn").unwrap_err().to_string();
    assert!(err.contains("ffn_up"), "{err}");
    // Nor of latent attention's matrices.
    let lite = SyntheticLayout::by_name("tiny-deepseek2-lite").unwrap();
    let mut lora = realm_models::synthetic::SyntheticLora::new(4, 8.0);
    lora.targets = vec!["attn_q".into()];
    let adapter = Gguf::from_bytes(lora.write_for(&lite, 1).unwrap()).unwrap();
    let bytes = lite.write(1).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let mut model = Model::load(&file, &cpu).unwrap();
    let err = model.add_lora(&adapter, "q").unwrap_err().to_string();
    assert!(err.contains("attn_q"), "{err}");
}

/// A context shift turns back the rotated values of DeepSeek's latent keys
/// alone (the first of each key, as RoPE rotates them), and moves the
/// latents and values as they are.
#[test]
fn latent_keys_shift_in_their_rotated_values_only() {
    let cpu = CpuBackend::new().unwrap();
    let bytes = SyntheticLayout::tiny("deepseek2")
        .unwrap()
        .write(3)
        .unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let (c, m) = (model.config(), model.config().mla.unwrap());
    let tokens: Vec<u32> = (0..12).map(|i| 5 + 7 * i).collect();
    let mut s = model.session(32, 16).unwrap();
    model.forward(&mut s, &tokens).unwrap();
    let mut before = Vec::new();
    model.save_state(&s, &tokens, &mut before).unwrap();
    let (keep, discard) = (2, 3);
    model.shift_context(&mut s, keep, discard).unwrap();
    let kept: Vec<u32> = [&tokens[..keep], &tokens[keep + discard..]].concat();
    let mut after = Vec::new();
    model.save_state(&s, &kept, &mut after).unwrap();
    // Rows of f32 keys then values, a layer after another.
    let rows = |state: &[u8], n: usize| -> Vec<Vec<f32>> {
        state[37 + 4 * n..]
            .chunks_exact(4 * c.head_dim)
            .map(|r| {
                r.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            })
            .collect()
    };
    let (a, b) = (rows(&before, 12), rows(&after, 9));
    for layer in 0..c.n_layers {
        for i in 0..9 {
            let from = if i < keep { i } else { i + discard };
            let (ka, kb) = (&a[layer * 24 + from], &b[layer * 18 + i]);
            let (va, vb) = (&a[layer * 24 + 12 + from], &b[layer * 18 + 9 + i]);
            assert_eq!(va, vb, "values move as they are");
            assert_eq!(ka[m.rope..], kb[m.rope..], "latents move as they are");
            let pairs = |k: &[f32]| -> Vec<f32> {
                k[..m.rope].chunks(2).map(|p| p[0].hypot(p[1])).collect()
            };
            match i < keep {
                true => assert_eq!(ka, kb),
                false => {
                    assert_ne!(ka[..m.rope], kb[..m.rope], "position {i} turned back");
                    for (x, y) in pairs(ka).iter().zip(pairs(kb)) {
                        assert!((x - y).abs() < 1e-5, "a turn keeps each pair's length");
                    }
                }
            }
        }
    }
}

/// Qwen 3.5's delta nets, LFM2's short convolutions and Mamba-2 mixers
/// (Granite 4.0's, Nemotron-H's, Falcon-H1's beside attention, whose
/// blocks keep both a state and a KV cache) keep one state for all tokens: a saved state restores it (the next logits are bit for
/// bit the uninterrupted session's), forgetting any token starts the
/// session over, a chunk abandoned half way through its layers does too,
/// and a context shift is refused.
#[test]
fn recurrent_states_restore_and_restart() {
    let cpu = CpuBackend::new().unwrap();
    for name in [
        "tiny-qwen35",
        "tiny-lfm2",
        "tiny-granitehybrid",
        "tiny-falcon-h1",
        "tiny-nemotron_h",
    ] {
        let bytes = SyntheticLayout::by_name(name).unwrap().write(3).unwrap();
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        assert!(!model.can_forget(), "{name}");
        let prompt = [5u32, 17, 40, 41, 260, 3];
        let mut s = model.session(32, 4).unwrap();
        model.forward(&mut s, &prompt).unwrap();
        let mut saved = Vec::new();
        model.save_state(&s, &prompt, &mut saved).unwrap();
        let want = model.forward(&mut s, &[7]).unwrap().to_vec();

        let mut t = model.session(32, 4).unwrap();
        model.forward(&mut t, &[9, 9, 9]).unwrap();
        assert_eq!(
            model.load_state(&mut t, &mut saved.as_slice()).unwrap(),
            prompt
        );
        assert_eq!(model.forward(&mut t, &[7]).unwrap(), &want[..], "{name}");
        // A state cut short restores nothing.
        let mut u = model.session(32, 4).unwrap();
        assert!(model
            .load_state(&mut u, &mut &saved[..saved.len() - 4])
            .is_err());
        assert_eq!(u.position(), 0);

        // Forgetting the last token forgets all; the prompt again gives
        // the logits it gave.
        t.truncate(prompt.len());
        assert_eq!(t.position(), 0);
        model.forward(&mut t, &prompt).unwrap();
        assert_eq!(model.forward(&mut t, &[7]).unwrap(), &want[..], "{name}");
        // Keeping every token keeps the state.
        t.truncate(100);
        assert_eq!(t.position(), prompt.len() + 1);

        // A chunk run through some layers and dropped spoils the states:
        // the session starts over.
        let mut v = model.session(32, 4).unwrap();
        model.forward(&mut v, &prompt).unwrap();
        model.embed_tokens(&mut v, &[7, 8]).unwrap();
        model.forward_layer(&mut v, 0).unwrap();
        model.embed_tokens(&mut v, &[7]).unwrap();
        assert_eq!(v.position(), 0);

        let err = model.shift_context(&mut s, 1, 2).unwrap_err().to_string();
        assert!(err.contains("recurrent state"), "{err}");
    }
}

/// Checkpoints of a recurrent session's states: forgetting tokens goes
/// back to the last checkpoint at or before what is kept (the next
/// logits bit for bit the uninterrupted session's), to position 0 where
/// there is none; the oldest go past the limit, none are kept by
/// default, and a model whose cache forgets any token keeps none.
#[test]
fn checkpoints_take_recurrent_sessions_back() {
    let cpu = CpuBackend::new().unwrap();
    let prompt = [5u32, 17, 40, 41, 260, 3, 99, 98];
    for name in [
        "tiny-qwen35",
        "tiny-qwen3next-fused",
        "tiny-lfm2",
        "tiny-granitehybrid",
        "tiny-falcon-h1",
        "tiny-nemotron_h",
    ] {
        let bytes = SyntheticLayout::by_name(name).unwrap().write(3).unwrap();
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let mut whole = model.session(32, 4).unwrap();
        model.forward(&mut whole, &prompt).unwrap();
        let want = model.forward(&mut whole, &[7]).unwrap().to_vec();

        let mut s = model.session(32, 4).unwrap();
        model.forward(&mut s, &prompt[..2]).unwrap();
        assert!(!s.checkpoint(), "{name}: none kept by default");
        s.set_max_checkpoints(2);
        assert!(s.checkpoint());
        model.forward(&mut s, &prompt[2..4]).unwrap();
        assert!(s.checkpoint());
        model.forward(&mut s, &prompt[4..6]).unwrap();
        assert!(s.checkpoint());
        assert_eq!(s.checkpoints().collect::<Vec<_>>(), [4, 6], "{name}");
        model.forward(&mut s, &[1, 2]).unwrap();
        // Another ending than the prompt's: back to the checkpoint at 6.
        assert_eq!(s.reachable(7), 6);
        s.truncate(7);
        assert_eq!(s.position(), 6, "{name}");
        model.forward(&mut s, &prompt[6..]).unwrap();
        assert_eq!(model.forward(&mut s, &[7]).unwrap(), &want[..], "{name}");
        // Before the checkpoint at 6: the one at 4, and 6 goes.
        s.truncate(5);
        assert_eq!(s.position(), 4, "{name}");
        assert_eq!(s.checkpoints().collect::<Vec<_>>(), [4], "{name}");
        model.forward(&mut s, &prompt[4..]).unwrap();
        assert_eq!(model.forward(&mut s, &[7]).unwrap(), &want[..], "{name}");
        // Before any: position 0.
        assert_eq!(s.reachable(3), 0);
        s.truncate(3);
        assert_eq!((s.position(), s.checkpoints().count()), (0, 0), "{name}");
    }
    let bytes = SyntheticLayout::by_name("tiny-llama")
        .unwrap()
        .write(3)
        .unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let mut s = model.session(32, 4).unwrap();
    s.set_max_checkpoints(2);
    model.forward(&mut s, &prompt).unwrap();
    assert!(!s.checkpoint());
    assert_eq!(s.reachable(5), 5);
}

/// Every architecture is found by its name, and an unknown one's error
/// names them all.
#[test]
fn architectures_are_found_by_name() {
    use realm_models::Architecture;
    for a in Architecture::ALL {
        assert_eq!(Architecture::from_name(a.name()).unwrap(), a);
    }
    let err = Architecture::from_name("rwkv7").unwrap_err().to_string();
    assert!(err.contains("`rwkv7`"), "{err}");
    for a in Architecture::ALL {
        assert!(err.contains(a.name()), "{err}");
    }
}

/// Gemma 3n's metadata: which blocks read which caches, the sparsity by
/// block (llama.cpp's where the file gives none), and what Realm refuses.
#[test]
fn gemma3n_reads_its_metadata() {
    let layout = SyntheticLayout::by_name("tiny-gemma3n-shared").unwrap();
    let config = |layout: &SyntheticLayout| {
        let bytes = layout.write(1).unwrap();
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let cpu = CpuBackend::new().unwrap();
        Model::load(&file, &cpu).unwrap().config().clone()
    };
    let c = config(&layout);
    assert_eq!(c.kv_layers(), 20);
    let sources: Vec<_> = (17..22).map(|l| c.kv_source(l)).collect();
    assert_eq!(sources, [None, None, None, Some(18), Some(19)]);
    let a = c.altup.as_ref().unwrap();
    assert_eq!((a.inputs, a.per_layer, a.kv_from), (4, 256, 20));
    assert!(a.sparsity[..10].iter().all(|&s| s == Some(1.644_853_4)));
    assert!(a.sparsity[10..].iter().all(Option::is_none));
    let mut without = layout.clone();
    without
        .hparams
        .retain(|(k, _)| k != "gemma3n.activation_sparsity_scale");
    assert_eq!(config(&without).altup.unwrap().sparsity, a.sparsity);
    let active = layout
        .clone()
        .with_hparam("gemma3n.altup.active_idx", MetadataValue::U32(1));
    assert!(load_err(active).contains("active stream 1"));
    // From block 4 on: no global block before it for block 4 to read.
    let early = layout.with_hparam("gemma3n.attention.shared_kv_layers", MetadataValue::U32(18));
    let err = load_err(early);
    assert!(
        err.contains("block 4 reads an earlier block's KV cache"),
        "{err}"
    );
}

/// Gemma 4's metadata: each block's heads, widths and cache, the cache's
/// layers of their own heads, and what Realm refuses.
#[test]
fn gemma4_reads_its_metadata() {
    use realm_core::backend::{KvDtype, KvShape};
    use realm_core::gguf::MetadataArray;
    let layout = SyntheticLayout::tiny("gemma4").unwrap();
    let bytes = layout.write(1).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let c = Model::load(&file, &cpu).unwrap().config().clone();
    let heads: Vec<_> = (0..7)
        .map(|l| {
            let h = c.layer_heads(l);
            (h.n_kv_heads, h.head_dim, h.rope_dims)
        })
        .collect();
    let (local, global) = ((2, 32, 32), (1, 64, 64));
    assert_eq!(heads, [local, local, global, local, global, local, global]);
    let sources: Vec<_> = (0..7).map(|l| c.kv_source(l)).collect();
    assert_eq!(sources, [None, None, None, None, None, Some(3), Some(4)]);
    let widths: Vec<_> = (0..7).map(|l| c.layer_ffn_dim(l)).collect();
    assert_eq!(widths, [128, 128, 128, 128, 128, 256, 256]);
    assert_eq!(
        (c.per_layer_input(), c.max_q_dim(), c.max_kv_dim()),
        (Some(32), 256, 64)
    );
    let kv = c.kv_cache_config(16, KvDtype::F32);
    let (l, g) = (
        KvShape {
            n_kv_heads: 2,
            head_dim: 32,
        },
        KvShape {
            n_kv_heads: 1,
            head_dim: 64,
        },
    );
    assert_eq!(kv.layer_shapes.as_deref(), Some(&[l, l, g, l, g][..]));
    // The 31B's shape: every block with a cache, no inputs of their own.
    let big = SyntheticLayout::by_name("tiny-gemma4-31b").unwrap();
    let bytes = big.write(1).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let c = Model::load(&file, &cpu).unwrap().config().clone();
    assert_eq!(
        (c.kv_layers(), c.per_layer_input(), c.ffn_dims.clone()),
        (7, None, None)
    );
    // The 26B A4B's experts: softmax weights of the chosen renormalised,
    // GELU-gated, beside the dense blocks (no shared expert of their own).
    let moe = SyntheticLayout::by_name("tiny-gemma4-moe").unwrap();
    let bytes = moe.write(1).unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let m = Model::load(&file, &cpu)
        .unwrap()
        .config()
        .moe
        .clone()
        .unwrap();
    assert_eq!((m.experts, m.used, m.ffn_dim), (4, 2, 32));
    assert_eq!(
        (m.gating, m.activation),
        (Gating::Softmax, ExpertActivation::Geglu)
    );
    assert!(m.norm_weights && m.shared_ffn_dim.is_none());
    let refused = |key: &str, value: MetadataValue, what: &str| {
        let err = load_err(layout.clone().with_hparam(key, value));
        assert!(err.contains(what), "{key}: {err}");
    };
    refused(
        "gemma4.attention.value_length",
        MetadataValue::U32(32),
        "value heads",
    );
    let kv = vec![2, 1, 1, 2, 1, 2, 1];
    let kv = MetadataValue::Array(MetadataArray::U32(kv));
    refused("gemma4.attention.head_count_kv", kv, "block 1's KV heads");
    let mut unpatterned = layout.clone();
    unpatterned
        .hparams
        .retain(|(k, _)| k != "gemma4.attention.sliding_window_pattern");
    assert!(load_err(unpatterned).contains("sliding_window_pattern"));
}

/// The Gemmas with llama.cpp's CPU GELU ([`CpuBackend::with_ggml_gelu`]):
/// what is left of the differences above is the order of float sums,
/// which may flip an input's rounding to f16 and so move a GELU output by
/// one f16 step. Measured worst: 1.6e-4 (Gemma 2 with tight caps; Gemma 3
/// 1.5e-5, Gemma 3n's four blocks 7.4e-5 and 5.0e-6 with Q8_0).
const TOLERANCE_TABLE: f32 = 1e-3;

/// The same through Gemma 3n's 22 blocks, where the differences of float
/// sums grow block by block (1e-6 of the values' size at block 10, 1e-4 at
/// block 21, llama.cpp's read through its eval callback), and through
/// Gemma 4's sharp attention (its f32 cases above). Measured: 4.1e-3
/// (Gemma 3n), 2.1e-3 (Gemma 4).
const TOLERANCE_TABLE_DEEP: f32 = 1e-2;

#[test]
fn gemmas_match_llama_cpp_with_its_gelu_table() {
    let fx = fixture();
    let seed = fx["seed"].as_u64().unwrap();
    let tokens = fixture_tokens(&fx);
    let cpu = CpuBackend::new().unwrap().with_ggml_gelu();
    let mut worst = Vec::new();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        // (EmbeddingGemma's run with the table above.)
        let embedding = case["embedding"].as_bool() == Some(true);
        if !case["layout"].as_str().unwrap().starts_with("tiny-gemma") || embedding {
            continue;
        }
        let bytes = model_file(case, seed);
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let n_ctx = case["n_ctx"].as_u64().unwrap() as usize;
        let d = max_diff(&logits(&model, &tokens, n_ctx, 64), &case_logits(case));
        let deep = DEEP.contains(&name) || SHARP.contains(&name);
        let tol = match deep && case["matrix_type"] == "f32" {
            true => TOLERANCE_TABLE_DEEP,
            false => TOLERANCE_TABLE,
        };
        assert!(d <= tol, "{name}: logits differ by {d} (> {tol})");
        worst.push((name.to_string(), d));
    }
    assert!(worst.len() >= 12, "the Gemma cases: {worst:?}");
    eprintln!("with the table: {worst:?}");
}

/// Qwen3-VL's M-RoPE sections must turn every rotated pair by the text
/// position (as NeoX does), and must be there, as llama.cpp needs them.
#[test]
fn qwen3vl_needs_sections_that_turn_text() {
    let layout = SyntheticLayout::tiny("qwen3vl").unwrap();
    let sections = |v: Vec<i32>| {
        layout.clone().with_hparam(
            "qwen3vl.rope.dimension_sections",
            MetadataValue::Array(realm_core::gguf::MetadataArray::I32(v)),
        )
    };
    let err = load_err(sections(vec![2, 2, 0, 0]));
    assert!(err.contains("unturned"), "{err}");
    let mut without = layout.clone();
    without
        .hparams
        .retain(|(k, _)| k != "qwen3vl.rope.dimension_sections");
    assert!(load_err(without).contains("missing"));
}

/// MiniCPM's feed-forward biases (which llama.cpp's loader takes and no
/// converted file has) are refused by name, not ignored.
#[test]
fn minicpm_feed_forward_biases_are_refused() {
    let mut layout = SyntheticLayout::tiny("minicpm").unwrap();
    layout
        .tensors
        .push(realm_models::synthetic::SyntheticTensor {
            name: "blk.0.ffn_up.bias".into(),
            shape: vec![128],
            dtype: GgmlType::F32,
        });
    let err = load_err(layout);
    assert!(err.contains("blk.0.ffn_up.bias"), "{err}");
}

/// A DeciLM block without a feed-forward network (width 0, Nemotron
/// Ultra's) adds its attention to the stream and ends: the model is the
/// one whose block has a network that adds nothing (`ffn_down` zero), as
/// the Hugging Face model computes it (llama.cpp's graph drops such a
/// block's attention instead, so no fixture of its holds one).
#[test]
fn deci_blocks_without_a_network_keep_their_attention() {
    use realm_core::gguf::{GgufWriter, MetadataArray};
    let layout = SyntheticLayout::by_name("tiny-deci")
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    let plain = layout.write(3).unwrap();
    let file = Gguf::from_bytes(&plain[..]).unwrap();
    // The file again, its tensors named `drop...` left out, `zero` zeros,
    // and the widths `ff`.
    let rewrite = |drop: &str, zero: &str, ff: &[u32]| {
        let mut w = GgufWriter::new();
        for (k, v) in file.metadata().iter() {
            w.set(k, v.clone());
        }
        w.set(
            "deci.feed_forward_length",
            MetadataValue::Array(MetadataArray::U32(ff.to_vec())),
        );
        for info in file.tensor_infos() {
            if info.name.starts_with(drop) {
                continue;
            }
            let t = file.tensor(&info.name).unwrap();
            let data = match info.name == zero {
                true => vec![0u8; t.data().len()],
                false => t.data().to_vec(),
            };
            w.add_tensor(&info.name, t.dtype(), &info.shape, data)
                .unwrap();
        }
        w.to_bytes().unwrap()
    };
    // The last block's `ffn_down` zero; the same block with no network.
    let zeroed = rewrite("-", "blk.3.ffn_down.weight", &[128, 96, 128, 64]);
    let none = rewrite("blk.3.ffn_", "-", &[128, 96, 128, 0]);
    let cpu = CpuBackend::new().unwrap();
    let logits = |bytes: &[u8]| {
        let file = Gguf::from_bytes(bytes).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let mut s = model.session(32, 8).unwrap();
        let mut out = vec![model.forward(&mut s, &[5, 77, 200, 13]).unwrap().to_vec()];
        out.push(model.forward(&mut s, &[9]).unwrap().to_vec());
        out
    };
    let (want, got) = (logits(&zeroed), logits(&none));
    let d = max_diff(&got, &want);
    assert!(d <= 1e-6, "a block without a network is {d} off");
    let moved = max_diff(&logits(&plain), &want);
    assert!(
        moved > 100.0 * TOLERANCE,
        "the network moves them by {moved} only"
    );
    // A block with neither attention nor a network is refused.
    let empty = rewrite("blk.2.ffn_", "-", &[128, 96, 0, 64]);
    let file = Gguf::from_bytes(&empty[..]).unwrap();
    let err = Model::load(&file, &cpu).unwrap_err().to_string();
    assert!(err.contains("neither attention nor"), "{err}");
}

/// BitNet b1.58 2B4T's squared-ReLU gate (`hidden_activation` relu2),
/// which llama.cpp's graph does not read: a first token's logits (its
/// attention the value of its own key) against the same block computed in
/// f64 from the file's weights; and the gate moves them from SiLU's.
#[test]
fn bitnet_gates_by_the_files_activation() {
    let layout = SyntheticLayout::by_name("tiny-bitnet")
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    let relu2 = layout
        .clone()
        .with_hparam(
            "bitnet.hidden_activation",
            MetadataValue::String("relu2".into()),
        )
        .write(3)
        .unwrap();
    let silu = layout.write(3).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let token = 77u32;
    let first = |bytes: &[u8]| {
        let file = Gguf::from_bytes(bytes).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let mut s = model.session(8, 1).unwrap();
        model.forward(&mut s, &[token]).unwrap().to_vec()
    };
    let got = first(&relu2);
    let file = Gguf::from_bytes(&relu2[..]).unwrap();
    let md = file.metadata();
    let u = |k: &str| md.get_u32(&format!("bitnet.{k}")).unwrap() as usize;
    let (layers, heads, kv_heads) = (
        u("block_count"),
        u("attention.head_count"),
        u("attention.head_count_kv"),
    );
    let eps = md
        .get_f32("bitnet.attention.layer_norm_rms_epsilon")
        .unwrap() as f64;
    let w = |name: &str| -> (Vec<f64>, usize) {
        let t = file.tensor(name).unwrap();
        let v = realm_core::quant::dequantize_row_to_vec(t.dtype(), t.data()).unwrap();
        (v.iter().map(|&x| x as f64).collect(), t.shape()[0] as usize)
    };
    // `m` times `x`, `m` stored a row of `cols` an output.
    let mul = |(m, cols): &(Vec<f64>, usize), x: &[f64]| -> Vec<f64> {
        m.chunks(*cols)
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    let rms = |x: &[f64], name: &str| -> Vec<f64> {
        let (g, _) = w(name);
        let s = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
        x.iter().zip(&g).map(|(v, g)| v / s * g).collect()
    };
    let embd = w("token_embd.weight");
    let d = embd.1;
    let mut x = embd.0[token as usize * d..][..d].to_vec();
    for l in 0..layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let h = rms(&x, &n("attn_norm"));
        // One key: each query head's output is its KV head's value.
        let v = mul(&w(&n("attn_v")), &h);
        let hd = v.len() / kv_heads;
        let att: Vec<f64> = (0..heads)
            .flat_map(|q| v[q / (heads / kv_heads) * hd..][..hd].to_vec())
            .collect();
        let o = mul(&w(&n("attn_output")), &rms(&att, &n("attn_sub_norm")));
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        let h = rms(&x, &n("ffn_norm"));
        let (g, up) = (mul(&w(&n("ffn_gate")), &h), mul(&w(&n("ffn_up")), &h));
        let a: Vec<f64> = g
            .iter()
            .zip(&up)
            .map(|(g, u)| g.max(0.0) * g.max(0.0) * u)
            .collect();
        let o = mul(&w(&n("ffn_down")), &rms(&a, &n("ffn_sub_norm")));
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
    }
    let want: Vec<f32> = mul(&embd, &rms(&x, "output_norm.weight"))
        .iter()
        .map(|&v| v as f32)
        .collect();
    let d = max_diff(std::slice::from_ref(&got), &[want]);
    assert!(d <= 1e-4, "relu2 logits {d} off the f64 block");
    let moved = max_diff(&[got], &[first(&silu)]);
    assert!(
        moved > 100.0 * TOLERANCE,
        "the gate moves them by {moved} only"
    );
    // Other activations are refused by name.
    let odd = layout
        .with_hparam(
            "bitnet.hidden_activation",
            MetadataValue::String("tanh".into()),
        )
        .write(3)
        .unwrap();
    let file = Gguf::from_bytes(&odd[..]).unwrap();
    let err = Model::load(&file, &cpu).unwrap_err().to_string();
    assert!(err.contains("hidden_activation"), "{err}");
}
