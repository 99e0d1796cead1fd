//! The capability query and the errors of `realm_core::quant`.

use realm_core::{quant, Error, GgmlType};

#[test]
fn capabilities_list_exactly_the_supported_types() {
    use GgmlType::*;
    let deq = [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
        IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, IQ1_M, TQ1_0, TQ2_0, MXFP4,
    ];
    let q = [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
        IQ3_XXS, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, IQ1_M, TQ1_0, TQ2_0, MXFP4,
    ];
    let weighted_only = [IQ2_XXS, IQ2_XS, IQ1_S];
    for t in GgmlType::ALL {
        assert_eq!(
            quant::can_dequantize(t),
            deq.contains(&t),
            "can_dequantize({t})"
        );
        assert_eq!(quant::can_quantize(t), q.contains(&t), "can_quantize({t})");
        assert_eq!(
            quant::DEQUANTIZE_TYPES.contains(&t),
            deq.contains(&t),
            "{t}"
        );
        assert_eq!(quant::QUANTIZE_TYPES.contains(&t), q.contains(&t), "{t}");
        assert_eq!(
            quant::can_quantize_weighted(t),
            q.contains(&t) || weighted_only.contains(&t),
            "can_quantize_weighted({t})"
        );
        assert_eq!(
            quant::IMPORTANCE_TYPES.contains(&t),
            weighted_only.contains(&t),
            "{t}"
        );
    }
    // Everything that can be written can be read back.
    assert!(quant::QUANTIZE_TYPES
        .iter()
        .all(|&t| quant::can_dequantize(t)));
}

#[test]
fn unsupported_types_are_refused_up_front() {
    for t in GgmlType::ALL {
        let n = t.block_size();
        let src = vec![0u8; t.type_size()];
        let mut out = vec![0.0f32; n];
        let r = quant::dequantize(t, &src, &mut out);
        if quant::can_dequantize(t) {
            assert!(r.is_ok(), "{t}: {r:?}");
        } else {
            assert!(
                matches!(r, Err(Error::UnsupportedType { op: "dequantize", dtype }) if dtype == t),
                "{t}: {r:?}"
            );
            assert!(matches!(
                quant::dequantize_row_to_vec(t, &src),
                Err(Error::UnsupportedType { .. })
            ));
        }
        let x = vec![0.5f32; n];
        let mut bytes = vec![0u8; t.type_size()];
        let r = quant::quantize(t, &x, &mut bytes);
        if quant::can_quantize(t) {
            assert!(r.is_ok(), "{t}: {r:?}");
        } else if quant::IMPORTANCE_TYPES.contains(&t) {
            assert!(
                matches!(r, Err(Error::ImportanceRequired(dtype)) if dtype == t),
                "{t}: {r:?}"
            );
        } else {
            assert!(
                matches!(r, Err(Error::UnsupportedType { op: "quantize", dtype }) if dtype == t),
                "{t}: {r:?}"
            );
            assert!(matches!(
                quant::quantize_row_to_vec(t, &x),
                Err(Error::UnsupportedType { .. })
            ));
        }
    }
}

#[test]
fn lengths_are_checked_before_anything_is_written() {
    let t = GgmlType::Q4_K;
    let src = vec![0u8; 144 * 2];
    // Output not a whole number of blocks.
    let mut out = vec![7.0f32; 300];
    let e = quant::dequantize(t, &src, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                expected: 512,
                got: 300,
                ..
            }
        ),
        "{e}"
    );
    assert!(out.iter().all(|&v| v == 7.0), "output touched on error");
    // Bytes that do not match the output length.
    let mut out = vec![7.0f32; 256];
    let e = quant::dequantize(t, &src, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                expected: 144,
                got: 288,
                ..
            }
        ),
        "{e}"
    );
    assert!(out.iter().all(|&v| v == 7.0), "output touched on error");
    // Bytes that are not whole blocks.
    let e = quant::dequantize_row_to_vec(t, &src[..200]).unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { got: 200, .. }), "{e}");
    assert!(e.to_string().contains("q4_K"), "{e}");
    // Quantize: input not whole blocks, output of the wrong size.
    let x = vec![1.0f32; 256];
    assert!(matches!(
        quant::quantize_row_to_vec(t, &x[..100]),
        Err(Error::SizeMismatch { got: 100, .. })
    ));
    let mut bytes = vec![0u8; 145];
    assert!(matches!(
        quant::quantize(t, &x, &mut bytes),
        Err(Error::SizeMismatch {
            expected: 144,
            got: 145,
            ..
        })
    ));
    // Empty input is zero blocks: fine.
    assert_eq!(
        quant::dequantize_row_to_vec(t, &[]).unwrap(),
        Vec::<f32>::new()
    );
    assert_eq!(
        quant::quantize_row_to_vec(t, &[]).unwrap(),
        Vec::<u8>::new()
    );
}

#[test]
fn activation_formats_store_consistent_sums() {
    let x: Vec<f32> = (0..256)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
        .collect();
    // Q8_K: bsums are the sums of each 16 quants; the largest quant is +-127.
    let b = quant::quantize_block_q8_k(&x.clone().try_into().unwrap());
    for (j, &s) in b.bsums.iter().enumerate() {
        let sum: i32 = b.qs[16 * j..16 * j + 16]
            .iter()
            .map(|&q| i32::from(q))
            .sum();
        assert_eq!(i32::from(s), sum, "bsums[{j}]");
    }
    assert_eq!(b.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
    // Q8_1: s = d * sum(q), rounded to f16.
    let first: [f32; 32] = x[..32].try_into().unwrap();
    let b = quant::quantize_block_q8_1(&first);
    let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
    let d = (0..32).map(|i| first[i].abs()).fold(0.0f32, f32::max) / 127.0;
    assert_eq!(b.s, half::f16::from_f32(sum as f32 * d));
    assert_eq!(b.d, half::f16::from_f32(d));
}

#[test]
fn all_zero_rows_quantize_to_zero() {
    let x = vec![0.0f32; 512];
    for &t in quant::QUANTIZE_TYPES {
        let q = quant::quantize_row_to_vec(t, &x).unwrap();
        let y = quant::dequantize_row_to_vec(t, &q).unwrap();
        assert!(
            y.iter().all(|&v| v == 0.0),
            "{t}: zeros came back as {:?}",
            &y[..4]
        );
    }
}
