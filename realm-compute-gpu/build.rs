//! With the `cuda` feature, compiles Realm's own CUDA kernels to PTX with
//! `nvcc` (the toolkit candle's kernels need too). `CUDA_COMPUTE_CAP` picks
//! the virtual architecture (default 75); the driver compiles the PTX for
//! the GPU it runs on.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &[
    "add_rms_norm",
    "decode_attention",
    "gated",
    "hold",
    "prefill_attention",
    "rope_angles",
    "rope_store",
];

/// Headers the kernels include.
const HEADERS: &[&str] = &["attention.cuh", "q8_1.cuh", "slots.cuh"];

fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{k}.cu");
    }
    for header in HEADERS {
        println!("cargo:rerun-if-changed=kernels/{header}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".to_string());
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    for k in KERNELS {
        let src = format!("kernels/{k}.cu");
        let ptx = out_dir.join(format!("{k}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", &format!("-arch=compute_{cap}"), "-O3", &src, "-o"])
            .arg(&ptx)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("nvcc failed on {src} ({s})"),
            Err(e) => panic!("cannot run `{nvcc}` ({e}): the cuda feature needs the CUDA toolkit"),
        }
    }
    // Every module's name and PTX, as an expression, for the tests that
    // read them all.
    let modules: String = KERNELS
        .iter()
        .map(|k| {
            format!("    (\"{k}\", include_str!(concat!(env!(\"OUT_DIR\"), \"/{k}.ptx\"))),\n")
        })
        .collect();
    let list = format!("&[\n{modules}]\n");
    std::fs::write(out_dir.join("ptx_modules.rs"), list).expect("writing ptx_modules.rs");
}
