//! The GGUF reader on the real models (SmolLM2 and Gemma 3), against what the
//! `gguf` Python package reads from the same files
//! (`scripts/gen_gguf_fixtures.py` made `fixtures/gguf/*.json`), and on
//! corrupted copies of SmolLM2, which must give errors, never panics.

use std::collections::HashMap;
use std::path::PathBuf;

use realm_core::catalog::{self, KnownModel};
use realm_core::gguf::{Gguf, GgufFile, GgufReader, MetadataArray, MetadataValue};
use realm_core::{Error, GgmlType};
use serde_json::Value;

fn model(m: &KnownModel) -> Option<PathBuf> {
    let p = catalog::cached_path(m).filter(|p| p.is_file());
    if p.is_none() {
        eprintln!(
            "skipped: {} is not cached; run `cargo xtask fetch-model`",
            m.file_name
        );
    }
    p
}

fn fixture(short: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/gguf/{short}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn json_of(v: &MetadataValue) -> Value {
    match v {
        MetadataValue::String(s) => Value::from(s.as_str()),
        MetadataValue::Bool(b) => Value::from(*b),
        MetadataValue::F32(f) => Value::from(f64::from(*f)),
        MetadataValue::F64(f) => Value::from(*f),
        v => Value::from(v.as_i128().unwrap() as i64),
    }
}

fn first_items(a: &MetadataArray) -> Vec<Value> {
    let f = |v: Vec<MetadataValue>| v.iter().map(json_of).collect();
    match a {
        MetadataArray::String(v) => f(v
            .iter()
            .take(5)
            .map(|s| MetadataValue::String(s.clone()))
            .collect()),
        MetadataArray::F32(v) => f(v.iter().take(5).map(|&x| MetadataValue::F32(x)).collect()),
        MetadataArray::I32(v) => f(v.iter().take(5).map(|&x| MetadataValue::I32(x)).collect()),
        MetadataArray::U32(v) => f(v.iter().take(5).map(|&x| MetadataValue::U32(x)).collect()),
        other => panic!("fixture has no arrays of {:?}", other.element_type()),
    }
}

fn check_against_reference(m: &KnownModel) {
    let Some(path) = model(m) else { return };
    let file = GgufFile::open(&path).unwrap();
    let fx = fixture(m.short_name);
    let h = file.header();
    assert_eq!(u64::from(h.version()), fx["version"].as_u64().unwrap());
    assert_eq!(h.alignment(), fx["alignment"].as_u64().unwrap());
    assert_eq!(h.data_offset(), fx["data_offset"].as_u64().unwrap());

    let want = fx["tensors"].as_array().unwrap();
    assert_eq!(file.tensor_infos().len(), want.len());
    for (got, want) in file.tensor_infos().iter().zip(want) {
        assert_eq!(got.name, want["name"].as_str().unwrap());
        assert_eq!(
            u64::from(got.dtype.id()),
            want["type"].as_u64().unwrap(),
            "{}",
            got.name
        );
        let shape: Vec<u64> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(got.shape, shape, "{}", got.name);
        assert_eq!(got.offset, want["offset"].as_u64().unwrap(), "{}", got.name);
        assert_eq!(
            got.n_bytes,
            want["n_bytes"].as_u64().unwrap(),
            "{}",
            got.name
        );
        let view = file.tensor(&got.name).unwrap();
        assert_eq!(view.data().len() as u64, got.n_bytes);
    }

    let want = fx["metadata"].as_object().unwrap();
    assert_eq!(file.metadata().len(), want.len());
    for (key, want) in want {
        let got = file
            .metadata()
            .get(key)
            .unwrap_or_else(|| panic!("missing {key}"));
        match got {
            MetadataValue::Array(a) => {
                assert_eq!(want["type"], "array", "{key}");
                assert_eq!(a.element_type().name(), want["element"], "{key}");
                assert_eq!(a.len() as u64, want["len"].as_u64().unwrap(), "{key}");
                assert_eq!(
                    first_items(a),
                    want["first"].as_array().unwrap().clone(),
                    "{key}"
                );
            }
            v => {
                assert_eq!(v.value_type().name(), want["type"], "{key}");
                assert_eq!(json_of(v), want["value"], "{key}");
            }
        }
    }
}

#[test]
fn smollm2_reads_as_the_reference_reader_does() {
    check_against_reference(&catalog::SMOLLM2);
    let Some(path) = model(&catalog::SMOLLM2) else {
        return;
    };
    let file = GgufFile::open(path).unwrap();
    let mut counts: HashMap<GgmlType, usize> = HashMap::new();
    for t in file.tensor_infos() {
        *counts.entry(t.dtype).or_default() += 1;
    }
    assert_eq!(file.tensor_infos().len(), 272);
    assert_eq!(counts[&GgmlType::Q8_0], 1);
    assert_eq!(counts[&GgmlType::Q4_1], 210);
    assert_eq!(counts[&GgmlType::F32], 61);
    assert_eq!(file.metadata().get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(
        file.metadata()
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .len(),
        49152
    );
}

#[test]
fn gemma3_reads_as_the_reference_reader_does() {
    check_against_reference(&catalog::GEMMA3);
    let Some(path) = model(&catalog::GEMMA3) else {
        return;
    };
    assert_eq!(GgufFile::open(path).unwrap().tensor_infos().len(), 236);
}

/// The three ways in (mmap, byte buffer, stream) see the same file.
#[test]
fn mmap_buffer_and_stream_readers_agree() {
    let Some(path) = model(&catalog::SMOLLM2) else {
        return;
    };
    let mapped = GgufFile::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let buffered = Gguf::from_bytes(&bytes[..]).unwrap();
    let mut stream = GgufReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(mapped.metadata(), buffered.metadata());
    assert_eq!(mapped.metadata(), stream.header().metadata());
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "output_norm.weight",
    ] {
        let a = mapped.tensor(name).unwrap();
        assert_eq!(a.data(), buffered.tensor(name).unwrap().data());
        assert_eq!(a.data(), &stream.read_tensor_data(name).unwrap()[..]);
    }
}

fn expect_error(bytes: &[u8], what: &str) -> Error {
    match Gguf::from_bytes(bytes) {
        Err(e) => e,
        Ok(_) => panic!("{what}: a corrupt file was accepted"),
    }
}

#[test]
fn truncated_copies_are_errors() {
    let Some(path) = model(&catalog::SMOLLM2) else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let data_offset = Gguf::from_bytes(&bytes[..]).unwrap().header().data_offset() as usize;
    // 400 cuts spread over the header region and a spread of
    // cuts inside the data section.
    let cuts = (0..data_offset)
        .step_by(data_offset / 400 + 1)
        .chain((data_offset..bytes.len()).step_by(1_000_003))
        .chain([bytes.len() - 1]);
    for cut in cuts {
        let e = expect_error(&bytes[..cut], &format!("cut at {cut}"));
        assert!(
            matches!(e, Error::Truncated { .. } | Error::BadMagic { .. }),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn bit_flips_in_the_header_never_panic() {
    let Some(path) = model(&catalog::SMOLLM2) else {
        return;
    };
    let mut bytes = std::fs::read(path).unwrap();
    let data_offset = Gguf::from_bytes(&bytes[..]).unwrap().header().data_offset() as usize;
    let mut rejected = 0;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..600 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state % data_offset as u64) as usize;
        let bit = 1u8 << (state >> 60 & 7);
        bytes[at] ^= bit;
        // Either a clean error or a file that still validates: no panic.
        rejected += usize::from(Gguf::from_bytes(&bytes[..]).is_err());
        bytes[at] ^= bit;
    }
    eprintln!("{rejected} of 600 single-bit flips rejected");
    assert!(rejected > 0);
}

#[test]
fn oversized_counts_are_errors_without_huge_allocations() {
    let Some(path) = model(&catalog::SMOLLM2) else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let patch = |at: usize, v: u64| {
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        b
    };
    // Header: magic, version, then tensor count at 8 and metadata count at 16.
    for v in [u64::MAX, 1 << 40, 273] {
        expect_error(&patch(8, v), "tensor count");
        expect_error(&patch(16, v), "metadata count");
    }
    // The first key's length (at 24), and the first string value's length.
    expect_error(&patch(24, u64::MAX), "key length");
    let key_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    let value_len_at = 32 + key_len + 4;
    expect_error(&patch(value_len_at, 1 << 62), "string length");
    // An array length: find tokenizer.ggml.tokens' count (after its key, type 9, element type 8).
    let key = b"tokenizer.ggml.tokens";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 8;
    assert_eq!(
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()),
        49152
    );
    expect_error(&patch(at, u64::MAX / 2), "array length");
    // A tensor's type id.
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
    let mut b = bytes.clone();
    b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    let e = expect_error(&b, "type id");
    assert_eq!(
        e.to_string(),
        "tensor `token_embd.weight` has unknown type id 77"
    );
}
