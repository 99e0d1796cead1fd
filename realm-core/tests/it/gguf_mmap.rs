//! Opening a model maps it: no weights are copied until they are read.
//! (Its own test binary, so that no other test's allocations run alongside.)

use realm_core::catalog;
use realm_core::gguf::GgufFile;

fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opening maps the file: resident memory grows by the parsed metadata (the
/// vocabulary), not by the weights, until tensors are read.
#[test]
fn opening_copies_no_weights() {
    let Some(path) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
        eprintln!("skipped: SmolLM2 is not cached; run `cargo xtask fetch-model`");
        return;
    };
    let Some(before) = resident_kib() else { return };
    let file = GgufFile::open(&path).unwrap();
    let after_open = resident_kib().unwrap();
    let file_kib = std::fs::metadata(&path).unwrap().len() / 1024;
    let grew = after_open.saturating_sub(before);
    eprintln!("resident memory: +{grew} KiB after opening a {file_kib} KiB file");
    assert!(
        grew < file_kib / 4,
        "opening grew resident memory by {grew} KiB"
    );
    let sum: u64 = file
        .tensor("token_embd.weight")
        .unwrap()
        .data()
        .iter()
        .map(|&b| u64::from(b))
        .sum();
    let after_touch = resident_kib().unwrap();
    eprintln!(
        "resident memory: +{} KiB after reading token_embd.weight (sum {sum})",
        after_touch.saturating_sub(before)
    );
    assert!(
        after_touch > after_open,
        "reading a tensor should fault its pages in"
    );
}
