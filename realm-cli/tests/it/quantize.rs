//! `realm quantize` on the real models writes the files llama.cpp's
//! llama-quantize writes, byte for byte (fixtures/quantize.json, from
//! scripts/gen_quantize_fixtures.py): the same tensor types, order,
//! metadata and quantized bytes.

use crate::common;

use common::{cached, realm};
use realm_core::catalog;
use serde_json::Value;
use sha2::{Digest, Sha256};

#[test]
fn files_are_llama_quantizes_byte_for_byte() {
    let path = format!(
        "{}/tests/fixtures/quantize.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let out = out.to_str().unwrap();
    let (mut checked, mut skipped) = (0, 0);
    for case in fixture["cases"].as_array().unwrap() {
        let input = match case["model"].as_str().unwrap() {
            // A synthetic model, written here as the fixture's was.
            name if case.get("synth").is_some() => {
                let path = dir.path().join(format!("{name}.gguf"));
                let mut args = vec!["synth"];
                args.extend(
                    case["synth"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap()),
                );
                args.extend(["-o", path.to_str().unwrap()]);
                let (ok, _, stderr) = realm(&args);
                assert!(ok, "{stderr}");
                path
            }
            name => {
                let m = if name == "smollm2" {
                    &catalog::SMOLLM2
                } else {
                    &catalog::GEMMA3
                };
                if !cached(m) {
                    skipped += 1;
                    continue;
                }
                catalog::cached_path(m).unwrap()
            }
        };
        let ftype = case["type"].as_str().unwrap();
        let mut args = vec!["quantize", "--allow-requantize"];
        args.extend(
            case["options"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap()),
        );
        args.extend([input.to_str().unwrap(), out, ftype]);
        let (ok, _, stderr) = realm(&args);
        assert!(ok, "{args:?}: {stderr}");
        let bytes = std::fs::read(out).unwrap();
        assert_eq!(
            bytes.len() as u64,
            case["bytes"].as_u64().unwrap(),
            "{case}"
        );
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, case["sha256"].as_str().unwrap(), "{case}");
        checked += 1;
    }
    assert_eq!(
        checked + skipped,
        fixture["cases"].as_array().unwrap().len()
    );
    assert!(checked > 0);
}

#[test]
fn bad_requests_are_refused_and_leave_nothing() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let input = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let input = input.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let out_s = out.to_str().unwrap();
    // The model is Q4_1 already.
    let (ok, _, stderr) = realm(&["quantize", input, out_s, "Q8_0"]);
    assert!(!ok && stderr.contains("--allow-requantize"), "{stderr}");
    assert!(!out.exists());
    let (ok, _, stderr) = realm(&["quantize", input, out_s, "Q9_K"]);
    assert!(!ok && stderr.contains("unknown file type"), "{stderr}");
    let (ok, _, stderr) = realm(&["quantize", "--allow-requantize", input, input, "Q8_0"]);
    assert!(!ok && stderr.contains("overwrite the input"), "{stderr}");
    // A type whose blocks do not divide the embedding's rows.
    let (ok, _, stderr) = realm(&[
        "quantize",
        "--allow-requantize",
        "--token-embedding-type",
        "q4_k",
        input,
        out_s,
        "Q8_0",
    ]);
    assert!(!ok && stderr.contains("does not fit type"), "{stderr}");
    assert!(!out.exists());
    // A dry run writes nothing and says what it would do.
    let (ok, _, stderr) = realm(&[
        "quantize",
        "--allow-requantize",
        "--dry-run",
        input,
        out_s,
        "Q4_K_M",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("blk.0.ffn_down.weight") && stderr.contains("q4_1 -> q6_K"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// An importance matrix that does not fit the model (another model's) is
/// refused before anything is written; one without llama-imatrix's
/// metadata too.
#[test]
fn importance_matrices_must_fit() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let input = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let gemma = format!(
        "{}/tests/fixtures/imatrix/gemma3.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let args = [
        "quantize",
        "--allow-requantize",
        "--imatrix",
        &gemma,
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q4_K_M",
    ];
    let (ok, _, stderr) = realm(&args);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("has 640 values for blk.0.attn_k.weight, whose rows have 576"),
        "{stderr}"
    );
    assert!(!out.exists());
    // Without its imatrix.* keys a GGUF matrix is refused, as llama-quantize
    // refuses it.
    let mut m = realm_core::imatrix::Imatrix::open(&gemma).unwrap();
    m.retain(|n| n.starts_with("blk.0."));
    let mut w = m.to_gguf().unwrap();
    w.metadata_mut().remove(realm_core::imatrix::CHUNK_SIZE_KEY);
    let bare = dir.path().join("bare.gguf");
    w.write_file(&bare).unwrap();
    let args = [
        &args[..2],
        &["--imatrix", bare.to_str().unwrap()],
        &args[4..],
    ]
    .concat();
    let (ok, _, stderr) = realm(&args);
    assert!(
        !ok && stderr.contains("lacks the imatrix.* metadata"),
        "{stderr}"
    );
    // Q2_K_S needs one for each of its Q2_K matrices (SmolLM2's ffn_down
    // from the fourth block on); a dry run only warns.
    let q2ks = [&args[..2], &args[4..6], &["Q2_K_S"]].concat();
    let (ok, _, stderr) = realm(&q2ks);
    assert!(!ok, "{stderr}");
    let why = "blk.3.ffn_down.weight would be Q2_K without an importance matrix";
    assert!(stderr.contains(why), "{stderr}");
    assert!(!out.exists());
    let (ok, _, stderr) = realm(&[&q2ks[..], &["--dry-run"]].concat());
    assert!(ok && stderr.contains(why), "{stderr}");
    // So do the 2-bit lattice mixes (SmolLM2's ffn_down keep IQ2_XXS).
    let iq2 = [&args[..2], &args[4..6], &["IQ2_XXS"]].concat();
    let (ok, _, stderr) = realm(&iq2);
    assert!(!ok, "{stderr}");
    let why = "blk.3.ffn_down.weight would be IQ2_XXS without an importance matrix";
    assert!(stderr.contains(why), "{stderr}");
    assert!(!out.exists());
}

/// Rules from a `--tensor-type-file` are `--tensor-type`'s (the fixture
/// checks those against llama-quantize's bytes); malformed rules, patterns
/// and `--override-kv` values are refused by name.
#[test]
fn tensor_type_rules_from_a_file() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let input = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.txt");
    std::fs::write(&rules, "attn_v=q8_0\n  BLK\\.[0-3]\\.ffn_down=Q5_K\n").unwrap();
    let run = |extra: &[&str]| {
        let out = dir.path().join("out.gguf");
        let head = ["quantize", "--allow-requantize", "--dry-run"];
        let tail = [input.to_str().unwrap(), out.to_str().unwrap(), "Q4_K_M"];
        realm(&[&head[..], extra, &tail[..]].concat())
    };
    let (ok, _, by_flags) = run(&[
        "--tensor-type",
        "attn_v=q8_0",
        "--tensor-type",
        "blk\\.[0-3]\\.ffn_down=q5_k",
    ]);
    assert!(ok, "{by_flags}");
    let (ok, _, by_file) = run(&["--tensor-type-file", rules.to_str().unwrap()]);
    assert!(ok, "{by_file}");
    let types = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("blk."))
            .map(String::from)
            .collect()
    };
    assert_eq!(types(&by_flags), types(&by_file));
    assert!(by_file.contains("blk.2.ffn_down.weight"), "{by_file}");
    assert_ne!(types(&run(&[]).2), types(&by_file));
    for (rule, why) in [
        ("attn_v", "is not PATTERN=TYPE"),
        ("=q8_0", "names no tensor"),
        ("attn_v=q9_9", "unknown tensor type"),
        ("attn_(v=q8_0", "tensor type pattern `attn_(v`"),
    ] {
        let (ok, _, stderr) = run(&["--tensor-type", rule]);
        assert!(!ok && stderr.contains(why), "{rule}: {stderr}");
    }
    for (rule, why) in [
        ("general.name", "is not KEY=TYPE:VALUE"),
        ("k=int:4x", "not an integer"),
        ("k=int:5000000000", "beyond a u32"),
        ("k=bool:yes", "true or false"),
        ("k=blob:1", "int, float, bool or str"),
    ] {
        let (ok, _, stderr) = run(&["--override-kv", rule]);
        assert!(!ok && stderr.contains(why), "{rule}: {stderr}");
    }
}
