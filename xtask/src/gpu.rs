//! `cargo xtask gpu-bundle`: everything a GPU machine without a Rust
//! toolchain needs to check and benchmark the CUDA backend, in one folder.
//!
//! Builds `realm` and the GPU backend's test binaries with `--features cuda`
//! (in `target/cuda`, so the CPU build stays warm), strips them into
//! `target/gpu-bundle/` with llama.cpp's CUDA benchmarks (and
//! `target/gpu-bundle.tar.xz`, about 50 MiB, of which llama.cpp is 22;
//! the GPU machine takes at most 64), and writes `run.sh`, which on the GPU
//! machine:
//! writes synthetic-weight models of SmolLM2's and Gemma 3's layouts, runs
//! every GPU-vs-CPU test on `cuda:0` (64-token generations), and benchmarks
//! pp512/tg128 and batched decode of 1, 8 and 32 sequences with
//! `realm bench --device cuda` (decode steps recorded as CUDA graphs, and
//! op by op, without the Q8_1 blocks and with candle's ops instead of
//! Realm's fused kernels, for comparison), a wasm tenant's generation
//! through the runtime (the guest is in the bundle), profiles a decode
//! step op by op (each op's device time among them), and, where the machine
//! has Nsight Compute, each kernel's device time and DRAM traffic, runs the
//! op tests under `compute-sanitizer`'s memcheck, and runs llama.cpp's
//! llama-bench and llama-batched-bench on the same models (`cargo xtask
//! gpu-report` sets them beside Realm's). It leaves logs and tables in
//! `out/` beside it, packed into `$OUT/realm-gpu.tar.gz` after every step
//! (the device tool brings back at most 8 files), and a summary with
//! elapsed seconds on standard output. It runs what matters most first,
//! each step under a time limit cut to what is left of `REALM_RUN_SECONDS`
//! (570), so that a machine lent for a few minutes still returns the
//! issue's figures. `run.sh sanitize` runs the op tests under memcheck and
//! racecheck instead. A
//! test binary that fails has its tests run again one process each, after
//! SmolLM2's figures (a kernel's fault spoils the CUDA context for the rest
//! of its process). The bundle names the commit it was built from, which
//! `run.sh` prints first.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, root, status, wasm, WASM_GUEST};

const RUN_SH: &str = r#"#!/bin/sh
# Written by `cargo xtask gpu-bundle`: run on a machine with an NVIDIA GPU.
# A failing step is reported and the rest still run; a step that hangs is
# stopped (timeout) and reported the same way.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
# Logs and tables go to $here/out, and standard output to its summary.txt
# too. The device tool brings back at most 8 files from $OUT, so with $OUT
# set they are packed into $OUT/realm-gpu.tar.gz after every step: a run
# stopped at its limit still returns what it did. `cargo xtask gpu-report`
# reads the archive.
out="$here/out"
pack() {
  [ -n "${OUT:-}" ] || return 0
  # tar exits 1 when a file (summary.txt) grew as it was read: the archive
  # is whole all the same.
  tar czf "$OUT/realm-gpu.tar.gz.part" -C "$here" out 2>/dev/null
  [ "$?" -le 1 ] && mv -f "$OUT/realm-gpu.tar.gz.part" "$OUT/realm-gpu.tar.gz"
}
if [ -z "${REALM_RUN_TEED:-}" ]; then
  rm -rf "$out"; mkdir -p "$out"
  { REALM_RUN_TEED=1 sh "$0" "$@"; echo "$?" > "$out/rc"; } 2>&1 | tee "$out/summary.txt"
  pack
  exit "$(cat "$out/rc" 2>/dev/null || echo 1)"
fi
start="$(date +%s)"
say() { echo "[$(( $(date +%s) - start )) s] $*"; pack; }
# Every step's limit is cut to what is left of REALM_RUN_SECONDS from the
# start (570 by default, inside the device tool's 600), and a step is
# skipped when under 20 s are left, so that the run ends, packed, before
# the tool stops it. budget SECONDS prints the step's limit, or fails.
deadline=$(( start + ${REALM_RUN_SECONDS:-570} ))
budget() {
  left=$(( deadline - $(date +%s) - 5 ))
  [ "$left" -ge 20 ] || return 1
  if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
# candle links the driver, cuBLAS, cuRAND and the CUDA runtime (13.x). GPU
# images often keep them off the loader's path (the driver under
# /usr/local/nvidia, the rest in Python packages such as nvidia-cublas):
# find them there, never a build stub.
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13; do
  ldconfig -p 2>/dev/null | grep -q "$lib" && continue
  file="$(find /usr/local /usr/lib /opt -name "$lib" -not -path "*stubs*" 2>/dev/null | head -n 1)"
  [ -n "$file" ] && LD_LIBRARY_PATH="$(dirname "$file")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
if ldd "$here/realm" | grep -q "not found"; then
  echo "realm cannot start, missing libraries:"; ldd "$here/realm" | grep "not found"; exit 1
fi
echo "bundle of commit $(cat "$here/commit" 2>/dev/null || echo unknown)" | tee "$out/commit.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
export REALM_GPU_TEST_DEVICE="${REALM_GPU_TEST_DEVICE:-cuda:0}"
# sanitize TOOL SECONDS: the op tests under compute-sanitizer's TOOL, where
# the machine has it: memcheck (reads and writes outside an allocation or
# misaligned, launch errors) or racecheck (shared-memory hazards between a
# block's threads), Realm's kernels and candle's alike. Fails when the tool
# finds an error or runs out of time.
cs="$(command -v compute-sanitizer || find /usr/local /opt -maxdepth 5 -type f -name compute-sanitizer 2>/dev/null | head -n 1)"
sanitize() {
  tool="$1"
  if [ -z "$cs" ]; then
    echo "no compute-sanitizer: no $tool"; return 1
  fi
  t=$(budget "$2") || { echo "SKIPPED: $tool (no time left)"; return 1; }
  timeout -k 10 "$t" "$cs" --tool "$tool" --error-exitcode 9 "$here/test-ops" --test-threads 1 \
    > "$out/sanitize-$tool.log" 2>&1
  rc=$?
  case "$rc" in
    0) ;;
    124|137) echo "TIMED OUT: $tool ($t s; see sanitize-$tool.log)" ;;
    *) echo "FAILED: $tool, exit $rc (see sanitize-$tool.log)" ;;
  esac
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test result|panicked" "$out/sanitize-$tool.log" | head -n 20
  say "$tool done"
  [ "$rc" -eq 0 ]
}
# `run.sh sanitize`: instead of the figures, both tools. Exits 1 when one
# fails.
if [ "${1:-}" = sanitize ]; then
  failed=0
  sanitize memcheck 250 || failed=1
  sanitize racecheck 250 || failed=1
  exit "$failed"
fi
# The models stay out of $out: only logs and tables come back.
models="$here/models"
mkdir -p "$models"
"$here/realm" synth smollm2 -o "$models/smollm2-synth.gguf" || exit 1
"$here/realm" synth gemma3 -o "$models/gemma3-synth.gguf" || exit 1
# A rank-16 LoRA adapter of every block matrix, for what adapters cost.
"$here/realm" synth smollm2 --lora 16 --alpha 32 -o "$models/smollm2-lora.gguf" || exit 1
export REALM_GPU_TEST_TOKENS=64
dev="$REALM_GPU_TEST_DEVICE"
# gputest NAME SECONDS: one GPU test binary; one that fails is noted for
# rerun_alone.
failed_bins=""
gputest() {
  name="$1"
  t=$(budget "$2") || { echo "SKIPPED: $name (no time left)"; return; }
  if ! timeout -k 10 "$t" "$here/$name" --nocapture > "$out/$name.log" 2>&1; then
    echo "FAILED: $name (see $name.log; its tests run again one by one later)"
    failed_bins="$failed_bins $name"
  fi
  grep -E "^test result|FAILED|panicked|max \|logit" "$out/$name.log" | head -n 30
  say "$name done"
}
# rerun_alone SECONDS: the tests of each binary that failed, again, one
# process each (at most 60 s each, SECONDS in all): a kernel's fault (an
# illegal address) spoils the CUDA context for every later test of its
# process, so only a test alone says whether it fails by itself.
rerun_alone() {
  [ -z "$failed_bins" ] && return
  t=$(budget "$1") || { echo "SKIPPED: reruns (no time left)"; return; }
  until=$(( $(date +%s) + t ))
  for name in $failed_bins; do
    echo "$name, each test alone:"
    for t in $("$here/$name" --list 2>/dev/null | sed -n 's/: test$//p'); do
      left=$(( until - $(date +%s) ))
      if [ "$left" -le 0 ]; then
        echo "  no time left for the rest"; break 2
      fi
      [ "$left" -gt 60 ] && left=60
      log="$name-alone-$(echo "$t" | tr -c 'A-Za-z0-9_\n' '_').log"
      timeout -k 10 "$left" "$here/$name" --exact "$t" --nocapture > "$out/$log" 2>&1
      case $? in
        0) echo "  ok: $t" ;;
        124|137) echo "  TIMED OUT: $t (see $log)" ;;
        *) echo "  FAILED: $t (see $log)" ;;
      esac
    done
  done
  say "reruns done"
}
# bench NAME SECONDS ARGS...: one `realm bench`, with f16 KV caches as
# llama.cpp's figures have them (or $cache's type).
bench() {
  name="$1"; shift
  t=$(budget "$1") || { echo "SKIPPED: $name (no time left)"; return; }
  shift
  timeout -k 10 "$t" "$here/realm" bench "$@" --cache-type "${cache:-f16}" > "$out/$name.md" \
    2> "$out/$name.err" || echo "FAILED: $name"
  cat "$out/$name.md"; grep -v "^realm: \(loaded\|opened\)" "$out/$name.err"
  say "$name done"
}
# ncu_profile MODEL: each kernel's device time and DRAM traffic, from
# Nsight Compute (with the clocks left as they are), for a 512-token prompt
# and for single-sequence decode steps (recorded ones: ncu times a graph's
# kernels one by one, each with the caches flushed first), at most 1000
# launches each; `cargo xtask gpu-report` sums them kernel by kernel.
ncu="$(command -v ncu || find /usr/local /opt -maxdepth 4 -type f -name ncu 2>/dev/null | head -n 1)"
ncu_profile() {
  m="$1"
  if [ -z "$ncu" ]; then
    echo "no ncu: no kernel-by-kernel profile"; return
  fi
  for phase in prefill decode; do
    case "$phase" in
      prefill) steps="-p 512 -n 0" ;;
      *) steps="-p 0 -n 8" ;;
    esac
    t=$(budget 90) || { echo "SKIPPED: ncu-$m-$phase (no time left)"; continue; }
    # $steps is split into its words on purpose.
    timeout -k 10 "$t" "$ncu" --clock-control none --launch-count 1000 --csv --print-units base \
      --print-kernel-base function \
      --metrics gpu__time_duration.sum,dram__bytes.sum \
      --log-file "$out/ncu-$m-$phase.csv" "$here/realm" bench "$models/$m-synth.gguf" \
      --device "$dev" $steps -r 1 --cache-type f16 > "$out/ncu-$m-$phase.log" 2>&1 \
      || echo "FAILED: ncu-$m-$phase (see ncu-$m-$phase.log)"
    say "ncu-$m-$phase done"
  done
}
# llama_cpp MODEL: llama.cpp's figures for the same model on this machine,
# as the issue's reference has them (all layers on the GPU, flash attention
# auto, f16 KV caches): llama-bench's pp512 and tg128 (30 repetitions) and
# llama-batched-bench's decode of 1, 8 and 32 sequences after 512-token
# prompts. `cargo xtask gpu-report` puts them beside Realm's.
llama="$here/llama.cpp"
llama_cpp() {
  m="$1"
  if [ ! -x "$llama/llama-bench" ]; then
    echo "no llama.cpp in this bundle: no same-run comparison"; return
  fi
  (export LD_LIBRARY_PATH="$llama:$LD_LIBRARY_PATH"
   if t=$(budget 120); then
     timeout -k 10 "$t" "$llama/llama-bench" -m "$models/$m-synth.gguf" -ngl 99 -fa auto \
       -p 512 -n 128 -r 30 -o md > "$out/llama-bench-$m.md" 2> "$out/llama-bench-$m.err" \
       || echo "FAILED: llama-bench-$m (see llama-bench-$m.err)"
   else
     echo "SKIPPED: llama-bench-$m (no time left)"
   fi
   if t=$(budget 120); then
     timeout -k 10 "$t" "$llama/llama-batched-bench" -m "$models/$m-synth.gguf" -ngl 99 -fa auto \
       -c 20480 -b 2048 -ub 512 -npp 512 -ntg 128 -npl 1,8,32 > "$out/llama-batched-$m.log" 2>&1 \
       || echo "FAILED: llama-batched-bench-$m (see llama-batched-$m.log)"
   else
     echo "SKIPPED: llama-batched-bench-$m (no time left)"
   fi)
  cat "$out/llama-bench-$m.md" 2>/dev/null; grep "^|" "$out/llama-batched-$m.log" 2>/dev/null
  say "llama.cpp $m done"
}
# ppl_check MODEL: `realm perplexity` of a text on this device and on the
# CPU backend (the same synthetic model, f16 KV caches): scoring every
# token of a prompt (Model::forward_outputs, the server's prompt
# log-probabilities) agrees across backends.
ppl_check() {
  m="$1"
  for d in "$dev" cpu; do
    t=$(budget 60) || { echo "SKIPPED: perplexity-$m on $d (no time left)"; return; }
    timeout -k 10 "$t" "$here/realm" perplexity "$models/$m-synth.gguf" -f "$here/perplexity.txt" \
      -c 128 --cache-type f16 --device "$d" > "$out/perplexity-$m-$d.txt" \
      2> "$out/perplexity-$m-$d.err" || echo "FAILED: perplexity-$m on $d (see perplexity-$m-$d.err)"
    echo "perplexity-$m on $d: $(cat "$out/perplexity-$m-$d.txt" | tr '\n' ' ')"
  done
  say "perplexity-$m done"
}
# serve_check MODEL: `realm serve` on this device, loaded by bench_serve.py
# (greedy completions of 128 tokens, end of generation banned) with one
# client and with 8 at a time: the server's engine, batched decode steps
# included, on the GPU, and its tokens per second.
serve_check() {
  m="$1"
  t=$(budget 120) || { echo "SKIPPED: serve-$m (no time left)"; return; }
  # The log exists before the server does, so that reading it never races
  # the background shell's redirection.
  : > "$out/serve-$m.log"
  "$here/realm" serve "$models/$m-synth.gguf" --device "$dev" --port 0 --parallel 8 -c 1024 \
    --cache-type f16 > "$out/serve-$m.log" 2>&1 &
  pid=$!
  addr=""; waited=0
  while [ "$waited" -lt 60 ] && kill -0 "$pid" 2>/dev/null; do
    addr="$(sed -n 's|.* on http://\([^ ]*\) .*|\1|p' "$out/serve-$m.log" | head -n 1)"
    [ -n "$addr" ] && break
    sleep 1; waited=$(( waited + 1 ))
  done
  if [ -z "$addr" ]; then
    echo "FAILED: serve-$m did not start (see serve-$m.log)"
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return
  fi
  for c in 1 8; do
    timeout -k 10 "$t" python3 "$here/bench_serve.py" "http://$addr" --clients "$c" --requests 2 \
      --max-tokens 128 > "$out/serve-$m-c$c.txt" 2>&1 \
      || echo "FAILED: serve-$m with $c clients (see serve-$m-c$c.txt)"
    cat "$out/serve-$m-c$c.txt"
  done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  say "serve-$m done"
}
# (A variable set for one bench is set in a subshell: some shells keep an
# assignment before a function call after it.)
# In order of what matters when the machine's time runs out: the op tests,
# the issue's figures (SmolLM2, decode steps recorded as CUDA graphs) and
# llama.cpp's on the same model, the model and step tests, SmolLM2's op by
# op profile, Gemma 3's figures and profile, perplexities on both backends,
# the server under load, SmolLM2's kernel by kernel profile, the op tests under memcheck, Gemma 3's
# kernel profile, then the comparisons.
gputest test-ops 90
bench bench-smollm2 150 "$models/smollm2-synth.gguf" --device "$dev" -p 512 -n 128 -r 30 --npl 1,8,32
llama_cpp smollm2
gputest test-model 150
gputest test-steps 120
# Where a decode step's time goes, op by op: waiting for the device after
# each op, then each op's device time with the step's ops run back to back
# (no profiler needed).
bench profile-smollm2 60 "$models/smollm2-synth.gguf" --device "$dev" -p 0 -n 64 -r 1 --profile
# SmolLM2's figures are in: now the tests of any binary that failed, alone.
rerun_alone 120
bench bench-gemma3 150 "$models/gemma3-synth.gguf" --device "$dev" -p 512 -n 128 -r 30 --npl 1,8,32
llama_cpp gemma3
bench profile-gemma3 60 "$models/gemma3-synth.gguf" --device "$dev" -p 0 -n 64 -r 1 --profile
ppl_check smollm2
ppl_check gemma3
serve_check smollm2
ncu_profile smollm2
sanitize memcheck 200
ncu_profile gemma3
# A LoRA adapter on every request (steps with adapters run op by op).
bench bench-smollm2-lora 90 "$models/smollm2-synth.gguf" --device "$dev" --lora "$models/smollm2-lora.gguf" -p 512 -n 128 -r 10 --npl 1,32
for m in smollm2 gemma3; do
  # Op by op.
  bench "bench-$m-op-by-op" 90 "$models/$m-synth.gguf" --device "$dev" --steps op-by-op -p 512 -n 128 -r 10 --npl 32
  # The fused kernels, but products quantize their own input (Q8_1 blocks
  # up to 8 rows, the matrix layout for a prompt's chunk and 32 sequences).
  (export REALM_Q8_BLOCKS=0; bench "bench-$m-no-q8" 90 "$models/$m-synth.gguf" --device "$dev" -p 512 -n 128 -r 10 --npl 1,8,32)
  # A recorded step's device time, from its launch to its end, against
  # its wall time.
  (export REALM_TIME_REPLAYS=1; bench "bench-$m-replay-time" 60 "$models/$m-synth.gguf" --device "$dev" -p 0 -n 128 -r 10 --npl 1,32)
  # f32 KV caches (Realm's default, exact).
  (cache=f32; bench "bench-$m-f32-cache" 60 "$models/$m-synth.gguf" --device "$dev" -p 512 -n 128 -r 10 --npl 32)
  # Each decode step's keys and values stored by a kernel of their own.
  (export REALM_STORE_IN_ATTENTION=0; bench "bench-$m-separate-stores" 60 "$models/$m-synth.gguf" --device "$dev" -p 0 -n 128 -r 10 --npl 1,32)
  # A prompt attended by the decode kernel instead of the tiled one.
  (export REALM_TILED_ATTENTION=0; bench "bench-$m-untiled" 60 "$models/$m-synth.gguf" --device "$dev" -p 512 -n 0 -r 10)
  # candle's ops instead of Realm's fused kernels.
  (export REALM_FUSED_KERNELS=0; bench "bench-$m-unfused" 90 "$models/$m-synth.gguf" --device "$dev" -p 512 -n 128 -r 10 --npl 1,32)
  # A wasm tenant's generation through the runtime (guest sampling
  # included), its KV cache f16 as the native figures'.
  bench "bench-$m-wasm" 90 "$models/$m-synth.gguf" --device "$dev" --wasm --guest "$here/realm_wasm.wasm" -p 512 -n 128 -r 5
  # After a long context (llama-bench's -d 4096).
  bench "bench-$m-d4096" 90 "$models/$m-synth.gguf" --device "$dev" -p 512 -n 128 -d 4096 -r 5
  # The same decode with each row and head's keys in one block.
  (export REALM_SPLIT_KEYS=0; bench "bench-$m-d4096-unsplit" 60 "$models/$m-synth.gguf" --device "$dev" -p 0 -n 128 -d 4096 -r 5)
done
rm -rf "$models"
say "all done"
"#;

pub fn bundle(args: &[String]) -> Result<()> {
    let llama = match args {
        [] => true,
        [a] if a == "--no-llama" => false,
        _ => bail!("gpu-bundle takes only --no-llama, not {args:?}"),
    };
    if std::env::var_os("CUDA_ROOT").is_none() && which("nvcc").is_none() {
        bail!("no CUDA build tools: `source ../shared/gpu/setup-cuda.sh` first");
    }
    let target = root().join("target/cuda");
    let mut build = cargo();
    build.env("CARGO_TARGET_DIR", &target).args([
        "build",
        "--release",
        "-p",
        "realm-cli",
        "--features",
        "cuda",
    ]);
    status(build)?;
    let mut tests = cargo();
    tests.env("CARGO_TARGET_DIR", &target).args([
        "test",
        "--release",
        "-p",
        "realm-compute-gpu",
        "--features",
        "cuda",
        "--no-run",
        "--message-format=json",
    ]);
    eprintln!("xtask: running {tests:?}");
    let out = tests.output().context("building the GPU tests")?;
    if !out.status.success() {
        bail!(
            "building the GPU tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = root().join("target/gpu-bundle");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut files = vec![(target.join("release/realm"), dir.join("realm"))];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // The emulated-kernel tests run the CUDA source on the CPU: they
        // need the source tree and a C++ compiler, not a GPU.
        let is_test = msg["profile"]["test"].as_bool() == Some(true)
            && msg["target"]["kind"][0].as_str() == Some("test")
            && msg["target"]["name"].as_str() != Some("emulated");
        if let (true, Some(exe), Some(name)) = (
            is_test,
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
        ) {
            files.push((PathBuf::from(exe), dir.join(format!("test-{name}"))));
        }
    }
    if files.len() < 2 {
        bail!("no GPU test binaries were built");
    }
    for (from, to) in &files {
        std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        let mut strip = Command::new("strip");
        strip.arg(to);
        status(strip)?;
    }
    // The wasm guest, for a tenant's generation through the runtime.
    wasm()?;
    std::fs::copy(root().join(WASM_GUEST), dir.join("realm_wasm.wasm"))
        .context("copying the wasm guest")?;
    // The server's load generator (python3 is on the GPU machine).
    std::fs::copy(
        root().join("scripts/bench_serve.py"),
        dir.join("bench_serve.py"),
    )
    .context("copying bench_serve.py")?;
    // A text for `realm perplexity` on both backends.
    std::fs::copy(
        root().join("realm-cli/tests/fixtures/perplexity.txt"),
        dir.join("perplexity.txt"),
    )
    .context("copying the perplexity text")?;
    if llama {
        add_llama_cpp(&dir.join("llama.cpp"))?;
    } else {
        eprintln!("xtask: --no-llama: the bundle has no llama.cpp to compare with");
    }
    // Which source the figures come from: run.sh prints it first.
    std::fs::write(dir.join("commit"), format!("{}\n", source_commit()))
        .context("writing the bundle's commit")?;
    let run = dir.join("run.sh");
    std::fs::write(&run, RUN_SH)?;
    let mut chmod = Command::new("chmod");
    chmod.arg("+x").arg(&run);
    status(chmod)?;
    // The binaries are mostly candle's PTX text, which compresses about 8x:
    // small enough to carry to a GPU machine.
    let archive = root().join("target/gpu-bundle.tar.xz");
    let mut tar = Command::new("tar");
    tar.current_dir(root().join("target"))
        .env("XZ_OPT", "-6 -T0")
        .args(["cJf", "gpu-bundle.tar.xz", "gpu-bundle"]);
    status(tar)?;
    let size = std::fs::metadata(&archive)?.len();
    eprintln!(
        "xtask: {} ({} binaries{}, {:.1} MiB); on the GPU machine: \
         tar xJf target/gpu-bundle.tar.xz -C target && target/gpu-bundle/run.sh",
        archive.display(),
        files.len(),
        if llama { " and llama.cpp" } else { "" },
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// The llama.cpp programs run.sh compares with.
const LLAMA_PROGRAMS: &[&str] = &["llama-bench", "llama-batched-bench"];

/// llama.cpp's CUDA benchmarks, so that the GPU machine measures llama.cpp
/// in the same run as Realm: `scripts/build_llama_cpp.sh --cuda` builds
/// them (once, about 30 minutes on 2 cores; reused after), and they go
/// into `to` with the libraries of the build they load.
fn add_llama_cpp(to: &Path) -> Result<()> {
    eprintln!("xtask: llama.cpp's CUDA benchmarks (a first build takes about 30 minutes)");
    let bin = crate::bench::build_llama_cpp(true)
        .context("`cargo xtask gpu-bundle --no-llama` leaves llama.cpp out")?;
    // The programs, then every library of the build that one of them
    // needs, each under the name it is asked for (the build's names are
    // links to versioned files).
    let mut files: Vec<String> = LLAMA_PROGRAMS.iter().map(|p| p.to_string()).collect();
    let mut i = 0;
    while i < files.len() {
        let path = bin.join(&files[i]);
        if !path.is_file() {
            bail!("the llama.cpp build has no {}", path.display());
        }
        for lib in needed(&path)? {
            if bin.join(&lib).is_file() && !files.contains(&lib) {
                files.push(lib);
            }
        }
        i += 1;
    }
    std::fs::create_dir_all(to)?;
    for name in &files {
        let dest = to.join(name);
        std::fs::copy(bin.join(name), &dest)
            .with_context(|| format!("copying {name} from {}", bin.display()))?;
        let mut strip = Command::new("strip");
        strip.arg(&dest);
        status(strip)?;
    }
    Ok(())
}

/// The shared libraries ELF file `path` asks for (`readelf -d`'s NEEDED).
fn needed(path: &Path) -> Result<Vec<String>> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(path)
        .output()
        .context("running readelf")?;
    if !out.status.success() {
        bail!("readelf -d {} failed", path.display());
    }
    Ok(needed_in(&String::from_utf8_lossy(&out.stdout)))
}

/// The NEEDED entries of `readelf -d`'s output, e.g. ` 0x0000000000000001
/// (NEEDED)             Shared library: [libllama.so.0]`.
fn needed_in(dynamic: &str) -> Vec<String> {
    dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}

/// The commit the bundle is built from (12 hex digits), `-dirty` when
/// tracked files differ from it, or `unknown` outside a git checkout.
fn source_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root())
            .args(args)
            .output()
            .ok()
    };
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        return "unknown".into();
    };
    // `git diff --quiet` exits 1 when tracked files changed.
    match git(&["diff", "--quiet", "HEAD"]).map(|o| o.status.code()) {
        Some(Some(0)) => hash,
        _ => format!("{hash}-dirty"),
    }
}

/// The path of `program` on `$PATH`, if any.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a checkout the bundle names its commit by hash.
    #[test]
    fn bundles_name_their_commit() {
        if !root().join(".git").exists() || which("git").is_none() {
            eprintln!("not a git checkout, or no git: not checked");
            return;
        }
        let c = source_commit();
        let hash = c.strip_suffix("-dirty").unwrap_or(&c);
        assert!(
            hash.len() >= 12 && hash.chars().all(|ch| ch.is_ascii_hexdigit()),
            "{c}"
        );
    }

    /// The script runs only on rare GPU machines: check here that the
    /// shell can at least parse it (`sh -n`), and that it runs what it
    /// should first.
    #[test]
    fn run_sh_parses_and_runs_the_issue_figures_first() {
        let Some(sh) = which("sh") else {
            eprintln!("no sh on $PATH: not checked");
            return;
        };
        let path = std::env::temp_dir().join(format!("realm-run-sh-{}.sh", std::process::id()));
        std::fs::write(&path, RUN_SH).unwrap();
        let out = Command::new(sh).arg("-n").arg(&path).output().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            out.status.success(),
            "sh -n run.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let at = |s: &str| RUN_SH.find(s).unwrap_or_else(|| panic!("run.sh lacks {s}"));
        assert!(at("gputest test-ops") < at("bench bench-smollm2 "));
        // llama.cpp's figures on the same model right after Realm's.
        assert!(at("bench bench-smollm2 ") < at("llama_cpp smollm2"));
        assert!(at("llama_cpp smollm2") < at("gputest test-model"));
    }

    /// A bundle of stand-ins (shell scripts for `realm` and the test
    /// binaries, one of which fails) runs run.sh through: it packs its
    /// outputs into `$OUT`, reruns the failing binary's tests alone and
    /// ends; with no time it skips every step and still packs.
    #[test]
    fn run_sh_packs_its_outputs_and_keeps_to_its_time() {
        if ["sh", "tar", "timeout"].iter().any(|p| which(p).is_none()) {
            eprintln!("no sh, tar or timeout on $PATH: not checked");
            return;
        }
        let tmp = std::env::temp_dir().join(format!("realm-run-sh-{}", std::process::id()));
        let bundle = tmp.join("gpu-bundle");
        std::fs::create_dir_all(bundle.join("llama.cpp")).unwrap();
        let script = |name: &str, body: &str| {
            let path = bundle.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut chmod = Command::new("chmod");
            chmod.arg("+x").arg(&path);
            status(chmod).unwrap();
        };
        script("run.sh", RUN_SH.trim_start_matches("#!/bin/sh\n"));
        script(
            "realm",
            r#"case "$1" in
  synth) touch "$4" ;;
  bench) echo "realm: loaded $2" >&2
         echo "| model | test | t/s |"; echo "| --- | --- | ---: |"; echo "| m | pp512 | 1.00 ± 0.00 |" ;;
esac"#,
        );
        script(
            "llama.cpp/llama-bench",
            r#"echo "| model | test | t/s |"; echo "| --- | --- | ---: |"; echo "| m | tg128 | 2.00 ± 0.00 |""#,
        );
        script(
            "llama.cpp/llama-batched-bench",
            r#"echo "| PP | TG | B | S_TG t/s |"; echo "| 512 | 128 | 32 | 3.00 |""#,
        );
        for t in ["test-ops", "test-model"] {
            script(t, "echo 'test result: ok. 1 passed'");
        }
        script(
            "test-steps",
            r#"[ "${1:-}" = --list ] && { echo "one: test"; echo "two: test"; exit 0; }
echo "test result: FAILED. 1 passed; 1 failed"; exit 101"#,
        );
        let run = |seconds: &str, out: &Path| {
            std::fs::create_dir_all(out).unwrap();
            let o = Command::new("sh")
                .arg(bundle.join("run.sh"))
                .env("OUT", out)
                .env("REALM_RUN_SECONDS", seconds)
                .output()
                .unwrap();
            let unpacked = out.join("unpacked");
            std::fs::create_dir_all(&unpacked).unwrap();
            let mut tar = Command::new("tar");
            tar.arg("xzf")
                .arg(out.join("realm-gpu.tar.gz"))
                .arg("-C")
                .arg(&unpacked);
            status(tar).unwrap();
            let summary = std::fs::read_to_string(unpacked.join("out/summary.txt")).unwrap();
            assert_eq!(summary, String::from_utf8_lossy(&o.stdout), "{summary}");
            (o.status.code(), summary, unpacked.join("out"))
        };
        let (code, summary, files) = run("300", &tmp.join("full"));
        assert_eq!(code, Some(0), "{summary}");
        // Nothing but the archive in $OUT (and what this test unpacked).
        let names: Vec<_> = std::fs::read_dir(tmp.join("full"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        lines_in(
            &summary,
            &[
                "FAILED: test-steps",
                "test-steps, each test alone:\n  FAILED: one (see test-steps-alone-one.log)",
                "| m | tg128 | 2.00 ± 0.00 |\n| PP | TG | B | S_TG t/s |\n| 512 | 128 | 32 | 3.00 |\n",
                "all done",
            ],
            &["SKIPPED", "No such file"],
        );
        for f in [
            "bench-smollm2.md",
            "llama-batched-gemma3.log",
            "bench-gemma3-wasm.md",
            "test-ops.log",
            "commit.txt",
        ] {
            assert!(files.join(f).is_file(), "{f} missing:\n{summary}");
        }
        // No time: every step is skipped, and the run still packs.
        let (code, summary, _) = run("0", &tmp.join("none"));
        std::fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(code, Some(0), "{summary}");
        lines_in(
            &summary,
            &[
                "SKIPPED: test-ops (no time left)",
                "SKIPPED: bench-smollm2 (no time left)",
                "SKIPPED: llama-batched-bench-smollm2 (no time left)",
                "SKIPPED: bench-gemma3-d4096-unsplit (no time left)",
                "all done",
            ],
            &["FAILED", "No such file"],
        );
    }

    /// Asserts that `summary` holds every one of `present` and none of
    /// `absent`.
    fn lines_in(summary: &str, present: &[&str], absent: &[&str]) {
        for line in present {
            assert!(summary.contains(line), "{line} not in\n{summary}");
        }
        for line in absent {
            assert!(!summary.contains(line), "{line} in\n{summary}");
        }
    }

    #[test]
    fn the_libraries_a_program_needs_are_read_from_readelf() {
        let dynamic = "
Dynamic section at offset 0x2d8 contains 33 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libllama.so.0]
 0x0000000000000001 (NEEDED)             Shared library: [libggml.so.0]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000001d (RUNPATH)            Library runpath: [/build/bin:]
";
        assert_eq!(
            needed_in(dynamic),
            ["libllama.so.0", "libggml.so.0", "libc.so.6"]
        );
    }
}
