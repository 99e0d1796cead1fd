//! Collecting importance matrices on synthetic models: the inputs of each
//! matrix product, summed as squares per column, whatever the chunking, and
//! each output row once.

use realm_compute_cpu::CpuBackend;
use realm_core::gguf::Gguf;
use realm_core::imatrix::Imatrix;
use realm_core::GgmlType;
use realm_models::synthetic::{SyntheticLayout, SyntheticTensor};
use realm_models::Model;

const PROMPT: [u32; 10] = [5, 77, 200, 13, 150, 42, 9, 260, 1, 33];

/// A tiny f32 model of `arch` with an output matrix of its own.
fn untied(arch: &str) -> Vec<u8> {
    let mut layout = SyntheticLayout::tiny(arch)
        .unwrap()
        .with_matrix_type(GgmlType::F32);
    let shape = layout.tensors[0].shape.clone();
    layout.tensors.push(SyntheticTensor {
        name: "output.weight".into(),
        shape,
        dtype: GgmlType::F32,
    });
    layout.write(5).unwrap()
}

#[test]
fn every_product_is_seen_once_whatever_the_chunks() {
    for arch in ["llama", "gemma3"] {
        let bytes = untied(arch);
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let backend = CpuBackend::new().unwrap();
        let model = Model::load(&file, &backend).unwrap();
        let c = model.config().clone();
        // Whole, and in chunks of 3 rows with logits of every position.
        let mut whole = model.session(16, 16).unwrap();
        whole.collect_imatrix(Imatrix::new(10), true);
        model.forward(&mut whole, &PROMPT).unwrap();
        let whole = whole.take_imatrix().unwrap();
        let mut parts = model.session(16, 3).unwrap();
        parts.collect_imatrix(Imatrix::new(10), true);
        model
            .forward_outputs(&mut parts, &PROMPT, 0, |_, _| {})
            .unwrap();
        // Logits asked for again are not another row.
        model.compute_logits(&mut parts).unwrap();
        let parts = parts.take_imatrix().unwrap();
        assert_eq!(whole.len(), 7 * c.n_layers + 1);
        for name in whole.names().filter(|n| *n != "output.weight") {
            let (a, b) = (whole.entry(name).unwrap(), parts.entry(name).unwrap());
            assert_eq!(a, b, "{arch} {name}");
            assert_eq!(a.counts, [PROMPT.len() as u64]);
            assert!(a.sums.iter().all(|&s| s > 0.0), "{arch} {name}");
        }
        let width = |n: &str| whole.entry(n).unwrap().sums.len();
        assert_eq!(width("blk.1.attn_q.weight"), c.d_model);
        assert_eq!(width("blk.1.attn_output.weight"), c.q_dim());
        assert_eq!(width("blk.1.ffn_down.weight"), c.ffn_dim);
        // Q, K and V share their input.
        let q = whole.entry("blk.0.attn_q.weight").unwrap();
        assert_eq!(q, whole.entry("blk.0.attn_v.weight").unwrap());
        // `forward` computes the last row's logits only; every row's with
        // `forward_outputs`, which are the final norm's output: the hidden
        // states `forward_embeddings` gives.
        assert_eq!(whole.entry("output.weight").unwrap().counts, [1]);
        let out = parts.entry("output.weight").unwrap();
        assert_eq!(out.counts, [PROMPT.len() as u64]);
        let mut s = model.session(16, 16).unwrap();
        let mut sums = vec![0f32; c.d_model];
        model
            .forward_embeddings(&mut s, &PROMPT, 0, |_, h| {
                sums.iter_mut().zip(h).for_each(|(a, x)| *a += x * x)
            })
            .unwrap();
        assert_eq!(out.sums, sums, "{arch}");
    }
}

#[test]
fn only_what_is_asked_for_is_collected() {
    let bytes = untied("llama");
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let backend = CpuBackend::new().unwrap();
    let model = Model::load(&file, &backend).unwrap();
    let mut s = model.session(32, 16).unwrap();
    assert!(s.take_imatrix().is_none());
    s.collect_imatrix(Imatrix::new(8), false);
    model.forward(&mut s, &PROMPT).unwrap();
    // A batched decode step does not collect.
    let mut batch = model.batch_scratch(1).unwrap();
    model.forward_batch(&mut [(&mut s, 7)], &mut batch).unwrap();
    let m = s.take_imatrix().unwrap();
    assert!(m.entry("output.weight").is_none());
    assert_eq!(
        m.entry("blk.0.ffn_up.weight").unwrap().counts,
        [PROMPT.len() as u64]
    );
    // Collecting stopped: a decode step adds nothing to a new matrix.
    model.forward(&mut s, &[3]).unwrap();
    assert!(s.take_imatrix().is_none());
}

/// A fused matrix (Phi 3's `attn_qkv`, and its `ffn_up` of gate and up)
/// has one entry under its own name, as llama-imatrix names it; a mixture
/// of experts has its router's and its experts' (by expert, each routed
/// row once).
#[test]
fn fused_matrices_and_experts_have_the_files_names() {
    let backend = CpuBackend::new().unwrap();
    let names = |layout: SyntheticLayout| {
        let bytes = layout.write(3).unwrap();
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let model = Model::load(&file, &backend).unwrap();
        let mut s = model.session(16, 16).unwrap();
        s.collect_imatrix(Imatrix::new(10), false);
        model.forward(&mut s, &PROMPT).unwrap();
        let m = s.take_imatrix().unwrap();
        let tensors: Vec<String> = file.tensor_infos().iter().map(|t| t.name.clone()).collect();
        for n in m.names() {
            assert!(
                tensors.iter().any(|t| t == n),
                "{n} is not a tensor of the file"
            );
        }
        m
    };
    let phi = names(SyntheticLayout::tiny("phi3").unwrap());
    assert_eq!(phi.len(), 4 * 2, "qkv, output, up and down of two layers");
    assert_eq!(phi.entry("blk.1.attn_qkv.weight").unwrap().counts, [10]);
    assert_eq!(phi.entry("blk.1.ffn_up.weight").unwrap().sums.len(), 64);
    let moe = names(SyntheticLayout::tiny("qwen3moe").unwrap());
    let up = moe.entry("blk.0.ffn_up_exps.weight").unwrap();
    assert_eq!((up.counts.len(), up.sums.len()), (4, 4 * 64));
    assert_eq!(up.counts.iter().sum::<u64>(), 2 * PROMPT.len() as u64);
    assert_eq!(moe.entry("blk.0.ffn_gate_inp.weight").unwrap().counts, [10]);
}
