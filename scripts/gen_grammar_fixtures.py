#!/usr/bin/env python3
"""Golden grammar-constrained generations from llama.cpp for realm-models'
tests: realm-models/tests/fixtures/grammar.json.

For each case (a model, a chat prompt, and a GBNF grammar or a JSON schema)
it generates greedily under llama.cpp's grammar sampler through the C API
(llama-cpp-python 0.3.36's bindings over the CPU build that
`scripts/build_llama_cpp.sh --tools` makes, llama.cpp 0c1e570) and stores
each step's token and the top-2 margin of the logits the grammar allows.
A JSON schema goes in as the GBNF `realm grammar -j` writes; the script
checks that llama-completion gives the same text with that grammar and
with the schema through llama.cpp's own converter (`-j`), so the fixture
also pins Realm's converter to llama.cpp's, and that its own loop gives
llama-completion's text.
Usage: python3 scripts/gen_grammar_fixtures.py [MODELS_DIR]
(with target/release/realm built)
"""
import ctypes
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
CHAT = {
    "smollm2": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 20},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age"],
}
CAPITALS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string", "pattern": "^[A-Z][a-z]+( [A-Z][a-z]+)*$"},
        },
        "required": ["city", "country"],
    },
    "minItems": 3,
    "maxItems": 3,
}
SENTIMENT = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "confident": {"type": "boolean"},
        "score": {"type": "number"},
        "stars": {"type": "integer", "minimum": -5, "exclusiveMaximum": 6},
    },
    "required": ["sentiment", "confident"],
}
CASES = [
    ("Describe a fictional person as JSON.", {"json_schema": PERSON}),
    ("Give me three European capitals with their countries.", {"json_schema": CAPITALS}),
    ("Classify the sentiment of this review: I loved this film!", {"json_schema": SENTIMENT}),
    ("Tell me about the Eiffel Tower, as a JSON object.", {"json_schema": {"type": "object"}}),
    ("Is Paris the capital of France? Answer yes or no.", {"grammar": 'root ::= ("yes" | "no") "." [ a-z]*'}),
    ("List three fruits.", {"grammar": 'root ::= ("- " [A-Za-z ]+ "\\n"){3}'}),
    ("What is 12 times 7?", {"grammar": 'root ::= "The answer is " [0-9]+ "."'}),
]
N_PREDICT = 80
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "realm-models", "tests", "fixtures", "grammar.json")
END = " [end of text]\n"


def completion(tool, model, prompt, args):
    """llama-completion's greedy text, and whether it ended by itself."""
    run = subprocess.run([tool, "-m", model, "-p", prompt, "-n", str(N_PREDICT), "--temp", "0",
                          "-no-cnv", "--no-display-prompt", "-t", "2", "-c", "1024",
                          "--no-warmup"] + args, check=True, capture_output=True)
    text = run.stdout.decode("utf-8")
    # llama-completion ends its output with two newlines of its own.
    assert text.endswith("\n\n"), text
    text = text[:-2]
    ended = text.endswith(END)
    return (text[:-len(END)] if ended else text), ended


def greedy(L, model, vocab, prompt, gbnf):
    """Greedy steps under llama.cpp's grammar sampler: tokens, margins, text."""
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 1024, 512, 2, 2
    ctx = L.llama_init_from_model(model, cp)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    raw = prompt.encode()
    buf = (L.llama_token * 1024)()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, 1024, True, True)
    assert L.llama_decode(ctx, L.llama_batch_get_one(buf, n)) == 0
    smpl = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert smpl, "llama.cpp refused the grammar"
    data = (L.llama_token_data * n_vocab)()
    view = np.frombuffer(data, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
    tokens, margins, text = [], [], b""
    one = (L.llama_token * 1)()
    for _ in range(N_PREDICT):
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        view["id"] = np.arange(n_vocab)
        view["logit"] = logits
        view["p"] = 0
        arr = L.llama_token_data_array(data, n_vocab, -1, False)
        L.llama_sampler_apply(smpl, ctypes.byref(arr))
        masked = view["logit"].copy()
        t = int(np.argmax(masked))
        top2 = np.sort(masked[np.isfinite(masked)])[-2:]
        margins.append(float(top2[-1] - top2[0]) if len(top2) == 2 else 1e9)
        tokens.append(t)
        if L.llama_vocab_is_eog(vocab, t):
            break
        L.llama_sampler_accept(smpl, t)
        piece = ctypes.create_string_buffer(256)
        k = L.llama_token_to_piece(vocab, t, piece, 256, 0, False)
        text += piece.raw[:k]
        one[0] = t
        assert L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) == 0
    L.llama_sampler_free(smpl)
    L.llama_free(ctx)
    return tokens, margins, text.decode("utf-8")


def main():
    models_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "REALM_MODELS", os.path.expanduser("~/.cache/realm/models"))
    bin_dir = subprocess.run([os.path.join(HERE, "build_llama_cpp.sh"), "--tools"],
                             check=True, capture_output=True, text=True).stdout.strip()
    tool = os.path.join(bin_dir, "llama-completion")
    realm = os.path.join(HERE, "..", "target", "release", "realm")
    os.environ["LLAMA_CPP_LIB_PATH"] = bin_dir
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(bin_dir)))))
    import llama_cpp as L
    L.llama_backend_init()
    cases = []
    for short, name in MODELS.items():
        path = os.path.join(models_dir, name)
        model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        vocab = L.llama_model_get_vocab(model)
        for question, constraint in CASES:
            prompt = CHAT[short].format(question)
            if "grammar" in constraint:
                gbnf = constraint["grammar"]
            else:
                gbnf = subprocess.run([realm, "grammar", "-j", json.dumps(constraint["json_schema"])],
                                      check=True, capture_output=True, text=True).stdout
            with tempfile.NamedTemporaryFile("w", suffix=".gbnf", delete=False) as f:
                f.write(gbnf)
            cli_text, cli_ended = completion(tool, path, prompt, ["--grammar-file", f.name])
            os.unlink(f.name)
            if "json_schema" in constraint:
                own = completion(tool, path, prompt, ["-j", json.dumps(constraint["json_schema"])])
                assert own == (cli_text, cli_ended), (own, cli_text)
            tokens, margins, text = greedy(L, model, vocab, prompt, gbnf)
            ended = L.llama_vocab_is_eog(vocab, tokens[-1])
            assert (text, ended) == (cli_text, cli_ended), (text, cli_text)
            print(f"{short}: {question!r} -> {text!r} (end of text: {ended}; "
                  f"smallest margin {min(margins):.3f})")
            cases.append({"model": short, "prompt": prompt, **constraint,
                          "n_predict": N_PREDICT, "text": text, "end_of_text": bool(ended),
                          "tokens": tokens, "margins": [round(m, 4) for m in margins]})
        L.llama_model_free(model)
    with open(OUT, "w") as f:
        json.dump({"llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)", "cases": cases}, f,
                  indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
