//! Property tests of importance matrices: what is collected writes and
//! reads back exactly, adding a matrix to itself doubles it, and no bytes,
//! however damaged, make the reader panic. `PROPTEST_CASES` sets the number
//! of cases (`cargo xtask proptest`: 20,000).

use proptest::collection::vec;
use proptest::prelude::*;
use realm_core::imatrix::Imatrix;

/// A few matrices' activations: (name, columns, rows of values).
fn activations() -> impl Strategy<Value = Vec<(String, usize, Vec<f32>)>> {
    vec(
        (0u32..4, 0usize..3, 1usize..9, 1usize..5).prop_flat_map(|(blk, which, cols, rows)| {
            let name = format!(
                "blk.{blk}.{}.weight",
                ["attn_q", "ffn_up", "ffn_down"][which]
            );
            vec(-100.0f32..100.0, cols * rows).prop_map(move |v| (name.clone(), cols, v))
        }),
        1..6,
    )
}

fn collect(acts: &[(String, usize, Vec<f32>)]) -> Imatrix {
    let mut m = Imatrix::new(16);
    for (name, cols, rows) in acts {
        // A matrix seen again with another width is refused, as
        // llama-imatrix refuses it; the rest still adds up.
        let _ = m.add(name, rows, *cols);
    }
    m.chunk_count = 3;
    m.datasets.push("text.txt".into());
    m
}

proptest! {
    #[test]
    fn collected_matrices_round_trip(acts in activations()) {
        let m = collect(&acts);
        let bytes = m.to_gguf().unwrap().to_bytes().unwrap();
        let back = Imatrix::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        for name in m.names() {
            let e = m.entry(name).unwrap();
            let w = back.importance(name).unwrap();
            prop_assert_eq!(w.len(), e.sums.len());
            for (w, s) in w.iter().zip(&e.sums) {
                prop_assert_eq!(*w, s / e.counts[0] as f32);
            }
        }
        let mut twice = m.clone();
        twice.merge(&m).unwrap();
        prop_assert_eq!(twice.chunk_count, 6);
        for name in m.names() {
            let (a, b) = (m.entry(name).unwrap(), twice.entry(name).unwrap());
            prop_assert_eq!(b.counts[0], 2 * a.counts[0]);
            prop_assert_eq!(m.importance(name), twice.importance(name));
        }
        prop_assert_eq!(m.statistics().len(), m.len());
    }

    #[test]
    fn damaged_files_never_panic(
        acts in activations(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = collect(&acts).to_gguf().unwrap().to_bytes().unwrap();
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let end = cut.index(bytes.len() + 1);
        for b in [&bytes[..], &bytes[..end], &bytes[4..]] {
            if let Ok(m) = Imatrix::from_bytes(b) {
                for name in m.names() {
                    let _ = m.importance(name);
                }
                let _ = m.statistics();
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        if let Ok(m) = Imatrix::from_bytes(&bytes) {
            let _ = m.statistics();
            let mut sum = Imatrix::new(512);
            let _ = sum.merge(&m);
        }
    }
}
