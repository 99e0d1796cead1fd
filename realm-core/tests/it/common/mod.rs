//! What the quantization fixture tests share: reading the fixtures of
//! scripts/gen_quant_fixtures.py.

use std::path::{Path, PathBuf};

use realm_core::GgmlType;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

/// A fixture file's bytes, by its path under the fixture folder.
pub fn read(rel: &str) -> Vec<u8> {
    let path = fixture_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture manifest (JSON).
pub fn manifest(name: &str) -> Value {
    serde_json::from_slice(&read(name)).expect("fixture manifest is JSON")
}

/// Little-endian f32 bytes as values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The type ggml names `name` (`q4_K`).
pub fn type_by_name(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}
