//! Split models, against llama.cpp's llama-gguf-split: Realm splits and
//! merges the synthetic llama and the real models with the options
//! `scripts/gen_split_fixtures.py` gave llama-gguf-split, and every file it
//! writes has the hash of llama.cpp's; a split model reads back as the
//! model it came from (the same tensors, bit-identical logits), from memory
//! and from disk by its first file's name.

use crate::common;

use realm_compute_cpu::CpuBackend;
use realm_core::catalog;
use realm_core::gguf::{
    merge_writer, split_suffix, split_writers, Gguf, GgufFile, SplitLimit, SplitOptions,
};
use realm_core::GgmlType;
use realm_models::synthetic::SyntheticLayout;
use realm_models::Model;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn tiny() -> Vec<u8> {
    SyntheticLayout::by_name("tiny-llama")
        .unwrap()
        .with_matrix_type(GgmlType::Q8_0)
        .write(7)
        .unwrap()
}

/// llama-gguf-split's arguments as Realm's options.
fn options(args: &[Value]) -> SplitOptions {
    let args: Vec<&str> = args.iter().map(|a| a.as_str().unwrap()).collect();
    let value = |flag: &str| {
        let i = args.iter().position(|a| *a == flag)?;
        Some(args[i + 1])
    };
    let limit = match (value("--split-max-tensors"), value("--split-max-size")) {
        (Some(n), None) => SplitLimit::Tensors(n.parse().unwrap()),
        (None, Some(s)) => {
            let (n, unit) = s.split_at(s.len() - 1);
            let unit = if unit == "G" {
                1_000_000_000
            } else {
                1_000_000
            };
            SplitLimit::Bytes(n.parse::<u64>().unwrap() * unit)
        }
        other => panic!("{other:?}"),
    };
    SplitOptions {
        limit,
        no_tensor_first_split: args.contains(&"--no-tensor-first-split"),
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files of `file` split by `opts`, in memory.
fn split<S: AsRef<[u8]>>(file: &Gguf<S>, opts: &SplitOptions) -> Vec<Vec<u8>> {
    split_writers(file, opts)
        .unwrap()
        .iter()
        .map(|w| w.to_bytes().unwrap())
        .collect()
}

#[test]
fn splits_and_merges_are_llama_cpp_bytes() {
    let text = include_str!("../fixtures/split.json");
    let fx: Value = serde_json::from_str(text).unwrap();
    let tiny = Gguf::from_bytes(tiny()).unwrap();
    let smollm2 = common::open(&catalog::SMOLLM2);
    let gemma3 = common::open(&catalog::GEMMA3);
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let opts = options(case["args"].as_array().unwrap());
        let parts = match case["model"].as_str().unwrap() {
            "tiny" => split(&tiny, &opts),
            "smollm2" => match &smollm2 {
                Some(f) => split(f, &opts),
                None => continue,
            },
            _ => match &gemma3 {
                Some(f) => split(f, &opts),
                None => continue,
            },
        };
        let got: Vec<String> = if case["merge"].as_bool().unwrap() {
            let split = Gguf::from_splits(parts).unwrap();
            let merged = merge_writer(&split).unwrap().to_bytes().unwrap();
            vec![sha256(&merged)]
        } else {
            parts.iter().map(|p| sha256(p)).collect()
        };
        let want: Vec<&str> = case["sha256"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{case}");
        checked += 1;
    }
    assert!(checked >= 4);
    // A first tensor past the size limit, in a file of its own: refused,
    // as llama-gguf-split refuses it (SmolLM2's embeddings are 30.1 MB).
    if let Some(f) = &smollm2 {
        let opts = SplitOptions {
            limit: SplitLimit::Bytes(30_000_000),
            no_tensor_first_split: true,
        };
        assert!(split_writers(f, &opts).is_err());
    }
}

/// Logits of a few tokens, token by token.
fn logits<S: AsRef<[u8]>>(file: &Gguf<S>) -> Vec<f32> {
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(file, &cpu).unwrap();
    let mut s = model.session(16, 4).unwrap();
    let mut all = Vec::new();
    for t in [1, 20, 300 % model.config().vocab_size as u32, 7] {
        all.extend_from_slice(model.forward(&mut s, &[t]).unwrap());
    }
    all
}

#[test]
fn a_split_model_runs_as_the_whole_one() {
    let opts = SplitOptions {
        limit: SplitLimit::Tensors(7),
        no_tensor_first_split: false,
    };
    let whole = Gguf::from_bytes(tiny()).unwrap();
    let parts = split(&whole, &opts);
    assert_eq!(parts.len(), 3);
    let split_model = Gguf::from_splits(parts.clone()).unwrap();
    assert_eq!(split_model.tensor_infos().len(), whole.tensor_infos().len());
    assert_eq!(logits(&split_model), logits(&whole));
    if let Some(f) = common::open(&catalog::SMOLLM2) {
        let opts = SplitOptions {
            limit: SplitLimit::Bytes(40_000_000),
            no_tensor_first_split: false,
        };
        let split_model = Gguf::from_splits(split(&f, &opts)).unwrap();
        assert_eq!(logits(&split_model), logits(&f));
    }

    // From disk: the first file's name finds the others.
    let dir = tempfile::tempdir().unwrap();
    let name = |i: usize| dir.path().join(format!("tiny{}", split_suffix(i, 3)));
    for (i, p) in parts.iter().enumerate() {
        std::fs::write(name(i), p).unwrap();
    }
    let opened = GgufFile::open(name(0)).unwrap();
    assert_eq!(opened.split_headers().count(), 3);
    assert_eq!(opened.len(), parts.iter().map(Vec::len).sum::<usize>());
    assert_eq!(logits(&opened), logits(&whole));
    // Not the first file, a first file named otherwise, a file missing:
    // errors that say so.
    let err = GgufFile::open(name(1)).unwrap_err().to_string();
    assert!(err.contains("file 2 of 3"), "{err}");
    let renamed = dir.path().join("tiny.gguf");
    std::fs::copy(name(0), &renamed).unwrap();
    let err = GgufFile::open(&renamed).unwrap_err().to_string();
    assert!(err.contains("-00001-of-00003.gguf"), "{err}");
    std::fs::remove_file(name(2)).unwrap();
    let err = GgufFile::open(name(0)).unwrap_err().to_string();
    assert!(err.contains("tiny-00003-of-00003.gguf"), "{err}");
    // One file alone reads as it is: its own tensors.
    let first = Gguf::from_bytes(&parts[0][..]).unwrap();
    assert_eq!(first.tensor_infos().len(), 7);
}
