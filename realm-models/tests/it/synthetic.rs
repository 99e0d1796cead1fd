//! Small synthetic models of every supported architecture, written with
//! realm-core's GGUF writer: they load, prefill in any chunking gives
//! bit-identical logits (batch invariance), and bad files fail clearly.

use realm_compute_cpu::CpuBackend;
use realm_core::backend::KvDtype;
use realm_core::gguf::{Gguf, GgufWriter, MetadataArray, MetadataValue};
use realm_core::{quant, GgmlType};
use realm_models::{Error, Model, ModelConfig};

const D: u64 = 64;
const FF: u64 = 128;
const VOCAB: u64 = 96;

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
    }
}

fn synthetic(arch: &str, skip: Option<&str>) -> Vec<u8> {
    let mut rng = Rng(0x1234_5678 ^ arch.len() as u64);
    let (heads, kv_heads, head_dim) = if arch == "gemma3" {
        (4u64, 1u64, 32u64)
    } else {
        (4, 2, D / 4)
    };
    let mut w = GgufWriter::new();
    let s = |v: &str| MetadataValue::String(v.into());
    w.set("general.architecture", s(arch));
    let k = |name: &str| format!("{arch}.{name}");
    w.set(k("block_count"), MetadataValue::U32(2));
    w.set(k("embedding_length"), MetadataValue::U32(D as u32));
    w.set(k("feed_forward_length"), MetadataValue::U32(FF as u32));
    w.set(k("attention.head_count"), MetadataValue::U32(heads as u32));
    w.set(
        k("attention.head_count_kv"),
        MetadataValue::U32(kv_heads as u32),
    );
    w.set(k("context_length"), MetadataValue::U32(256));
    w.set(
        k("attention.layer_norm_rms_epsilon"),
        MetadataValue::F32(1e-5),
    );
    if arch == "gemma3" {
        w.set(
            k("attention.key_length"),
            MetadataValue::U32(head_dim as u32),
        );
        w.set(k("attention.sliding_window"), MetadataValue::U32(4));
    }
    let tokens: Vec<String> = (0..VOCAB).map(|i| format!("t{i}")).collect();
    w.set(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(tokens)),
    );
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let mut tensors: Vec<(String, Vec<u64>, bool)> = vec![
        ("token_embd.weight".into(), vec![D, VOCAB], true),
        ("output_norm.weight".into(), vec![D], false),
    ];
    for l in 0..2 {
        let mut add = |n: &str, shape: Vec<u64>, quantized: bool| {
            tensors.push((format!("blk.{l}.{n}"), shape, quantized))
        };
        add("attn_norm.weight", vec![D], false);
        add("attn_q.weight", vec![D, q], true);
        add("attn_k.weight", vec![D, kv], true);
        add("attn_v.weight", vec![D, kv], true);
        add("attn_output.weight", vec![q, D], true);
        add("ffn_norm.weight", vec![D], false);
        add("ffn_gate.weight", vec![D, FF], true);
        add("ffn_up.weight", vec![D, FF], true);
        add("ffn_down.weight", vec![FF, D], true);
        if arch == "qwen2" {
            add("attn_q.bias", vec![q], false);
            add("attn_k.bias", vec![kv], false);
            add("attn_v.bias", vec![kv], false);
        }
        if arch == "gemma3" {
            add("attn_q_norm.weight", vec![head_dim], false);
            add("attn_k_norm.weight", vec![head_dim], false);
            add("post_attention_norm.weight", vec![D], false);
            add("post_ffw_norm.weight", vec![D], false);
        }
    }
    for (name, shape, quantized) in tensors {
        if Some(name.as_str()) == skip {
            continue;
        }
        let n: u64 = shape.iter().product();
        let norm = name.contains("norm");
        let values: Vec<f32> = (0..n)
            .map(|_| if norm { 1.0 + rng.f32() } else { rng.f32() })
            .collect();
        let (dtype, bytes) = if quantized {
            (
                GgmlType::Q8_0,
                quant::quantize_row_to_vec(GgmlType::Q8_0, &values).unwrap(),
            )
        } else {
            (
                GgmlType::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        };
        w.add_tensor(&name, dtype, &shape, bytes).unwrap();
    }
    w.to_bytes().unwrap()
}

#[test]
fn every_architecture_runs_and_prefill_chunking_is_bit_identical() {
    let cpu = CpuBackend::new().unwrap();
    let prompt: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    for arch in ["llama", "mistral", "qwen2", "gemma3"] {
        let bytes = synthetic(arch, None);
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let mut whole = model.session(64, 64).unwrap();
        let a = model.forward(&mut whole, &prompt).unwrap().to_vec();
        assert!(a.iter().all(|x| x.is_finite()), "{arch}");
        for chunk in [1, 3, 4] {
            let mut s = model.session(64, chunk).unwrap();
            let b = model.forward(&mut s, &prompt).unwrap();
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{arch}, chunks of {chunk}"
            );
        }
        let mut steps = model.session(64, 8).unwrap();
        let mut last = Vec::new();
        for &t in &prompt {
            last = model.forward(&mut steps, &[t]).unwrap().to_vec();
        }
        assert_eq!(a, last, "{arch}: decode token by token");
        assert_eq!(steps.position(), prompt.len());
        // An f16 cache rounds keys and values: close to f32, not equal (this
        // random two-layer model amplifies the rounding more than real ones).
        let mut half = model.session_with_kv(64, 8, KvDtype::F16).unwrap();
        let h = model.forward(&mut half, &prompt).unwrap();
        let worst = a
            .iter()
            .zip(h)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            worst > 0.0 && worst < 5e-2 * scale,
            "{arch}: f16 cache differs by {worst} (logits up to {scale})"
        );
    }
}

#[test]
fn every_output_equals_forward_token_by_token() {
    let cpu = CpuBackend::new().unwrap();
    // Long enough for several chunks and several groups of output rows.
    let prompt: Vec<u32> = (0..75).map(|i| (i * 11 + 5) % VOCAB as u32).collect();
    for arch in ["llama", "gemma3"] {
        let bytes = synthetic(arch, None);
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let mut steps = model.session(128, 1).unwrap();
        let alone: Vec<Vec<u32>> = prompt
            .iter()
            .map(|&t| {
                let l = model.forward(&mut steps, &[t]).unwrap();
                l.iter().map(|x| x.to_bits()).collect()
            })
            .collect();
        for (batch, from) in [(64, 0), (64, 40), (7, 3), (40, 74), (40, 75)] {
            let mut s = model.session(128, batch).unwrap();
            let mut seen = Vec::new();
            model
                .forward_outputs(&mut s, &prompt, from, |i, l| {
                    let bits: Vec<u32> = l.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(bits, alone[i], "{arch}: output {i}, chunks of {batch}");
                    seen.push(i);
                })
                .unwrap();
            assert_eq!(seen, (from..prompt.len()).collect::<Vec<_>>(), "{arch}");
            assert_eq!(s.position(), prompt.len());
            let last: Vec<u32> = s.logits().iter().map(|x| x.to_bits()).collect();
            assert_eq!(&last, alone.last().unwrap(), "{arch}: the session's logits");
            // The session goes on as after `forward`.
            let next = model.forward(&mut s, &[1]).unwrap().to_vec();
            let mut again = model.session(128, 64).unwrap();
            model.forward(&mut again, &prompt).unwrap();
            assert_eq!(next, model.forward(&mut again, &[1]).unwrap());
        }
        // Hidden states: the same whatever the chunking, and the logits
        // after them are those of `forward`.
        let hidden = |batch: usize, from: usize| {
            let mut s = model.session(128, batch).unwrap();
            let mut rows = Vec::new();
            model
                .forward_embeddings(&mut s, &prompt, from, |i, h| {
                    assert_eq!(h.len(), model.config().d_model);
                    rows.push((i, h.iter().map(|x| x.to_bits()).collect::<Vec<_>>()));
                })
                .unwrap();
            let last: Vec<u32> = s.logits().iter().map(|x| x.to_bits()).collect();
            assert_eq!(&last, alone.last().unwrap(), "{arch}: the session's logits");
            rows
        };
        let whole = hidden(128, 0);
        assert_eq!(whole.len(), prompt.len());
        assert_eq!(hidden(7, 0), whole, "{arch}");
        assert_eq!(hidden(1, 0), whole, "{arch}");
        assert_eq!(hidden(40, 50), whole[50..], "{arch}");
        let mut full = model.session(8, 8).unwrap();
        assert!(matches!(
            model.forward_outputs(&mut full, &prompt, 0, |_, _| {}),
            Err(Error::ContextFull { .. })
        ));
        assert_eq!(full.position(), 0);
    }
}

#[test]
fn unknown_architecture_and_missing_tensors_are_named() {
    let cpu = CpuBackend::new().unwrap();
    let bytes = synthetic("llama", Some("blk.1.ffn_up.weight"));
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let err = Model::load(&file, &cpu).unwrap_err();
    assert!(err.to_string().contains("blk.1.ffn_up.weight"), "{err}");

    let mut bytes = synthetic("llama", None);
    let at = bytes.windows(5).position(|w| w == b"llama").unwrap();
    bytes[at..at + 5].copy_from_slice(b"xlstm");
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    assert!(matches!(Model::load(&file, &cpu), Err(Error::UnknownArchitecture(a)) if a == "xlstm"));
}

/// A model without a vocabulary is refused when its config is read, before
/// any step could hand out rows of no logits.
#[test]
fn an_empty_vocabulary_is_refused() {
    let bytes = synthetic("llama", None);
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    assert!(ModelConfig::from_metadata(file.metadata()).is_ok());
    let mut w = GgufWriter::new();
    *w.metadata_mut() = file.metadata().clone();
    w.set("llama.vocab_size", MetadataValue::U32(0));
    let bytes = w.to_bytes().unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let err = ModelConfig::from_metadata(file.metadata()).unwrap_err();
    assert!(
        matches!(err, Error::BadConfig(ref m) if m.contains("vocab_size: 0")),
        "{err}"
    );
}

/// The built-in layouts are exactly the real files' (hyper-parameters,
/// tensor names, shapes and types), so synthetic copies benchmark like them.
#[test]
fn built_in_layouts_match_the_real_models() {
    use realm_core::catalog;
    use realm_core::gguf::GgufFile;
    use realm_models::synthetic::SyntheticLayout;
    for (m, layout) in [
        (&catalog::SMOLLM2, SyntheticLayout::smollm2_135m()),
        (&catalog::GEMMA3, SyntheticLayout::gemma3_270m()),
    ] {
        let Some(path) = catalog::cached_path(m).filter(|p| p.is_file()) else {
            eprintln!("skipped: {} is not cached", m.file_name);
            continue;
        };
        let real = SyntheticLayout::of(&GgufFile::open(path).unwrap()).unwrap();
        assert_eq!(layout.arch, real.arch);
        assert_eq!(layout.hparams, real.hparams, "{}", m.short_name);
        assert_eq!(layout.vocab_size, real.vocab_size);
        // Same tensors; the file order is the converter's and does not matter.
        let sorted = |mut v: Vec<realm_models::synthetic::SyntheticTensor>| {
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        let (ours, theirs) = (sorted(layout.tensors), sorted(real.tensors));
        assert_eq!(ours.len(), theirs.len(), "{}", m.short_name);
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "{}", m.short_name);
        }
    }
}

/// A synthetic file of each tiny layout loads with its tokenizer, runs, and
/// is the same for the same seed.
#[test]
fn synthetic_files_load_tokenize_and_run() {
    use realm_core::tokenizer::Tokenizer;
    use realm_models::synthetic::SyntheticLayout;
    let cpu = CpuBackend::new().unwrap();
    for arch in [
        "llama", "qwen2", "qwen3", "qwen3moe", "smollm3", "granite", "gemma2", "gemma3",
    ] {
        let layout = SyntheticLayout::tiny(arch).unwrap();
        let bytes = layout.write(7).unwrap();
        assert_eq!(bytes, layout.write(7).unwrap());
        assert_ne!(bytes, layout.write(8).unwrap());
        let file = Gguf::from_bytes(bytes).unwrap();
        assert_eq!(SyntheticLayout::of(&file).unwrap(), layout);
        let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
        let ids = tok.encode("t300 hello", true, false).unwrap();
        assert!(ids.iter().all(|&t| (t as usize) < layout.vocab_size));
        let model = Model::load(&file, &cpu).unwrap();
        let mut s = model.session(32, 8).unwrap();
        let logits = model.forward(&mut s, &ids).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
        let spread = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1e-3 && spread < 1e3, "{arch}: logits {spread}");
    }
    assert!(SyntheticLayout::tiny("gpt-j").is_err());
}

/// `with_layers` keeps the first blocks' values of the lists of a value a
/// block (LFM2's KV heads: 0 for its convolutions), so that llama.cpp,
/// which checks their lengths, loads the cheaper model too.
#[test]
fn fewer_layers_keep_their_per_block_lists() {
    use realm_models::synthetic::SyntheticLayout;
    let full = SyntheticLayout::by_name("lfm2-1.2b").unwrap();
    let kv = |l: &SyntheticLayout| match l
        .hparams
        .iter()
        .find(|(k, _)| k == "lfm2.attention.head_count_kv")
    {
        Some((_, MetadataValue::Array(MetadataArray::U32(v)))) => v.clone(),
        other => panic!("{other:?}"),
    };
    let six = full.clone().with_layers(6).unwrap();
    assert_eq!(kv(&six), kv(&full)[..6]);
}
