//! What the file targets share: a tiny synthetic model on a one-thread
//! CPU backend, and their input's two forms.

use realm_compute_cpu::{CpuBackend, CpuConfig};
use realm_core::gguf::Gguf;
use realm_models::synthetic::SyntheticLayout;

/// A two-layer llama of the synthetic layout, and a one-thread backend.
pub fn tiny() -> (Gguf<Vec<u8>>, CpuBackend) {
    let file =
        Gguf::from_bytes(SyntheticLayout::tiny("llama").unwrap().write(2).unwrap()).unwrap();
    let cpu = CpuBackend::with_config(CpuConfig {
        threads: 1,
        ..CpuConfig::default()
    })
    .unwrap();
    (file, cpu)
}

/// The file an input stands for: after a first byte of 0, the rest as it
/// is; otherwise `valid` with the rest's edits, (offset: u16, byte)
/// triples (an offset past the end truncates). `None` for no input.
pub fn edited(valid: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let (&mode, rest) = data.split_first()?;
    if mode == 0 {
        return Some(rest.to_vec());
    }
    let mut b = valid.to_vec();
    for e in rest.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]]));
        if at < b.len() {
            b[at] = e[2];
        } else {
            b.truncate(at % (b.len() + 1));
        }
    }
    Some(b)
}
