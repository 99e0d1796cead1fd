//! `cargo xtask`: the project's chores, in Rust so they run wherever cargo does.
//!
//! - `cargo xtask demo`: fetch SmolLM2 and ask it the capital of France, through the wasm guest.
//! - `cargo xtask fetch-model`: download the real models into the model cache.
//! - `cargo xtask fetch-vocab`: download llama.cpp's vocabulary test files (tokenizer references).
//! - `cargo xtask test`: fetch the models if missing, build the wasm guest,
//!   then run the whole suite, the GPU backend's CUDA kernels under the
//!   tests' CPU emulator (sanitized) where a C++ compiler is found, and a type-check of
//!   its Metal build for Apple silicon where that target is installed.
//! - `cargo xtask wasm`: build the wasm guest (`realm-wasm`) and report its size.
//! - `cargo xtask proptest [CASES]`: the suite with many more property-test cases.
//! - `cargo xtask fuzz [SECONDS] [TARGET]`: run a fuzz target (`gguf_reader`,
//!   the default, `imatrix`, `grammar`, `state` or `lora`).
//! - `cargo xtask neon`: the CPU backend's tests built for aarch64 and run
//!   under qemu, so the NEON kernels run on an x86 machine.
//! - `cargo xtask bench [OPTIONS]`: Realm against llama.cpp's llama-bench on
//!   both real models, alternating, as a markdown table.
//! - `cargo xtask gpu-bundle`: `realm` and the GPU tests built with CUDA,
//!   stripped, with a script that checks and benchmarks them on a GPU
//!   machine, and llama.cpp's CUDA benchmarks to compare with there.
//! - `cargo xtask gpu-report PATH`: that script's figures, Realm's beside
//!   llama.cpp's, with ratios and the GPU issue's floors, then its failures
//!   and kernel tables.

mod bench;
mod fetch;
mod gpu;
mod gpu_report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo                fetch the model if missing, build `realm` and the wasm guest, and ask SmolLM2
                      \"Which city is the capital of France?\" through its chat template
  fetch-model         download SmolLM2-135M-Instruct and Gemma 3 270M into the model cache
                      ($REALM_MODELS, default ~/.cache/realm/models) and verify their sha256
  fetch-vocab         download llama.cpp's vocabulary-only test files (the tokenizer
                      fixtures' references) from llama-cpp-python's source package into
                      the model cache's vocab/ folder and verify their sha256
  test                fetch the models and vocabularies if missing, build the wasm guest,
                      then run every test (optimised build)
  wasm                build the wasm guest (realm-wasm, size-optimised) into
                      target/wasm32-unknown-unknown/wasm-guest/realm_wasm.wasm
  proptest [CASES]    the test suite with CASES property-test cases each (default 20000)
  fuzz [SECONDS] [TARGET]  fuzz gguf_reader (default), imatrix, grammar, state or lora for SECONDS (default 600); needs cargo-fuzz
  neon                the CPU backend's tests for aarch64 under qemu-user, NEON kernels
                      included (needs the rustup target aarch64-unknown-linux-gnu and, on
                      Debian, `apt-get install qemu-user gcc-aarch64-linux-gnu`)
  bench [OPTIONS]     build llama.cpp's llama-bench if it is not cached, then run `realm bench`
                      and llama-bench on both models, alternating, and print a markdown table
                      of tokens/s and ratios (`cargo xtask bench --help` for the options)
  gpu-bundle [--no-llama]
                      build `realm` and the GPU backend's tests with --features cuda into
                      target/gpu-bundle/ with run.sh, which tests and benchmarks them on a
                      GPU machine (needs `source ../shared/gpu/setup-cuda.sh`), with
                      llama.cpp's CUDA benchmarks to compare in the same run (built once by
                      scripts/build_llama_cpp.sh --cuda) unless --no-llama
  gpu-report PATH     Realm's and llama.cpp's figures from run.sh's archive (realm-gpu.tar.gz,
                      or a folder holding it or its unpacked outputs), side by side with
                      their ratios and the issue's floors; then the steps that failed or
                      were skipped, memcheck's verdict and the kernel tables";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("fetch-model") => fetch::fetch_all(),
        Some("fetch-vocab") => fetch::fetch_vocabs(),
        Some("test") => test(),
        Some("wasm") => wasm(),
        Some("proptest") => proptest(args.get(1).map(String::as_str).unwrap_or("20000")),
        Some("fuzz") => fuzz(
            args.get(1).map(String::as_str).unwrap_or("600"),
            args.get(2).map(String::as_str).unwrap_or("gguf_reader"),
        ),
        Some("neon") => neon(),
        Some("bench") => bench::bench(&args[1..]),
        Some("gpu-bundle") => gpu::bundle(&args[1..]),
        Some("gpu-report") => gpu_report::report(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
        None => bail!("no command given\n\n{USAGE}"),
    }
}

/// The workspace root (xtask's parent folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn status(mut cmd: Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// The seed of the test run's property tests (`PROPTEST_RNG_SEED`).
const TEST_SEED: &str = "20261202";

/// The whole suite, built once, optimised: unit, integration, property and
/// doc tests, after the wasm guest (which builds the crates a guest uses for
/// wasm32), then the emulated CUDA kernels and the Metal build's check.
fn test() -> Result<()> {
    fetch::fetch_all()?;
    // (The tokenizer fixtures that need them say so and skip without them:
    // a source package pip cannot fetch here is no reason to test nothing.)
    if let Err(e) = fetch::fetch_vocabs() {
        eprintln!(
            "xtask: warning: llama.cpp's vocabularies were not fetched ({e:#}); the tokenizer \
             fixtures that need them will skip"
        );
    }
    wasm()?;
    let mut t = cargo();
    t.args(["test", "--release", "--workspace"]);
    // The test run's property tests draw the same cases every time, so a
    // CI result can be reproduced; `cargo xtask proptest` draws new ones.
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        t.env("PROPTEST_RNG_SEED", TEST_SEED);
    }
    status(t)?;
    emulated_kernels()?;
    metal_check()
}

/// The sanitizers the emulated kernels are built with in the test run:
/// reads and writes outside an array, misaligned vector reads (what
/// `compute-sanitizer`'s memcheck would report on a GPU).
const EMU_SANITIZERS: &str = "address,undefined";

/// The GPU backend's CUDA kernels run on the CPU under the tests' SIMT
/// emulator (`realm-compute-gpu/tests/emulated.rs`), which needs a C++20
/// compiler: run where one is found (`$CXX`, else `c++`), said so where not;
/// with [`EMU_SANITIZERS`] where the compiler has them (unless
/// `EMU_SANITIZE` says otherwise).
fn emulated_kernels() -> Result<()> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let found = Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("xtask: no C++ compiler (`{cxx}`): the emulated CUDA kernel tests did not run");
        return Ok(());
    }
    let mut t = cargo();
    if std::env::var_os("EMU_SANITIZE").is_none() {
        if sanitizers_work(&cxx) {
            t.env("EMU_SANITIZE", EMU_SANITIZERS);
        } else {
            eprintln!("xtask: `{cxx}` cannot build with -fsanitize={EMU_SANITIZERS}: the emulated kernels run unsanitized");
        }
    }
    // With --workspace, so that features resolve as in the main run and
    // nothing is built again.
    t.args([
        "test",
        "--release",
        "--workspace",
        "--test",
        "emulated",
        "--",
        "--ignored",
    ]);
    status(t)
}

/// Whether `cxx` builds a program with [`EMU_SANITIZERS`] that then runs
/// (the sanitizers' runtimes are installed and work on this kernel).
fn sanitizers_work(cxx: &str) -> bool {
    let dir = std::env::temp_dir().join(format!("realm-xtask-sanitize-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return false;
    }
    let (src, exe) = (dir.join("probe.cpp"), dir.join("probe"));
    let works = std::fs::write(&src, "int main() { return 0; }\n").is_ok()
        && Command::new(cxx)
            .arg(format!("-fsanitize={EMU_SANITIZERS}"))
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new(&exe)
            .output()
            .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    works
}

/// The Apple target the Metal build is checked for.
const APPLE: &str = "aarch64-apple-darwin";

/// The GPU backend's `metal` feature, type-checked (with its tests) for
/// Apple silicon where that target's standard library is installed
/// (`rustup target add aarch64-apple-darwin`; `.ci/run` adds it): Metal
/// cannot run here, but its code must compile. Said so where it is not.
fn metal_check() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == APPLE)
        });
    if !installed {
        eprintln!("xtask: no {APPLE} target: the Metal build was not checked");
        return Ok(());
    }
    let mut check = cargo();
    // Release, as the test run's build: the build scripts and proc macros
    // it compiled for the host serve again (in the dev profile they would
    // be built anew, minutes on 2 cores).
    check.args([
        "check",
        "--release",
        "-p",
        "realm-compute-gpu",
        "--features",
        "metal",
        "--all-targets",
        "--target",
        APPLE,
    ]);
    status(check)
}

/// Where `cargo xtask wasm` leaves the guest (realm-runtime's tests look there).
pub(crate) const WASM_GUEST: &str = "target/wasm32-unknown-unknown/wasm-guest/realm_wasm.wasm";

/// The wasm guest, built with the size-optimised `wasm-guest` profile.
pub(crate) fn wasm() -> Result<()> {
    let mut build = cargo();
    build.args([
        "build",
        "-p",
        "realm-wasm",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm-guest",
    ]);
    status(build)?;
    let path = root().join(WASM_GUEST);
    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    eprintln!(
        "xtask: {} ({:.1} KiB)",
        path.display(),
        size as f64 / 1024.0
    );
    Ok(())
}

/// The question the README promises an answer to.
const DEMO_QUESTION: &str = "Which city is the capital of France?";
/// With SmolLM2's default system prompt, llama.cpp's first greedy token is a
/// near tie ("The" 0.03 ahead of "Le"); with this one the answer's smallest
/// top-2 margin is 0.42 and the model says "The capital of France is Paris."
const DEMO_SYSTEM: &str = "Answer in one short English sentence.";

fn demo() -> Result<()> {
    fetch::fetch_all()?;
    wasm()?;
    let mut build = cargo();
    build.args(["build", "--release", "-p", "realm-cli"]);
    status(build)?;
    let mut run = Command::new(root().join("target/release/realm"));
    run.current_dir(root());
    run.args([
        "run", "smollm2", "--wasm", "--chat", "--temp", "0", "-n", "64",
    ]);
    run.args(["--system", DEMO_SYSTEM, "-p", DEMO_QUESTION]);
    eprintln!("xtask: asking SmolLM2: {DEMO_QUESTION}");
    status(run)
}

fn proptest(cases: &str) -> Result<()> {
    cases.parse::<u32>().context("CASES must be a number")?;
    fetch::fetch_all()?;
    let mut t = cargo();
    t.args(["test", "--release", "--workspace", "--", "--test-threads=2"]);
    t.env("PROPTEST_CASES", cases);
    status(t)
}

fn neon() -> Result<()> {
    const TARGET: &str = "aarch64-unknown-linux-gnu";
    let mut c = cargo();
    c.args([
        "test",
        "--release",
        "--target",
        TARGET,
        "-p",
        "realm-compute-cpu",
    ])
    .env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    )
    .env(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
        "qemu-aarch64 -L /usr/aarch64-linux-gnu",
    );
    status(c).context(format!(
        "needs `rustup target add {TARGET}` and `apt-get install qemu-user gcc-aarch64-linux-gnu`"
    ))
}

fn fuzz(seconds: &str, target: &str) -> Result<()> {
    seconds.parse::<u32>().context("SECONDS must be a number")?;
    let (dir, seeds) = match target {
        "gguf_reader" => (root().join("realm-core/fuzz"), "seeds"),
        "imatrix" => (root().join("realm-core/fuzz"), "seeds-imatrix"),
        "grammar" => (root().join("realm-models/fuzz"), "seeds"),
        "state" => (root().join("realm-models/fuzz"), "seeds-state"),
        "lora" => (root().join("realm-models/fuzz"), "seeds-lora"),
        other => bail!("no fuzz target `{other}` (gguf_reader, imatrix, grammar, state, lora)"),
    };
    let corpus = dir.join("corpus-run").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut c = cargo();
    c.current_dir(&dir)
        // cargo-fuzz passes nightly-only sanitizer flags; this lets the pinned
        // stable toolchain accept them.
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", target])
        .arg(&corpus)
        .args([seeds, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-max_len=65536");
    status(c).context("is cargo-fuzz installed? `cargo install cargo-fuzz`")
}
