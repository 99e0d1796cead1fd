#!/usr/bin/env python3
"""Golden tokenizer and chat-template fixtures from llama.cpp.

For each model, writes realm-core/tests/fixtures/tokenizer/<name>.json with a
deterministic corpus of strings and, for every string, llama.cpp's token ids
(`llama_tokenize` with add_special/parse_special off, and both on) and its
detokenized text (`llama_detokenize`). For the two chat models it also renders
the chat template of a three-turn conversation with a system prompt using
Python's jinja2 (the reference implementation of HF chat templates).

Needs: pip install llama-cpp-python jinja2 gguf

    python3 scripts/gen_tokenizer_fixtures.py            # all models found
    python3 scripts/gen_tokenizer_fixtures.py bert-bge   # only these fixtures
    REALM_MODELS=/path/to/models python3 scripts/gen_tokenizer_fixtures.py

Models are looked up in $REALM_MODELS (default ~/.cache/realm/models); the
vocabulary-only files of llama.cpp's test suite (models/ggml-vocab-*.gguf in
the llama.cpp repository) in its `vocab/` subfolder.

A variant fixture (VARIANTS) runs llama.cpp on a copy of a vocabulary with
some metadata keys changed (written to a temporary folder) and records the
keys in its "metadata" field, for the test to set the same. Where llama.cpp's
own test strings for a vocabulary are there (its `.inp` file beside it), they
join the corpus, and llama.cpp's ids for them are first checked against the
`.out` file, as llama.cpp's test-tokenizer-0 does.

A toy fixture (TOYS) is a hand-made vocabulary: llama.cpp runs on a GGUF
written from it, and the fixture keeps its tokenizer keys in a "vocab" field
instead of naming a model file, for the test to build the same.
"""
import ctypes
import json
import os
import pathlib
import random
import struct
import sys
import tempfile

import gguf
import jinja2
import llama_cpp

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "realm-core/tests/fixtures/tokenizer"
MODELS = pathlib.Path(os.environ.get("REALM_MODELS", pathlib.Path.home() / ".cache/realm/models"))

# name -> (file under MODELS, special-token texts to sprinkle into the corpus)
TARGETS = {
    "gemma3": ("gemma-3-270m-q4_k_m.gguf", ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "</s>", "<table>", "<unused7>"]),
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<fim_prefix>", "<reponame>"]),
    "gpt2": ("vocab/ggml-vocab-gpt-2.gguf", ["<|endoftext|>"]),
    "llama-bpe": ("vocab/ggml-vocab-llama-bpe.gguf", ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>"]),
    "qwen2": ("vocab/ggml-vocab-qwen2.gguf", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "starcoder": ("vocab/ggml-vocab-starcoder.gguf", ["<|endoftext|>", "<fim_prefix>"]),
    "falcon": ("vocab/ggml-vocab-falcon.gguf", ["<|endoftext|>", ">>ABSTRACT<<"]),
    "deepseek-llm": ("vocab/ggml-vocab-deepseek-llm.gguf", ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]),
    "llama-spm": ("vocab/ggml-vocab-llama-spm.gguf", ["<s>", "</s>"]),
    "bert-bge": ("vocab/ggml-vocab-bert-bge.gguf", ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]"]),
    "nomic-bert-moe": ("vocab/ggml-vocab-nomic-bert-moe.gguf", ["<s>", "</s>", "<mask>", "<pad>", "<unk>"]),
}

# name -> (the target it changes, metadata keys set on a copy of its file)
VARIANTS = {
    # A cased WordPiece model: no lowercasing, so no accent stripping either.
    "bert-bge-cased": ("bert-bge", {"tokenizer.ggml.normalizer.lowercase": False}),
    # Lowercased with the accents kept.
    "bert-bge-accents": ("bert-bge", {"tokenizer.ggml.normalizer.strip_accents": False}),
    # A unigram model that keeps its spaces as they come.
    "nomic-bert-moe-spaces": ("nomic-bert-moe", {"tokenizer.ggml.remove_extra_whitespaces": False}),
    # ...and one without the space in front.
    "nomic-bert-moe-no-prefix": ("nomic-bert-moe", {"tokenizer.ggml.add_space_prefix": False}),
}

# Targets whose corpus takes WordPiece's extra strings and llama.cpp's own
# test strings for the file (its `.inp`, checked against its `.out`).
WORDPIECE = {"bert-bge", "bert-bge-cased", "bert-bge-accents"}

# What WordPiece's normalizer and greedy matching meet: case, accents and
# marks, scripts split per character, punctuation and symbols, controls,
# words longer than any piece and words no piece covers.
WORDPIECE_EXTRA = [
    "HELLO World", "Hello WORLD!", "ÄPFEL und Äpfel", "ÜBER über Über", "Ångström Å Å", "İstanbul",
    "ΣΊΣΥΦΟΣ Σίσυφος", "ǅemal ǈ", "Straße STRASSE", "ＨＥＬＬＯ ｗｏｒｌｄ", "ﬁne ﬂow ﬀ", "Ⅻ ⅻ",
    "e\u0301\u0301", "a\u0300\u0316b", "\u0308", "n\u0303o", "ñandú", "Crème Brûlée", "ÀÉÎÕÜ àéîõü",
    "Zürich, Genève & Köln", "résumé-naïve", "ḱṓ ẞ", "Łódź", "Ærøskøbing",
    "漢字", "日本語", "中文字符和English混合", "豈更車", "\U00020000\U0002A6DF\U0002B920", "\U0002F800",
    "ｶﾀｶﾅ ｶﾞ", "ㄅㄆㄇ", "한국어 텍스트", "각", "〇一二", "\u3400\u4dbf", "。、「」",
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "antidisestablishmentarianism", "a" * 120, "ab" * 60, "xqzjvkwpq", "qqqqq zzzzz", "hellozzz world",
    "w048 7tuijk dsdfhu", "1,234.56", "$100 + 5% = ?", "2+2=4", "a<b>c", "x^y|z~w", "`code`",
    "a—b–c", "«quoted» „German“ “smart”", "don't won't can't", "U.S.A.", "e.g., i.e.", "(a) [b] {c}",
    "#hashtag @user", "50°C ±2 µm", "€5 £3 ¥7", "©®™", "→ ← ↑", "∑∫√", "½ ¼ ¾",
    "hello\u0007world", "a\u00adb", "x\u200by", "\u200d\u200c", "tab\tsep\nline\rret", "\x0b\x0c",
    "a\u0000b", "a\ufffdb", "\ue000\U000f0000", "\u0378\u0379", "\u2028\u2029",
    "[CLS] hello [SEP] world [MASK]", "[cls] [sep] [mask]", "[UNK]", "[PAD] [unused0]", "[CLS][SEP]",
    "the [MASK] sat on the mat.", "[MASK]ed", "x[SEP]y",
]

# Targets whose corpus takes the unigram extra strings.
UNIGRAM = {"nomic-bert-moe", "nomic-bert-moe-spaces", "nomic-bert-moe-no-prefix"}

# What a unigram model's character map and Viterbi split meet: compatibility
# forms the map folds (full width, ligatures, circled and Roman numerals,
# compatibility spaces, squared units), scripts, whitespace of every kind,
# characters no piece covers, the special and unused tokens written in text,
# long words and numbers.
UNIGRAM_EXTRA = [
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "Ｈｅｌｌｏ\u3000Ｗｏｒｌｄ", "１２３，４５６．７８", "ｘ＝１＋２", "［］｛｝（）",
    "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ", "ﬁnancial oﬃce", "①②③④⑤ ⑩ ⑳", "⑴ ⒈ Ⓐ ⓑ", "Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ ⅻ ⅿ", "㍿ ㌔ ㎏ ㎞ ㈱",
    "½ ⅓ ¼ ¹²³ ₁₂₃ ⁴⁵⁶", "™ ℃ ℉ № ℌ ℍ ℕ", "µ Ω Å K", "𝐀𝐁𝐂 𝒜 𝔸", "ｶﾞｷﾞｸﾞ ﾊﾟ ｱｲｳｴｵ", "〜～ …‥ ⁉‼",
    "a\u3000b\u3000\u3000c", "\u3000\u3000lead", "\u00a0a\u00a0\u00a0b\u00a0", "a\u2002b\u2003c\u2009d\u200ae",
    "x\u205fy\u2060z", "x\u00adx", "x\u200by\u200cz\u200d", "\ufeff\ufeffa", "a\u2028b\u2029c\u0085d",
    "a\u000bb\u000cc", "a\u0000b\u0001c\u001fd\u007fe",
    "a\tb\t\tc", "line1\nline2\n\nline4", "\r\n\r\n", "\t\n \t\n", "   leading", "trailing   ",
    "  both  ", "many          spaces", " ", "x ", " x",
    "a\u0301 e\u0300 o\u0308", "e\u0301\u0301", "ñ n\u0303", "Ça va? Œuvre Æsir ß ẞ", "İı Iı ǅ ǈ ǋ",
    "你好世界 繁體中文 简体中文", "日本語とEnglishのMix", "ひらがなカタカナ漢字", "가각 한국어입니다", "ㄱㄴㄷ ᄀᄁ",
    "Москва — столица России.", "ПРИВЕТ мир", "नमस्ते दुनिया", "क्षत्रिय", "مرحبا، كيف حالك؟", "ﻻ ﷺ", "שָׁלוֹם",
    "Ελληνικά ΆΈΉ", "ภาษาไทยไม่มีช่องว่าง", "ᚠᛇᚻ ꙮ ⲁⲃⲅ ᐊᓄᒃᑎᑐᑦ", "𓀀𓀁 𐌰𐌱 ꓐ ⵣ", "\u0378\u0379", "\ue000\uf8ff",
    "\U000e0001\U0010fffd", "🙂🙃 🤔", "👩🏽‍💻", "🇺🇳", "😀😀😀",
    "[PAD250001]", "[PAD250001] [PAD250020]x", "<s><s>", "</s></s>", "<mask><mask>", "a<mask>b",
    "a  <mask>  b", "\n<mask>\n", "\u3000<mask>", "<pad>x</pad>", "<unk>?", "<S>", "< s >",
    "supercalifragilisticexpialidocious", "Donaudampfschifffahrtsgesellschaftskapitän",
    "a" * 100, "ab" * 40, "xqzjvkwpq",
    "3.14159 2,718 1e10 -42 +7 0.0001 1/2 50% #1", "1234567890123456789012345678901234567890",
    "٠١٢٣٤٥٦٧٨٩ ۰۱۲", "१२३", "二〇二四年", "www.example.com/path?q=1", "C++ & C#", "¿Qué? ¡Sí!",
    "“quotes” ‘single’ «guillemets»", "HELLO, World!!!",
]

# Hand-made unigram vocabularies, written to a temporary GGUF (with the
# non-tokenizer keys of BASE) and stored whole in their fixture's "vocab"
# field, for what XLM-R's vocabulary cannot show: there every character of
# every piece is a piece of its own, so the unknown token's score never
# decides a split. Here some characters are only inside longer pieces.
# name -> (add_space_prefix, remove_extra_whitespaces)
TOYS = {
    "ugm-toy": (True, True),
    "ugm-toy-raw": (False, False),
}
TOY_BASE = "vocab/ggml-vocab-nomic-bert-moe.gguf"

# (text, score, GGUF token type): 1 normal, 2 unknown, 3 control,
# 4 user-defined, 5 unused, 6 byte, 0 undefined. No special-token ids are
# written: llama.cpp's T5 defaults apply (</s> 1, <unk> 2, <pad> 0, no BOS).
TOY_PIECES = [
    ("<pad>", 0.0, 3), ("</s>", 0.0, 3), ("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("<mask>", 0.0, 3),
    ("▁", -2.0, 1), ("▁a", -2.5, 1), ("a", -3.0, 1), ("b", -3.0, 1), ("c", -3.0, 1), ("ab", -4.0, 1),
    ("abc", -6.0, 1), ("▁abc", -7.0, 1), ("▁the", -1.0, 1), ("t", -4.0, 1), ("h", -4.0, 1),
    ("e", -2.0, 1), ("th", -5.0, 1), ("he", -5.0, 1), ("x", -2.0, 1),
    # The lowest normal score: the unknown token scores 10 below, -25.
    ("xq", -15.0, 1),
    # `q` and `k` are only inside pieces. "qzg": qz + g (-25.5) beats
    # <unk> + zg (-26) with the penalty of 10, not with 9. "kwv": <unk> + wv
    # (-25.5) beats kw + v (-26) with 10, not with 11.
    ("qz", -12.0, 1), ("zg", -1.0, 1), ("g", -13.5, 1), ("z", -10.0, 1),
    ("kw", -14.0, 1), ("v", -12.0, 1), ("wv", -0.5, 1), ("w", -5.0, 1),
    ("日", -5.0, 1), ("日本", -6.0, 1), ("f", -3.0, 1), ("i", -3.0, 1), ("fi", -3.5, 1),
    ("1", -2.0, 1), ("é", -3.0, 1), ("y", -3.0, 1),
    # User-defined pieces score 0 in the split, whatever the file says.
    ("<u>", -50.0, 4), ("▁bb", -50.0, 4),
    # Unused pieces are matched (with their own score); undefined ones not.
    ("zz", 1.0, 5), ("[unused0]", -100.0, 5), ("ww", 5.0, 0),
    ("<0x41>", 0.0, 6),
]

# The toy character map: folding, spaces, a key that is a prefix of another,
# a character that vanishes, and `<`, which the user-defined `<u>` shadows.
TOY_CHARSMAP = [
    ("Ａ", "a"), ("ＡＢ", "abc"), ("①", "1"), ("ﬁ", "fi"), ("\u3000", " "), ("\t", " "),
    ("\n", " "), ("\u00a0", " "), ("<", "x"), ("ｅ\u0301", "é"), ("\u200b", ""),
]

TOY_EXTRA = [
    "qzg", "kwv", "xqzg kwv", "qq", "qqq x qq", "q", "k", "日本", "本日", "日本本", " bb", "bb", "a bb",
    "abb", "<y", "x<u>y", "<u><u>", "<", "<<u", "zz", "zzz", "ww", "[unused0]", "x[unused0]", "ﬁ", "ＡＢ",
    "ＡＡＢ", "Ａ①", "\u3000a\tb\n", "a\u00a0\u00a0b", "ｅ\u0301", "ｅ", "x\u200by", "\u200b", "the",
    " the", "thethe", "abc", "ab c", "a b c", "  abc  ", "aaa", "fi fi", "1①", "é e\u0301", "A", "<0x41>", "wv",
    "a\u0000b", "\u0000", "\ufffd", "x  <mask>  y", "<s>abc</s>",
]


def charsmap_bytes(pairs):
    """A precompiled character map for `pairs` (key, replacement) as
    darts-clone lays it out: one 256-unit block of children per node, the
    value unit at label 0 of a key's block."""
    root = {"children": {}, "value": None}
    strings = bytearray()
    for key, repl in pairs:
        node = root
        for b in key.encode("utf-8"):
            node = node["children"].setdefault(b, {"children": {}, "value": None})
        node["value"] = len(strings)
        strings += repl.encode("utf-8") + b"\0"
    units = [0] * 256

    def place(node, index):
        block = len(units)
        units.extend([0] * 256)
        offset = index ^ block
        assert offset < 1 << 21
        units[index] = (units[index] & 0x1FF) | (offset << 10)
        if node["value"] is not None:
            units[block] = (1 << 31) | node["value"]
        for b, child in sorted(node["children"].items()):
            at = block | b
            units[at] = b | ((child["value"] is not None) << 8)
            place(child, at)

    place(root, 0)
    return struct.pack("<I", 4 * len(units)) + struct.pack(f"<{len(units)}I", *units) + bytes(strings)


def write_toy(base, dst, prefix, merge):
    """Writes the toy unigram vocabulary to `dst` as a GGUF with `base`'s
    other keys; returns its tokenizer keys (and the architecture, which
    decides `<mask>`'s attributes) as the fixture stores them."""
    keys = {
        "tokenizer.ggml.model": "t5",
        "tokenizer.ggml.tokens": [t for t, _, _ in TOY_PIECES],
        "tokenizer.ggml.scores": [s for _, s, _ in TOY_PIECES],
        "tokenizer.ggml.token_type": [k for _, _, k in TOY_PIECES],
        # Hex in the fixture; bytes in the file.
        "tokenizer.ggml.precompiled_charsmap": charsmap_bytes(TOY_CHARSMAP).hex(),
        "tokenizer.ggml.add_space_prefix": prefix,
        "tokenizer.ggml.remove_extra_whitespaces": merge,
    }
    reader = gguf.GGUFReader(base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    keys = {"general.architecture": arch, **keys}
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith(("GGUF.", "tokenizer.")):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_tokenizer_model(keys["tokenizer.ggml.model"])
    writer.add_token_list(keys["tokenizer.ggml.tokens"])
    writer.add_token_scores(keys["tokenizer.ggml.scores"])
    writer.add_token_types(keys["tokenizer.ggml.token_type"])
    writer.add_precompiled_charsmap(bytes.fromhex(keys["tokenizer.ggml.precompiled_charsmap"]))
    writer.add_bool("tokenizer.ggml.add_space_prefix", prefix)
    writer.add_bool("tokenizer.ggml.remove_extra_whitespaces", merge)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return keys


# Chat templates for files without one: the same files realm-core embeds.
BUILTIN_TEMPLATES = ROOT / "realm-core/src/chat"

FIXED = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", " \n", "\r\n", "\t\t\tx", "a", "A", "Hello",
    "Hello world", " Hello world", "Hello world ", "  Hello  world  ", "Hello\nworld", "Hello\tworld",
    "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done it; we'd go, he's there, it's 'quoted'.",
    "DON'T SHOUT, IT'S RUDE. You'RE right, I'LL stop.",
    "0", "7", "42", "123", "1234", "12345", "123456789", "3.14159265358979", "1,000,000", "2024-01-31",
    "-17.5e-3", "0xDEADBEEF", "+1 (555) 123-4567", "99 bottles", "v1.2.3-rc.4",
    "12345678901234567890123456789012345678901234567890",
    "!!!", "???", "...", "?!?!", "----", "====", "!@#$%^&*()_+-=[]{}|;':\",./<>?`~", "((()))", "<<>>", "---\n***\n___",
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "const x = (a, b) => a ?? b; // nullish\nlet y = `tpl ${x}`;",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name DESC;",
    "<div class=\"box\"><p>Hi &amp; bye</p></div>",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)",
    "    indented with four spaces\n        and eight",
    "x=1;y=2;z=x+y", "a_b_c", "camelCaseIdentifier", "snake_case_identifier", "SCREAMING_SNAKE", "kebab-case-word",
    "https://example.com/path?query=1&x=y#frag", "user@example.org", "C:\\Windows\\System32",
    "café", "naïve résumé", "Ångström", "Straße", "Ελληνικά γράμματα", "Русский текст, привет!", "Ünïcödé",
    "e\u0301", "a\u0308\u0304", "\u0301", "ñ vs n\u0303",
    "中文字符", "你好，世界！", "日本語のテキストです。", "ひらがな カタカナ", "한국어 텍스트", "漢字かな交じり文",
    "العربية نص", "مرحبا بالعالم", "עברית", "हिन्दी पाठ", "ภาษาไทย", "ქართული", "Tiếng Việt có dấu",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "🤖 robots 🤖", "a😀b", "1️⃣",
    "\u200b", "\u200d", "\ufeffBOM", "\u00a0nbsp\u00a0", "\u3000ideographic space", "\u2028line sep",
    "\u0000", "\u0001\u0002\u001f", "\u007f", "\u0085", "\ufffd", "\ue000private", "\U0010ffff", "\ud7ff",
    "\U0001d400\U0001d401", "\u2126\u212a", "ｆｕｌｌｗｉｄｔｈ", "①②③", "Ⅻ", "½ ¾", "٣٤٥", "²³",
    "tab\there", "multiple   spaces   here", "trailing spaces    ", "    leading spaces", "\n\nparagraph\n\n",
    "mixed\r\nline\rendings\n", "a\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nb",
    "' s", " 's", "'s", "it 's", "x ' y", "Hello , world .", "What ?", "Wait !",
    "<unk>", "<s>", "</s>", "<pad>", "<|endoftext|>", "<start_of_turn>", "<|im_start|>", "<<not special>>",
]

FRAGMENTS = [
    "hello", "World", " the", "  ", "\n", "\t", "42", "3.5", "!?", "...", "café", "日本", "한국", "😀",
    "👨‍👩‍👧", "'s", "'LL", "x", "==", "->", "()", "{", "}", "\u0301", "مرحبا", "ß", "Ω", "\u00a0", "\r\n",
    "0000", "_", "#", "fn", "def", "<", ">", "/", "\\", "\"", "`", "~", "€", "¥", "©",
]


def llama_tests(path):
    """llama.cpp's test strings for a vocabulary and their ids, or []."""
    inp, out = pathlib.Path(f"{path}.inp"), pathlib.Path(f"{path}.out")
    if not (inp.exists() and out.exists()):
        return []
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    ids = [[int(t) for t in line.split()] for line in out.read_text().splitlines()]
    assert len(texts) == len(ids), (len(texts), len(ids))
    return list(zip(texts, ids))


def corpus(specials, extra=()):
    rng = random.Random(20240531)
    texts = list(FIXED) + [t for t in dict.fromkeys(extra) if t not in FIXED]
    for s in specials:
        texts += [s, f"{s}hello", f"a {s} b", f"{s}\n{s}", f"x{s}{s}y", f" {s} ", f"{s}user\nHi there!{s}\n"]
    while len(texts) < 360:
        n = rng.randint(1, 12)
        parts = [rng.choice(FRAGMENTS) for _ in range(n)]
        if specials and rng.random() < 0.2:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(specials))
        texts.append("".join(parts))
    return texts


def tokenize(vocab, data, add_special, parse_special):
    n = len(data) + 16
    buf = (llama_cpp.llama_token * n)()
    got = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n, add_special, parse_special)
    if got < 0:
        n = -got
        buf = (llama_cpp.llama_token * n)()
        got = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n, add_special, parse_special)
    assert got >= 0, got
    return list(buf[:got])


def detokenize(vocab, ids, remove_special, unparse_special):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 8 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
    if n < 0:
        size = -n
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, remove_special, unparse_special)
    return buf.raw[:n].decode("utf-8", errors="replace")


CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan?  "},
]


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


def render(template, bos, eos, messages, add_generation_prompt):
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
    )


def chat_fixture(path, vocab_tokens, bos_id, eos_id):
    reader = gguf.GGUFReader(path)
    field = reader.fields.get("tokenizer.chat_template")
    if field is not None:
        template, source = bytes(field.parts[field.data[0]]).decode(), "metadata"
    elif "<start_of_turn>" in vocab_tokens:
        template, source = (BUILTIN_TEMPLATES / "gemma.jinja").read_text(), "builtin:gemma"
    else:
        template, source = (BUILTIN_TEMPLATES / "chatml.jinja").read_text(), "builtin:chatml"
    bos = vocab_tokens[bos_id] if bos_id is not None else ""
    eos = vocab_tokens[eos_id] if eos_id is not None else ""
    cases = []
    for gen in (True, False):
        cases.append({
            "messages": CONVERSATION,
            "add_generation_prompt": gen,
            "expected": render(template, bos, eos, CONVERSATION, gen),
        })
    return {"source": source, "cases": cases}


def with_metadata(src, dst, keys):
    """Copies the tensorless GGUF `src` to `dst` with `keys` (name -> bool)
    set."""
    reader = gguf.GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name in keys:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for key, value in keys.items():
        writer.add_bool(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    wanted = set(sys.argv[1:])
    unknown = wanted - set(TARGETS) - set(VARIANTS) - set(TOYS)
    if unknown:
        sys.exit(f"no fixture named {', '.join(sorted(unknown))}")
    tmp = tempfile.TemporaryDirectory()
    jobs = [(name, rel, specials, {}, None) for name, (rel, specials) in TARGETS.items()]
    jobs += [(name, TARGETS[base][0], TARGETS[base][1], keys, None) for name, (base, keys) in VARIANTS.items()]
    toy_specials = ["<s>", "</s>", "<mask>", "<pad>", "<unk>", "<u>"]
    jobs += [(name, TOY_BASE, toy_specials, {}, flags) for name, flags in TOYS.items()]
    done = 0
    for name, rel, specials, keys, toy in jobs:
        if wanted and name not in wanted:
            continue
        path = MODELS / rel
        if not path.exists():
            print(f"skip {name}: {path} not found")
            continue
        tests = llama_tests(path) if name in WORDPIECE else []
        load = path
        if keys:
            load = pathlib.Path(tmp.name) / f"{name}.gguf"
            with_metadata(str(path), str(load), keys)
        toy_keys = None
        if toy:
            load = pathlib.Path(tmp.name) / f"{name}.gguf"
            toy_keys = write_toy(str(path), str(load), *toy)
        llm = llama_cpp.Llama(model_path=str(load), vocab_only=True, verbose=False)
        vocab = llm._model.vocab
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        if tests and not keys:
            wrong = [t for t, ids in tests if tokenize(vocab, t.encode("utf-8"), False, False) != ids]
            assert not wrong, f"{name}: llama.cpp disagrees with its own .out on {wrong!r}"
            print(f"{name}: llama.cpp matches its .out on all {len(tests)} test strings")
        extra = (WORDPIECE_EXTRA + [t for t, _ in tests]) if name in WORDPIECE else []
        if name in UNIGRAM:
            extra = UNIGRAM_EXTRA
        if toy:
            extra = TOY_EXTRA
        cases = []
        for text in corpus(specials, extra):
            data = text.encode("utf-8")
            plain = tokenize(vocab, data, False, False)
            special = tokenize(vocab, data, True, True)
            cases.append({
                "text": text,
                "ids": plain,
                "ids_special": special,
                "decoded": detokenize(vocab, plain, False, False),
                "decoded_special": detokenize(vocab, special, True, True),
            })
        fixture = {
            **({"vocab": toy_keys} if toy else {"model": rel}),
            **({"metadata": keys} if keys else {}),
            "llama_cpp_python": llama_cpp.__version__,
            "n_vocab": n_vocab,
            "bos": llama_cpp.llama_vocab_bos(vocab),
            "eos": llama_cpp.llama_vocab_eos(vocab),
            "eot": llama_cpp.llama_vocab_eot(vocab),
            "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
            "cases": cases,
        }
        if not toy and not rel.startswith("vocab/"):
            reader_tokens = [llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8", "replace") for i in range(n_vocab)]
            bos = fixture["bos"] if fixture["bos"] >= 0 else None
            eos = fixture["eos"] if fixture["eos"] >= 0 else None
            fixture["chat"] = chat_fixture(str(path), reader_tokens, bos, eos)
        out = OUT / f"{name}.json"
        out.write_text(json.dumps(fixture, ensure_ascii=False, indent=0) + "\n")
        print(f"{name}: {len(cases)} strings -> {out.relative_to(ROOT)}")
        done += 1
    if done == 0:
        sys.exit("no model found")


if __name__ == "__main__":
    main()
