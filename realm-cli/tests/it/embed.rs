//! `realm embed` on the real models against llama.cpp's llama-embedding
//! (fixtures/embeddings.json, from scripts/gen_embedding_fixtures.py).

use crate::common;

use common::{cached, realm};
use realm_core::catalog::{self, KnownModel};
use serde_json::Value;

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Every pooling's vectors point where llama.cpp's do: cosine similarity
/// at least `min_cos`, and unit length. The hidden states differ from
/// llama.cpp's as the logits do (realm-models' golden tests); measured
/// worst cosines: 0.9995 (SmolLM2), 0.998 (Gemma 3, last-token pooling).
fn check(m: &KnownModel, min_cos: f64) {
    if !cached(m) {
        return;
    }
    let path = format!(
        "{}/tests/fixtures/embeddings.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases: Vec<&Value> = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["model"] == m.short_name)
        .collect();
    for pooling in ["mean", "cls", "last"] {
        let mine: Vec<&Value> = cases
            .iter()
            .copied()
            .filter(|c| c["pooling"] == pooling)
            .collect();
        let mut args = vec!["embed", m.short_name, "--pooling", pooling, "--json"];
        for c in &mine {
            args.extend(["-p", c["prompt"].as_str().unwrap()]);
        }
        let (ok, stdout, stderr) = realm(&args);
        assert!(ok, "{stderr}");
        let got: Value = serde_json::from_str(&stdout).unwrap();
        let data = got["data"].as_array().unwrap();
        assert_eq!(data.len(), mine.len());
        for (c, d) in mine.iter().zip(data) {
            let (want, have) = (floats(&c["embedding"]), floats(&d["embedding"]));
            assert_eq!(want.len(), have.len());
            let cos = cosine(&want, &have);
            assert!(
                cos >= min_cos,
                "{} {pooling} {:?}: cosine {cos}",
                m.short_name,
                c["prompt"]
            );
            let length = have.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((length - 1.0).abs() < 1e-4, "{length}");
        }
    }
}

#[test]
fn smollm2_embeddings_match_llama_cpp() {
    check(&catalog::SMOLLM2, 0.998);
}

#[test]
fn gemma3_embeddings_match_llama_cpp() {
    check(&catalog::GEMMA3, 0.995);
}

/// An encoder through the command line: `realm embed` pools as the file
/// says (BERT's CLS, Nomic BERT's mean) into unit vectors; generating,
/// scoring and benchmarking refuse it by name, as does a reranker's
/// pooling.
#[test]
fn encoders_embed_and_refuse_generation() {
    let dir = std::env::temp_dir().join(format!("realm-encoders-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (layout, pooling) in [("tiny-bert", "Cls"), ("tiny-nomic-bert", "Mean")] {
        let path = dir.join(format!("{layout}.gguf"));
        let path = path.to_str().unwrap();
        let (ok, _, stderr) = realm(&["synth", layout, "-o", path, "--seed", "3"]);
        assert!(ok, "{stderr}");
        let (ok, stdout, stderr) = realm(&["embed", path, "-p", "a b c", "-p", "d e", "--json"]);
        assert!(ok, "{stderr}");
        assert!(stderr.contains(&format!("({pooling} pooling)")), "{stderr}");
        let got: Value = serde_json::from_str(&stdout).unwrap();
        for d in got["data"].as_array().unwrap() {
            let v = floats(&d["embedding"]);
            assert_eq!(v.len(), 64);
            let length = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((length - 1.0).abs() < 1e-4, "{length}");
        }
        let text = dir.join("text.txt");
        std::fs::write(&text, "a b c d e f g h ".repeat(20)).unwrap();
        let text = text.to_str().unwrap();
        for args in [
            vec!["run", path, "-p", "a b", "-n", "2"],
            vec!["bench", path, "-p", "8", "-n", "2"],
            vec!["perplexity", path, "-f", text, "-c", "16"],
        ] {
            let (ok, _, stderr) = realm(&args);
            assert!(
                !ok && stderr.contains("is an embedding model"),
                "{args:?}: {stderr}"
            );
        }
    }
    let path = dir.join("rank.gguf");
    let path = path.to_str().unwrap();
    let (ok, _, stderr) = realm(&[
        "synth",
        "tiny-bert",
        "-o",
        path,
        "--override-kv",
        "bert.pooling_type=int:4",
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = realm(&["embed", path, "-p", "a b"]);
    assert!(!ok && stderr.contains("reranker"), "{stderr}");
    // A LoRA adapter changes the embedding as merging it into the
    // weights does (those merged in f16: within its rounding).
    let base = dir.join("bert.gguf");
    let base = base.to_str().unwrap();
    let lora = dir.join("lora.gguf");
    let lora = lora.to_str().unwrap();
    let merged = dir.join("merged.gguf");
    let merged = merged.to_str().unwrap();
    for args in [
        vec!["synth", "tiny-bert", "-o", base, "--seed", "3"],
        vec![
            "synth",
            "tiny-bert",
            "-o",
            lora,
            "--lora",
            "4",
            "--amplitude",
            "0.2",
            "--targets",
            "attn_q,attn_k,attn_v,attn_output,ffn_up,ffn_down",
        ],
        vec!["export-lora", base, "--lora", lora, "-o", merged],
    ] {
        let (ok, _, stderr) = realm(&args);
        assert!(ok, "{args:?}: {stderr}");
    }
    let embed = |args: &[&str]| {
        let (ok, stdout, stderr) = realm(&[&["embed", "-p", "a b c", "--json"], args].concat());
        assert!(ok, "{stderr}");
        let got: Value = serde_json::from_str(&stdout).unwrap();
        floats(&got["data"][0]["embedding"])
    };
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (plain, adapted) = (embed(&[base]), embed(&[base, "--lora", lora]));
    let want = embed(&[merged]);
    assert!(cos(&adapted, &want) > 0.9999, "{}", cos(&adapted, &want));
    assert!(cos(&plain, &want) < 0.999, "{}", cos(&plain, &want));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Encoders end to end: tiny BERT and Nomic BERT models (f32) with BGE's
/// WordPiece vocabulary, a tiny Nomic BERT MoE with XLM-R's unigram one,
/// embed text as llama.cpp's llama-embedding does
/// (the same tokens, the file's own pooling, unit length): cosine at least
/// 0.99999 (measured: the GELUs' approximations differ by up to 5e-5 a
/// value), 0.999 for the mixture of experts (measured down to 0.99978).
/// Skipped without llama.cpp's vocabulary files (`cargo xtask
/// fetch-vocab`).
#[test]
fn encoders_embed_text_as_llama_cpp() {
    let vocab = |name: &str| catalog::models_dir().map(|d| d.join("vocab").join(name));
    if ["ggml-vocab-bert-bge.gguf", "ggml-vocab-nomic-bert-moe.gguf"]
        .iter()
        .any(|v| !vocab(v).is_some_and(|p| p.is_file()))
    {
        eprintln!(
            "skipped: llama.cpp's vocabularies are not cached; run `cargo xtask fetch-vocab`"
        );
        return;
    }
    let path = format!(
        "{}/tests/fixtures/embeddings.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("realm-encoder-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut seen = 0;
    for layout in ["tiny-bert", "tiny-nomic-bert", "tiny-nomic-bert-moe"] {
        let cases: Vec<&Value> = fixture["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["model"] == layout)
            .collect();
        let file = dir.join(format!("{layout}.gguf"));
        let file = file.to_str().unwrap();
        let vocab = vocab(cases[0]["vocab"].as_str().unwrap()).unwrap();
        let (ok, _, stderr) = realm(&[
            "synth",
            layout,
            "--vocab",
            vocab.to_str().unwrap(),
            "--matrix-type",
            "f32",
            "--seed",
            "3",
            "-o",
            file,
        ]);
        assert!(ok, "{stderr}");
        let digest = format!("{:016x}", fnv1a(&std::fs::read(file).unwrap()));
        assert_eq!(
            digest,
            cases[0]["fnv1a"].as_str().unwrap(),
            "{layout}: not llama.cpp's file"
        );
        let mut args = vec!["embed", file, "--json"];
        for c in &cases {
            args.extend(["-p", c["prompt"].as_str().unwrap()]);
        }
        let (ok, stdout, stderr) = realm(&args);
        assert!(ok, "{stderr}");
        let got: Value = serde_json::from_str(&stdout).unwrap();
        for (c, d) in cases.iter().zip(got["data"].as_array().unwrap()) {
            let (want, have) = (floats(&c["embedding"]), floats(&d["embedding"]));
            let cos = cosine(&want, &have);
            // (Routing among experts amplifies the GELUs' difference.)
            let min = match layout {
                "tiny-nomic-bert-moe" => 0.999,
                _ => 0.99999,
            };
            assert!(cos >= min, "{layout} {:?}: cosine {cos}", c["prompt"]);
            seen += 1;
        }
    }
    assert_eq!(seen, 21);
    std::fs::remove_dir_all(&dir).unwrap();
}
