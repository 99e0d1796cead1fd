//! Shared helpers of the integration tests.

use std::path::PathBuf;

use realm_core::catalog;

/// SmolLM2's cached path, or `None` (and a message) when it is not cached.
pub fn smollm2() -> Option<PathBuf> {
    let path = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file());
    if path.is_none() {
        eprintln!("skipped: SmolLM2 is not cached; run `cargo xtask fetch-model`");
    }
    path
}

/// The guest built by `cargo xtask wasm`; panics with what to run when it is
/// missing (`REALM_WASM_GUEST` overrides the path).
pub fn guest_wasm() -> Vec<u8> {
    let path = std::env::var_os("REALM_WASM_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(realm_runtime::GUEST_WASM_PATH)
        });
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("the wasm guest is missing at {} ({e}): run `cargo xtask wasm` first (`cargo xtask test` does)", path.display())
    })
}
