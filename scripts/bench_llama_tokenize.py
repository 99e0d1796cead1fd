#!/usr/bin/env python3
"""Time llama.cpp's tokenizer (llama_tokenize through llama-cpp-python) on the
same ~1 MiB text as realm-core/benches/tokenize.rs, for comparison:

    python3 scripts/bench_llama_tokenize.py
    cargo bench -p realm-core --bench tokenize
"""
import json
import os
import pathlib
import time

import llama_cpp

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = pathlib.Path(os.environ.get("REALM_MODELS", pathlib.Path.home() / ".cache/realm/models"))


def bench_text():
    fx = json.loads((ROOT / "realm-core/tests/fixtures/tokenizer/smollm2.json").read_text())
    unit = "\n".join(c["text"] for c in fx["cases"])
    text = ""
    while len(text.encode()) < 1 << 20:
        text += unit + "\n"
    return text.encode()


def main():
    data = bench_text()
    for name, file in [("gemma3-spm", "gemma-3-270m-q4_k_m.gguf"), ("smollm2-bpe", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                       ("nomic-ugm", "vocab/ggml-vocab-nomic-bert-moe.gguf")]:
        path = MODELS / file
        if not path.exists():
            print(f"skipping {name}: {path} not found")
            continue
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        vocab = llm._model.vocab  # borrowed: keep `llm` alive while timing
        n = len(data) + 16
        buf = (llama_cpp.llama_token * n)()
        times = []
        while len(times) < 10 and (len(times) < 2 or sum(times) < 60):
            t0 = time.perf_counter()
            got = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n, False, False)
            times.append(time.perf_counter() - t0)
        assert got > 0
        best, median = min(times), sorted(times)[len(times) // 2]
        mib = len(data) / (1 << 20)
        print(f"llama.cpp {name}: {got} tokens, median {median * 1e3:.1f} ms = {mib / median:.2f} MiB/s "
              f"(best {mib / best:.2f} MiB/s)")


if __name__ == "__main__":
    main()
