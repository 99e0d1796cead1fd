#!/usr/bin/env python3
"""Golden quantized files from llama.cpp's llama-quantize for realm-cli's
tests: realm-cli/tests/fixtures/quantize.json.

For each case it quantizes one of the real models (or a synthetic mixture
of experts `realm synth` writes: build realm-cli first) with llama-quantize
(built by `scripts/build_llama_cpp.sh --tools`, llama.cpp 0c1e570 from the
llama-cpp-python 0.3.36 sdist; `--allow-requantize`, as both models are
quantized already, 2 threads) and stores the output file's size and
sha256: `realm quantize` with the same options must write the same bytes.
Cases with `--imatrix` quantize with the importance matrices
scripts/gen_imatrix_fixtures.py writes (run it first).
Usage: python3 scripts/gen_quantize_fixtures.py [MODELS_DIR] [--only MODEL ...]
With --only, just the cases of those models are run again (the others keep
their stored entries).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
# A synthetic mixture of experts, `realm synth` ARGS (the importance matrix
# scripts/gen_imatrix_fixtures.py collects on it): its 3-D expert tensors
# quantize with one importance entry an expert.
SYNTH = {
    "qwen3moe": ["tiny-qwen3moe", "--seed", "5", "--matrix-type", "f16"],
    # With a shared expert: two ffn_down matrices a block.
    "qwen2moe": ["tiny-qwen2moe", "--seed", "5", "--matrix-type", "f16"],
    # Biases, attention sinks and 3-D experts (MXFP4_MOE's).
    "gpt-oss": ["tiny-gpt-oss", "--seed", "5", "--matrix-type", "f16"],
    # 256 wide: rows of whole ternary blocks.
    "bitnet": ["tiny-bitnet", "--seed", "5", "--matrix-type", "f16"],
}
REALM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "realm")
# (model, file type, extra options): every rule of the mixes Realm writes.
CASES = [
    ("qwen3moe", "Q8_0", []),
    ("qwen3moe", "Q4_0", ["--imatrix", "tests/fixtures/imatrix/qwen3moe.gguf"]),
    ("qwen3moe", "Q5_1", ["--imatrix", "tests/fixtures/imatrix/qwen3moe.gguf"]),
    ("qwen3moe", "IQ4_NL", ["--imatrix", "tests/fixtures/imatrix/qwen3moe.gguf"]),
    ("qwen2moe", "Q4_K_M", []),
    ("qwen2moe", "Q4_0", ["--imatrix", "tests/fixtures/imatrix/qwen2moe.gguf"]),
    ("gpt-oss", "MXFP4_MOE", []),
    ("gpt-oss", "Q4_K_M", []),
    ("bitnet", "TQ1_0", []),
    ("bitnet", "TQ2_0", []),
    # (Rows of 576: the ternary types fall back to Q4_0.)
    ("smollm2", "TQ2_0", []),
    ("smollm2", "Q8_0", []),
    ("smollm2", "Q4_K_M", []),
    ("smollm2", "Q6_K", []),
    ("smollm2", "Q4_0", ["--token-embedding-type", "f16"]),
    ("smollm2", "F16", []),
    ("smollm2", "Q2_K", []),
    ("smollm2", "Q3_K_M", []),
    ("gemma3", "Q5_K_M", []),
    ("gemma3", "Q4_K_S", []),
    ("gemma3", "Q5_1", []),
    ("gemma3", "BF16", []),
    ("gemma3", "Q5_K_S", ["--pure"]),
    ("gemma3", "Q2_K", []),
    ("gemma3", "Q3_K_S", []),
    ("gemma3", "Q3_K_L", []),
    # With the importance matrices of scripts/gen_imatrix_fixtures.py (the
    # first six blocks, every ffn_down and attn_output: the rest are quantized without),
    # named relative to realm-cli/, where llama-quantize runs and the tests
    # run.
    ("smollm2", "Q4_K_M", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("smollm2", "Q4_0", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("smollm2", "Q2_K", ["--pure", "--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("smollm2", "Q6_K", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf",
                         "--exclude-weights", "attn_v"]),
    ("gemma3", "Q5_0", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("gemma3", "Q3_K_M", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("gemma3", "Q4_K_S", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf",
                          "--include-weights", "ffn_", "--include-weights", "attn_q"]),
    ("gemma3", "Q5_K_S", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("smollm2", "Q2_K_S", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("gemma3", "Q2_K_S", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("smollm2", "IQ4_XS", []),
    ("smollm2", "IQ4_NL", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("gemma3", "IQ4_XS", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("gemma3", "IQ4_NL", []),
    # The lattice mixes. Rows of 576 and 640 are no whole 256-blocks, so in
    # the real models only ffn_down (and Gemma's token embedding) keep the
    # lattice types, the rest falling back to IQ4_NL; the synthetic BitNet
    # is 256 wide. IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S and IQ3_XXS matrices
    # need an importance matrix (every ffn_down has an entry).
    ("bitnet", "IQ3_S", []),
    ("bitnet", "IQ3_M", []),
    ("smollm2", "IQ3_XS", []),
    ("smollm2", "IQ3_XXS", []),
    ("gemma3", "IQ3_XXS", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("smollm2", "IQ2_XXS", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("gemma3", "IQ2_XS", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("smollm2", "IQ2_S", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("gemma3", "IQ2_M", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    ("smollm2", "IQ1_S", ["--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
    ("gemma3", "IQ1_M", ["--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    # A mixture of four experts (attn_v Q4_K by the expert count; IQ3_XS
    # reads ffn_gate's and ffn_up's block from their names), 64 wide: the
    # mix's types show through their fallbacks.
    ("qwen3moe", "IQ2_XXS", ["--imatrix", "tests/fixtures/imatrix/qwen3moe.gguf"]),
    ("qwen3moe", "IQ3_XS", ["--imatrix", "tests/fixtures/imatrix/qwen3moe.gguf"]),
    # Types by hand: the mix's counters skip them; ffn_up's Q4_K falls back.
    ("smollm2", "Q4_K_M", ["--tensor-type", "attn_v=q8_0",
                           "--tensor-type", r"blk\.[0-3]\.ffn_down=q5_k"]),
    ("gemma3", "Q3_K_M", ["--tensor-type", "FFN_UP=q4_k", "--tensor-type", "attn_q=iq4_nl",
                          "--imatrix", "tests/fixtures/imatrix/gemma3.gguf"]),
    # Metadata set by hand: a new key, a replaced one, each type; before
    # the importance matrix's keys.
    ("smollm2", "Q8_0", ["--override-kv", "tokenizer.ggml.add_bos_token=bool:true",
                         "--override-kv", "general.name=str:SmolLM2 tuned",
                         "--override-kv", "realm.test.count=int:-42",
                         "--override-kv", "realm.test.scale=float:0.125",
                         "--imatrix", "tests/fixtures/imatrix/smollm2.gguf"]),
]
HERE = os.path.dirname(os.path.abspath(__file__))
CRATE = os.path.join(HERE, "..", "realm-cli")
OUT = os.path.join(CRATE, "tests", "fixtures", "quantize.json")


def main():
    args = sys.argv[1:]
    only = None
    if "--only" in args:
        at = args.index("--only")
        only, args = set(args[at + 1:]), args[:at]
    models_dir = args[0] if args else os.environ.get(
        "REALM_MODELS", os.path.expanduser("~/.cache/realm/models"))
    kept = []
    if only:
        with open(OUT) as f:
            kept = [c for c in json.load(f)["cases"] if c["model"] not in only]
    bin_dir = subprocess.run([os.path.join(HERE, "build_llama_cpp.sh"), "--tools"],
                             check=True, capture_output=True, text=True).stdout.strip()
    tool = os.path.join(bin_dir, "llama-quantize")
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.gguf")
        for name, args in SYNTH.items():
            subprocess.run([REALM, "synth", *args, "-o", os.path.join(tmp, name + ".gguf")],
                           check=True, capture_output=True)
        for model, ftype, extra in CASES:
            if only and model not in only:
                stored = [c for c in kept if (c["model"], c["type"], c["options"]) == (model, ftype, extra)]
                assert len(stored) == 1, (model, ftype, extra)
                cases.append(stored[0])
                continue
            source = (os.path.join(tmp, model + ".gguf") if model in SYNTH
                      else os.path.join(models_dir, MODELS[model]))
            subprocess.run([tool, "--allow-requantize", *extra, source, out, ftype, "2"],
                           cwd=CRATE, check=True, capture_output=True)
            with open(out, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            case = {"model": model, "type": ftype, "options": extra,
                    "bytes": os.path.getsize(out), "sha256": digest}
            if model in SYNTH:
                case["synth"] = SYNTH[model]
            print(case)
            cases.append(case)
    with open(OUT, "w") as f:
        json.dump({"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
