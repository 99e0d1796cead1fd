#!/usr/bin/env python3
"""Golden embeddings from llama.cpp's llama-embedding for realm-cli's tests:
realm-cli/tests/fixtures/embeddings.json.

For each model, pooling (mean, cls, last) and prompt it runs llama-embedding
(built in the same CPU build as `scripts/build_llama_cpp.sh --tools`, with
`cmake --build ... --target llama-embedding`; llama.cpp 0c1e570 from the
llama-cpp-python 0.3.36 sdist; unit-length normalisation, its default) and
stores the vector.

Encoders, end to end: `realm synth` writes tiny BERT and Nomic BERT models
(f32, seed 3) with BGE's WordPiece vocabulary (llama.cpp's
ggml-vocab-bert-bge.gguf, from `cargo xtask fetch-vocab`) and a tiny Nomic
BERT MoE with XLM-R's unigram vocabulary (ggml-vocab-nomic-bert-moe.gguf),
and llama-embedding embeds text with each model's own pooling (CLS, mean):
the tokenizer, the encoder, pooling and normalisation at once.
Usage: python3 scripts/gen_embedding_fixtures.py [MODELS_DIR] [--encoders-only]
(after cargo build --release -p realm-cli; --encoders-only keeps the
stored real-model cases)
"""
import json
import os
import subprocess
import sys

import llama_env

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
# Text that WordPiece splits every way: case, accents, CJK, punctuation,
# symbols, digits, an unknown character.
ENCODER_PROMPTS = PROMPTS + [
    "Héllo Wörld! Ça va? naïve café",
    "東京タワーは333メートルです。",
    "e-mail: someone@example.com (50% off) #hashtag $100",
    "x\u0007y \U0001f600 done",
]
# Each layout with a vocabulary of its family's: WordPiece (BGE's), and
# SentencePiece's unigram (XLM-R's, nomic-embed-text v2's).
ENCODERS = [
    ("tiny-bert", "ggml-vocab-bert-bge.gguf"),
    ("tiny-nomic-bert", "ggml-vocab-bert-bge.gguf"),
    ("tiny-nomic-bert-moe", "ggml-vocab-nomic-bert-moe.gguf"),
]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "realm-cli", "tests", "fixtures", "embeddings.json")


def encoder_cases(tool, models_dir):
    """The encoders' cases: each layout with its vocabulary, each prompt."""
    import tempfile
    realm = os.path.join(HERE, "..", "target", "release", "realm")
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, vocab_name in ENCODERS:
            vocab = os.path.join(models_dir, "vocab", vocab_name)
            path = os.path.join(tmp, layout + ".gguf")
            subprocess.run([realm, "synth", layout, "--vocab", vocab, "--matrix-type", "f32",
                            "--seed", "3", "-o", path], check=True, capture_output=True)
            with open(path, "rb") as f:
                digest = f"{llama_env.fnv1a(f.read()):016x}"
            for prompt in ENCODER_PROMPTS:
                # (llama-embedding prints through its asynchronous log,
                # whose last lines are now and then lost at exit on a busy
                # machine: each run is tried up to ten times.)
                for _ in range(10):
                    run = subprocess.run(
                        [tool, "-m", path, "-p", prompt, "--embd-separator", "<#sep#>",
                         "--embd-output-format", "json", "-t", "2"],
                        check=True, capture_output=True, text=True)
                    try:
                        vector = json.loads(run.stdout)["data"][0]["embedding"]
                        break
                    except json.JSONDecodeError as e:
                        print(f"{layout} {prompt!r}: {e}, {len(run.stdout)} bytes; again")
                else:
                    sys.exit(f"{layout} {prompt!r}: no JSON")
                cases.append({"model": layout, "vocab": vocab_name,
                              "fnv1a": digest, "prompt": prompt, "embedding": vector})
                print(layout, len(vector))
    return cases


def main():
    args = [a for a in sys.argv[1:] if a != "--encoders-only"]
    encoders_only = len(args) < len(sys.argv) - 1
    models_dir = args[0] if args else os.environ.get(
        "REALM_MODELS", os.path.expanduser("~/.cache/realm/models"))
    bin_dir = subprocess.run([os.path.join(HERE, "build_llama_cpp.sh"), "--tools"],
                             check=True, capture_output=True, text=True).stdout.strip()
    build = os.path.dirname(bin_dir)
    subprocess.run(["cmake", "--build", build, "--target", "llama-embedding"],
                   check=True, capture_output=True)
    tool = os.path.join(bin_dir, "llama-embedding")
    cases = []
    if encoders_only:
        with open(OUT) as f:
            cases = [c for c in json.load(f)["cases"] if c["model"] in MODELS]
    for short, name in MODELS.items():
        if encoders_only:
            break
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
    cases += encoder_cases(tool, models_dir)
    with open(OUT, "w") as f:
        json.dump({"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
