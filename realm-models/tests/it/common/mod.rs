//! What the tests on the real models share.

use realm_core::catalog::{self, KnownModel};
use realm_core::gguf::GgufFile;

/// The model's file from the model cache, or `None` (said on stderr) when
/// it is not cached: the test then checks nothing.
pub fn open(m: &KnownModel) -> Option<GgufFile> {
    let path = catalog::cached_path(m).filter(|p| p.is_file());
    if path.is_none() {
        eprintln!(
            "skipped: {} is not cached; run `cargo xtask fetch-model`",
            m.file_name
        );
    }
    path.map(|p| GgufFile::open(p).unwrap())
}
