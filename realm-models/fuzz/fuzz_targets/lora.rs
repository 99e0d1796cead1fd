//! Fuzzes reading a LoRA adapter (`Model::add_lora`), the parser of a file
//! a user hands in. A first byte of 0: the rest is the adapter's file.
//! Otherwise the rest is edits, (offset: u16, byte) triples, made to a
//! valid adapter of a tiny synthetic model. Either way the adapter must
//! load and run, or be refused: never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use realm_compute_cpu::CpuBackend;
use realm_core::gguf::Gguf;
use realm_models::synthetic::SyntheticLora;
use realm_models::Model;

mod edits;

struct Fixture {
    file: Gguf<Vec<u8>>,
    cpu: CpuBackend,
    adapter: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (file, cpu) = edits::tiny();
        let mut lora = SyntheticLora::new(2, 4.0);
        lora.targets = vec!["attn_q".into(), "ffn_down".into()];
        let adapter = lora.write(&file, 3).unwrap();
        Fixture { file, cpu, adapter }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some(bytes) = edits::edited(&f.adapter, data) else {
        return;
    };
    let Ok(adapter) = Gguf::from_bytes(bytes) else {
        return;
    };
    let mut model = Model::load(&f.file, &f.cpu).unwrap();
    if let Ok(id) = model.add_lora(&adapter, "fuzzed") {
        let mut s = model.session(8, 4).unwrap();
        s.set_loras(&[(id, 1.0)]);
        model.forward(&mut s, &[1, 2, 3]).unwrap();
        model.forward(&mut s, &[4]).unwrap();
    }
});
