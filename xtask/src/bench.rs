//! `cargo xtask bench`: Realm against llama.cpp on both real models, in one
//! run, on one machine.
//!
//! It builds `realm` (release), finds llama.cpp's `llama-bench` (or builds
//! it with `scripts/build_llama_cpp.sh` into `~/.cache/realm/llama.cpp`),
//! then for each round runs `realm bench` and `llama-bench` back to back on
//! each model (pp512 and tg128, like llama-bench's defaults), so that both
//! engines see the same machine load. Every repetition of every round is a
//! sample; the table gives each engine's median tokens/s and their ratio,
//! in markdown, with the machine and the commits it was measured on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use realm_core::catalog;
use serde_json::Value;

use crate::{cargo, root, status};

/// The llama-cpp-python release whose vendored llama.cpp the build script
/// uses (its folder name inside the work directory).
const LLAMA_CPP_PYTHON: &str = "llama_cpp_python-0.3.36";

const USAGE: &str = "usage: cargo xtask bench [-t THREADS] [-r REPETITIONS] [--rounds N] [-p N_PROMPT] [-n N_GEN] [--models a,b]

  -t, --threads N      CPU threads for both engines (default: all cores)
  -r, --repetitions N  repetitions per test in each run (default 3)
      --rounds N       alternating rounds of realm / llama-bench (default 2)
  -p, --n-prompt N     prompt tokens of the prefill test (default 512)
  -n, --n-gen N        generated tokens of the decode test (default 128)
      --models LIST    comma-separated short names (default smollm2,gemma3)

llama-bench: $LLAMA_BENCH if set, else a build cached under
~/.cache/realm/llama.cpp (or an earlier one under /tmp/lcpp or
$TMPDIR/realm-llama-cpp), else scripts/build_llama_cpp.sh builds it into
~/.cache/realm/llama.cpp (about 20 minutes on two cores).";

/// Settings of one `cargo xtask bench`.
#[derive(Debug)]
struct Options {
    threads: usize,
    repetitions: usize,
    rounds: usize,
    n_prompt: usize,
    n_gen: usize,
    models: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            repetitions: 3,
            rounds: 2,
            n_prompt: 512,
            n_gen: 128,
            models: vec!["smollm2".into(), "gemma3".into()],
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if matches!(flag.as_str(), "-h" | "--help") {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?;
            let number = || -> Result<usize> {
                value
                    .parse()
                    .with_context(|| format!("{flag} takes a number, got `{value}`"))
            };
            match flag.as_str() {
                "-t" | "--threads" => o.threads = number()?,
                "-r" | "--repetitions" => o.repetitions = number()?,
                "--rounds" => o.rounds = number()?,
                "-p" | "--n-prompt" => o.n_prompt = number()?,
                "-n" | "--n-gen" => o.n_gen = number()?,
                "--models" => o.models = value.split(',').map(str::to_owned).collect(),
                _ => bail!("unknown option `{flag}`\n\n{USAGE}"),
            }
        }
        if o.threads == 0 || o.repetitions == 0 || o.rounds == 0 {
            bail!("threads, repetitions and rounds must be at least 1");
        }
        if o.n_prompt == 0 && o.n_gen == 0 {
            bail!("nothing to measure: both --n-prompt and --n-gen are 0");
        }
        Ok(o)
    }
}

/// Where `scripts/build_llama_cpp.sh` puts llama-bench under `work`.
fn bench_in(work: &Path) -> PathBuf {
    work.join(LLAMA_CPP_PYTHON)
        .join("vendor/llama.cpp/build/bin/llama-bench")
}

/// The cache folder for the llama.cpp build: `~/.cache/realm/llama.cpp`.
fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("realm/llama.cpp"))
}

/// An existing llama-bench, or a fresh build of one.
fn llama_bench() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LLAMA_BENCH") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("LLAMA_BENCH={} is not a file", p.display());
        }
        return Ok(p);
    }
    let cache = cache_dir()?;
    let tmp = std::env::temp_dir();
    let candidates = [
        bench_in(&cache),
        bench_in(Path::new("/tmp/lcpp")),
        bench_in(&tmp.join("realm-llama-cpp")),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    eprintln!(
        "xtask: llama-bench not found; building it into {} (slow)",
        cache.display()
    );
    let mut path = build_llama_cpp(false)?;
    if !path.is_file() {
        path = bench_in(&cache);
    }
    if !path.is_file() {
        bail!("the build script did not leave {}", path.display());
    }
    Ok(path)
}

/// Runs `scripts/build_llama_cpp.sh` (with `--cuda` when `cuda`) into the
/// cache folder, and returns the path it prints last: llama-bench, or with
/// `--cuda` the folder of the CUDA build's programs and libraries.
pub(crate) fn build_llama_cpp(cuda: bool) -> Result<PathBuf> {
    let script = root().join("scripts/build_llama_cpp.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if cuda {
        cmd.arg("--cuda");
    }
    let out = cmd
        .arg(cache_dir()?)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(
        printed.lines().last().unwrap_or_default().trim(),
    ))
}

/// Runs `cmd` and parses its standard output as JSON.
fn json_of(mut cmd: Command) -> Result<Value> {
    eprintln!("xtask: running {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing the JSON of {cmd:?}"))
}

/// The test name of a llama-bench record (`pp512`, `tg128`).
fn test_name(rec: &Value) -> Option<String> {
    let n_prompt = rec["n_prompt"].as_u64()?;
    let n_gen = rec["n_gen"].as_u64()?;
    Some(match (n_prompt, n_gen) {
        (p, 0) => format!("pp{p}"),
        (0, g) => format!("tg{g}"),
        (p, g) => format!("pp{p}+tg{g}"),
    })
}

/// Samples (tokens/s) per test name, added from one run's records.
#[derive(Debug, Default)]
struct Samples(Vec<(String, Vec<f64>)>);

impl Samples {
    fn add(&mut self, records: &Value) -> Result<()> {
        let recs = records
            .as_array()
            .context("expected a JSON array of test records")?;
        for rec in recs {
            let name = test_name(rec).context("a record without n_prompt/n_gen")?;
            let ts: Vec<f64> = match rec["samples_ts"].as_array() {
                Some(a) => a.iter().filter_map(Value::as_f64).collect(),
                None => rec["avg_ts"].as_f64().into_iter().collect(),
            };
            match self.0.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.extend(ts),
                None => self.0.push((name, ts)),
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&[f64]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

/// `median ± spread` where spread is half the min-max range.
fn cell(v: Option<&[f64]>) -> String {
    match v.and_then(|v| Some((median(v)?, v))) {
        Some((m, v)) => {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{m:.1} ± {:.1}", (hi - lo) / 2.0)
        }
        None => "-".into(),
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `cargo xtask bench ARGS`.
pub fn bench(args: &[String]) -> Result<()> {
    let o = Options::parse(args)?;
    crate::fetch::fetch_all()?;
    let llama = llama_bench()?;
    let mut build = cargo();
    build.args(["build", "--release", "-p", "realm-cli"]);
    status(build)?;
    let realm = root().join("target/release/realm");
    let lib_dir = llama.parent().map(Path::to_path_buf).unwrap_or_default();

    let mut results = Vec::new();
    let mut llama_commit = None;
    for name in &o.models {
        let model =
            catalog::known_model(name).with_context(|| format!("`{name}` is not a known model"))?;
        let path = catalog::cached_path(model)
            .filter(|p| p.is_file())
            .with_context(|| format!("{} is not in the model cache", model.file_name))?;
        let (mut ours, mut theirs) = (Samples::default(), Samples::default());
        for round in 0..o.rounds {
            eprintln!("xtask: {name}, round {} of {}", round + 1, o.rounds);
            // Both tools take the same test options.
            let test_args = [
                "-t".to_string(),
                o.threads.to_string(),
                "-r".into(),
                o.repetitions.to_string(),
                "-p".into(),
                o.n_prompt.to_string(),
                "-n".into(),
                o.n_gen.to_string(),
            ];
            // llama-bench's KV cache is f16 unless told otherwise.
            let mut r = Command::new(&realm);
            r.arg("bench")
                .arg(&path)
                .args(&test_args)
                .args(["--cache-type", "f16", "--json"]);
            ours.add(&json_of(r)?)?;
            let mut l = Command::new(&llama);
            l.env("LD_LIBRARY_PATH", &lib_dir)
                .arg("-m")
                .arg(&path)
                .args(&test_args)
                .args(["-o", "json"]);
            let recs = json_of(l)?;
            if llama_commit.is_none() {
                llama_commit = recs[0]["build_commit"].as_str().map(str::to_owned);
            }
            theirs.add(&recs)?;
        }
        results.push((model.file_name, ours, theirs));
    }

    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Measured {date} on {} ({cores} cores), {} threads; Realm {commit}{}, llama.cpp {} ({}); \
         f16 KV caches; tokens/s, median ± half range of {} samples ({} rounds of {} repetitions, \
         engines alternating).\n",
        cpu_name(),
        o.threads,
        if dirty { " (uncommitted changes)" } else { "" },
        llama_commit.as_deref().unwrap_or("?"),
        LLAMA_CPP_PYTHON.replace('_', "-"),
        o.rounds * o.repetitions,
        o.rounds,
        o.repetitions,
    );
    println!("| model | test | Realm t/s | llama.cpp t/s | Realm / llama.cpp |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (file, ours, theirs) in &results {
        let tests = [
            (o.n_prompt > 0).then(|| format!("pp{}", o.n_prompt)),
            (o.n_gen > 0).then(|| format!("tg{}", o.n_gen)),
        ];
        for test in tests.iter().flatten() {
            let (a, b) = (ours.get(test), theirs.get(test));
            let ratio = match (a.and_then(median), b.and_then(median)) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
                _ => "-".into(),
            };
            println!("| {file} | {test} | {} | {} | {ratio} |", cell(a), cell(b));
        }
    }
    Ok(())
}
