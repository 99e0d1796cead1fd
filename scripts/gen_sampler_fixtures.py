#!/usr/bin/env python3
"""Golden sampler outputs from llama.cpp for realm-models' tests:
realm-models/tests/fixtures/samplers.json.

For each model and prompt it runs the prompt through llama.cpp (the CPU
build `scripts/build_llama_cpp.sh --tools` makes, through llama-cpp-python
0.3.36's bindings, llama.cpp 0c1e570), keeps the 200 most likely next
tokens, and applies llama.cpp's sampler chain to them, for each of a set of
parameter cases, with the prompt's tokens accepted first (the history the
penalties and DRY look at), in the order llama.cpp's common sampler
builds it (penalties, DRY, top-n-sigma, top-k, typical-p, top-p, min-p,
XTC, temperature; or temperature and mirostat), or in the order a case
names (`--samplers`). It stores the tokens the
chain leaves and their probabilities. XTC's chance is 1 in these cases, so
no random draw decides what is left; mirostat's truncation is its first
step's (mu = 2 tau).

It also writes realm-models/tests/fixtures/seeded.json and seeded.bin:
llama.cpp's sampled generations, with seeds, for a set of parameter
cases: its whole chain with the draw (`dist`, or mirostat's), run each
step as llama_sampler_sample runs it, over the 64 most likely tokens of
the step's logits (the rest taken as -inf), which seeded.bin keeps
(token id u32, logit f32, little-endian, 64 per step, the vocabulary's
order). For each step it records how near the draw fell to the edge of
the chosen token's share of the probability; the draw's uniform number
is recomputed with numpy's MT19937 seeded as std::mt19937 is and checked
to choose what llama.cpp chose (-1 under a grammar, where a step may draw
twice: llama.cpp's common sampler draws again from what the grammar
allows when it refuses the first draw).

Usage: python3 scripts/gen_sampler_fixtures.py [MODELS_DIR]
"""
import ctypes
import json
import os

import numpy as np

import llama_env

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
PROMPTS = [
    "The cat sat on the mat. The dog sat on the mat. The cat sat on the",
    "Roses are red: violets are blue. Roses are red: violets are",
    'She said "good morning" to him, and he said "good',
]
TOP = 200
# Filters off, temperature 1: each case changes what it names.
PLAIN = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "temperature": 1.0}
DEFAULTS = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "temperature": 0.8}
BREAKERS = ["\n", ":", "\"", "*"]
# llama.cpp's default order of the samplers.
ORDER = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
CASES = [
    dict(DEFAULTS),
    dict(DEFAULTS, min_keep=5, top_p=0.1),
    dict(DEFAULTS, repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3),
    dict(PLAIN, top_n_sigma=1.0),
    dict(PLAIN, top_n_sigma=2.5, top_k=30, min_p=0.01, temperature=0.7),
    dict(PLAIN, typical_p=0.7),
    dict(DEFAULTS, typical_p=0.9),
    dict(DEFAULTS, xtc_probability=1.0, xtc_threshold=0.1),
    dict(PLAIN, xtc_probability=1.0, xtc_threshold=0.02, min_keep=3),
    dict(DEFAULTS, dynatemp_range=0.5, dynatemp_exponent=1.0),
    dict(PLAIN, dynatemp_range=0.7, dynatemp_exponent=2.0),
    dict(PLAIN, dry_multiplier=0.8),
    dict(PLAIN, dry_multiplier=1.5, dry_base=2.0, dry_allowed_length=1, dry_sequence_breakers=[]),
    dict(PLAIN, dry_multiplier=0.8, dry_allowed_length=1, dry_sequence_breakers=["sat on", "violets"]),
    dict(DEFAULTS, dry_multiplier=0.8, dry_penalty_last_n=16, repeat_penalty=1.1),
    dict(PLAIN, mirostat=1, mirostat_tau=5.0),
    dict(PLAIN, mirostat=1, mirostat_tau=3.0, temperature=0.7),
    dict(PLAIN, mirostat=2, mirostat_tau=5.0),
    dict(PLAIN, mirostat=2, mirostat_tau=2.0, temperature=1.2),
    dict(DEFAULTS, top_k=50, top_p=0.9, min_p=0.02, top_n_sigma=2.0, xtc_probability=1.0,
         xtc_threshold=0.15, dynatemp_range=0.3, dry_multiplier=0.5, repeat_penalty=1.1),
    # Other orders (llama.cpp's --samplers).
    dict(DEFAULTS, temperature=0.5, top_p=0.8, samplers=["temperature", "top_p"]),
    dict(DEFAULTS, temperature=1.5, min_p=0.1, samplers=["top_k", "temperature", "min_p", "xtc"],
         xtc_probability=1.0, xtc_threshold=0.05),
    dict(DEFAULTS, repeat_penalty=1.5, presence_penalty=0.5, dry_multiplier=1.0,
         samplers=["top_k", "penalties", "dry", "top_p", "temperature"]),
    dict(DEFAULTS, dynatemp_range=0.6, typical_p=0.8, samplers=["min_p", "temperature", "typ_p"]),
    dict(DEFAULTS, samplers=["top_p", "top_k"]),
]
# Sampled generations: (prompt, cases), each case with its seed.
SEEDED_PROMPT = "Once upon a time, in a small village by the sea,"
SEEDED_TOKENS = 32
# The candidates each step keeps (with their logits, in seeded.bin).
SEEDED_TOP = 64
SEEDED = [
    dict(DEFAULTS, seed=42),
    dict(DEFAULTS, seed=1234, temperature=1.0),
    dict(PLAIN, seed=3),
    dict(PLAIN, seed=5, min_p=0.05, temperature=0.9),
    dict(PLAIN, seed=6, top_p=0.9),
    dict(DEFAULTS, seed=7, typical_p=0.9),
    dict(PLAIN, seed=8, typical_p=0.8),
    dict(DEFAULTS, seed=9, xtc_probability=0.5, xtc_threshold=0.1),
    dict(DEFAULTS, seed=10, dynatemp_range=0.5),
    dict(PLAIN, seed=11, mirostat=1, mirostat_tau=5.0),
    dict(PLAIN, seed=12, mirostat=2, mirostat_tau=5.0),
    dict(DEFAULTS, seed=13, repeat_penalty=1.2, dry_multiplier=0.8),
    dict(DEFAULTS, seed=14, temperature=1.2, top_p=0.9, samplers=["temperature", "top_p"]),
    dict(PLAIN, seed=15, top_n_sigma=1.5),
    # Low targets: steps with one candidate left, where mirostat draws nothing.
    dict(PLAIN, seed=16, mirostat=1, mirostat_tau=2.0),
    dict(PLAIN, seed=17, mirostat=2, mirostat_tau=1.0),
    # Under a grammar, as common_sampler_sample runs one: the chain's draw,
    # and when the grammar refuses it, a second draw from what it allows.
    dict(DEFAULTS, seed=18, temperature=1.0, grammar="root ::= [a-zA-Z ,]*"),
]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "realm-models", "tests", "fixtures", "samplers.json")
OUT_SEEDED = os.path.join(HERE, "..", "realm-models", "tests", "fixtures", "seeded.json")
OUT_SEEDED_BIN = os.path.join(HERE, "..", "realm-models", "tests", "fixtures", "seeded.bin")


def chain(L, vocab, n_vocab, c, draw=False):
    """llama.cpp's common sampler chain for case `c`, with the draw
    (`dist`) at its end when `draw`."""
    g = lambda k, d: c.get(k, d)
    seed = g("seed", 1)
    ch = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    add = lambda s: L.llama_sampler_chain_add(ch, s)
    min_keep = g("min_keep", 0)
    temp = g("temperature", 0.8)
    if g("mirostat", 0) == 0:
        breakers = [b.encode() for b in g("dry_sequence_breakers", BREAKERS)]
        arr = (ctypes.c_char_p * max(1, len(breakers)))(*breakers)
        make = {
            "penalties": lambda: L.llama_sampler_init_penalties(
                n_vocab, g("penalty_last_n", 64), g("repeat_penalty", 1.0),
                g("frequency_penalty", 0.0), g("presence_penalty", 0.0)),
            "dry": lambda: L.llama_sampler_init_dry(
                vocab, g("dry_multiplier", 0.0), g("dry_base", 1.75), g("dry_allowed_length", 2),
                g("dry_penalty_last_n", 64), arr, len(breakers)),
            "top_n_sigma": lambda: L.llama_sampler_init_top_n_sigma(g("top_n_sigma", -1.0)),
            "top_k": lambda: L.llama_sampler_init_top_k(g("top_k", 40)),
            "typ_p": lambda: L.llama_sampler_init_typical(g("typical_p", 1.0), min_keep),
            "top_p": lambda: L.llama_sampler_init_top_p(g("top_p", 0.95), min_keep),
            "min_p": lambda: L.llama_sampler_init_min_p(g("min_p", 0.05), min_keep),
            "xtc": lambda: L.llama_sampler_init_xtc(
                g("xtc_probability", 0.0), g("xtc_threshold", 0.1), min_keep, seed),
            "temperature": lambda: L.llama_sampler_init_temp_ext(
                temp, g("dynatemp_range", 0.0), g("dynatemp_exponent", 1.0)),
        }
        for name in g("samplers", ORDER):
            add(make[name]())
        if draw:
            add(L.llama_sampler_init_dist(seed))
    elif c["mirostat"] == 1:
        add(L.llama_sampler_init_temp(temp))
        add(L.llama_sampler_init_mirostat(n_vocab, seed, g("mirostat_tau", 5.0), g("mirostat_eta", 0.1), 100))
    else:
        add(L.llama_sampler_init_temp(temp))
        add(L.llama_sampler_init_mirostat_v2(seed, g("mirostat_tau", 5.0), g("mirostat_eta", 0.1)))
    return ch


def uniforms(seed):
    """The draws of std::uniform_real_distribution<double> on
    std::mt19937(seed), as libstdc++ forms them."""
    bg = np.random.MT19937(0)
    bg._legacy_seeding(seed)
    while True:
        lo, hi = (float(x) for x in bg.random_raw(2))
        u = (lo + hi * 2.0**32) / 2.0**64
        yield u if u < 1.0 else np.nextafter(1.0, 0.0)


def context_with(L, model, vocab, prompt):
    """A fresh 256-token context, and `prompt` tokenized (with BOS) into a
    256-token buffer: (context, buffer, tokens)."""
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 256, 256, 2, 2
    ctx = L.llama_init_from_model(model, cp)
    raw = prompt.encode()
    buf = (L.llama_token * 256)()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, 256, True, False)
    return ctx, buf, n


def seeded(L, model, vocab, n_vocab, short, dt, blob):
    """llama.cpp's sampled generations for SEEDED on one model; each
    step's candidates are appended to `blob`."""
    out = []
    for c in SEEDED:
        ctx, buf, n = context_with(L, model, vocab, SEEDED_PROMPT)
        prompt = [int(t) for t in buf[:n]]
        ch = chain(L, vocab, n_vocab, c, draw=True)
        for t in prompt:
            L.llama_sampler_accept(ch, t)
        grammar = c.get("grammar")
        grmr = grammar and L.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        redrawn = 0
        draws = uniforms(c["seed"])
        batch = L.llama_batch_get_one(buf, n)
        tokens, margins, offset, singles = [], [], len(blob), 0
        data = (L.llama_token_data * SEEDED_TOP)()
        view = np.frombuffer(data, dtype=dt)
        for _ in range(SEEDED_TOKENS):
            assert L.llama_decode(ctx, batch) == 0
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            # The most likely, in the vocabulary's order: what the chain
            # sees of a vocabulary whose other logits are -inf.
            top = np.sort(np.argsort(-logits, kind="stable")[:SEEDED_TOP])
            view["id"] = top
            view["logit"] = logits[top]
            view["p"] = 0
            kept = np.empty(SEEDED_TOP, dtype=[("id", "<u4"), ("logit", "<f4")])
            kept["id"], kept["logit"] = top, logits[top]
            blob += kept.tobytes()
            arr = L.llama_token_data_array(data, SEEDED_TOP, -1, False)
            L.llama_sampler_apply(ch, ctypes.byref(arr))
            start = (ctypes.addressof(arr.data.contents) - ctypes.addressof(data)) // dt.itemsize
            left = view[start:start + arr.size]
            token = int(left["id"][arr.selected])
            if grmr:
                one = (L.llama_token_data * 1)()
                one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
                single = L.llama_token_data_array(one, 1, -1, False)
                L.llama_sampler_apply(grmr, ctypes.byref(single))
                if not np.isfinite(one[0].logit):
                    # Refused: the grammar first, then the chain again.
                    redrawn += 1
                    view["id"] = top
                    view["logit"] = logits[top]
                    view["p"] = 0
                    arr = L.llama_token_data_array(data, SEEDED_TOP, -1, False)
                    L.llama_sampler_apply(grmr, ctypes.byref(arr))
                    L.llama_sampler_apply(ch, ctypes.byref(arr))
                    start = (ctypes.addressof(arr.data.contents)
                             - ctypes.addressof(data)) // dt.itemsize
                    left = view[start:start + arr.size]
                    token = int(left["id"][arr.selected])
                L.llama_sampler_accept(grmr, token)
                # (Two draws some steps: no one uniform number to check.)
                next(draws)
                margins.append(-1.0)
                tokens.append(token)
                L.llama_sampler_accept(ch, token)
                if L.llama_vocab_is_eog(vocab, token):
                    break
                buf[0] = token
                batch = L.llama_batch_get_one(buf, 1)
                continue
            L.llama_sampler_accept(ch, token)
            # Where the draw fell: the running sum of the probabilities, in
            # the order the draw walked them, against the uniform number.
            cum = np.cumsum(left["p"].astype(np.float64))
            cum /= cum[-1]
            # Mirostat draws with std::discrete_distribution, which draws
            # nothing from one candidate.
            u = next(draws) if arr.size > 1 or not c.get("mirostat") else 0.5
            mine = int(np.searchsorted(cum, u, side="left"))
            assert mine == arr.selected, (short, c, len(tokens), mine, arr.selected)
            below = cum[mine - 1] if mine > 0 else 0.0
            margins.append(float(min(u - below, cum[mine] - u)))
            singles += arr.size == 1
            tokens.append(token)
            if L.llama_vocab_is_eog(vocab, token):
                break
            buf[0] = token
            batch = L.llama_batch_get_one(buf, 1)
        L.llama_sampler_free(ch)
        if grmr:
            L.llama_sampler_free(grmr)
        L.llama_free(ctx)
        print(f"{short} seeded {c}: {len(tokens)} tokens, least margin {min(margins):.2e}, "
              f"{singles} with one candidate, {redrawn} drawn again under the grammar")
        out.append({"model": short, "params": c, "prompt_tokens": prompt, "tokens": tokens,
                    "margins": margins, "offset": offset})
    return out


def main():
    models_dir = llama_env.models_dir()
    llama_env.tools()
    import llama_cpp as L
    L.llama_backend_init()
    dt = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    steps, cases, generations, blob = [], [], [], bytearray()
    for short, name in MODELS.items():
        path = os.path.join(models_dir, name)
        model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        vocab = L.llama_model_get_vocab(model)
        n_vocab = L.llama_vocab_n_tokens(vocab)
        for prompt in PROMPTS:
            ctx, buf, n = context_with(L, model, vocab, prompt)
            assert L.llama_decode(ctx, L.llama_batch_get_one(buf, n)) == 0
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
            L.llama_free(ctx)
            top = np.argsort(-logits, kind="stable")[:TOP]
            history = [int(t) for t in buf[:n]]
            step = len(steps)
            steps.append({"model": short, "prompt": prompt, "history": history,
                          "ids": [int(t) for t in top],
                          "logits": [float(logits[t]) for t in top]})
            for c in CASES:
                ch = chain(L, vocab, n_vocab, c)
                for t in history:
                    L.llama_sampler_accept(ch, t)
                data = (L.llama_token_data * TOP)()
                view = np.frombuffer(data, dtype=dt)
                view["id"] = top
                view["logit"] = logits[top]
                view["p"] = 0
                arr = L.llama_token_data_array(data, TOP, -1, False)
                L.llama_sampler_apply(ch, ctypes.byref(arr))
                L.llama_sampler_free(ch)
                # The chain may have moved the start of the array (XTC).
                start = (ctypes.addressof(arr.data.contents) - ctypes.addressof(data)) // dt.itemsize
                left = view[start:start + arr.size]
                if c.get("mirostat", 0):
                    ids, probs = left["id"], left["p"].astype(np.float64)
                else:
                    left = left[np.isfinite(left["logit"])]
                    l = left["logit"].astype(np.float64)
                    e = np.exp(l - l.max())
                    ids, probs = left["id"], e / e.sum()
                order = np.argsort(-probs, kind="stable")
                cases.append({"step": step, "params": c,
                              "ids": [int(ids[i]) for i in order],
                              "probs": [round(float(probs[i]), 7) for i in order]})
                print(f"{short} {prompt[:20]!r} {c}: {len(ids)} left, top p {probs.max():.4f}")
        generations += seeded(L, model, vocab, n_vocab, short, dt, blob)
        L.llama_model_free(model)
    with open(OUT_SEEDED, "w") as f:
        json.dump({"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "prompt": SEEDED_PROMPT,
                   "top": SEEDED_TOP, "generations": generations},
                  f, indent=None, ensure_ascii=False)
        f.write("\n")
    with open(OUT_SEEDED_BIN, "wb") as f:
        f.write(blob)
    with open(OUT, "w") as f:
        json.dump({"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "top": TOP,
                   "steps": steps, "cases": cases}, f, indent=None, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
