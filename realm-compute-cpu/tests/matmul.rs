//! Matmul and embedding against the independent f64 reference, SIMD against
//! scalar, batch and thread invariance, and error handling.
//!
//! Case counts follow `PROPTEST_CASES`.

mod common;

use common::{backend, bytes_of, dequantize, dot_error_bound, random_weights, Rng, ISAS, TYPES};
use proptest::prelude::*;
use realm_compute_cpu::{CpuBackend, Isa};
use realm_core::backend::{BackendCore, BackendError, MatMulOps, WeightInfo};
use realm_core::{GgmlType, TensorView};

/// `out[t][i]` for every backend given, on the same weights and activations.
fn run_matmul(
    bes: &[&CpuBackend],
    t: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> Vec<Vec<f32>> {
    let shape = [cols as u64, rows as u64];
    let view = TensorView::new("w", t, &shape, data).expect("valid view");
    bes.iter()
        .map(|be| {
            let w = be.weight(&view).expect("weight");
            assert_eq!((w.rows(), w.cols(), w.dtype()), (rows, cols, t));
            let mut ws = be.workspace();
            let mut out = vec![f32::NAN; rows * n];
            be.matmul(&mut ws, &w, &x.to_vec(), n, &mut out)
                .expect("matmul");
            out
        })
        .collect()
}

fn check_against_f64(t: GgmlType, m: usize, kb: usize, n: usize, seed: u64) {
    let k = kb * t.block_size().max(32);
    let mut rng = Rng::new(seed);
    let words = random_weights(t, m, k, &mut rng);
    let data = bytes_of(&words, t, m, k);
    let x = rng.f32s(n * k, -2.0, 2.0);
    let wd = dequantize(t, data);
    let scalar = backend(Isa::Scalar, 1).unwrap();
    let mut bes = vec![&scalar];
    let simd = [Isa::Avx2, Isa::Neon]
        .into_iter()
        .find_map(|isa| backend(isa, 2));
    bes.extend(simd.as_ref());
    // NEON vectorises only the exact integer sums, so it must equal the
    // scalar path bit for bit.
    let identical = simd.as_ref().is_some_and(|b| b.isa() == Isa::Neon);
    let outs = run_matmul(&bes, t, data, m, k, &x, n);
    for tok in 0..n {
        let xt = &x[tok * k..(tok + 1) * k];
        for r in 0..m {
            let wr = &wd[r * k..(r + 1) * k];
            let exact: f64 = wr.iter().zip(xt).map(|(a, &b)| a * f64::from(b)).sum();
            let bound = dot_error_bound(t, wr, xt);
            let s = f64::from(outs[0][tok * m + r]);
            assert!(
                (s - exact).abs() <= bound,
                "{t} scalar: row {r} tok {tok}: {s} vs {exact} (bound {bound})"
            );
            if let Some(v) = outs.get(1) {
                let v = f64::from(v[tok * m + r]);
                assert!(
                    (v - exact).abs() <= bound,
                    "{t} simd: row {r} tok {tok}: {v} vs {exact} (bound {bound})"
                );
                let abs_sum: f64 = wr
                    .iter()
                    .zip(xt)
                    .map(|(a, &b)| (a * f64::from(b)).abs())
                    .sum();
                let agree = 1e-5 * abs_sum + 1e-5;
                assert!(
                    (v - s).abs() <= agree,
                    "{t}: simd {v} vs scalar {s} (tolerance {agree})"
                );
                assert!(
                    !identical || v.to_bits() == s.to_bits(),
                    "{t}: neon {v} differs from scalar {s}"
                );
            }
        }
    }
}

proptest! {
    /// Every type, random shapes: scalar and SIMD within the activation
    /// quantization bound of the exact f64 product, and close to each other.
    #[test]
    fn matmul_matches_f64_reference(ti in 0..TYPES.len(), m in 1usize..14, kb in 1usize..5, n in 1usize..10, seed in any::<u64>()) {
        check_against_f64(TYPES[ti], m, kb, n, seed);
    }

    /// Embedding rows are the exact dequantized weights.
    #[test]
    fn embed_matches_dequantization(ti in 0..TYPES.len(), m in 1usize..9, kb in 1usize..3, seed in any::<u64>()) {
        let t = TYPES[ti];
        let k = kb * t.block_size().max(32);
        let mut rng = Rng::new(seed);
        let words = random_weights(t, m, k, &mut rng);
        let data = bytes_of(&words, t, m, k);
        let wd = dequantize(t, data);
        let shape = [k as u64, m as u64];
        let view = TensorView::new("e", t, &shape, data).unwrap();
        let be = backend(Isa::Scalar, 1).unwrap();
        let w = be.weight(&view).unwrap();
        let ids: Vec<u32> = (0..5).map(|_| (rng.next_u64() % m as u64) as u32).collect();
        let mut out = vec![0.0; ids.len() * k];
        be.embed(&mut be.workspace(), &w, &ids, &mut out).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            for j in 0..k {
                let exact = wd[id as usize * k + j];
                let got = f64::from(out[i * k + j]);
                prop_assert!((got - exact).abs() <= 1e-6 * exact.abs().max(1e-3), "{t} [{id},{j}]: {got} vs {exact}");
            }
        }
    }

    /// Buffers too short for the call are errors, never panics; longer
    /// ones are used from the start.
    #[test]
    fn bad_lengths_are_errors(xl in 0usize..300, ol in 0usize..40, n in 0usize..5) {
        let be = backend(Isa::detect(), 1).unwrap();
        let mut rng = Rng::new(7);
        let words = random_weights(GgmlType::Q4_0, 4, 64, &mut rng);
        let shape = [64u64, 4];
        let view = TensorView::new("w", GgmlType::Q4_0, &shape, bytes_of(&words, GgmlType::Q4_0, 4, 64)).unwrap();
        let w = be.weight(&view).unwrap();
        let x = vec![0.5; xl];
        let mut out = vec![0.0; ol];
        let r = be.matmul(&mut be.workspace(), &w, &x, n, &mut out);
        prop_assert_eq!(r.is_ok(), xl >= 64 * n && ol >= 4 * n);
    }
}

/// llama.cpp's `test-quantize-fns` check: `|dot - reference| / n` below
/// `MAX_DOT_PRODUCT_ERROR` (0.02; 0.04 for 2- and 3-bit types) on its
/// synthetic data `0.1 + 2 cos(i + offset)`, n = 32 * 128.
#[test]
fn dot_product_error_within_llama_cpp_thresholds() {
    const N: usize = 32 * 128;
    let x: Vec<f32> = (0..N).map(|i| 0.1 + 2.0 * (i as f32 + 1.0).cos()).collect();
    for t in TYPES {
        let limit = match t {
            GgmlType::Q2_K | GgmlType::Q3_K => 0.04,
            _ => 0.02,
        };
        let mut rng = Rng::new(t.id() as u64);
        let words = random_weights(t, 1, N, &mut rng);
        let data = bytes_of(&words, t, 1, N);
        let exact: f64 = dequantize(t, data)
            .iter()
            .zip(&x)
            .map(|(a, &b)| a * f64::from(b))
            .sum();
        for isa in ISAS {
            let Some(be) = backend(isa, 1) else { continue };
            let got = run_matmul(&[&be], t, data, 1, N, &x, 1)[0][0];
            let err = (f64::from(got) - exact).abs() / N as f64;
            assert!(err < limit, "{t} {isa:?}: error {err} over {limit}");
        }
    }
}

/// A token's output is bit-identical alone, inside a batch, and with 1 or 2
/// threads, for every type: a batch of 7 on a shape big enough to use the
/// thread pool, one of 67 (past the 64-token groups of the packed kernels,
/// an odd count) on a row count off the 4-row tiles, and batches of 3 and 2
/// (the one-token kernels, token by token over stretches of rows).
#[test]
fn batch_and_thread_invariance() {
    for t in TYPES {
        for (m, k, n) in [(192, 1024, 7), (13, 512, 67), (400, 1024, 3), (13, 512, 2)] {
            check_batch_invariance(t, m, k, n);
        }
    }
}

/// The float types' tiles on rows whose length is no multiple of their
/// 8-value chunks, 32-value groups or 512-value passes, and batches that
/// cross a block of tokens (about 192 KiB of activations): each token as
/// alone.
#[test]
fn float_tiles_match_lone_tokens_on_odd_lengths() {
    for t in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for (m, k, n) in [(13, 333, 300), (9, 1000, 7), (40, 1029, 5), (6, 7, 9)] {
            check_batch_invariance(t, m, k, n);
        }
    }
}

fn check_batch_invariance(t: GgmlType, m: usize, k: usize, n: usize) {
    let mut rng = Rng::new(100 + t.id() as u64);
    let words = random_weights(t, m, k, &mut rng);
    let data = bytes_of(&words, t, m, k);
    let x = rng.f32s(n * k, -3.0, 3.0);
    for isa in ISAS {
        let (Some(one), Some(two)) = (backend(isa, 1), backend(isa, 2)) else {
            continue;
        };
        let batch = run_matmul(&[&one, &two], t, data, m, k, &x, n);
        assert_eq!(batch[0], batch[1], "{t} {isa:?}: 1 vs 2 threads");
        for tok in 0..n {
            let alone = run_matmul(&[&two], t, data, m, k, &x[tok * k..(tok + 1) * k], 1);
            let inside = &batch[1][tok * m..(tok + 1) * m];
            let same = alone[0]
                .iter()
                .zip(inside)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{t} {isa:?} {m}x{k}: token {tok} alone differs from batched"
            );
        }
    }
}

#[test]
fn weight_rejects_unsupported_types_bad_shapes_and_misalignment() {
    let be = backend(Isa::detect(), 1).unwrap();
    // (Q8_1 is an activation type, which no weight has.)
    assert!(!be.supports_matmul(GgmlType::Q8_1));
    assert!(TYPES.iter().all(|&t| be.supports_matmul(t)));
    let data = vec![0u8; 36];
    let shape = [32u64, 1];
    let view = TensorView::new("w", GgmlType::Q8_1, &shape, &data).unwrap();
    assert!(matches!(
        be.weight(&view),
        Err(BackendError::UnsupportedType { .. })
    ));
    let words = [0u64; 8];
    let bytes: &[u8] = bytemuck::cast_slice(&words);
    let shape3 = [4u64, 2, 2];
    let view = TensorView::new("w", GgmlType::F32, &shape3, &bytes[..64]).unwrap();
    assert!(matches!(be.weight(&view), Err(BackendError::Shape { .. })));
    let shape2 = [4u64, 2];
    let view = TensorView::new("w", GgmlType::F32, &shape2, &bytes[1..33]).unwrap();
    assert!(matches!(
        be.weight(&view),
        Err(BackendError::Misaligned { .. })
    ));
    let empty = [0u64, 3];
    let view = TensorView::new("w", GgmlType::F32, &empty, &[]).unwrap();
    assert!(matches!(
        be.weight(&view),
        Err(BackendError::InvalidParameter { .. })
    ));
    let view = TensorView::new("w", GgmlType::F32, &shape2, &bytes[..32]).unwrap();
    let w = be.weight(&view).unwrap();
    let mut out = vec![0.0; 8];
    let err = be.embed(&mut be.workspace(), &w, &[0, 2], &mut out);
    assert!(matches!(
        err,
        Err(BackendError::OutOfRange { index: 2, .. })
    ));
}

/// Rows longer than the proptest shapes (many blocks, odd block counts,
/// row counts off the tile size) for every type.
#[test]
fn long_rows_match_f64_reference() {
    for (i, &t) in TYPES.iter().enumerate() {
        for (m, kb, n) in [(9, 20, 5), (6, 3, 1), (5, 13, 2)] {
            check_against_f64(t, m, kb, n, 7 + i as u64);
        }
    }
}

/// Every aarch64 CPU has NEON, so the kernels above ran it.
#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_picks_neon() {
    assert_eq!(Isa::detect(), Isa::Neon);
    let be = backend(Isa::Neon, 1).expect("NEON backend");
    assert_eq!(be.name(), "cpu-neon");
}
