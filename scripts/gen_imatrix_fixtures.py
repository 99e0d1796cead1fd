#!/usr/bin/env python3
"""Golden importance matrices from llama.cpp's llama-imatrix for realm-cli's
tests: realm-cli/tests/fixtures/imatrix/{smollm2,gemma3}.gguf and
realm-cli/tests/fixtures/imatrix.json.

For each model it runs llama-imatrix (built by `scripts/build_llama_cpp.sh
--tools`, llama.cpp 0c1e570 from the llama-cpp-python 0.3.36 sdist) on
realm-cli/tests/fixtures/perplexity.txt with 128-token chunks, its default
f16 KV cache and 2 threads, and keeps
- the matrices of the first BLOCKS blocks, and every block's `ffn_down`
  and `attn_output` (what a Q2_K_S file needs), written again with gguf-py with
  llama-imatrix's metadata (the whole file is 0.5-0.6 MB a model): what
  `realm imatrix` must come close to, and what `realm quantize --imatrix`
  and llama-quantize --imatrix both quantize with
  (scripts/gen_quantize_fixtures.py), so that matrices without an entry
  are quantized too;
- the perplexity llama-imatrix prints on the way, in imatrix.json;
- llama-imatrix's `--show-statistics` of the kept matrices,
  imatrix/{smollm2,gemma3}.stats.txt (its log prefixes taken off);
- the whole matrix of a synthetic Qwen 3 MoE and a Qwen 2 MoE (MOES below:
  `realm synth` writes them, so build realm-cli first),
  imatrix/{qwen3moe,qwen2moe}.gguf: the routed products' entries, by
  expert, and the Qwen 2 MoE's shared expert's.
Usage: python3 scripts/gen_imatrix_fixtures.py [MODELS_DIR]
"""
import json
import os
import re
import subprocess
import tempfile

import numpy as np

from llama_env import models_dir, tools

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
CTX = 128
BLOCKS = 6
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "realm-cli", "tests", "fixtures")


def prune(src, dst):
    """Writes the matrices of blocks below BLOCKS of llama-imatrix's file
    `src` to `dst`, with its metadata."""
    import gguf
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch="", endianess=gguf.GGUFEndian.LITTLE)
    # gguf-py always writes general.architecture; llama-imatrix does not.
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    fields = r.fields
    datasets = [bytes(fields["imatrix.datasets"].parts[i]).decode()
                for i in fields["imatrix.datasets"].data]
    w.add_array("imatrix.datasets", datasets)
    for key in ("imatrix.chunk_count", "imatrix.chunk_size"):
        w.add_uint32(key, int(fields[key].parts[-1][0]))
    kept = 0
    for t in sorted(r.tensors, key=lambda t: t.name):
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and (int(m.group(1)) < BLOCKS or re.search(r"\.(ffn_down|attn_output)\.", t.name)):
            data = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
            w.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
            kept += t.name.endswith(".in_sum2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return kept


# The synthetic mixtures of experts, by their key in imatrix.json: `realm
# synth LAYOUT --seed SEED --matrix-type TYPE` (the test writes the same
# file), CHUNKS chunks of CTX tokens, one sequence a batch.
MOES = {
    "moe": {"layout": "tiny-qwen3moe", "seed": 5, "matrix_type": "f16", "ctx": 64, "chunks": 24},
    "moe_shared": {"layout": "tiny-qwen2moe", "seed": 5, "matrix_type": "f16", "ctx": 64,
                   "chunks": 24},
}
REALM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "realm")


def main():
    bin_dir = tools()
    tool = os.path.join(bin_dir, "llama-imatrix")
    out = {"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "text": "perplexity.txt",
           "ctx": CTX, "blocks": BLOCKS, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for short, name in MODELS.items():
            whole = os.path.join(tmp, short + ".gguf")
            # Run from the fixtures so the dataset is named as the tests
            # name it.
            run = subprocess.run([tool, "-m", os.path.join(models_dir(), name),
                                  "-f", "perplexity.txt", "-c", str(CTX), "-t", "2",
                                  "-o", whole],
                                 cwd=FIXTURES, check=True, capture_output=True, text=True)
            log = run.stdout + run.stderr
            final = re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- (\d+\.\d+)", log)
            kept = prune(whole, os.path.join(FIXTURES, "imatrix", short + ".gguf"))
            stats = subprocess.run([tool, "-m", os.path.join(models_dir(), name),
                                    "--show-statistics", "--in-file",
                                    os.path.join("imatrix", short + ".gguf")],
                                   cwd=FIXTURES, check=True, capture_output=True, text=True)
            lines = [re.sub(r"^\d+\.\d+\.\d+\.\d+ [A-Z] ", "", l)
                     for l in (stats.stdout + stats.stderr).splitlines()]
            first = next(i for i, l in enumerate(lines) if l.startswith("Computing statistics"))
            with open(os.path.join(FIXTURES, "imatrix", short + ".stats.txt"), "w") as f:
                f.write("\n".join(l.rstrip() for l in lines[first:]).strip() + "\n")
            out["models"][short] = {"file": name, "ppl": float(final.group(1)),
                                    "matrices": kept}
            print(short, out["models"][short])
        # Synthetic mixtures of experts (f16), whole: what llama-imatrix
        # collects of routed products, by expert.
        for key, moe in MOES.items():
            short = moe["layout"].removeprefix("tiny-")
            path = os.path.join(tmp, short + ".gguf")
            subprocess.run([REALM, "synth", moe["layout"], "-o", path, "--seed", str(moe["seed"]),
                            "--matrix-type", moe["matrix_type"]], check=True, capture_output=True)
            run = subprocess.run([tool, "-m", path, "-f", "perplexity.txt", "-c", str(moe["ctx"]),
                                  "-b", str(moe["ctx"]), "--chunks", str(moe["chunks"]), "-t", "2",
                                  "-o", os.path.join("imatrix", short + ".gguf")],
                                 cwd=FIXTURES, check=True, capture_output=True, text=True)
            final = re.search(r"Final estimate: PPL = (\d+\.\d+)", run.stdout + run.stderr)
            out[key] = dict(moe, ppl=float(final.group(1)))
            print(short, out[key])
    with open(os.path.join(FIXTURES, "imatrix.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
