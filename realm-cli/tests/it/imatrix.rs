//! `realm imatrix` on the real models against llama.cpp's llama-imatrix on
//! the same text (fixtures/imatrix/*.gguf and fixtures/imatrix.json, from
//! scripts/gen_imatrix_fixtures.py), and combining matrices.

use crate::common;

use common::{cached, realm};
use realm_core::catalog::{self, KnownModel};
use realm_core::imatrix::Imatrix;
use serde_json::Value;

fn fixtures() -> String {
    format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `realm imatrix` of `m` on the test text as llama-imatrix ran
/// (128-token chunks, f16 KV cache) into `out`; its stdout.
fn collect(m: &KnownModel, out: &str) -> String {
    let text = format!("{}/perplexity.txt", fixtures());
    let args = [
        "imatrix",
        m.short_name,
        "-f",
        &text,
        "-c",
        "128",
        "--cache-type",
        "f16",
        "-o",
        out,
    ];
    let (ok, stdout, stderr) = realm(&args);
    assert!(ok, "{stderr}");
    stdout
}

/// Every matrix of llama-imatrix's that the fixture keeps (the first six
/// blocks, every `ffn_down` and `attn_output`) is Realm's within
/// `median_tol` (the median over columns of the relative difference) and
/// a cosine similarity of 0.9995, with the same counts; the perplexity on
/// the way is within `ppl_tol` of llama-imatrix's.
///
/// The activations differ from llama.cpp's as the models' logits do
/// (realm-models' golden tests); measured: median relative difference per
/// matrix 0.2-1.0% (SmolLM2) and 0.4-3.4% (Gemma 3, its first block's
/// attention output), cosine at least 0.99990 and 0.99993, perplexity
/// 0.01% and 1.05% apart. Summing anything but the squares, or another
/// product's input, fails by far.
fn check(m: &KnownModel, median_tol: f64, ppl_tol: f64) {
    if !cached(m) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imatrix.gguf");
    let stdout = collect(m, out.to_str().unwrap());
    let ours = Imatrix::open(&out).unwrap();
    let theirs = Imatrix::open(format!("{}/imatrix/{}.gguf", fixtures(), m.short_name)).unwrap();
    let layers = catalog::cached_path(m)
        .map(|p| realm_core::gguf::GgufFile::open(p).unwrap())
        .map(|f| {
            let arch = f
                .metadata()
                .get_str("general.architecture")
                .unwrap()
                .to_string();
            f.metadata()
                .get_u32(&format!("{arch}.block_count"))
                .unwrap()
        })
        .unwrap();
    assert_eq!(ours.len(), 7 * layers as usize);
    assert_eq!((ours.chunk_count, ours.chunk_size), (6, 128));
    assert!(ours.has_metadata());
    let f: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/imatrix.json", fixtures())).unwrap(),
    )
    .unwrap();
    let want = &f["models"][m.short_name];
    assert_eq!(theirs.len() as u64, want["matrices"].as_u64().unwrap());
    for name in theirs.names() {
        let (a, b) = (ours.entry(name).unwrap(), theirs.entry(name).unwrap());
        assert_eq!(a.counts, b.counts, "{name}");
        let (cos, median) = closeness(&a.sums, &b.sums);
        assert!(cos > 0.9995, "{name}: cosine {cos}");
        assert!(
            median < median_tol,
            "{name}: median relative difference {median}"
        );
    }
    let ppl = final_ppl(&stdout);
    let want = want["ppl"].as_f64().unwrap();
    assert!((ppl / want - 1.0).abs() < ppl_tol, "{ppl} vs {want}");
}

/// The perplexity of the last line `realm imatrix` prints on the way.
fn final_ppl(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Final estimate: PPL = "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// The cosine similarity of `a` and `b`, and the median over columns of
/// their relative difference (relative to `b`, or to a thousandth of its
/// mean magnitude where larger).
fn closeness(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
    let cos = dot / norm(a) / norm(b);
    let mean = b.iter().map(|y| y.abs() as f64).sum::<f64>() / b.len() as f64;
    let mut rel: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).abs() / (y.abs() as f64 + 1e-3 * mean))
        .collect();
    rel.sort_by(f64::total_cmp);
    (cos, rel[rel.len() / 2])
}

/// A mixture of experts (a synthetic Qwen 3 MoE in f16, as
/// `scripts/gen_imatrix_fixtures.py` had llama-imatrix run it: 64-token
/// chunks, one a batch): the router's input and every expert's inputs,
/// by expert, as llama-imatrix collects routed products. Measured: the
/// same counts (over 83 chunks, 1-2 of about 1,000 routings an expert
/// differ: near ties, which llama.cpp's f16 activations for f16 weights
/// break otherwise), cosine >= 0.9999998, median relative difference <=
/// 3.8e-4, perplexity 637.918 against 637.943. The same for a Qwen 2 MoE,
/// whose shared expert's four matrices see every token: cosine >=
/// 0.9999968 (the shared expert's >= 0.99999995), median relative
/// difference <= 8.8e-4, perplexity 463.2115 against 463.2258.
#[test]
fn expert_matrices_match_llama_imatrix() {
    let f: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/imatrix.json", fixtures())).unwrap(),
    )
    .unwrap();
    // Qwen 3 MoE's routed experts; Qwen 2 MoE's, and its shared expert.
    for (key, shared) in [("moe", 0), ("moe_shared", 8)] {
        check_experts(&f[key], shared);
    }
}

/// A synthetic mixture of experts' matrix against llama-imatrix's (`moe`:
/// its fixture entry), with `shared` entries of a shared expert.
fn check_experts(moe: &Value, shared: usize) {
    let arg = |k: &str| moe[k].to_string().trim_matches('"').to_string();
    let dir = tempfile::tempdir().unwrap();
    let short = arg("layout").replace("tiny-", "");
    let model = dir.path().join(format!("{short}.gguf"));
    let model = model.to_str().unwrap();
    let (ok, _, stderr) = realm(&[
        "synth",
        &arg("layout"),
        "-o",
        model,
        "--seed",
        &arg("seed"),
        "--matrix-type",
        &arg("matrix_type"),
    ]);
    assert!(ok, "{stderr}");
    let out = dir.path().join("imatrix.gguf");
    let text = format!("{}/perplexity.txt", fixtures());
    let (ok, stdout, stderr) = realm(&[
        "imatrix",
        model,
        "-f",
        &text,
        "-c",
        &arg("ctx"),
        "--chunks",
        &arg("chunks"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let ours = Imatrix::open(&out).unwrap();
    let theirs = Imatrix::open(format!("{}/imatrix/{short}.gguf", fixtures())).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let experts = theirs.names().filter(|n| n.contains("_exps")).count();
    assert_eq!(experts, 6, "gate, up and down of two layers");
    let shexp = theirs.names().filter(|n| n.contains("_shexp")).count();
    assert_eq!(shexp, shared, "router, gate, up and down of two layers");
    for name in theirs.names() {
        let (a, b) = (ours.entry(name).unwrap(), theirs.entry(name).unwrap());
        assert_eq!(a.counts.len(), b.counts.len(), "{name}");
        let total: u64 = b.counts.iter().sum();
        assert_eq!(a.counts.iter().sum::<u64>(), total, "{name}");
        for (x, y) in a.counts.iter().zip(&b.counts) {
            assert!(
                x.abs_diff(*y) <= 1 + y / 500,
                "{name}: counts {:?} vs {:?}",
                a.counts,
                b.counts
            );
        }
        let (cos, median) = closeness(&a.sums, &b.sums);
        assert!(cos > 0.99999, "{name}: cosine {cos}");
        assert!(median < 2e-3, "{name}: median relative difference {median}");
    }
    let ppl = final_ppl(&stdout);
    let want = moe["ppl"].as_f64().unwrap();
    assert!((ppl / want - 1.0).abs() < 0.002, "{ppl} vs {want}");
}

#[test]
fn smollm2_matrices_match_llama_imatrix() {
    check(&catalog::SMOLLM2, 0.02, 0.002);
}

#[test]
fn gemma3_matrices_match_llama_imatrix() {
    check(&catalog::GEMMA3, 0.07, 0.02);
}

/// `--in-file` adds matrices up: two of the same give twice the sums,
/// counts and chunks, and nothing to do is an error.
#[test]
fn matrices_combine() {
    let dir = tempfile::tempdir().unwrap();
    let one = format!("{}/imatrix/smollm2.gguf", fixtures());
    let two = dir.path().join("two.gguf");
    let args = [
        "imatrix",
        "smollm2",
        "--in-file",
        &one,
        "--in-file",
        &one,
        "-o",
    ];
    let (ok, _, stderr) = realm(&[&args[..], &[two.to_str().unwrap()]].concat());
    assert!(ok, "{stderr}");
    let (a, b) = (Imatrix::open(&one).unwrap(), Imatrix::open(&two).unwrap());
    assert_eq!(b.len(), a.len());
    assert_eq!(b.chunk_count, 2 * a.chunk_count);
    assert_eq!(b.datasets, [&a.datasets[..], &a.datasets[..]].concat());
    for name in a.names() {
        let (x, y) = (a.entry(name).unwrap(), b.entry(name).unwrap());
        assert_eq!(y.counts, vec![2 * x.counts[0]]);
        assert!(x.sums.iter().zip(&y.sums).all(|(s, t)| *t == 2.0 * s));
        assert_eq!(a.importance(name), b.importance(name));
    }
    let (ok, _, stderr) = realm(&["imatrix", "smollm2"]);
    assert!(!ok && stderr.contains("nothing to do"), "{stderr}");
}

/// The data rows of a statistics listing: per matrix (13 fields) and per
/// block (4), split on white space.
fn stat_rows(text: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|f| {
            f.first()
                .is_some_and(|l| l == "-" || l.parse::<u32>().is_ok())
        })
        .collect();
    let (matrices, blocks) = rows.into_iter().partition(|f| f.len() == 13);
    (matrices, blocks)
}

/// `--show-statistics` prints what llama-imatrix's prints for the same
/// file (fixtures/imatrix/*.stats.txt): the same rows in the same order,
/// every figure equal to the last digit printed.
#[test]
fn statistics_are_llama_imatrixs() {
    for short in ["smollm2", "gemma3"] {
        let file = format!("{}/imatrix/{short}.gguf", fixtures());
        let (ok, stdout, stderr) = realm(&["imatrix", "--show-statistics", "--in-file", &file]);
        assert!(ok, "{stderr}");
        let want =
            std::fs::read_to_string(format!("{}/imatrix/{short}.stats.txt", fixtures())).unwrap();
        let ((got_m, got_b), (want_m, want_b)) = (stat_rows(&stdout), stat_rows(&want));
        assert_eq!(want_m.len(), if short == "smollm2" { 90 } else { 66 });
        assert_eq!(got_m.len(), want_m.len(), "{stdout}");
        assert_eq!(got_b.len(), want_b.len(), "{stdout}");
        for (g, w) in got_m.iter().chain(&got_b).zip(want_m.iter().chain(&want_b)) {
            let named = if g.len() == 13 { 2 } else { 1 };
            assert_eq!(g[..named], w[..named], "{g:?} vs {w:?}");
            for (a, b) in g[named..].iter().zip(&w[named..]) {
                let num = |s: &str| s.trim_end_matches('%').parse::<f64>().unwrap();
                let digits = b
                    .trim_end_matches('%')
                    .split('.')
                    .nth(1)
                    .map_or(0, str::len);
                let unit = 10f64.powi(-(digits as i32));
                assert!(
                    (num(a) - num(b)).abs() <= unit * 1.01,
                    "{short}: {g:?} vs {w:?}"
                );
            }
        }
    }
    let (ok, _, stderr) = realm(&["imatrix", "--show-statistics"]);
    assert!(!ok, "{stderr}");
}
