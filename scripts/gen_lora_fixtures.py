#!/usr/bin/env python3
"""Golden logits and greedy text from llama.cpp with LoRA adapters, for
realm-models' tests: realm-models/tests/fixtures/lora.json.

For each model it writes synthetic adapters, the values
realm_models::synthetic::SyntheticLora writes for the same parameters
(value i of tensor NAME is amplitude * u, u the (i + 1)-th draw in [-1, 1)
of SplitMix64 seeded with seed ^ FNV-1a-64(NAME); lora_a's amplitude is
sqrt(3 / cols)), with llama.cpp's own GGUF writer (gguf-py), loads them
into llama.cpp (llama_adapter_lora_init, llama_set_adapters_lora; the CPU
build `scripts/build_llama_cpp.sh --tools` makes, through llama-cpp-python
0.3.36's bindings) and stores, for each case (adapters and their scales)
and prompt: the prompt's token ids, the top 32 logits at every prompt
position, and the greedy continuation of 32 tokens with each step's top-2
logit margin. The test makes the same adapters with Realm's writer, so the
fixture needs no adapter file.

It also merges the first adapter, at scale EXPORT_SCALE, into each model
with llama.cpp's llama-export-lora, and stores for every merged tensor the
sum and absolute sum of its f16 values (in f64) and 64 of them, evenly
spaced (their bits): what `realm export-lora` is held to.
Usage: python3 scripts/gen_lora_fixtures.py [MODELS_DIR]
"""
import ctypes
import json
import os
import subprocess
import tempfile

import numpy as np

import llama_env

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "realm-models", "tests", "fixtures", "lora.json")
MODELS = {
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", "llama",
                "<|im_start|>user\nWhich city is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
    "gemma3": ("gemma-3-270m-q4_k_m.gguf", "gemma3",
               "<start_of_turn>user\nWhich city is the capital of France?<end_of_turn>\n<start_of_turn>model\n"),
}
PROMPTS = ["The quick brown fox jumps over the lazy dog. Once upon a time,"]
ALL = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
# SyntheticLora's parameters, per model: every matrix at rank 8 in f16,
# and a few at rank 4 in f32 with alpha 0 (no alpha / rank factor); lora_b
# as large as moves the model's logits well past the tests' tolerance
# (SmolLM2 moves less for the same values).
def adapters(amplitude):
    return [
        dict(rank=8, alpha=16.0, targets=ALL, dtype="f16", amplitude=amplitude, seed=1),
        dict(rank=4, alpha=0.0, targets=["attn_q", "attn_v", "ffn_down"], dtype="f32",
             amplitude=2.5 * amplitude, seed=2),
    ]


ADAPTERS = {"smollm2": adapters(0.06), "gemma3": adapters(0.012)}
# Adapters (index, scale) of each case.
CASES = [[(0, 1.0)], [(0, 0.5), (1, -1.0)]]
GEN = 32
EXPORT_SCALE = 0.7
SAMPLES = 64

MASK = (1 << 64) - 1


def fnv1a(s):
    h = 0xcbf29ce484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001b3) & MASK
    return h


def uniform(seed, n):
    """SplitMix64's first n draws in [-1, 1), as f32 (Realm's SplitMix)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


def write_adapter(gguf, reader, arch, spec, path):
    layers = int(reader.fields[f"{arch}.block_count"].parts[-1][0])
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    w = gguf.GGUFWriter(path, arch)
    w.add_string("general.type", "adapter")
    w.add_string("general.name", "synthetic lora")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", spec["alpha"])
    dtype = np.float16 if spec["dtype"] == "f16" else np.float32
    for i in range(layers):
        for t in spec["targets"]:
            name = f"blk.{i}.{t}.weight"
            cols, rows = shapes[name][:2]
            r = spec["rank"]
            for half, (ne0, ne1), amp in [
                ("lora_a", (cols, r), np.sqrt(np.float32(3.0) / np.float32(cols))),
                ("lora_b", (r, rows), np.float32(spec["amplitude"])),
            ]:
                full = f"{name}.{half}"
                v = np.float32(amp) * uniform(spec["seed"] ^ fnv1a(full), ne0 * ne1)
                w.add_tensor(full, v.astype(dtype).reshape(ne1, ne0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export(bin_dir, gguf, model, adapter, tmp):
    """llama-export-lora's merge of `adapter` at EXPORT_SCALE into `model`:
    each merged tensor's sums and samples."""
    out = os.path.join(tmp, "merged.gguf")
    subprocess.run([os.path.join(bin_dir, "llama-export-lora"), "-m", model, "-o", out,
                    "--lora-scaled", f"{adapter}:{EXPORT_SCALE}", "-t", "2"],
                   check=True, capture_output=True)
    merged = {t.name for t in gguf.GGUFReader(adapter).tensors}
    tensors = []
    for t in gguf.GGUFReader(out).tensors:
        if t.name + ".lora_a" not in merged:
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.F16, t.name
        v = np.array(t.data).reshape(-1)
        at = [(i * (len(v) - 1)) // (SAMPLES - 1) for i in range(SAMPLES)]
        tensors.append({"name": t.name, "sum": float(v.astype(np.float64).sum()),
                        "abs_sum": float(np.abs(v.astype(np.float64)).sum()),
                        "samples": [int(x) for x in v[at].view(np.uint16)]})
    os.remove(out)
    return {"adapter": 0, "scale": EXPORT_SCALE, "tensors": tensors}


def main():
    models_dir = llama_env.models_dir()
    bin_dir = llama_env.tools()
    import gguf
    import llama_cpp as L
    from llama_cpp import Llama
    from gen_model_fixtures import golden_case
    out = {"cases": CASES, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for short, (file_name, arch, chat) in MODELS.items():
            path = os.path.join(models_dir, file_name)
            reader = gguf.GGUFReader(path)
            files = []
            for i, spec in enumerate(ADAPTERS[short]):
                files.append(os.path.join(tmp, f"{short}-{i}.gguf"))
                write_adapter(gguf, reader, arch, spec, files[-1])
            del reader
            llm = Llama(path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2,
                        verbose=False, seed=0)
            vocab = L.llama_model_get_vocab(llm.model)
            loaded = [L.llama_adapter_lora_init(llm.model, f.encode()) for f in files]
            assert all(loaded)
            runs = []
            for case in CASES:
                adapters = (L.llama_adapter_lora_p_ctypes * len(case))(*[loaded[i] for i, _ in case])
                scales = (ctypes.c_float * len(case))(*[s for _, s in case])
                assert L.llama_set_adapters_lora(llm._ctx.ctx, adapters, len(case), scales) == 0
                for prompt in [chat] + PROMPTS:
                    run = {"case": CASES.index(case)}
                    run.update(golden_case(llm, vocab, prompt, GEN))
                    runs.append(run)
                    print(short, case, repr(prompt[-30:]), "->", repr(run["greedy_text"]))
            out["models"][short] = {"model": file_name, "adapters": ADAPTERS[short], "runs": runs,
                                    "export": export(bin_dir, gguf, path, files[0], tmp)}
            del llm
    with open(OUT, "w") as f:
        json.dump(out, f)
        f.write("\n")


if __name__ == "__main__":
    main()
