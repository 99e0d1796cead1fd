//! What the CLI tests share: running `realm` and finding the cached models.

use std::process::Command;

use realm_core::catalog;

/// Runs `realm` with `args`: (success, stdout, stderr).
pub fn realm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_realm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// True when `m` is in the model cache; says why the test is skipped if not.
pub fn cached(m: &catalog::KnownModel) -> bool {
    let ok = catalog::cached_path(m).is_some_and(|p| p.is_file());
    if !ok {
        eprintln!(
            "skipped: {} is not cached; run `cargo xtask fetch-model`",
            m.file_name
        );
    }
    ok
}

/// The wasm guest `cargo xtask wasm` builds, if it is there; says why the
/// test is skipped if not.
pub fn guest() -> Option<String> {
    let path = format!(
        "{}/../{}",
        env!("CARGO_MANIFEST_DIR"),
        realm_runtime::GUEST_WASM_PATH
    );
    let ok = std::path::Path::new(&path).is_file();
    if !ok {
        eprintln!("skipped: no wasm guest at {path}; run `cargo xtask wasm`");
    }
    ok.then_some(path)
}
