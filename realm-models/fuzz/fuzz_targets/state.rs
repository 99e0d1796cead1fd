//! Fuzzes restoring a saved session state (`Model::load_state`), the
//! parser of a file a user hands in. A first byte of 0: the rest is the
//! state. Otherwise the rest is edits, (offset: u16, byte) triples, made to
//! a valid state of a tiny synthetic model. Either way the state must
//! restore (holding as many tokens as it says, and running on) or be
//! refused leaving the session empty: never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use realm_compute_cpu::CpuBackend;
use realm_core::gguf::Gguf;
use realm_models::Model;

mod edits;

struct Fixture {
    file: Gguf<Vec<u8>>,
    cpu: CpuBackend,
    saved: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (file, cpu) = edits::tiny();
        let saved = {
            let model = Model::load(&file, &cpu).unwrap();
            let mut s = model.session(16, 4).unwrap();
            model.forward(&mut s, &[1, 2, 3, 4, 5]).unwrap();
            let mut saved = Vec::new();
            model.save_state(&s, &[1, 2, 3, 4, 5], &mut saved).unwrap();
            saved
        };
        Fixture { file, cpu, saved }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some(bytes) = edits::edited(&f.saved, data) else {
        return;
    };
    let model = Model::load(&f.file, &f.cpu).unwrap();
    let mut s = model.session(16, 4).unwrap();
    match model.load_state(&mut s, &mut bytes.as_slice()) {
        Ok(tokens) => {
            assert_eq!(tokens.len(), s.position());
            if tokens.len() < 16 {
                model.forward(&mut s, &[6]).unwrap();
            }
        }
        Err(_) => assert_eq!(s.position(), 0),
    }
});
