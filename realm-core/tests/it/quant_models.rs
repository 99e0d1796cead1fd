//! Dequantizes every tensor of the two real models and compares the f32 bits
//! (by sha256 of their little-endian bytes) with what the `gguf` Python
//! package computed (scripts/gen_quant_fixtures.py, tests/fixtures/quant/models.json).
//!
//! The fixture records where each tensor's data lies in the file, so this test
//! does not parse GGUF itself. The models are looked up in `$REALM_MODELS`, or
//! `~/.cache/realm/models`; a missing file skips that model with a message.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use realm_core::{quant, GgmlType};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REALM_MODELS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/realm/models")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of the dequantized f32 LE bytes of `n_bytes` bytes of `t` read from
/// `file` at `offset`, a slice of blocks at a time.
fn tensor_sha256(file: &mut File, t: GgmlType, offset: u64, n_bytes: usize) -> String {
    const BLOCKS_PER_CHUNK: usize = 1 << 14;
    let chunk_bytes = BLOCKS_PER_CHUNK * t.type_size();
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut hasher = Sha256::new();
    let mut raw = vec![0u8; chunk_bytes];
    let mut out = vec![0.0f32; BLOCKS_PER_CHUNK * t.block_size()];
    let mut le = vec![0u8; out.len() * 4];
    let mut left = n_bytes;
    while left > 0 {
        let len = left.min(chunk_bytes);
        file.read_exact(&mut raw[..len]).expect("read tensor data");
        let n = len / t.type_size() * t.block_size();
        quant::dequantize(t, &raw[..len], &mut out[..n]).unwrap_or_else(|e| panic!("{t}: {e}"));
        for (b, v) in le.chunks_exact_mut(4).zip(&out[..n]) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        hasher.update(&le[..4 * n]);
        left -= len;
    }
    hex(&hasher.finalize())
}

#[test]
fn real_model_tensors_dequantize_bit_exactly() {
    let manifest_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant/models.json");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("models.json")).expect("JSON");
    let dir = models_dir();
    let mut checked_models = 0;
    for model in manifest["models"].as_array().expect("models") {
        let name = model["file"].as_str().expect("file");
        let path = dir.join(name);
        let Ok(mut file) = File::open(&path) else {
            println!(
                "SKIPPED: model {} not found (set REALM_MODELS to the directory holding {name})",
                path.display()
            );
            continue;
        };
        let size = file.metadata().expect("metadata").len();
        assert_eq!(
            size,
            model["size"].as_u64().expect("size"),
            "{}: not the file the fixture was made from",
            path.display()
        );
        let tensors = model["tensors"].as_array().expect("tensors");
        let mut types = Vec::new();
        for t in tensors {
            let tname = t["name"].as_str().expect("name");
            let dtype = GgmlType::from_id(t["type_id"].as_u64().expect("type_id") as u32)
                .expect("known type");
            assert_eq!(dtype.name(), t["type"].as_str().expect("type"));
            assert!(
                quant::can_dequantize(dtype),
                "{tname}: {dtype} is not supported"
            );
            let offset = t["offset"].as_u64().expect("offset");
            let n_bytes = t["n_bytes"].as_u64().expect("n_bytes") as usize;
            let n_elements = t["n_elements"].as_u64().expect("n_elements");
            assert_eq!(
                dtype.row_bytes(n_elements),
                Some(n_bytes as u64),
                "{tname}: size"
            );
            let got = tensor_sha256(&mut file, dtype, offset, n_bytes);
            assert_eq!(
                got,
                t["sha256"].as_str().expect("sha256"),
                "{name}: tensor {tname} ({dtype}) dequantizes differently from the reference"
            );
            if !types.contains(&dtype) {
                types.push(dtype);
            }
        }
        types.sort();
        let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
        println!(
            "{name}: {} tensors bit-exact ({})",
            tensors.len(),
            names.join(", ")
        );
        checked_models += 1;
    }
    if checked_models == 0 {
        println!("SKIPPED: no model files in {}", dir.display());
    }
}
