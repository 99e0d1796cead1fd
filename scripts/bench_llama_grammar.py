#!/usr/bin/env python3
"""Times llama.cpp's grammar sampler (`llama_sampler_apply` of
`llama_sampler_init_grammar`) over each real model's whole vocabulary, in
the two states `cargo bench -p realm-models --bench grammar` times Realm's
mask in: after `{` and a newline (few tokens allowed) and inside a JSON
string (nearly all), under the grammar `realm grammar -j '{"type":
"object"}'` writes. Prints the median of 15 calls and how many tokens stay
allowed (Realm's mask allows the same number).

Uses llama-cpp-python 0.3.36's bindings over the CPU build that
`scripts/build_llama_cpp.sh --tools` makes (llama.cpp 0c1e570).
Usage: python3 scripts/bench_llama_grammar.py [MODELS_DIR] (with
target/release/realm built)
"""
import ctypes
import os
import subprocess
import time

import numpy as np

import llama_env

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
STATES = [("after_brace", "{\n  "), ("in_string", "{\"name\": \"The ")]


def main():
    models_dir = llama_env.models_dir()
    llama_env.tools()
    import llama_cpp as L
    L.llama_backend_init()
    realm = os.path.join(HERE, "..", "target", "release", "realm")
    gbnf = subprocess.run([realm, "grammar", "-j", '{"type": "object"}'],
                          capture_output=True, text=True, check=True).stdout
    for name in MODELS:
        model = L.llama_model_load_from_file(os.path.join(models_dir, name).encode(),
                                             L.llama_model_default_params())
        vocab = L.llama_model_get_vocab(model)
        n = L.llama_vocab_n_tokens(vocab)
        data = (L.llama_token_data * n)()
        view = np.frombuffer(data, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
        for at, text in STATES:
            smpl = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
            raw = text.encode()
            buf = (L.llama_token * 64)()
            k = L.llama_tokenize(vocab, raw, len(raw), buf, 64, False, False)
            for i in range(k):
                L.llama_sampler_accept(smpl, buf[i])
            times = []
            for _ in range(15):
                view["id"] = np.arange(n)
                view["logit"] = 0
                view["p"] = 0
                arr = L.llama_token_data_array(data, n, -1, False)
                t = time.perf_counter()
                L.llama_sampler_apply(smpl, ctypes.byref(arr))
                times.append(time.perf_counter() - t)
            allowed = int(np.isfinite(view["logit"]).sum())
            print(f"{name} {at}: median {np.median(times) * 1e3:.3f} ms, allowed {allowed}")
            L.llama_sampler_free(smpl)
        L.llama_model_free(model)


if __name__ == "__main__":
    main()
