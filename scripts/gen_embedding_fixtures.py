#!/usr/bin/env python3
"""Golden embeddings from llama.cpp's llama-embedding for realm-cli's tests:
realm-cli/tests/fixtures/embeddings.json.

For each model, pooling (mean, cls, last) and prompt it runs llama-embedding
(built in the same CPU build as `scripts/build_llama_cpp.sh --tools`, with
`cmake --build ... --target llama-embedding`; llama.cpp 0c1e570 from the
llama-cpp-python 0.3.36 sdist; unit-length normalisation, its default) and
stores the vector.
Usage: python3 scripts/gen_embedding_fixtures.py [MODELS_DIR]
"""
import json
import os
import subprocess
import sys

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
PROMPTS = [
    "The capital of France is Paris.",
    "A lighthouse keeper climbs one hundred and twelve steps every evening.",
    "def add(a, b):\n    return a + b",
]
POOLINGS = ["mean", "cls", "last"]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "realm-cli", "tests", "fixtures", "embeddings.json")


def main():
    models_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "REALM_MODELS", os.path.expanduser("~/.cache/realm/models"))
    bin_dir = subprocess.run([os.path.join(HERE, "build_llama_cpp.sh"), "--tools"],
                             check=True, capture_output=True, text=True).stdout.strip()
    build = os.path.dirname(bin_dir)
    subprocess.run(["cmake", "--build", build, "--target", "llama-embedding"],
                   check=True, capture_output=True)
    tool = os.path.join(bin_dir, "llama-embedding")
    cases = []
    for short, name in MODELS.items():
        for pooling in POOLINGS:
            for prompt in PROMPTS:
                # One prompt per run: llama-embedding splits its prompt at
                # newlines.
                run = subprocess.run(
                    [tool, "-m", os.path.join(models_dir, name), "-p", prompt,
                     "--embd-separator", "<#sep#>", "--pooling", pooling,
                     "--embd-output-format", "json", "-t", "2"],
                    check=True, capture_output=True, text=True)
                vector = json.loads(run.stdout)["data"][0]["embedding"]
                cases.append({"model": short, "pooling": pooling, "prompt": prompt,
                              "embedding": vector})
                print(short, pooling, len(vector))
    with open(OUT, "w") as f:
        json.dump({"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
