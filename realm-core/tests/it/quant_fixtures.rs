//! Golden tests of `realm_core::quant` against fixtures the `gguf` Python
//! package computed (scripts/gen_quant_fixtures.py):
//!
//! - dequantization of random blocks of every supported type, bit for bit;
//! - quantization of a few signals, byte for byte, for the types the package
//!   can quantize, and for the others against ggml's own reference
//!   quantizers (`quantize_row_*_ref`, compiled from ggml-quants.c by the
//!   script when given a llama.cpp checkout), or for IQ4_NL and IQ4_XS
//!   against `quantize_iq4_nl` / `quantize_iq4_xs` without an importance
//!   matrix (quantize_iq4.json), and for IQ2_S, IQ3_XXS and IQ3_S against
//!   `quantize_iq*` without one (quantize_lattice.json), as llama-quantize
//!   calls them;
//! - MXFP4 both ways against ggml's own `dequantize_row_mxfp4` and
//!   `quantize_mxfp4` (mxfp4.json).

use crate::common;

use common::{f32s, manifest, read, sha256_hex, type_by_name};

use realm_core::{quant, GgmlType};
use serde_json::Value;

fn dtype_of(entry: &Value) -> GgmlType {
    let id = entry["type_id"].as_u64().expect("type_id") as u32;
    let t = GgmlType::from_id(id).expect("known type id");
    assert_eq!(
        t.name(),
        entry["type"].as_str().expect("type"),
        "type name and id disagree"
    );
    t
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Asserts `got` has the same f32 bits as `want`, naming the first difference.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} ({:#010x}), reference {} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn dequantize_matches_reference_for_every_supported_type() {
    let m = manifest("synthetic.json");
    let entries = m["entries"].as_array().expect("entries");
    let mut covered = Vec::new();
    for e in entries {
        let t = dtype_of(e);
        let n = e["n_elements"].as_u64().expect("n_elements") as usize;
        let q = read(e["quant_file"].as_str().expect("quant_file"));
        let want_bytes = read(e["f32_file"].as_str().expect("f32_file"));
        assert_eq!(
            sha256_hex(&want_bytes),
            e["f32_sha256"].as_str().expect("f32_sha256"),
            "{t}: fixture file does not match its recorded sha256"
        );
        let want = f32s(&want_bytes);
        assert_eq!(want.len(), n);

        let mut got = vec![f32::NAN; n];
        quant::dequantize(t, &q, &mut got).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_same_bits(&format!("{t} dequantize"), &got, &want);
        assert_eq!(
            sha256_hex(&f32_le_bytes(&got)),
            e["f32_sha256"].as_str().unwrap()
        );

        // The same bytes at an odd address take the unaligned path.
        let mut shifted = vec![0u8; q.len() + 1];
        shifted[1..].copy_from_slice(&q);
        let got = quant::dequantize_row_to_vec(t, &shifted[1..]).unwrap();
        assert_same_bits(&format!("{t} dequantize (unaligned)"), &got, &want);
        covered.push(t);
    }
    // (MXFP4's, the ternary types' and IQ1-IQ3's random blocks are in
    // mxfp4.json, ternary.json and iq123.json, from ggml itself.)
    covered.extend([GgmlType::MXFP4, GgmlType::TQ1_0, GgmlType::TQ2_0]);
    for e in manifest("iq123.json")["dequantize"].as_array().unwrap() {
        covered.push(type_by_name(e["type"].as_str().unwrap()));
    }
    for t in quant::DEQUANTIZE_TYPES {
        assert!(covered.contains(t), "no fixture for {t}");
    }
}

#[test]
fn per_block_functions_match_the_row_api() {
    use quant::blocks::*;
    let m = manifest("synthetic.json");
    for e in m["entries"].as_array().unwrap() {
        let t = dtype_of(e);
        let q = read(e["quant_file"].as_str().unwrap());
        let want = f32s(&read(e["f32_file"].as_str().unwrap()));
        let mut got = Vec::with_capacity(want.len());
        let ts = t.type_size();
        for block in q.chunks_exact(ts) {
            macro_rules! run {
                ($block:ty, $f:path, $n:expr) => {{
                    let b: $block = bytemuck::pod_read_unaligned(block);
                    let mut out = [0.0f32; $n];
                    $f(&b, &mut out);
                    got.extend_from_slice(&out);
                }};
            }
            match t {
                GgmlType::Q4_0 => run!(BlockQ4_0, quant::dequantize_block_q4_0, QK),
                GgmlType::Q4_1 => run!(BlockQ4_1, quant::dequantize_block_q4_1, QK),
                GgmlType::Q5_0 => run!(BlockQ5_0, quant::dequantize_block_q5_0, QK),
                GgmlType::Q5_1 => run!(BlockQ5_1, quant::dequantize_block_q5_1, QK),
                GgmlType::Q8_0 => run!(BlockQ8_0, quant::dequantize_block_q8_0, QK),
                GgmlType::Q8_1 => run!(BlockQ8_1, quant::dequantize_block_q8_1, QK),
                GgmlType::Q2_K => run!(BlockQ2K, quant::dequantize_block_q2_k, QK_K),
                GgmlType::Q3_K => run!(BlockQ3K, quant::dequantize_block_q3_k, QK_K),
                GgmlType::Q4_K => run!(BlockQ4K, quant::dequantize_block_q4_k, QK_K),
                GgmlType::Q5_K => run!(BlockQ5K, quant::dequantize_block_q5_k, QK_K),
                GgmlType::Q6_K => run!(BlockQ6K, quant::dequantize_block_q6_k, QK_K),
                GgmlType::Q8_K => run!(BlockQ8K, quant::dequantize_block_q8_k, QK_K),
                GgmlType::IQ4_NL => run!(BlockIQ4NL, quant::dequantize_block_iq4_nl, QK),
                GgmlType::IQ4_XS => run!(BlockIQ4XS, quant::dequantize_block_iq4_xs, QK_K),
                _ => break, // plain float types have no blocks
            }
        }
        if t.is_quantized() {
            assert_same_bits(&format!("{t} per-block"), &got, &want);
        }
    }
}

/// Quantizes each input of quantize.json to each type `manifest` lists and
/// compares with the reference bytes; returns the number of cases.
fn check_quantize_fixtures(manifest_name: &str) -> usize {
    let inputs: Vec<(String, Vec<f32>)> = manifest("quantize.json")["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| {
            let name = i["name"].as_str().unwrap().to_owned();
            (name, f32s(&read(i["file"].as_str().unwrap())))
        })
        .collect();
    let m = manifest(manifest_name);
    let mut checked = 0;
    for e in m["expected"].as_array().expect("expected") {
        let t = type_by_name(e["type"].as_str().unwrap());
        let input = e["input"].as_str().unwrap();
        let x = &inputs.iter().find(|(n, _)| n == input).expect("input").1;
        let want = read(e["file"].as_str().unwrap());
        assert_eq!(
            sha256_hex(&want),
            e["sha256"].as_str().unwrap(),
            "fixture file sha256"
        );
        let got = quant::quantize_row_to_vec(t, x).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(got.len(), want.len(), "{t} {input}: length");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            let block = i / t.type_size();
            panic!(
                "{t} quantize of `{input}`: byte {i} (block {block}, byte {} in it) is {:#04x}, reference {:#04x}",
                i % t.type_size(),
                got[i],
                want[i]
            );
        }
        // And into a caller's buffer, at an odd address.
        let mut buf = vec![0u8; want.len() + 1];
        quant::quantize(t, x, &mut buf[1..]).unwrap();
        assert_eq!(
            &buf[1..],
            &want[..],
            "{t} {input}: quantize into an unaligned buffer"
        );
        checked += 1;
    }
    checked
}

/// gguf-py's quantizers: F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
#[test]
fn quantize_matches_gguf_py_byte_for_byte() {
    let checked = check_quantize_fixtures("quantize.json");
    assert!(checked >= 4 * 7, "only {checked} quantize fixtures");
}

/// ggml's own reference quantizers for the types gguf-py lacks: Q8_1, Q4_K,
/// Q5_K, Q6_K, Q8_K.
#[test]
fn quantize_matches_ggml_reference_byte_for_byte() {
    let checked = check_quantize_fixtures("quantize_ggml.json");
    assert!(checked >= 4 * 5, "only {checked} quantize fixtures");
    // Together the fixture sets cover every quantizable type.
    let mut covered: Vec<String> = Vec::new();
    for name in [
        "quantize.json",
        "quantize_ggml.json",
        "quantize_iq4.json",
        "quantize_lattice.json",
        "mxfp4.json",
        "ternary.json",
    ] {
        for e in manifest(name)["expected"].as_array().unwrap() {
            covered.push(e["type"].as_str().unwrap().to_owned());
        }
    }
    for t in quant::QUANTIZE_TYPES {
        assert!(
            *t == GgmlType::F32 || covered.iter().any(|c| c == t.name()),
            "no quantize fixture for {t}"
        );
    }
}

/// The values of quantize.json's (`inputs`) input named `name`.
fn input_values(inputs: &Value, name: &Value) -> Vec<f32> {
    let input = inputs["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| &i["name"] == name)
        .expect("input");
    f32s(&read(input["file"].as_str().unwrap()))
}

/// ggml's `quantize_iq4_nl` and `quantize_iq4_xs` without an importance
/// matrix; the per-block functions give the same bytes block by block.
#[test]
fn quantize_iq4_matches_ggml_byte_for_byte() {
    let checked = check_quantize_fixtures("quantize_iq4.json");
    assert!(checked >= 5 * 2, "only {checked} IQ4 quantize fixtures");
    let inputs = manifest("quantize.json");
    for e in manifest("quantize_iq4.json")["expected"]
        .as_array()
        .unwrap()
    {
        let t = type_by_name(e["type"].as_str().unwrap());
        let x = input_values(&inputs, &e["input"]);
        let want = read(e["file"].as_str().unwrap());
        let got: Vec<u8> = match t {
            GgmlType::IQ4_NL => x
                .as_chunks::<{ quant::blocks::QK }>()
                .0
                .iter()
                .flat_map(|b| bytemuck::bytes_of(&quant::quantize_block_iq4_nl(b)).to_vec())
                .collect(),
            GgmlType::IQ4_XS => x
                .as_chunks::<{ quant::blocks::QK_K }>()
                .0
                .iter()
                .flat_map(|b| bytemuck::bytes_of(&quant::quantize_block_iq4_xs(b)).to_vec())
                .collect(),
            _ => panic!("{t} in quantize_iq4.json"),
        };
        assert_eq!(got, want, "{t} of `{}` block by block", e["input"]);
    }
}

/// ggml's `quantize_iq2_s`, `quantize_iq3_xxs`, `quantize_iq3_s` and
/// `quantize_iq1_m` without an importance matrix (the searches over the lattices'
/// neighbours); the `mixed` input's all-zero groups check IQ3_S's layout
/// after a skipped group.
#[test]
fn quantize_lattice_matches_ggml_byte_for_byte() {
    let checked = check_quantize_fixtures("quantize_lattice.json");
    assert!(checked >= 5 * 4, "only {checked} lattice quantize fixtures");
}

/// IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S against ggml
/// itself: random blocks (random grid indices, signs and scales)
/// dequantized bit for bit, block by block too (through the unpacked
/// integers the CPU backend multiplies).
#[test]
fn iq1_to_iq3_dequantize_as_ggml() {
    use quant::blocks::*;
    let m = manifest("iq123.json");
    let mut seen = Vec::new();
    for d in m["dequantize"].as_array().unwrap() {
        let t = type_by_name(d["type"].as_str().unwrap());
        let q = read(d["quant_file"].as_str().unwrap());
        let want_bytes = read(d["f32_file"].as_str().unwrap());
        assert_eq!(sha256_hex(&want_bytes), d["f32_sha256"].as_str().unwrap());
        let want = f32s(&want_bytes);
        let got = quant::dequantize_row_to_vec(t, &q).unwrap();
        assert_same_bits(&format!("{t} dequantize"), &got, &want);
        let mut by_block = Vec::new();
        for block in q.chunks_exact(t.type_size()) {
            let u = match t {
                GgmlType::IQ2_XXS => {
                    quant::IqLattice::unpack(&bytemuck::pod_read_unaligned::<BlockIQ2XXS>(block))
                }
                GgmlType::IQ2_XS => {
                    quant::IqLattice::unpack(&bytemuck::pod_read_unaligned::<BlockIQ2XS>(block))
                }
                GgmlType::IQ2_S => {
                    quant::IqLattice::unpack(&bytemuck::pod_read_unaligned::<BlockIQ2S>(block))
                }
                GgmlType::IQ3_XXS => {
                    quant::IqLattice::unpack(&bytemuck::pod_read_unaligned::<BlockIQ3XXS>(block))
                }
                GgmlType::IQ3_S => {
                    quant::IqLattice::unpack(&bytemuck::pod_read_unaligned::<BlockIQ3S>(block))
                }
                GgmlType::IQ1_S => {
                    quant::IqLattice::unpack(&bytemuck::pod_read_unaligned::<BlockIQ1S>(block))
                }
                _ => quant::IqLattice::unpack(&bytemuck::pod_read_unaligned::<BlockIQ1M>(block)),
            };
            let mut out = [0.0f32; QK_K];
            u.dequantize(&mut out);
            by_block.extend_from_slice(&out);
        }
        assert_same_bits(&format!("{t} per-block"), &by_block, &want);
        seen.push(t);
    }
    assert_eq!(seen.len(), 7);
}

/// TQ1_0 and TQ2_0 (BitNet b1.58's ternary weights) against ggml itself:
/// random blocks (every byte value among their packed trits) dequantized
/// bit for bit, block by block too, and the signals quantized byte for
/// byte, with or without an importance matrix (which ggml's quantizers
/// ignore).
#[test]
fn ternary_types_match_ggml_both_ways() {
    let m = manifest("ternary.json");
    for d in m["dequantize"].as_array().unwrap() {
        let t = type_by_name(d["type"].as_str().unwrap());
        let q = read(d["quant_file"].as_str().unwrap());
        let want_bytes = read(d["f32_file"].as_str().unwrap());
        assert_eq!(sha256_hex(&want_bytes), d["f32_sha256"].as_str().unwrap());
        let want = f32s(&want_bytes);
        let got = quant::dequantize_row_to_vec(t, &q).unwrap();
        assert_same_bits(&format!("{t} dequantize"), &got, &want);
        let mut by_block = Vec::new();
        for block in q.chunks_exact(t.type_size()) {
            let mut out = [0.0f32; quant::blocks::QK_K];
            match t {
                GgmlType::TQ1_0 => {
                    quant::dequantize_block_tq1_0(&bytemuck::pod_read_unaligned(block), &mut out)
                }
                _ => quant::dequantize_block_tq2_0(&bytemuck::pod_read_unaligned(block), &mut out),
            }
            by_block.extend_from_slice(&out);
        }
        assert_same_bits(&format!("{t} per-block"), &by_block, &want);
    }
    assert_eq!(check_quantize_fixtures("ternary.json"), 10);
    let inputs = manifest("quantize.json");
    for e in m["expected"].as_array().unwrap() {
        let t = type_by_name(e["type"].as_str().unwrap());
        let x = input_values(&inputs, &e["input"]);
        let importance: Vec<f32> = (0..256).map(|i| 1.0 + (i % 5) as f32).collect();
        let mut got = vec![0u8; read(e["file"].as_str().unwrap()).len()];
        quant::quantize_weighted(t, &x, &importance, &mut got).unwrap();
        assert_eq!(got, read(e["file"].as_str().unwrap()), "{t} {}", e["input"]);
    }
}

/// MXFP4 (gpt-oss's experts) against ggml itself: random blocks (every
/// exponent's edge, subnormal and overflowing scales among them)
/// dequantized bit for bit, block by block too, and the signals quantized
/// byte for byte, with or without an importance matrix (which ggml's
/// `quantize_mxfp4` ignores).
#[test]
fn mxfp4_matches_ggml_both_ways() {
    let m = manifest("mxfp4.json");
    let d = &m["dequantize"];
    let q = read(d["quant_file"].as_str().unwrap());
    let want_bytes = read(d["f32_file"].as_str().unwrap());
    assert_eq!(sha256_hex(&want_bytes), d["f32_sha256"].as_str().unwrap());
    let want = f32s(&want_bytes);
    let got = quant::dequantize_row_to_vec(GgmlType::MXFP4, &q).unwrap();
    assert_same_bits("mxfp4 dequantize", &got, &want);
    let mut by_block = Vec::new();
    for block in q.chunks_exact(GgmlType::MXFP4.type_size()) {
        let b: quant::blocks::BlockMXFP4 = bytemuck::pod_read_unaligned(block);
        let mut out = [0.0f32; quant::blocks::QK];
        quant::dequantize_block_mxfp4(&b, &mut out);
        by_block.extend_from_slice(&out);
    }
    assert_same_bits("mxfp4 per-block", &by_block, &want);
    assert!(want.iter().any(|v| v.is_infinite()) && want.iter().any(|v| v.is_subnormal()));

    assert_eq!(check_quantize_fixtures("mxfp4.json"), 5);
    let inputs = manifest("quantize.json");
    for e in m["expected"].as_array().unwrap() {
        let x = input_values(&inputs, &e["input"]);
        let importance: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 5) as f32).collect();
        let mut got = vec![0u8; read(e["file"].as_str().unwrap()).len()];
        quant::quantize_weighted(GgmlType::MXFP4, &x, &importance, &mut got).unwrap();
        assert_eq!(got, read(e["file"].as_str().unwrap()), "{}", e["input"]);
    }
}
