//! `Model::forward_batch` (what the scheduler runs) against one sequence at
//! a time, bit for bit, on the real SmolLM2 model.

mod common;

use realm_compute_cpu::CpuBackend;
use realm_core::gguf::GgufFile;
use realm_models::{Model, Session};

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn batched_decode_steps_are_bit_identical_to_single_ones() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let file = GgufFile::open(path).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    // Sequences of different lengths, so every row is at its own position.
    let prompts: [&[u32]; 3] = [&[1, 504, 3458], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], &[42]];
    let fresh = || -> Vec<Session<CpuBackend>> {
        prompts
            .iter()
            .map(|p| {
                let mut s = model.session(64, 8).unwrap();
                model.forward(&mut s, p).unwrap();
                s
            })
            .collect()
    };
    let (mut alone, mut batched) = (fresh(), fresh());
    let mut scratch = model.batch_scratch(4).unwrap();
    for step in 0..6u32 {
        let next: Vec<u32> = (0..3).map(|i| 100 + 37 * step + i).collect();
        let want: Vec<Vec<u32>> = alone
            .iter_mut()
            .zip(&next)
            .map(|(s, &t)| bits(model.forward(s, &[t]).unwrap()))
            .collect();
        let mut rows: Vec<(&mut Session<CpuBackend>, u32)> =
            batched.iter_mut().zip(next.iter().copied()).collect();
        model.forward_batch(&mut rows, &mut scratch).unwrap();
        for (i, s) in batched.iter().enumerate() {
            assert_eq!(bits(s.logits()), want[i], "step {step}, row {i}");
            assert_eq!(s.position(), alone[i].position());
        }
    }
    // Layer by layer gives the fused result too.
    let mut a = model.session(16, 4).unwrap();
    let mut b = model.session(16, 4).unwrap();
    let want = bits(model.forward(&mut a, &[1, 2, 3]).unwrap());
    model.embed_tokens(&mut b, &[1, 2, 3]).unwrap();
    assert!(
        model.compute_logits(&mut b).is_err(),
        "logits before the layers ran"
    );
    assert!(model.forward_layer(&mut b, 1).is_err(), "layers in order");
    for layer in 0..model.config().n_layers {
        model.forward_layer(&mut b, layer).unwrap();
    }
    assert_eq!(bits(model.compute_logits(&mut b).unwrap()), want);
    assert_eq!(b.position(), 3);
    // A full session in a batch is an error that advances nobody.
    let mut full = model.session(1, 1).unwrap();
    model.forward(&mut full, &[5]).unwrap();
    let mut other = model.session(4, 1).unwrap();
    let mut rows = [(&mut other, 7u32), (&mut full, 8)];
    assert!(model.forward_batch(&mut rows, &mut scratch).is_err());
    assert_eq!(other.position(), 0);
}
