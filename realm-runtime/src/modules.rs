//! Compiled guest modules kept on disk ([`RuntimeConfig::module_cache`]), so
//! that a process that starts a tenant of a module compiled before loads
//! its machine code instead of compiling it again.
//!
//! A file is named by the module's SHA-256 and the engine's compatibility
//! hash (wasmtime's: its version and the compile settings), and holds the
//! SHA-256 of what follows, then [`Module::serialize`]'s bytes. A file that
//! is missing, damaged or from another engine is compiled over; failing to
//! write one only costs the next start a compile.
//!
//! [`RuntimeConfig::module_cache`]: crate::RuntimeConfig::module_cache

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// How a module was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModuleSource {
    /// Compiled now (and, with a cache, written to it).
    Compiled,
    /// Loaded from the cache.
    Cached,
}

/// The cache file of the module whose SHA-256 is `key`, for `engine`.
fn file_of(dir: &Path, engine: &Engine, key: &[u8; 32]) -> PathBuf {
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}-{:016x}.cwasm", h.finish()))
}

/// The module of `wasm` (SHA-256 `key`): from `dir` when it holds it, else
/// compiled, and then stored there.
pub(crate) fn module(
    engine: &Engine,
    wasm: &[u8],
    key: &[u8; 32],
    dir: Option<&Path>,
) -> wasmtime::Result<(Module, ModuleSource)> {
    let Some(dir) = dir else {
        return Ok((Module::new(engine, wasm)?, ModuleSource::Compiled));
    };
    let path = file_of(dir, engine, key);
    if let Some(m) = load(engine, &path) {
        return Ok((m, ModuleSource::Cached));
    }
    let module = Module::new(engine, wasm)?;
    if let Ok(bytes) = module.serialize() {
        // Not being able to cache is no reason to fail the tenant.
        let _ = store(dir, &path, &bytes);
    }
    Ok((module, ModuleSource::Compiled))
}

fn load(engine: &Engine, path: &Path) -> Option<Module> {
    let data = std::fs::read(path).ok()?;
    let (sum, bytes) = data.split_at_checked(32)?;
    if Sha256::digest(bytes).as_slice() != sum {
        return None;
    }
    // SAFETY: `bytes` is what `Module::serialize` wrote into this file (its
    // checksum holds, so it is whole and unchanged since it was written),
    // for an engine of the same compatibility hash (part of the name), and
    // wasmtime checks its header against this engine again. The cache
    // directory is the user's own, written only by this code, and trusted as
    // the binary itself is (the trust wasmtime's own cache asks for);
    // `deserialize` copies the bytes, so nothing outlives `data`.
    unsafe { Module::deserialize(engine, bytes) }.ok()
}

/// Writes a cache file whole or not at all: to a temporary name, then
/// renamed.
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut data = Vec::with_capacity(32 + bytes.len());
    data.extend_from_slice(&Sha256::digest(bytes));
    data.extend_from_slice(bytes);
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
