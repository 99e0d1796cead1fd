//! Fuzzes the importance matrix reader: any bytes (a GGUF file or the older
//! `.dat` layout) must give a matrix or an error, never a panic, and what
//! reads must give its importances and statistics, merge, and write back to
//! the same matrix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realm_core::imatrix::Imatrix;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Imatrix::from_bytes(data) else {
        return;
    };
    for name in m.names() {
        let w = m.importance(name).expect("a listed matrix");
        assert_eq!(w.len(), m.entry(name).expect("listed").sums.len());
    }
    let _ = m.statistics();
    let mut sum = Imatrix::new(512);
    if sum.merge(&m).is_ok() {
        let _ = sum.merge(&m);
    }
    if let Ok(w) = m.to_gguf() {
        let bytes = w.to_bytes().expect("a read matrix writes");
        let back = Imatrix::from_bytes(&bytes).expect("a written matrix reads");
        assert_eq!(back.len(), m.len());
    }
});
