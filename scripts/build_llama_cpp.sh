#!/usr/bin/env bash
# Builds llama.cpp's benchmarks from the llama.cpp vendored in the
# llama-cpp-python sdist, for same-run comparisons with `realm bench`.
#
# Usage: scripts/build_llama_cpp.sh [--cuda | --server | --tools] [WORK_DIR]
#
# Plain: llama-bench (Release, native CPU); prints its path. It ends up in
# WORK_DIR/llama_cpp_python-VERSION/vendor/llama.cpp/build/bin/.
#
# --server: llama-server too (the same CPU build), to load it and `realm
# serve` alike with scripts/bench_serve.py; prints its path.
#
# --tools: llama-perplexity, llama-quantize, llama-completion,
# llama-export-lora, llama-imatrix and llama-gguf-split too (the same CPU
# build), the references scripts/gen_perplexity_fixtures.py,
# scripts/gen_quantize_fixtures.py, scripts/gen_grammar_fixtures.py,
# scripts/gen_lora_fixtures.py, scripts/gen_imatrix_fixtures.py and
# scripts/gen_split_fixtures.py run; prints their folder.
#
# --cuda: llama-bench and llama-batched-bench with the CUDA backend, for the
# GPU machine (`cargo xtask gpu-bundle` carries them there); prints their
# folder, build-cuda/bin/ beside the plain build's, which also holds the
# ggml and llama libraries they load. Needs the CUDA build tools (`source
# ../shared/gpu/setup-cuda.sh`) and takes about 30 minutes on 2 cores. It
# is built for that machine, not this one: Hopper's machine code only
# (sm_90, $CUDA_COMPUTE_CAP; no PTX, which took the compressed CUDA library
# from 18 MB to 38, too much for the GPU machine's carry), CPU code for any
# AVX2 machine, the C++ runtime linked in and no OpenMP, so that it needs
# no library the GPU machine's image may lack beyond the CUDA ones `realm`
# needs too (and glibc 2.36, which `realm` does not: 2.34). The programs
# link without resolving what the CUDA libraries need: the driver,
# libcuda, exists only there.
#
# WORK_DIR defaults to ~/.cache/realm/llama.cpp (where `cargo xtask bench`
# and `cargo xtask gpu-bundle` look); a finished build is reused as it is.
set -euo pipefail
version=0.3.36
cuda=0
server=0
tools=0
if [ "${1:-}" = --cuda ]; then
  cuda=1
  shift
elif [ "${1:-}" = --server ]; then
  server=1
  shift
elif [ "${1:-}" = --tools ]; then
  tools=1
  shift
fi
work=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/realm/llama.cpp}
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
if [ "$cuda" = 1 ]; then
  build="$src/build-cuda"
  targets=(llama-bench llama-batched-bench)
else
  build="$src/build"
  targets=(llama-bench)
  [ "$server" = 1 ] && targets+=(llama-server)
  [ "$tools" = 1 ] && targets+=(llama-perplexity llama-quantize llama-completion llama-export-lora llama-imatrix llama-gguf-split)
fi
# What the build prints: the CUDA folder, or its last program's path.
out="$build/bin/${targets[-1]}"
[ "$cuda" = 1 ] || [ "$tools" = 1 ] && out="$build/bin"
done_=1
for t in "${targets[@]}"; do
  [ -x "$build/bin/$t" ] || done_=0
done
if [ "$done_" = 1 ]; then
  echo "$out"
  exit 0
fi
if [ "$cuda" = 1 ] && ! command -v nvcc >/dev/null; then
  echo "build_llama_cpp.sh: --cuda needs nvcc: source ../shared/gpu/setup-cuda.sh first" >&2
  exit 1
fi
mkdir -p "$work"
cd "$work"
if [ ! -f "llama_cpp_python-$version.tar.gz" ]; then
  python3 -m pip download --no-deps --no-binary :all: --no-build-isolation -d . "llama-cpp-python==$version" >/dev/null 2>&1 ||
    python3 -m pip download --no-deps -d . "llama-cpp-python==$version" >/dev/null
fi
[ -d "llama_cpp_python-$version" ] || tar xzf "llama_cpp_python-$version.tar.gz"
command -v cmake >/dev/null || python3 -m pip install -q cmake
common=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_SERVER="$([ "$server" = 1 ] && echo ON || echo OFF)")
if [ "$cuda" = 1 ]; then
  nvcc="$(command -v nvcc)"
  cmake -S "$src" -B "$build" "${common[@]}" -DLLAMA_BUILD_EXAMPLES=OFF \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_COMPUTE_CAP:-90}-real" \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCUDAToolkit_ROOT="$(dirname "$(dirname "$nvcc")")" \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF \
    -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc -Wl,--allow-shlib-undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >/dev/null
else
  cmake -S "$src" -B "$build" "${common[@]}" -DGGML_NATIVE=ON >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >/dev/null
echo "$out"
