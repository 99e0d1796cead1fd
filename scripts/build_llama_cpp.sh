#!/usr/bin/env bash
# Builds llama.cpp's llama-bench (Release, native) from the llama.cpp vendored
# in the llama-cpp-python sdist, for same-run comparisons with `realm bench`.
# Usage: scripts/build_llama_cpp.sh [WORK_DIR]   (prints the llama-bench path)
# WORK_DIR defaults to ~/.cache/realm/llama.cpp (where `cargo xtask bench`
# looks); llama-bench ends up in
# WORK_DIR/llama_cpp_python-VERSION/vendor/llama.cpp/build/bin/, and a
# finished build is reused as it is.
set -euo pipefail
version=0.3.36
work=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/realm/llama.cpp}
bin="$work/llama_cpp_python-$version/vendor/llama.cpp/build/bin/llama-bench"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$work"
cd "$work"
if [ ! -f "llama_cpp_python-$version.tar.gz" ]; then
  python3 -m pip download --no-deps --no-binary :all: --no-build-isolation -d . "llama-cpp-python==$version" >/dev/null 2>&1 ||
    python3 -m pip download --no-deps -d . "llama-cpp-python==$version" >/dev/null
fi
[ -d "llama_cpp_python-$version" ] || tar xzf "llama_cpp_python-$version.tar.gz"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
command -v cmake >/dev/null || python3 -m pip install -q cmake
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$src/build" -j "$(nproc)" --target llama-bench >/dev/null
echo "$src/build/bin/llama-bench"
