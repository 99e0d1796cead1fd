#!/usr/bin/env python3
"""Golden token ids of llama.cpp's GPT-4o pre-tokenizer (`tokenizer.ggml.pre`
gpt-4o: gpt-oss, Llama 4; minimax-m2, which llama.cpp splits alike) and of tekken's (Mistral Nemo, Mistral Small 3,
Devstral, Ministral 3: GPT-4o's expression without contractions, digits
alone), and of the LLaMA 3 expression as llama.cpp runs it for GLM-4's
`glm4`, Seed-Coder's `seed-coder` and Ling's `bailingmoe2` (std::regex
over its collapsed text), and of DeepSeek V3's `deepseek-v3` (its three
expressions), Kimi K2's `kimi-k2` and Qwen 3.5's `qwen35` (llama.cpp's own
scanners), and of BLOOM's `bloom` (` ?[^(\\s|.,!?…。，、।۔،)]+` over
std::wregex, the text between its matches words of their own),
for realm-core's tests: realm-core/tests/fixtures/tokenizer/PRE.json.

No o200k vocabulary ships where this runs, so the fixture carries a small
byte-level BPE vocabulary of its own, declared `gpt-4o`: GPT-2's 256 byte
tokens and its first MERGES merges (from llama.cpp's
models/ggml-vocab-gpt-2.gguf), <|endoftext|>, and first of all merges that
build every whitespace-separated run of the probing texts (and the run after
a space) from its first byte on. BPE merges never cross the pre-tokenizer's
words, so a word that starts a run comes out as the run's prefix up to the
word's end: where a text is split shows in its ids. The vocabulary also
has o200k_harmony's control tokens (gpt-oss's message markers), so the
fixture holds which tokens llama.cpp ends generation on (`<|end|>` is not
one where `<|return|>` and `<|call|>` are) and how the markers tokenize.
The tekken vocabulary has Mistral's control tokens first, as tekken's
files do (`<s>` 1, `</s>` 2, `[INST]`, `[TOOL_CALLS]`, `[ARGS]`, ...), and
its fixture also holds each text's ids with the BOS llama.cpp adds
(tekken adds one by default). llama.cpp (llama-cpp-python
0.3.36's build, `vocab_only`) tokenizes the corpus of
scripts/gen_tokenizer_fixtures.py and texts aimed at the expression's
corners (case changes, contractions, digit groups, marks, non-ASCII
letters and spaces, line breaks); the test rebuilds the vocabulary from the
fixture and must give the same ids.

Usage: python3 scripts/gen_gpt4o_fixtures.py [--pre gpt-4o|tekken|glm4|seed-coder|minimax-m2|bailingmoe2|deepseek-v3|kimi-k2|qwen35|bloom]
"""
import argparse
import json
import os
import re
import tempfile

import llama_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "realm-core", "tests", "fixtures", "tokenizer")
MERGES = 2000


def byte_symbols(text):
    """GPT-2's byte-level symbols of `text`."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, map(chr, cs)))
    return [table[b] for b in text.encode("utf-8")]


def probe_merges(texts, specials, runs=str.split):
    """Merges that build each run (and space + run) of `texts` left to right
    (`runs` cuts a text into them: at any whitespace by default)."""
    merges, seen = [], set()
    for text in texts:
        # (Not the special tokens' texts: they are no merge's.)
        for special in specials:
            text = text.replace(special, " ")
        for run in runs(text):
            for piece in (run, " " + run):
                sym = byte_symbols(piece)
                acc = sym[0]
                for nxt in sym[1:]:
                    if (acc, nxt) not in seen:
                        seen.add((acc, nxt))
                        merges.append((acc, nxt))
                    acc += nxt
    return merges

CORNERS = [
    "HelloWorld", "camelCaseWordsHere", "HTTPServerError", "iPhone XSMax", "ABCdef GHIjkl",
    "DON'T you'RE WE'LL I'd It'S", "'s 't 're 've 'm 'll 'd", "x's", "O'Neil's",
    "ÀBc ÉCOLE école", "naïve café", "e\u0301te\u0301", "İstanbul", "ǅungla ǈ", "ΑΒΓαβγ Ωmega",
    "Straße STRASSE", "日本語テキスト", "한국어 텍스트", "مرحبا بالعالم", "\u0915\u094d\u0937",
    "1 12 123 1234 12345 123456 1234567", "٣٤٥٦ ①②③", "3.14159 1e-7 0x1F",
    "x/\n\ny", "a/b//c\n/", " !!  \n\n  ?", "\t\tindent\n\tx", "a\u00a0b\u2003c\u3000d",
    "end  ", "  start", "mid   dle", "line\r\nbreak\rx\n", "\u0085next", "tab\t\tstop",
    "email@example.com", "https://example.com/a/b?c=d", "C++ & C# | F#", "~/.config/x.toml",
    "émoji 🙂👍🏽 ok", "\u200bzero\u200dwidth", "ﬁne ﬂow", "MixedCASEandlower",
    "<|start|>assistant<|channel|>analysis<|message|>Think.<|end|>",
    "<|channel|>final<|message|>Paris.<|return|>", "x<|call|>y <|constrain|>json",
    # Combining marks alone, after punctuation, spaces and digits.
    "\u0301abc", "!\u0301x", "x \u0301 y", "(\u0301)", "1\u0301 2", "a\u0301\u0302!\u0303",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
]
HARMONY = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>",
           "<|call|>"]
# Tekken's first control tokens, in their files' order.
MISTRAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
           "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
           "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]",
           "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]", "[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]"]
TEKKEN_CORNERS = [
    "[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Hi there[/INST]Hello!</s>",
    '[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"city": "Paris"}</s>',
    "[THINK]Let me think.[/THINK]The answer is 42.", "<s>[INST] 2024-11-05 [/INST]",
    "Mistral's models' \"tekken\" isn't o200k",
]
# BLOOM's corners: the punctuation its class leaves out (and the literal
# parentheses and bar inside it), punctuation it keeps, spaces before them,
# whitespace runs, ASCII and other controls, scripts mixed.
BLOOM_CORNERS = [
    # Each character the class leaves out between two it keeps, words of
    # their own so that the probing merges join all three (first, before
    # any merge joins the character's own bytes).
    "a.b a,b a!b a?b a…b a。b a，b a、b a।b a۔b a،b a(b a|b a)b",
    "字.字 字,字 字!字 字?字 字…字 字。字 字，字 字、字 字।字 字۔字 字،字 字(字 字|字 字)字",
    "a.b,c!d?e…f。g，h、i।j۔k،l", "a(b)c|d", "(x) [y] {z} <w>", "f(x) | g(y)", "a||b ((c))",
    "Wait... what?! Really?!", "x .y ,z !w ?v", "a . , ! ? b", "end .", " .", ". a", "  , b",
    "你好，世界。你好、世界！", "你好？世界！", "日本語…テキスト", "नमस्ते। दुनिया॥ ठीक",
    "سلام، دنیا؟ بله۔", "¿Qué? ¡Sí! «oui» „ja“", "a\\sb \\\\s", "1,000.50 + 2.5e-3 = x", "12|34(56)",
    "a  b   c    d", "a\n\nb\n \nc", "a\t\tb \tc\t d", " \t\n ", "a \n b", "a\x0bb\x0cc",
    "a\x1cb\x1dc\x1ed\x1ff", "a\x85b \x85c", "a\u00a0b \u00a0c", "a\u2003b\u3000c \u3000 d",
    "a\u2028b\u2029c", "a\u200bb\ufeffc", "x\x00y\x7fz", "tab\t(x)\n|y|", "Hello, world! (x|y)",
    "résumé, naïve. café!", "mixedLatinКириллица中文123。", "🙂, 👍🏽! (🎉)",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pre", choices=["gpt-4o", "tekken", "glm4", "seed-coder", "minimax-m2", "bailingmoe2",
                                       "deepseek-v3", "kimi-k2", "qwen35", "bloom"], default="gpt-4o")
    args = ap.parse_args()
    tekken = args.pre == "tekken"
    vendor = os.path.dirname(os.path.dirname(llama_env.tools()))
    import gguf
    import llama_cpp
    import gen_tokenizer_fixtures as gtf

    src = os.path.join(vendor, "models", "ggml-vocab-gpt-2.gguf")
    reader = gguf.GGUFReader(src)

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    corners = CORNERS + (TEKKEN_CORNERS if tekken else []) + (BLOOM_CORNERS if args.pre == "bloom" else [])
    specials = MISTRAL if tekken else HARMONY + ["<|endoftext|>"]
    first = MISTRAL if tekken else []
    tokens = first + strings("tokenizer.ggml.tokens")[: 256 + MERGES]
    # LLaMA 3's expressions: runs cut at spaces alone, so that line breaks
    # joined to what comes before them show in the ids.
    cut = (lambda t: [r for r in t.split(" ") if r]) if args.pre in ("glm4", "seed-coder", "bailingmoe2", "deepseek-v3", "kimi-k2",
                                                             "qwen35") \
        else str.split
    if args.pre == "bloom":
        # BLOOM's words: runs cut at spaces alone, and the runs of what its
        # class keeps and of what it leaves out, so that words that start
        # inside a run show in the ids too.
        apart = re.compile(r"[^(\s|.,!?…。，、।۔،)]+|[(\s|.,!?…。，、।۔،)]+")
        cut = lambda t: [r for r in t.split(" ") if r] + apart.findall(t)
    # (BLOOM's corners first: their merges rank first, so that a character
    # the class leaves out joins the letters around it before its own bytes
    # join, and splitting there or not shows in the ids.)
    first_probes = BLOOM_CORNERS if args.pre == "bloom" else []
    probes = probe_merges(first_probes + gtf.FIXED + corners, specials, cut)
    known = set(tokens)
    for a, b in probes:
        if a + b not in known:
            known.add(a + b)
            tokens.append(a + b)
    normal = len(tokens)
    if not tekken:
        tokens += HARMONY + ["<|endoftext|>"]
    merges = [f"{a} {b}" for a, b in probes] + strings("tokenizer.ggml.merges")[:MERGES]
    types = [3 if (i < len(first) or i >= normal) else 1 for i in range(len(tokens))]
    # (BOS and EOS: `<s>` and `</s>`, or <|endoftext|>.)
    bos, eos = (1, 2) if tekken else (len(tokens) - 1, len(tokens) - 1)
    eot = eos
    texts = gtf.corpus(["</s>" if tekken else "<|endoftext|>"]) + corners
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, args.pre + ".gguf")
        w = gguf.GGUFWriter(path, "gpt2")
        w.add_block_count(1)
        w.add_context_length(1024)
        w.add_embedding_length(64)
        w.add_feed_forward_length(256)
        w.add_head_count(1)
        w.add_layer_norm_eps(1e-5)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(args.pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(bos)
        w.add_eos_token_id(eos)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        assert model, "llama.cpp did not load the vocabulary"
        vocab = llama_cpp.llama_model_get_vocab(model)
        eog = [i for i in range(len(tokens)) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        cases = []
        for text in texts:
            data = text.encode("utf-8")
            special = gtf.tokenize(vocab, data, False, True)
            cases.append({
                "text": text,
                "ids": gtf.tokenize(vocab, data, False, False),
                "ids_special": special,
                # As generated text shows them: control tokens hidden.
                "decoded_special": gtf.detokenize(vocab, special, False, False),
            })
            if tekken:
                cases[-1]["ids_bos"] = gtf.tokenize(vocab, data, True, False)
        llama_cpp.llama_model_free(model)
    with open(os.path.join(FIXTURES, args.pre + ".json"), "w", encoding="utf-8") as f:
        json.dump({
            "generator": "scripts/gen_gpt4o_fixtures.py",
            "llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)",
            "pre": args.pre, "tokens": tokens, "token_types": types, "merges": merges,
            "bos": bos, "eot": eot, "eog": eog, "add_bos": add_bos, "cases": cases,
        }, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} texts, {len(tokens)} tokens")


if __name__ == "__main__":
    main()
