#!/usr/bin/env python3
"""Golden token ids of llama.cpp's `gemma4` tokenizer (Gemma 4's
`tokenizer.ggml.model`), for realm-core's tests:
realm-core/tests/fixtures/tokenizer/gemma4.json.

llama.cpp runs gemma4 as BPE by merge rank, SentencePiece-style: spaces
become `▁`, the text is cut into runs of line feeds and runs of anything
else, a word's symbols are its own UTF-8 characters (not GPT-2's byte
characters), a run of line feeds that is a token is taken whole, and a
final symbol that is no token falls back to `<0x..>` byte tokens; it adds
BOS even where the file says not to. No Gemma 4 vocabulary ships where
this runs, so the fixture carries a small synthetic one: Gemma's control
tokens (`<pad>`, `<eos>`, `<bos>`, `<unk>`, turn markers), a user-defined
and an unused token, `</s>` as Gemma 4 has it (normal beside
`<|tool_response>`), the 256 byte tokens, printable ASCII, `▁`, line feeds
and a few non-ASCII characters (emoji, most CJK, Thai, Arabic and `\\r`
are left to the byte fallback), some line-feed runs with no merge, and
merges: a few general ones first (whose results are not all tokens), then
ones that build each `▁`-piece of the probing texts left to right.
llama.cpp (llama-cpp-python 0.3.36's build, `vocab_only`) tokenizes the
corpus of scripts/gen_tokenizer_fixtures.py and texts aimed at gemma4's
corners, with and without BOS and special tokens, and decodes them; it
also gives every token's piece. The test rebuilds the vocabulary from the
fixture and must give the same ids, pieces and text.

Usage: python3 scripts/gen_gemma4_fixtures.py
"""
import ctypes
import json
import os
import re
import tempfile

import llama_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "realm-core", "tests", "fixtures", "tokenizer")

# (text, GGUF token type): 1 normal, 2 unknown, 3 control, 4 user-defined,
# 5 unused, 6 byte.
SPECIAL = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<mask>", 4),
           ("<|turn>", 3), ("<turn|>", 3), ("<start_of_turn>", 3), ("<end_of_turn>", 3),
           ("<|tool_response>", 3), ("</s>", 1), ("<table>", 4), ("<unused0>", 5)]
CHARS = list(dict.fromkeys([chr(c) for c in range(0x21, 0x7F)] + ["▁", "\n", "\t"]
                           + list("éèüöäßñçÀÉ中文字日本語한국어Жжприветαβγ’“”—…€©½\u0301\u00a0")))
NEWLINE_RUNS = ["\n\n\n", "\n\n\n\n\n\n"]
# General merges first (BPE applies them before the probes' chains); "zz"
# and "▁▁▁▁▁▁" are no tokens, so they fall back to bytes.
GENERAL = [("t", "h"), ("i", "n"), ("e", "r"), ("▁", "t"), ("th", "e"), ("in", "g"), ("▁t", "he"),
           ("o", "r"), ("e", "n"), ("▁", "a"), ("l", "l"), ("▁", "▁"), ("▁▁", "▁▁"), ("\n", "\n"),
           ("z", "z"), ("▁▁▁▁", "▁▁"), ("中", "文"), ("e", "\u0301")]
NOT_TOKENS = {"zz", "▁▁▁▁▁▁"}
CORNERS = [
    "", " ", "  ", "   ", "a b", " a", "a ", "a  b", "  lead", "trail  ", "mid    dle",
    "\n", "\n\n", "\n\n\n", "\n\n\n\n", "\n\n\n\n\n", "\n\n\n\n\n\n", "\n\n\n\n\n\n\n", "\n \n",
    " \n ", "\n  \n\n   \n\n\n", "a\n\nb", "a\n\n\nb", "\r\n", "\r\n\r\n", "\t\n\t", "x\n",
    "zz", "zzz", "zz zz", "pizza buzz", "the thing", "There therein", "ell all hello",
    "▁", "▁▁", "a▁b", " ▁ ", "é", "e\u0301", "café crème", "中文", "中文字", "中国", "日本語です",
    "한국어", "Жизнь", "привет мир", "αβγδ", "😀", "a😀b", " 😀 ", "👨‍👩‍👧", "ภาษาไทย", "مرحبا",
    "\u00a0x\u00a0", "\u3000", "\U0010ffff", "\x00", "\x7f",
    "<0x41>", "<0x0A>", "<0xZZ>", "<pad>", "<eos>", "<bos>hi", "<unk>", "<mask>", "a<mask>b",
    "<table>", " <table> ", "<table><table>", "<unused0>", "</s>", "x</s>y",
    "<|turn>user\nHi there<turn|>\n<|turn>model\n",
    "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
    "<|tool_response>{\"ok\": true}", "<bos><bos>", "<eos> <eos>",
    "Hello , world !", "it 's a ' b", "we 're I 've", " ?", " . , ! ?",
]


def probe_merges(texts, chars):
    """Merges that build each `▁`-piece of `texts` (line by line, spaces
    escaped) from its first character on, up to eight characters, as long
    as every character is one of `chars`."""
    merges = []
    for text in texts:
        for line in text.replace(" ", "▁").split("\n"):
            for piece in re.findall(r"▁?[^▁]+|▁+", line):
                acc = piece[0]
                if acc not in chars:
                    continue
                for nxt in piece[1:8]:
                    if nxt not in chars:
                        break
                    merges.append((acc, nxt))
                    acc += nxt
    return merges


def detokenize(vocab, ids, remove_special, unparse_special):
    """llama_detokenize's bytes."""
    import llama_cpp
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 16 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
    assert n >= 0, n
    return buf.raw[:n]


def piece(vocab, token, special):
    """llama_token_to_piece's bytes (no space stripped)."""
    import llama_cpp
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, special)
    assert n >= 0, n
    return buf.raw[:n]


def text_or_hex(data):
    """Valid UTF-8 as text, anything else as {"hex": ...}."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": data.hex()}


def main():
    llama_env.tools()
    import gguf
    import llama_cpp
    import gen_tokenizer_fixtures as gtf

    markers = [t for t, ty in SPECIAL if ty in (2, 3, 4)]
    texts = gtf.corpus(markers) + CORNERS
    tokens = [t for t, _ in SPECIAL]
    types = [ty for _, ty in SPECIAL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    tokens += CHARS + NEWLINE_RUNS
    types += [1] * (len(CHARS) + len(NEWLINE_RUNS))
    known = set(tokens)
    merges, seen = [], set()
    for a, b in GENERAL + probe_merges(texts, set(CHARS)):
        if (a, b) in seen:
            continue
        seen.add((a, b))
        merges.append(f"{a} {b}")
        if a + b not in known and a + b not in NOT_TOKENS:
            known.add(a + b)
            tokens.append(a + b)
            types.append(1)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gemma4.gguf")
        w = gguf.GGUFWriter(path, "gpt2")
        w.add_block_count(1)
        w.add_context_length(1024)
        w.add_embedding_length(64)
        w.add_feed_forward_length(256)
        w.add_head_count(1)
        w.add_layer_norm_eps(1e-5)
        w.add_tokenizer_model("gemma4")
        # (The model forces pre-tokenizer gemma4 and BOS on, whatever
        # these say.)
        w.add_tokenizer_pre("default")
        w.add_add_bos_token(False)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
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
        add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
        bos = llama_cpp.llama_vocab_bos(vocab)
        eos = llama_cpp.llama_vocab_eos(vocab)
        pieces = [piece(vocab, i, True).hex() for i in range(len(tokens))]
        plain_pieces = [piece(vocab, i, False).hex() for i in range(len(tokens))]
        cases = []
        for text in texts:
            data = text.encode("utf-8")
            case = {"text": text}
            for key, add, special in [("ids", False, False), ("ids_special", False, True),
                                      ("ids_bos", True, False), ("ids_bos_special", True, True)]:
                case[key] = gtf.tokenize(vocab, data, add, special)
            # As generated text shows it, and with BOS dropped and control
            # tokens rendered.
            case["decoded"] = text_or_hex(detokenize(vocab, case["ids_special"], False, False))
            case["decoded_bos_special"] = text_or_hex(
                detokenize(vocab, case["ids_bos_special"], True, True))
            cases.append(case)
        llama_cpp.llama_model_free(model)
    with open(os.path.join(FIXTURES, "gemma4.json"), "w", encoding="utf-8") as f:
        json.dump({
            "generator": "scripts/gen_gemma4_fixtures.py",
            "llama_cpp": "0c1e570 (llama-cpp-python 0.3.36)",
            "tokens": tokens, "token_types": types, "merges": merges,
            "bos": bos, "eos": eos, "add_bos": add_bos, "add_eos": add_eos, "eog": eog,
            "pieces": pieces, "plain_pieces": plain_pieces, "cases": cases,
        }, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} texts, {len(tokens)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
