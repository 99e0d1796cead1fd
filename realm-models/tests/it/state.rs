//! Saved session states on the real models: a restored session decodes
//! with bit-identical logits to one that never stopped (f32 and f16
//! caches, into a session of another size), and a truncated, corrupted or
//! foreign state is refused, leaving the session empty.

use crate::common;

use realm_compute_cpu::CpuBackend;
use realm_core::backend::KvDtype;
use realm_core::catalog;
use realm_core::tokenizer::Tokenizer;
use realm_models::{Error, Model};

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as u32
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn restored_sessions_decode_as_if_never_stopped() {
    for m in [&catalog::SMOLLM2, &catalog::GEMMA3] {
        let Some(file) = common::open(m) else {
            continue;
        };
        let cpu = CpuBackend::new().unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
        let prompt = tok
            .encode("The capital of France is a city called", true, false)
            .unwrap();
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
            let mut s = model.session_with_kv(256, 16, dtype).unwrap();
            let mut logits = model.forward(&mut s, &prompt).unwrap().to_vec();
            let mut saved = Vec::new();
            model.save_state(&s, &prompt, &mut saved).unwrap();
            let width = {
                let c = model.config();
                c.n_kv_heads * c.head_dim * c.n_layers * 2
            };
            // Bytes per 32 values.
            let size = match dtype {
                KvDtype::F32 => 128,
                KvDtype::F16 => 64,
                KvDtype::Q8_0 => 34,
            };
            assert_eq!(
                saved.len(),
                37 + 4 * prompt.len() + width * prompt.len() / 32 * size
            );

            // Another capacity and batch size: only the tokens matter.
            let mut r = model.session_with_kv(100, 4, dtype).unwrap();
            let got = model.load_state(&mut r, &mut saved.as_slice()).unwrap();
            assert_eq!((got, r.position()), (prompt.clone(), prompt.len()));
            for step in 0..12 {
                let next = argmax(&logits);
                logits = model.forward(&mut s, &[next]).unwrap().to_vec();
                let restored = model.forward(&mut r, &[next]).unwrap();
                assert_eq!(
                    bits(&logits),
                    bits(restored),
                    "{} {dtype:?} step {step}",
                    m.short_name
                );
            }
        }
    }
}

#[test]
fn bad_states_are_refused_and_leave_the_session_empty() {
    let Some(file) = common::open(&catalog::SMOLLM2) else {
        return;
    };
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let prompt = [1u32, 504, 3458, 282, 4649, 314];
    let mut s = model.session(64, 8).unwrap();
    model.forward(&mut s, &prompt).unwrap();
    let mut saved = Vec::new();
    model.save_state(&s, &prompt, &mut saved).unwrap();
    assert!(matches!(
        model.save_state(&s, &prompt[1..], &mut Vec::new()),
        Err(Error::State(_))
    ));

    let mut r = model.session(64, 8).unwrap();
    model.forward(&mut r, &[1, 2, 3]).unwrap();
    let mut refuse = |bytes: &[u8], want: &str| {
        let e = model.load_state(&mut r, &mut &bytes[..]).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        assert_eq!(r.position(), 0);
    };
    // Every cut of the header and token ids, and cuts into the data.
    for cut in (0..61).chain([100, 5000, saved.len() - 1]) {
        refuse(&saved[..cut], "i/o");
    }
    let mut bad = saved.clone();
    bad[0] = b'X';
    refuse(&bad, "bad magic");
    let mut bad = saved.clone();
    bad[8] = 9;
    refuse(&bad, "version 9");
    let mut bad = saved.clone();
    bad[12] ^= 1;
    refuse(&bad, "another model");
    let mut bad = saved.clone();
    bad[32] = 7;
    refuse(&bad, "element type 7");
    let mut bad = saved.clone();
    bad[37..41].copy_from_slice(&1_000_000u32.to_le_bytes());
    refuse(&bad, "outside the vocabulary");
    let mut bad = saved.clone();
    bad[33..37].copy_from_slice(&u32::MAX.to_le_bytes());
    refuse(&bad, "room for 64");
    let mut small = model.session(4, 8).unwrap();
    let e = model
        .load_state(&mut small, &mut saved.as_slice())
        .unwrap_err();
    assert!(e.to_string().contains("room for 4"), "{e}");
    let mut half = model.session_with_kv(64, 8, KvDtype::F16).unwrap();
    let e = model
        .load_state(&mut half, &mut saved.as_slice())
        .unwrap_err();
    assert!(e.to_string().contains("F16"), "{e}");

    // Another model's state.
    if let Some(gemma) = common::open(&catalog::GEMMA3) {
        let g = Model::load(&gemma, &cpu).unwrap();
        assert_ne!(g.fingerprint(), model.fingerprint());
        let mut gs = g.session(64, 8).unwrap();
        let e = g.load_state(&mut gs, &mut saved.as_slice()).unwrap_err();
        assert!(e.to_string().contains("another model"), "{e}");
    }
    // After all that, the good state still loads.
    assert_eq!(
        model.load_state(&mut r, &mut saved.as_slice()).unwrap(),
        prompt
    );
}

mod fuzzed {
    use super::*;
    use proptest::prelude::*;
    use realm_core::gguf::Gguf;
    use realm_models::synthetic::SyntheticLayout;
    use std::sync::OnceLock;

    /// A tiny model's file and a saved state of 5 tokens.
    fn fixture() -> &'static (Gguf<Vec<u8>>, Vec<u8>) {
        static F: OnceLock<(Gguf<Vec<u8>>, Vec<u8>)> = OnceLock::new();
        F.get_or_init(|| {
            let file = Gguf::from_bytes(SyntheticLayout::tiny("llama").unwrap().write(2).unwrap())
                .unwrap();
            let cpu = CpuBackend::new().unwrap();
            let model = Model::load(&file, &cpu).unwrap();
            let mut s = model.session(16, 4).unwrap();
            model.forward(&mut s, &[1, 2, 3, 4, 5]).unwrap();
            let mut saved = Vec::new();
            model.save_state(&s, &[1, 2, 3, 4, 5], &mut saved).unwrap();
            (file, saved)
        })
    }

    proptest! {
        /// Any state, cut short or with bytes changed, restores or is
        /// refused: never a panic, and a refusal leaves the session empty.
        #[test]
        fn damaged_states_restore_or_are_refused(
            cut in proptest::option::of(0usize..2000),
            edits in proptest::collection::vec((0usize..2000, any::<u8>()), 0..4),
        ) {
            let (file, saved) = fixture();
            let cpu = CpuBackend::new().unwrap();
            let model = Model::load(file, &cpu).unwrap();
            let mut bytes = saved.clone();
            for (at, b) in edits {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c);
            }
            let mut s = model.session(16, 4).unwrap();
            match model.load_state(&mut s, &mut bytes.as_slice()) {
                Ok(tokens) => {
                    prop_assert_eq!(tokens.len(), s.position());
                    // It runs on from there.
                    prop_assert!(model.forward(&mut s, &[6]).is_ok() || tokens.len() == 16);
                }
                Err(_) => prop_assert_eq!(s.position(), 0),
            }
        }
    }
}
