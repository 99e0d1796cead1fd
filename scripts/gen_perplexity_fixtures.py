#!/usr/bin/env python3
"""Golden perplexities from llama.cpp's llama-perplexity for realm-cli's
tests: realm-cli/tests/fixtures/perplexity.json.

For each model it runs llama-perplexity (built by
`scripts/build_llama_cpp.sh --tools`, llama.cpp 0c1e570 from the
llama-cpp-python 0.3.36 sdist) on realm-cli/tests/fixtures/perplexity.txt
with 128-token chunks, its default f16 KV cache and 2 threads, and stores the
running perplexity after each chunk and the final estimate with its
uncertainty; then, for SmolLM2 requantized to Q2_K by llama-quantize (which
`realm quantize` matches byte for byte), llama-perplexity's
`--kl-divergence` summary against the original as its base.
Usage: python3 scripts/gen_perplexity_fixtures.py [MODELS_DIR]
"""
import json
import os
import re
import subprocess
import sys
import tempfile

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
CTX = 128
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "realm-cli", "tests", "fixtures")


def main():
    models_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "REALM_MODELS", os.path.expanduser("~/.cache/realm/models"))
    bin_dir = subprocess.run([os.path.join(HERE, "build_llama_cpp.sh"), "--tools"],
                             check=True, capture_output=True, text=True).stdout.strip()
    tool = os.path.join(bin_dir, "llama-perplexity")
    text = os.path.join(FIXTURES, "perplexity.txt")
    out = {"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "text": "perplexity.txt",
           "ctx": CTX, "models": {}}
    for short, name in MODELS.items():
        run = subprocess.run([tool, "-m", os.path.join(models_dir, name), "-f", text,
                              "-c", str(CTX), "-t", "2"],
                             check=True, capture_output=True, text=True)
        log = run.stdout + run.stderr
        chunks = [float(v) for v in re.findall(r"\[\d+\](\d+\.\d+),", log)]
        final = re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- (\d+\.\d+)", log)
        out["models"][short] = {
            "file": name,
            "chunks": chunks,
            "ppl": float(final.group(1)),
            "uncertainty": float(final.group(2)),
        }
        print(short, out["models"][short])
    out["kl_divergence"] = kl_divergence(bin_dir, models_dir, text)
    print(out["kl_divergence"])
    with open(os.path.join(FIXTURES, "perplexity.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def kl_divergence(bin_dir, models_dir, text):
    base = os.path.join(models_dir, MODELS["smollm2"])
    with tempfile.TemporaryDirectory() as tmp:
        q2k, logits = os.path.join(tmp, "q2k.gguf"), os.path.join(tmp, "base.kld")
        subprocess.run([os.path.join(bin_dir, "llama-quantize"), "--allow-requantize",
                        base, q2k, "Q2_K", "2"], check=True, capture_output=True)
        common = ["-f", text, "-c", str(CTX), "-t", "2", "--kl-divergence-base", logits]
        subprocess.run([os.path.join(bin_dir, "llama-perplexity"), "-m", base, *common],
                       check=True, capture_output=True)
        run = subprocess.run([os.path.join(bin_dir, "llama-perplexity"), "-m", q2k, *common,
                              "--kl-divergence"], check=True, capture_output=True, text=True)
    log = run.stdout + run.stderr
    number = r"\s*:?\s*(-?\d+\.\d+)"
    fields = {
        "ppl": r"Mean PPL\(Q\)",
        "ppl_base": r"Mean PPL\(base\)",
        "ln_ratio": r"Mean ln\(PPL\(Q\)/PPL\(base\)\)",
        "kld": r"Mean    KLD:",
        "median_kld": r"Median  KLD:",
        "rms_p_diff": r"RMS \u0394p    ",
        "same_top": r"Same top p:",
    }
    return {"model": "smollm2", "quantized": "Q2_K", "base": MODELS["smollm2"],
            **{k: float(re.search(v + number, log).group(1)) for k, v in fields.items()}}


if __name__ == "__main__":
    main()
