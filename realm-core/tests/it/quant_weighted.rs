//! Importance-weighted quantization (`quant::quantize_weighted`):
//!
//! - byte for byte against ggml's `quantize_<type>(src, dst, nrow,
//!   n_per_row, imatrix)` on the signals of quantize.json cut into rows, with
//!   seeded importance vectors (scripts/gen_quant_fixtures.py --ggml-src,
//!   which stores the sha256 of ggml's bytes in quantize_weighted.json);
//! - the types that ignore importance give what `quantize` gives;
//! - on those fixtures the weighted quantizers lose less, counted with the
//!   importance, than the reference ones;
//! - bad lengths and types are refused, and arbitrary rows and importances
//!   (finite, and NaN and infinities too) never make it panic.
//!
//! The proptest case count follows `PROPTEST_CASES` (`cargo xtask proptest`).

use crate::common;

use common::{f32s, manifest, read, sha256_hex, type_by_name};

use proptest::prelude::*;
use realm_core::{quant, Error, GgmlType};

/// The types whose quantizers search their scales against the importance
/// ([`quant::IMPORTANCE_TYPES`] among them).
const WEIGHTED: [GgmlType; 18] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
];

/// One fixture case: an input of quantize.json cut into rows, and the
/// importance vector of its rows.
struct Case {
    input: String,
    importance_name: String,
    x: Vec<f32>,
    importance: Vec<f32>,
}

/// The cases of quantize_weighted.json, their inputs and importances read
/// and checked against their recorded lengths and sha256.
fn cases() -> Vec<Case> {
    let inputs = manifest("quantize.json")["inputs"]
        .as_array()
        .expect("inputs")
        .clone();
    let m = manifest("quantize_weighted.json");
    let vectors = m["importance"].as_array().expect("importance");
    m["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let input = c["input"].as_str().unwrap().to_owned();
            let importance_name = c["importance"].as_str().unwrap().to_owned();
            let file = inputs
                .iter()
                .find(|i| i["name"] == c["input"])
                .expect("input in quantize.json")["file"]
                .as_str()
                .unwrap();
            let x = f32s(&read(file));
            let v = vectors
                .iter()
                .find(|v| v["name"] == c["importance"])
                .expect("importance vector");
            let raw = read(v["file"].as_str().unwrap());
            assert_eq!(
                sha256_hex(&raw),
                v["sha256"].as_str().unwrap(),
                "{importance_name}: sha256"
            );
            let importance = f32s(&raw);
            let n = c["n_per_row"].as_u64().unwrap() as usize;
            assert_eq!(importance.len(), n, "{importance_name}: length");
            assert_eq!(
                x.len(),
                n * c["rows"].as_u64().unwrap() as usize,
                "{input}: rows"
            );
            Case {
                input,
                importance_name,
                x,
                importance,
            }
        })
        .collect()
}

fn weighted(t: GgmlType, x: &[f32], importance: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; t.row_bytes(x.len() as u64).unwrap() as usize];
    quant::quantize_weighted(t, x, importance, &mut q).unwrap_or_else(|e| panic!("{t}: {e}"));
    q
}

#[test]
fn quantize_weighted_matches_ggml_byte_for_byte() {
    let cases = cases();
    let m = manifest("quantize_weighted.json");
    let mut checked = 0;
    let mut covered = Vec::new();
    for e in m["expected"].as_array().expect("expected") {
        let t = type_by_name(e["type"].as_str().unwrap());
        let case = cases
            .iter()
            .find(|c| c.input == e["input"] && c.importance_name == e["importance"])
            .expect("case of the expected entry");
        let got = weighted(t, &case.x, &case.importance);
        assert_eq!(
            sha256_hex(&got),
            e["sha256"].as_str().unwrap(),
            "{t} of `{}` with importance `{}`: not ggml's bytes",
            case.input,
            case.importance_name
        );
        // And into a caller's buffer at an odd address.
        let mut buf = vec![0u8; got.len() + 1];
        quant::quantize_weighted(t, &case.x, &case.importance, &mut buf[1..]).unwrap();
        assert_eq!(&buf[1..], &got[..], "{t}: unaligned buffer");
        covered.push(t);
        checked += 1;
    }
    assert!(checked >= 5 * 19, "only {checked} weighted fixtures");
    for t in WEIGHTED.iter().chain([&GgmlType::Q8_0]) {
        assert!(covered.contains(t), "no weighted fixture for {t}");
    }
}

#[test]
fn types_without_a_weighted_path_give_what_quantize_gives() {
    for case in cases() {
        for &t in quant::QUANTIZE_TYPES {
            if WEIGHTED.contains(&t) {
                continue;
            }
            let want = quant::quantize_row_to_vec(t, &case.x).unwrap();
            assert_eq!(
                weighted(t, &case.x, &case.importance),
                want,
                "{t} of `{}`",
                case.input
            );
        }
    }
}

#[test]
fn rows_are_quantized_one_by_one() {
    for case in cases() {
        let n = case.importance.len();
        for &t in quant::QUANTIZE_TYPES {
            let whole = weighted(t, &case.x, &case.importance);
            let by_row: Vec<u8> = case
                .x
                .chunks(n)
                .flat_map(|row| weighted(t, row, &case.importance))
                .collect();
            assert_eq!(whole, by_row, "{t} of `{}`", case.input);
        }
    }
}

/// `sum importance[j] * (x - y)^2` over every element, column `j`.
fn importance_error(x: &[f32], y: &[f32], importance: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .zip(importance.iter().cycle())
        .map(|((&a, &b), &w)| f64::from(w) * (f64::from(a) - f64::from(b)).powi(2))
        .sum()
}

/// On these fixed inputs (not a property of every input: the searches are
/// heuristics) the weighted quantizers' error, counted with the importance,
/// is below the reference quantizers'.
#[test]
fn importance_lowers_the_weighted_error_on_the_fixtures() {
    let mut report = Vec::new();
    for case in cases() {
        for t in WEIGHTED {
            if quant::IMPORTANCE_TYPES.contains(&t) {
                // No reference without importance to compare with.
                continue;
            }
            let y =
                quant::dequantize_row_to_vec(t, &weighted(t, &case.x, &case.importance)).unwrap();
            let reference =
                quant::dequantize_row_to_vec(t, &quant::quantize_row_to_vec(t, &case.x).unwrap())
                    .unwrap();
            let with = importance_error(&case.x, &y, &case.importance);
            let without = importance_error(&case.x, &reference, &case.importance);
            report.push(format!("{t} {}: {:.3}", case.input, with / without));
            assert!(
                with <= without,
                "{t} of `{}`: weighted error {with} above the reference's {without}",
                case.input
            );
        }
    }
    println!("weighted error / reference error: {}", report.join(", "));
}

#[test]
fn bad_lengths_and_types_are_refused() {
    let x: Vec<f32> = (0..1024).map(|i| (i as f32 * 0.1).sin()).collect();
    let imp = vec![1.0f32; 512];
    let t = GgmlType::Q4_K;
    let size = t.type_size();
    let ok = |dst_len: usize, x: &[f32], imp: &[f32], t: GgmlType| {
        let mut dst = vec![0xa5u8; dst_len];
        let r = quant::quantize_weighted(t, x, imp, &mut dst);
        if r.is_err() {
            assert!(dst.iter().all(|&b| b == 0xa5), "{t}: written on error");
        }
        r
    };
    assert!(ok(4 * size, &x, &imp, t).is_ok());
    // No importance.
    assert!(matches!(
        ok(4 * size, &x, &[], t),
        Err(Error::SizeMismatch { got: 0, .. })
    ));
    // Rows not whole blocks.
    assert!(matches!(
        ok(4 * size, &x, &imp[..500], t),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(ok(34 * 32, &x, &imp[..32], GgmlType::Q8_0).is_ok());
    assert!(ok(34 * 32, &x, &imp[..31], GgmlType::Q8_0).is_err());
    // The input is not whole rows.
    assert!(matches!(
        ok(4 * size, &x[..768], &imp, t),
        Err(Error::SizeMismatch { .. })
    ));
    assert!(ok(3 * size, &x[..768], &imp[..256], t).is_ok());
    // The output is not exactly the bytes of the input.
    for len in [0, 4 * size - 1, 4 * size + 1, 8 * size] {
        assert!(matches!(
            ok(len, &x, &imp, t),
            Err(Error::SizeMismatch { .. })
        ));
    }
    // No rows at all is no work.
    assert!(ok(0, &[], &imp, t).is_ok());
    // A type that cannot be quantized.
    assert!(matches!(
        ok(2 * 256, &x[..512], &imp[..256], GgmlType::I8),
        Err(Error::UnsupportedType { .. })
    ));
    // IQ2_XXS only with an importance matrix: here, and not without one.
    assert!(ok(2 * 66, &x[..512], &imp[..256], GgmlType::IQ2_XXS).is_ok());
    let mut dst = vec![0u8; 2 * 66];
    assert!(matches!(
        quant::quantize(GgmlType::IQ2_XXS, &x[..512], &mut dst),
        Err(Error::ImportanceRequired(GgmlType::IQ2_XXS))
    ));
}

/// An arbitrary finite f32, any magnitude.
fn finite_f32() -> impl Strategy<Value = f32> {
    any_f32_bits().prop_filter("finite", |v| v.is_finite())
}

/// Arbitrary f32 bit patterns: NaN, infinities, subnormals and all.
fn any_f32_bits() -> impl Strategy<Value = f32> {
    any::<u32>().prop_map(f32::from_bits)
}

/// A moderate value, a zero, an arbitrary finite one or (rarely) any bits.
fn element() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => -1.0f32..1.0,
        4 => Just(0.0f32),
        3 => finite_f32(),
        1 => any_f32_bits(),
    ]
}

/// An importance: mostly positive over a wide range, some zeros, some
/// arbitrary finite values (negative ones included), rarely any bits.
fn importance_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => (-10.0f32..10.0).prop_map(f32::exp),
        4 => Just(0.0f32),
        3 => finite_f32(),
        1 => any_f32_bits(),
    ]
}

/// One or two rows of one or two super-blocks each, with their importance.
fn rows() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    (1usize..=2, 1usize..=2).prop_flat_map(|(rows, blocks)| {
        let n = blocks * 256;
        (
            prop::collection::vec(element(), rows * n),
            prop::collection::vec(importance_value(), n),
        )
    })
}

proptest! {
    // The default configuration, so PROPTEST_CASES sets the case count; no
    // regression files.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_rows_quantize_without_panicking((x, imp) in rows()) {
        for &t in quant::QUANTIZE_TYPES.iter().chain(quant::IMPORTANCE_TYPES) {
            let mut q = vec![0u8; t.row_bytes(x.len() as u64).unwrap() as usize];
            prop_assert!(quant::quantize_weighted(t, &x, &imp, &mut q).is_ok());
            prop_assert!(quant::dequantize_row_to_vec(t, &q).is_ok());
        }
    }

    #[test]
    fn bad_lengths_are_refused(
        (x, imp) in rows(),
        cut in 1usize..256,
        extra in 1usize..64,
    ) {
        for &t in quant::QUANTIZE_TYPES.iter().chain(quant::IMPORTANCE_TYPES) {
            let bytes = t.row_bytes(x.len() as u64).unwrap() as usize;
            // The input is not whole rows.
            let mut q = vec![0u8; bytes];
            prop_assert!(quant::quantize_weighted(t, &x[..x.len() - cut], &imp, &mut q).is_err());
            // The output is too short or too long.
            let mut short = vec![0u8; bytes.saturating_sub(extra)];
            prop_assert!(quant::quantize_weighted(t, &x, &imp, &mut short).is_err());
            let mut long = vec![0u8; bytes + extra];
            prop_assert!(quant::quantize_weighted(t, &x, &imp, &mut long).is_err());
            // Rows that are not whole blocks (every type's block divides 256).
            if t.block_size() > 1 {
                let n = imp.len() - cut % t.block_size();
                let ok = n % t.block_size() == 0;
                let mut q = vec![0u8; t.row_bytes(n as u64).unwrap_or(0) as usize];
                prop_assert_eq!(quant::quantize_weighted(t, &x[..n], &imp[..n], &mut q).is_ok(), ok);
            }
        }
    }
}
