#!/usr/bin/env python3
"""Golden logits and greedy text from llama.cpp (through llama-cpp-python)
for realm-models' tests: realm-models/tests/fixtures/<model>.json.

For each prompt it stores the prompt's token ids (llama.cpp's tokenizer), the
top 32 logits at every prompt position (ids and values), and the greedy
continuation of 32 tokens with each step's top-2 logit margin, so a
divergence can be explained by a near tie.
Usage: python3 scripts/gen_model_fixtures.py [MODELS_DIR]
(llama.cpp: the CPU build `scripts/build_llama_cpp.sh --tools` makes,
through llama-cpp-python 0.3.36's bindings.) The committed fixtures came
from an earlier build of the same llama.cpp; this build's logits differ
from them by up to 0.69 (SmolLM2) and 1.27 (Gemma 3) among the top 32
(measured 2026-12-05), llama.cpp's own variation from build to build, and
seven of the sixteen greedy continuations part, each at a near tie (the
committed fixture's top-2 margin there 0.010-0.104), so they were kept.
"""
import json
import os

import numpy as np

import llama_env

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
SMOL_CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
GEMMA_CHAT = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
PROMPTS = {
    "smollm2": [
        SMOL_CHAT.format("Which city is the capital of France?"),
        "The quick brown fox jumps over the lazy dog. Once upon a time,",
        "The capital of France is",
        SMOL_CHAT.format("Write a haiku about the sea."),
        "def fibonacci(n):\n",
        SMOL_CHAT.format("What is 12 times 7?"),
        "Photosynthesis is the process by which",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + SMOL_CHAT.format("Name three colors."),
    ],
    "gemma3": [
        GEMMA_CHAT.format("Which city is the capital of France?"),
        "The quick brown fox jumps over the lazy dog. Once upon a time,",
        "Q: What is the capital of France?\nA:",
        GEMMA_CHAT.format("Write a haiku about the sea."),
        "def fibonacci(n):\n",
        "The largest planet in the solar system is",
        "Photosynthesis is the process by which",
        "Translate to French: Good morning, my friend.\n",
    ],
}
TOP = 32
GEN = 64
OUT = os.path.join(os.path.dirname(__file__), "..", "realm-models", "tests", "fixtures")


def top(logits, k=TOP):
    ids = np.argsort(-logits, kind="stable")[:k]
    return [int(i) for i in ids], [float(logits[i]) for i in ids]


def golden_case(llm, vocab, prompt, n):
    """What the tests hold a prompt's run to: its token ids (with BOS,
    special tokens read), the top logits at every position, and the greedy
    continuation of up to `n` tokens with each step's top-2 margin."""
    import llama_cpp
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
    positions = [dict(zip(("ids", "logits"), top(scores[p]))) for p in range(len(ids))]
    gen, margins = [], []
    last = scores[len(ids) - 1]
    for _ in range(n):
        order = np.argsort(-last, kind="stable")
        tok = int(order[0])
        margins.append(float(last[order[0]] - last[order[1]]))
        gen.append(tok)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            break
        llm.eval([tok])
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    text = llm.detokenize(gen).decode("utf-8", errors="replace")
    return {"prompt": prompt, "tokens": ids, "positions": positions,
            "greedy": gen, "greedy_margins": margins, "greedy_text": text}


def main():
    models_dir = llama_env.models_dir()
    llama_env.tools()
    import llama_cpp
    from llama_cpp import Llama
    os.makedirs(OUT, exist_ok=True)
    for short, file_name in MODELS.items():
        llm = Llama(os.path.join(models_dir, file_name), n_ctx=512, n_batch=512, logits_all=True,
                    n_threads=2, verbose=False, seed=0)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        cases = []
        for prompt in PROMPTS[short]:
            cases.append(golden_case(llm, vocab, prompt, GEN))
            print(short, repr(prompt[:40]), "->", repr(cases[-1]["greedy_text"]))
        with open(os.path.join(OUT, f"{short}.json"), "w") as f:
            json.dump({"model": file_name, "llama_cpp_python": llama_cpp.__version__,
                       "cases": cases}, f)
            f.write("\n")


if __name__ == "__main__":
    main()
