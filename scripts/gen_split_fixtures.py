#!/usr/bin/env python3
"""What llama.cpp's llama-gguf-split writes, as hashes:
realm-models/tests/fixtures/split.json.

For a synthetic two-layer llama (`realm synth tiny-llama --matrix-type q8_0
--seed 7`, 20 tensors, 106 KiB) and the two real models, each case runs
llama-gguf-split (the CPU build `scripts/build_llama_cpp.sh --tools`
makes) with its options and stores the SHA-256 of every file it writes, in
order; a case with "merge" splits with its options and then merges the
files back (`--merge`), storing the merged file's hash. The test has Realm
split and merge the same models in memory and compares the hashes, so the
fixture holds no model bytes.
Usage: python3 scripts/gen_split_fixtures.py [MODELS_DIR]  (after cargo build --release -p realm-cli)
"""
import glob
import hashlib
import json
import os
import subprocess
import tempfile

import llama_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "realm-models", "tests", "fixtures", "split.json")
REALM = os.path.join(ROOT, "target", "release", "realm")

CASES = [
    ("tiny", ["--split-max-tensors", "8"], False),
    ("tiny", ["--split-max-tensors", "5", "--no-tensor-first-split"], False),
    ("tiny", ["--split-max-tensors", "1"], False),
    ("tiny", ["--split-max-tensors", "6"], True),
    ("smollm2", ["--split-max-size", "40M"], False),
    ("smollm2", ["--split-max-size", "40M", "--no-tensor-first-split"], True),
    ("gemma3", ["--split-max-size", "100M"], False),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    tool = os.path.join(llama_env.tools(), "llama-gguf-split")
    models = llama_env.models_dir()
    out = dict(cases=[])
    with tempfile.TemporaryDirectory() as tmp:
        files = dict(
            tiny=os.path.join(tmp, "tiny.gguf"),
            smollm2=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"),
            gemma3=os.path.join(models, "gemma-3-270m-q4_k_m.gguf"),
        )
        subprocess.run([REALM, "synth", "tiny-llama", "-o", files["tiny"], "--seed", "7",
                        "--matrix-type", "q8_0"], check=True, capture_output=True)
        for i, (model, args, merge) in enumerate(CASES):
            work = os.path.join(tmp, str(i))
            os.mkdir(work)
            subprocess.run([tool, *args, files[model], os.path.join(work, "part")], check=True,
                           capture_output=True)
            parts = sorted(glob.glob(os.path.join(work, "part-*.gguf")))
            case = dict(model=model, args=args, merge=merge)
            if merge:
                merged = os.path.join(work, "merged.gguf")
                subprocess.run([tool, "--merge", parts[0], merged], check=True,
                               capture_output=True)
                case["sha256"] = [sha256(merged)]
            else:
                case["sha256"] = [sha256(p) for p in parts]
            out["cases"].append(case)
            print(model, " ".join(args), "merge" if merge else f"{len(parts)} files")
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
