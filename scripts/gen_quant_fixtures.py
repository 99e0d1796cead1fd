#!/usr/bin/env python3
"""Generate the golden fixtures of realm-core's quantization tests.

Every expected value comes from the `gguf` Python package (gguf-py, which
mirrors ggml's reference code): `gguf.quants.dequantize` and
`gguf.quants.quantize`. Output goes to realm-core/tests/fixtures/quant/:

  synthetic.json, synthetic/<type>.q, synthetic/<type>.f32
      Random blocks of every dequantizable type (random quant bytes, sane
      scales) and their dequantized f32 (little-endian), with its sha256.
  quantize.json, quantize/<input>.f32, quantize/<input>.<type>
      A few f32 signals and their bytes after `gguf.quants.quantize`, for
      the types the package can quantize.
  quantize_ggml.json, quantize/<input>.<type>   (only with --ggml-src)
      The same signals quantized by ggml's own reference quantizers
      (quantize_row_*_ref) for the types gguf-py cannot quantize (Q8_1 and
      the k-quants). ggml-quants.c from the given llama.cpp checkout is
      compiled with FP contraction off (no fused multiply-add, as ggml's
      portable build and gguf-py compute) and called through ctypes; the
      legacy types are checked against gguf-py on the way, as a cross-check.
  quantize_iq4.json, quantize/<input>.<type>   (only with --ggml-src)
      The same signals quantized to IQ4_NL and IQ4_XS by ggml's
      quantize_<type>(src, dst, nrow, n_per_row, NULL), as ggml_quantize_chunk
      (and so llama-quantize) calls them without an importance matrix. For
      IQ4_XS that is quantize_row_iq4_xs_ref (checked on the way); for IQ4_NL
      it is not: quantize_row_iq4_nl_ref skips the search for the scale.
  quantize_weighted.json, weighted/<importance>.f32   (only with --ggml-src)
      Some of the same signals cut into rows and quantized by ggml's
      quantize_<type>(src, dst, nrow, n_per_row, imatrix) with a seeded
      importance vector (one f32 per column, as llama-quantize --imatrix
      passes it), for the types whose search for scales uses it (the legacy
      4- and 5-bit types, the k-quants, IQ4_NL, IQ4_XS and the IQ2/IQ3
      lattice types) and Q8_0, which ignores it. Only the sha256 of the
      expected bytes is stored; the IQ4 entries come after the others, and
      the lattice types' after them.
  mxfp4.json, synthetic/mxfp4.{q,f32}, quantize/<input>.mxfp4   (only with --ggml-src)
      MXFP4 (gpt-oss's experts) by ggml itself: random blocks (every
      exponent's edge cases among them) and their f32 from
      dequantize_row_mxfp4, and the signals quantized by quantize_mxfp4(...,
      NULL) (which is quantize_row_mxfp4_ref, checked on the way, with or
      without an importance matrix). gguf-py's MXFP4 is checked against both.
  ternary.json, synthetic/tq{1,2}_0.{q,f32}, quantize/<input>.tq{1,2}_0   (only with --ggml-src)
      TQ1_0 and TQ2_0 (BitNet b1.58's ternary weights) by ggml itself: random
      blocks and their f32 from dequantize_row_tq*, and the signals quantized
      by quantize_tq*(..., NULL) (quantize_row_tq*_ref, checked on the way).
  iq123.json, synthetic/iq{1,2,3}_*.{q,f32}   (only with --ggml-src)
      The IQ1-IQ3 types (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S)
      by ggml itself: random blocks and their f32 from dequantize_row_iq*.
  quantize_lattice.json, quantize/<input>.<type>   (only with --ggml-src)
      The signals quantized to IQ2_S, IQ3_XXS, IQ3_S and IQ1_M by ggml's
      quantize_<type>(src, dst, nrow, n_per_row, NULL) (after
      iq2xs_init_impl / iq3xs_init_impl, as ggml_quantize_init runs them),
      as llama-quantize calls them without an importance matrix. Their
      weighted entries, and IQ2_XXS's, IQ2_XS's and IQ1_S's (which ggml
      quantizes only with an importance matrix), are in
      quantize_weighted.json.
  models.json
      For each tensor of the two real models: name, type, absolute byte
      offset and length of its data in the file, and the sha256 of its
      dequantized f32 (little-endian) bytes.

Usage: scripts/gen_quant_fixtures.py [--models-dir DIR] [--ggml-src LLAMA_CPP_DIR]
(default: $REALM_MODELS or ~/.cache/realm/models). The synthetic data is
seeded, so re-running gives the same files. With --only-weighted (and
--ggml-src) only quantize_weighted.json and weighted/ are written; with
--only-ggml (and --ggml-src) only the files that need ggml: quantize_ggml.json,
quantize_iq4.json, quantize_weighted.json, quantize_lattice.json and their
data.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from importlib.metadata import version

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "realm-core" / "tests" / "fixtures" / "quant"

GGUF_VERSION = version("gguf")

MODELS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]

# Elements per synthetic tensor: 32 legacy blocks or 4 super-blocks.
N_ELEMENTS = 1024

# Elements and bytes per block. gguf-py still lists Q8_1 with the f32 d and s
# of old ggml (40 bytes); ggml's block_q8_1 now holds two f16s (36 bytes).
BLOCK_SIZES = {**GGML_QUANT_SIZES, T.Q8_1: (32, 36)}

# Byte offsets of the f16 scale fields in each block layout (ggml's structs).
F16_SCALE_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q8_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}

DEQUANT_TYPES = [
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_NL, T.IQ4_XS,
]

QUANT_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def type_name(t: T) -> str:
    # ggml's spelling, as realm's GgmlType::name() gives it ("q4_K", "bf16").
    return t.name.lower().replace("_k", "_K")


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def store(name: str, tn: str, raw: bytes) -> dict:
    """Writes quantize/<input>.<type> and returns its manifest entry."""
    (OUT / "quantize" / f"{name}.{tn}").write_bytes(raw)
    return {"input": name, "type": tn, "file": f"quantize/{name}.{tn}", "sha256": sha256(raw)}


def sane_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """f16 scales: random sign and magnitude 1e-4..1, with a few zeros and
    subnormals mixed in (never NaN or infinity)."""
    mag = 10.0 ** rng.uniform(-4, 0, n)
    s = (np.where(rng.random(n) < 0.5, -1.0, 1.0) * mag).astype(np.float16)
    if n >= 4:
        s[0] = np.float16(0.0)
        s[1] = np.frombuffer(np.uint16(0x0003).tobytes(), np.float16)[0]  # subnormal
    return s


def synthetic_bytes(rng: np.random.Generator, t: T) -> bytes:
    if t == T.F32:
        v = rng.standard_normal(N_ELEMENTS).astype(np.float32) * 10.0 ** rng.uniform(-40, 38, N_ELEMENTS)
        v = v.astype(np.float32)
        v[:4] = [0.0, -0.0, np.inf, -np.inf]
        v[4] = np.frombuffer(np.uint32(1).tobytes(), np.float32)[0]  # smallest subnormal
        return v.tobytes()
    if t == T.F16:
        bits = rng.integers(0, 1 << 16, N_ELEMENTS, dtype=np.uint32).astype(np.uint16)
        nan = (bits & 0x7C00) == 0x7C00
        bits[nan & ((bits & 0x03FF) != 0)] &= 0xBFFF  # turn NaNs into finite values
        bits[:4] = [0x0000, 0x8000, 0x7C00, 0xFC00]
        return bits.tobytes()
    if t == T.BF16:
        bits = rng.integers(0, 1 << 16, N_ELEMENTS, dtype=np.uint32).astype(np.uint16)
        bits[:4] = [0x0000, 0x8000, 0x7F80, 0xFF80]
        return bits.tobytes()
    block_size, type_size = BLOCK_SIZES[t]
    n_blocks = N_ELEMENTS // block_size
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint32).astype(np.uint8)
    if t == T.Q8_K:
        d = (np.where(rng.random(n_blocks) < 0.5, -1.0, 1.0) * 10.0 ** rng.uniform(-4, 0, n_blocks)).astype(np.float32)
        d[0] = 0.0
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    else:
        for off in F16_SCALE_FIELDS[t]:
            raw[:, off:off + 2] = sane_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.tobytes()


def reference_dequantize(raw: bytes, t: T) -> np.ndarray:
    data = np.frombuffer(raw, dtype=np.uint8)
    if t == T.Q8_1:
        # gguf-py has no Q8_1 dequantizer; ggml's formula is d * q (s is unused).
        blocks = data.reshape(-1, 36)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = blocks[:, 4:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    if t == T.Q8_K:
        # gguf-py has no Q8_K dequantizer; ggml's formula is d * q (f32 d).
        blocks = data.reshape(-1, 292)
        d = blocks[:, 0:4].copy().view(np.float32)
        q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    if t == T.BF16:
        return gguf.quants.dequantize(data.reshape(1, -1).view(np.uint8), t).reshape(-1)
    if t in (T.F32, T.F16):
        return gguf.quants.dequantize(data.copy(), t).reshape(-1).astype(np.float32)
    return gguf.quants.dequantize(data.reshape(1, -1), t).reshape(-1)


def gen_synthetic() -> None:
    rng = np.random.default_rng(0x5EA1)
    (OUT / "synthetic").mkdir(parents=True, exist_ok=True)
    entries = []
    for t in DEQUANT_TYPES:
        raw = synthetic_bytes(rng, t)
        out = reference_dequantize(raw, t).astype("<f4", copy=False)
        assert out.size == N_ELEMENTS, (t, out.size)
        name = type_name(t)
        (OUT / "synthetic" / f"{name}.q").write_bytes(raw)
        (OUT / "synthetic" / f"{name}.f32").write_bytes(out.tobytes())
        entries.append({
            "type": name,
            "type_id": int(t),
            "n_elements": N_ELEMENTS,
            "quant_file": f"synthetic/{name}.q",
            "f32_file": f"synthetic/{name}.f32",
            "f32_sha256": sha256(out.tobytes()),
            "reference": "numpy d*q (ggml formula; gguf-py has no dequantizer)"
            if t in (T.Q8_1, T.Q8_K) else f"gguf {GGUF_VERSION} quants.dequantize",
        })
    write_json("synthetic.json", {"generator": "scripts/gen_quant_fixtures.py", "entries": entries})


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0xC0DE)
    n = N_ELEMENTS
    i = np.arange(n, dtype=np.float32)
    out = {}
    # llama.cpp's test-quantize-fns signal.
    out["cosine"] = (0.1 + 2 * np.cos(i)).astype(np.float32)
    # Weight-like values.
    out["gaussian"] = (rng.standard_normal(n) * 0.05).astype(np.float32)
    out["uniform"] = rng.uniform(-1, 1, n).astype(np.float32)
    # Hard cases: per-block magnitudes from 1e-6 to 1e3, outliers, an all-zero
    # block, constant blocks, exact ties at x.5 steps, one-sided blocks.
    m = rng.standard_normal(n).astype(np.float32)
    m *= np.repeat(10.0 ** rng.uniform(-6, 3, n // 32), 32).astype(np.float32)
    m[0:32] = 0.0
    m[32:64] = 0.75
    m[64:96] = -3.0
    m[96:128] = np.arange(32, dtype=np.float32) * 0.5 - 8.0
    m[128:160] = np.abs(m[128:160])
    m[160:192] = -np.abs(m[160:192])
    m[200] = 40.0
    m[300] = -55.0
    m[512:768] = 0.0
    out["mixed"] = m.astype(np.float32)
    # A longer heavy-tailed row (Student's t, 3 degrees of freedom), so the
    # k-quant scale searches meet many different sub-blocks.
    out["heavy_tailed"] = (rng.standard_t(3, 4 * n) * 0.02).astype(np.float32)
    return out


def gen_quantize() -> None:
    (OUT / "quantize").mkdir(parents=True, exist_ok=True)
    inputs = []
    expected = []
    for name, x in signals().items():
        (OUT / "quantize" / f"{name}.f32").write_bytes(x.astype("<f4").tobytes())
        inputs.append({"name": name, "file": f"quantize/{name}.f32", "n_elements": int(x.size)})
        for t in QUANT_TYPES:
            q = gguf.quants.quantize(x.reshape(1, -1), t)
            raw = np.ascontiguousarray(q).view(np.uint8).tobytes()
            tn = type_name(t)
            expected.append(store(name, tn, raw))
    write_json("quantize.json", {
        "generator": "scripts/gen_quant_fixtures.py",
        "reference": f"gguf {GGUF_VERSION} quants.quantize",
        "inputs": inputs,
        "expected": expected,
    })

# Symbols ggml-quants.c refers to outside its quantizers. Of them only
# ggml_row_size is reached (by quantize_<type>), for the types listed here by
# ggml type id: (elements, bytes) per block.
GGML_STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d\n", file, line);
    abort();
}
size_t ggml_row_size(int type, long long ne) {
    static const struct { int type; long long block, size; } sizes[] = {
        {2, 32, 18}, {3, 32, 20}, {6, 32, 22}, {7, 32, 24}, {8, 32, 34},
        {10, 256, 84}, {11, 256, 110}, {12, 256, 144}, {13, 256, 176}, {14, 256, 210},
        {34, 256, 54}, {35, 256, 66}, {39, 32, 17},
        {16, 256, 66}, {17, 256, 74}, {18, 256, 98}, {21, 256, 110}, {22, 256, 82},
        {19, 256, 50}, {29, 256, 56},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        if (sizes[i].type == type && ne % sizes[i].block == 0) {
            return (size_t) (ne / sizes[i].block * sizes[i].size);
        }
    }
    fprintf(stderr, "ggml_row_size: type %d, %lld elements\n", type, ne);
    abort();
}
size_t ggml_type_size(int type) { (void) type; abort(); }
const char * ggml_type_name(int type) { (void) type; return "?"; }
"""

GGML_REF_TYPES = {
    T.Q4_0: "q4_0", T.Q4_1: "q4_1", T.Q5_0: "q5_0", T.Q5_1: "q5_1", T.Q8_0: "q8_0",
    T.Q8_1: "q8_1", T.Q2_K: "q2_K", T.Q3_K: "q3_K", T.Q4_K: "q4_K", T.Q5_K: "q5_K",
    T.Q6_K: "q6_K", T.Q8_K: "q8_K",
}

# The types quantized by quantize_<type>(..., NULL) rather than by
# quantize_row_<type>_ref (for IQ4_NL the two differ), and their ggml names.
GGML_IQ4_TYPES = {T.IQ4_NL: "iq4_nl", T.IQ4_XS: "iq4_xs"}


def build_ggml_reference(src: Path, workdir: Path) -> ctypes.CDLL:
    stub = workdir / "stubs.c"
    stub.write_text(GGML_STUBS)
    lib = workdir / "libggml_quants_ref.so"
    cmd = [
        "cc", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-std=gnu11",
        "-I", str(src / "ggml" / "include"), "-I", str(src / "ggml" / "src"),
        "-o", str(lib), str(src / "ggml" / "src" / "ggml-quants.c"), str(stub), "-lm",
    ]
    subprocess.run(cmd, check=True)
    return ctypes.CDLL(str(lib))


def ggml_quantize(lib: ctypes.CDLL, t: T, x: np.ndarray) -> bytes:
    """ggml's quantize_row_<type>_ref, or for the IQ4 types quantize_<type>
    without an importance matrix."""
    if t in GGML_IQ4_TYPES:
        return ggml_quantize_weighted(lib, t, x, x.size, None)
    return ggml_ref_row(lib, t, x)


def ggml_ref_row(lib: ctypes.CDLL, t: T, x: np.ndarray) -> bytes:
    """ggml's quantize_row_<type>_ref."""
    block_size, type_size = BLOCK_SIZES[t]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = ctypes.create_string_buffer(x.size // block_size * type_size)
    fn = getattr(lib, f"quantize_row_{GGML_REF_TYPES.get(t) or GGML_IQ4_TYPES[t]}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    fn(x.ctypes.data, out, x.size)
    return out.raw


def ggml_commit(src: Path, commit_name: str | None) -> str:
    if commit_name is not None:
        return commit_name
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    return commit.stdout.strip() if commit.returncode == 0 else "unknown"


def gen_quantize_ggml(src: Path, commit_name: str | None) -> None:
    expected = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_ggml_reference(src, Path(tmp))
        for name, x in signals().items():
            for t in GGML_REF_TYPES:
                raw = ggml_quantize(lib, t, x)
                tn = type_name(t)
                if t in QUANT_TYPES:
                    # Same bytes as gguf-py, or the two references disagree.
                    assert raw == (OUT / "quantize" / f"{name}.{tn}").read_bytes(), (name, tn)
                    continue
                expected.append(store(name, tn, raw))
    write_json("quantize_ggml.json", {
        "generator": "scripts/gen_quant_fixtures.py --ggml-src",
        "reference": "ggml quantize_row_*_ref (ggml-quants.c, cc -O2 -ffp-contract=off)",
        "ggml_source": ggml_commit(src, commit_name),
        "inputs": "quantize.json",
        "expected": expected,
    })


def gen_quantize_iq4(src: Path, commit_name: str | None) -> None:
    sigs = signals()
    for name, x in sigs.items():
        assert (OUT / "quantize" / f"{name}.f32").read_bytes() == x.astype("<f4").tobytes(), name
    expected = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_ggml_reference(src, Path(tmp))
        for name, x in sigs.items():
            for t in GGML_IQ4_TYPES:
                raw = ggml_quantize(lib, t, x)
                # Row by row gives the same bytes as the whole signal at once.
                assert raw == ggml_quantize_weighted(lib, t, x, 256, None), (name, t)
                if t == T.IQ4_XS:
                    assert raw == ggml_ref_row(lib, t, x), (name, t)
                else:
                    _, type_size = BLOCK_SIZES[t]
                    ref = ggml_ref_row(lib, t, x)
                    differ = sum(raw[i:i + type_size] != ref[i:i + type_size]
                                 for i in range(0, len(raw), type_size))
                    print(f"{name}: quantize_row_iq4_nl_ref differs from quantize_iq4_nl(NULL) "
                          f"in {differ} of {len(raw) // type_size} blocks")
                tn = type_name(t)
                expected.append(store(name, tn, raw))
    write_json("quantize_iq4.json", {
        "generator": "scripts/gen_quant_fixtures.py --ggml-src",
        "reference": "ggml quantize_iq4_nl / quantize_iq4_xs(src, dst, nrow, n_per_row, NULL) "
                     "(ggml-quants.c, cc -O2 -ffp-contract=off)",
        "ggml_source": ggml_commit(src, commit_name),
        "inputs": "quantize.json",
        "expected": expected,
    })


# The types whose quantize_<type> takes an importance vector (Q8_0 ignores it).
WEIGHTED_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0]

# Weighted types added later, whose entries follow the others'.
WEIGHTED_TYPES_LATER = [T.IQ4_NL, T.IQ4_XS]

# The IQ2/IQ3 lattice types, added after those: ggml quantizes the first two
# only with an importance matrix.
LATTICE_TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S]
IMPORTANCE_ONLY = [T.IQ2_XXS, T.IQ2_XS, T.IQ1_S]

# IQ1_S and IQ1_M, added after those (IQ1_S only with an importance matrix).
IQ1_TYPES = [T.IQ1_S, T.IQ1_M]


def init_lattices(lib: ctypes.CDLL) -> None:
    """ggml_quantize_init's tables for the lattice types."""
    for t in [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S]:
        lib.iq2xs_init_impl.argtypes = [ctypes.c_int]
        lib.iq2xs_init_impl(int(t))
    for grid in [256, 512]:
        lib.iq3xs_init_impl.argtypes = [ctypes.c_int]
        lib.iq3xs_init_impl(grid)


def gen_quantize_lattice(src: Path, commit_name: str | None) -> None:
    sigs = signals()
    for name, x in sigs.items():
        assert (OUT / "quantize" / f"{name}.f32").read_bytes() == x.astype("<f4").tobytes(), name
    expected = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_ggml_reference(src, Path(tmp))
        init_lattices(lib)
        for name, x in sigs.items():
            for t in LATTICE_TYPES + IQ1_TYPES:
                if t in IMPORTANCE_ONLY:
                    continue
                raw = ggml_quantize_weighted(lib, t, x, x.size, None)
                # Row by row gives the same bytes as the whole signal at once.
                assert raw == ggml_quantize_weighted(lib, t, x, 256, None), (name, t)
                expected.append(store(name, type_name(t), raw))
    write_json("quantize_lattice.json", {
        "generator": "scripts/gen_quant_fixtures.py --ggml-src (--only-lattice)",
        "reference": "ggml quantize_iq2_s / quantize_iq3_xxs / quantize_iq3_s / quantize_iq1_m(src, dst, nrow, "
                     "n_per_row, NULL) (ggml-quants.c, cc -O2 -ffp-contract=off)",
        "ggml_source": ggml_commit(src, commit_name),
        "inputs": "quantize.json",
        "expected": expected,
    })

# (input of quantize.json, values per row, importance vector).
WEIGHTED_CASES = [
    ("cosine", 256, "lognormal_256"),
    ("gaussian", 512, "lognormal_512"),
    ("uniform", 512, "lognormal_512"),
    ("mixed", 512, "zeros_512"),
    ("heavy_tailed", 1024, "lognormal_1024"),
]


def gen_mxfp4(src: Path, commit_name: str | None) -> None:
    rng = np.random.default_rng(0xF4)
    n_blocks = N_ELEMENTS // 32
    raw = rng.integers(0, 256, (n_blocks, 17), dtype=np.uint32).astype(np.uint8)
    # Exponents 0 and 1 (subnormal scales), 2, 1.0's, and the largest.
    raw[:7, 0] = [0, 1, 2, 127, 128, 254, 255]
    raw = raw.tobytes()
    entry = {}
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_ggml_reference(src, Path(tmp))
        out = ctypes.create_string_buffer(N_ELEMENTS * 4)
        lib.dequantize_row_mxfp4.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64]
        lib.dequantize_row_mxfp4(raw, out, N_ELEMENTS)
        f32 = out.raw
        ref = reference_dequantize(raw, T.MXFP4).astype("<f4")
        assert ref.tobytes() == f32, "gguf-py and ggml dequantize MXFP4 differently"
        (OUT / "synthetic" / "mxfp4.q").write_bytes(raw)
        (OUT / "synthetic" / "mxfp4.f32").write_bytes(f32)
        entry["dequantize"] = {"quant_file": "synthetic/mxfp4.q", "f32_file": "synthetic/mxfp4.f32",
                               "n_elements": N_ELEMENTS, "f32_sha256": sha256(f32)}
        quantized = []
        for name, x in signals().items():
            x = np.ascontiguousarray(x, dtype=np.float32)
            got = ggml_quantize_weighted(lib, T.MXFP4, x, 32, None)
            with_imatrix = ggml_quantize_weighted(lib, T.MXFP4, x, 32, np.ones(32, np.float32))
            row = ctypes.create_string_buffer(len(got))
            lib.quantize_row_mxfp4_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            lib.quantize_row_mxfp4_ref(x.ctypes.data, row, x.size)
            assert got == row.raw == with_imatrix, name
            py = gguf.quants.quantize(x.reshape(1, -1), T.MXFP4).tobytes()
            if py != got:
                print(f"{name}: gguf-py's MXFP4 differs from ggml's")
            quantized.append(store(name, "mxfp4", got))
    entry["expected"] = quantized
    write_json("mxfp4.json", {
        "generator": "scripts/gen_quant_fixtures.py --ggml-src (--only-mxfp4)",
        "reference": "ggml dequantize_row_mxfp4 and quantize_mxfp4 (ggml-quants.c, cc -O2 -ffp-contract=off)",
        "ggml_source": ggml_commit(src, commit_name),
        "inputs": "quantize.json",
        **entry,
    })


def ggml_dequantized(lib: ctypes.CDLL, tn: str, raw: bytes) -> dict:
    """Writes synthetic/<tn>.q (`raw`) and synthetic/<tn>.f32 (ggml's
    dequantize_row_<tn> of it, which must be finite) and returns their
    manifest entry."""
    out = ctypes.create_string_buffer(N_ELEMENTS * 4)
    fn = getattr(lib, f"dequantize_row_{tn}")
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64]
    fn(raw, out, N_ELEMENTS)
    f32 = out.raw
    assert np.isfinite(np.frombuffer(f32, np.float32)).all(), tn
    (OUT / "synthetic" / f"{tn}.q").write_bytes(raw)
    (OUT / "synthetic" / f"{tn}.f32").write_bytes(f32)
    return {"type": tn, "quant_file": f"synthetic/{tn}.q", "f32_file": f"synthetic/{tn}.f32",
            "n_elements": N_ELEMENTS, "f32_sha256": sha256(f32)}


def gen_ternary(src: Path, commit_name: str | None) -> None:
    """TQ1_0 and TQ2_0 (BitNet b1.58's ternary types) by ggml itself: random
    blocks (every byte value among the packed trits) and their f32 from
    dequantize_row_tq*, and the signals quantized by quantize_tq*(...,
    NULL) (quantize_row_tq*_ref, checked on the way)."""
    rng = np.random.default_rng(0x7E4)
    entries, quantized = [], []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_ggml_reference(src, Path(tmp))
        for t, tn, d_off in [(T.TQ1_0, "tq1_0", 52), (T.TQ2_0, "tq2_0", 64)]:
            block_size, type_size = BLOCK_SIZES[t]
            n_blocks = N_ELEMENTS // block_size
            raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint32).astype(np.uint8)
            raw[0, :d_off] = np.arange(d_off, dtype=np.uint8)
            raw[1, :d_off] = 255 - np.arange(d_off, dtype=np.uint8)
            raw[:, d_off:d_off + 2] = sane_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
            entries.append(ggml_dequantized(lib, tn, raw.tobytes()))
            for name, x in signals().items():
                x = np.ascontiguousarray(x, dtype=np.float32)
                got = ggml_quantize_weighted(lib, t, x, x.size, None)
                row = ctypes.create_string_buffer(len(got))
                ref = getattr(lib, f"quantize_row_{tn}_ref")
                ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
                ref(x.ctypes.data, row, x.size)
                assert got == row.raw, name
                quantized.append(store(name, tn, got))
    write_json("ternary.json", {
        "generator": "scripts/gen_quant_fixtures.py --ggml-src (--only-ternary)",
        "reference": "ggml dequantize_row_tq1_0/tq2_0 and quantize_tq1_0/tq2_0 (ggml-quants.c, cc -O2 -ffp-contract=off)",
        "ggml_source": ggml_commit(src, commit_name),
        "inputs": "quantize.json",
        "dequantize": entries,
        "expected": quantized,
    })


# The IQ1-IQ3 types: ggml's name, and the byte offset of the block's f16
# scale (IQ1_M spreads its scale over the top nibbles of its scales).
IQ123_TYPES = [
    (T.IQ2_XXS, "iq2_xxs", 0), (T.IQ2_XS, "iq2_xs", 0), (T.IQ2_S, "iq2_s", 0),
    (T.IQ3_XXS, "iq3_xxs", 0), (T.IQ3_S, "iq3_s", 0), (T.IQ1_S, "iq1_s", 0), (T.IQ1_M, "iq1_m", None),
]


def gen_iq123(src: Path, commit_name: str | None) -> None:
    """The IQ1-IQ3 types by ggml itself: random blocks (random indices,
    signs and scales, sane super-block scales) and their f32 from
    dequantize_row_iq*."""
    rng = np.random.default_rng(0x1123)
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_ggml_reference(src, Path(tmp))
        for t, tn, d_off in IQ123_TYPES:
            block_size, type_size = BLOCK_SIZES[t]
            n_blocks = N_ELEMENTS // block_size
            raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint32).astype(np.uint8)
            if d_off is not None:
                raw[:, d_off:d_off + 2] = sane_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
            else:
                # The f16's top exponent bit (bit 14 of the last scale word)
                # clear: finite scales below 2.
                raw[:, type_size - 1] &= 0xBF
            entries.append(ggml_dequantized(lib, tn, raw.tobytes()))
    write_json("iq123.json", {
        "generator": "scripts/gen_quant_fixtures.py --ggml-src (--only-iq123)",
        "reference": "ggml dequantize_row_iq* (ggml-quants.c, cc -O2 -ffp-contract=off)",
        "ggml_source": ggml_commit(src, commit_name),
        "dequantize": entries,
    })


def importance_vectors() -> dict[str, np.ndarray]:
    """Positive importances over a wide range (exp of normal noise, as an
    importance matrix's mean squared activations spread), one with zeros."""
    rng = np.random.default_rng(0x1A7E)
    out = {
        "lognormal_256": np.exp(1.5 * rng.standard_normal(256)),
        "lognormal_512": np.exp(2.0 * rng.standard_normal(512)),
        "lognormal_1024": np.exp(2.5 * rng.standard_normal(1024)),
    }
    z = np.exp(1.5 * rng.standard_normal(512))
    z[rng.random(512) < 0.2] = 0.0  # scattered zeros
    z[32:48] = 0.0  # a whole group of 16 (the k-quants' smallest)
    z[64:96] = 0.0  # a whole block of 32
    z[256:512] = 0.0  # a whole super-block
    out["zeros_512"] = z
    return {k: v.astype(np.float32) for k, v in out.items()}


def ggml_quantize_weighted(lib: ctypes.CDLL, t: T, x: np.ndarray, n_per_row: int,
                           importance: np.ndarray | None) -> bytes:
    """ggml's quantize_<type>(src, dst, nrow, n_per_row, importance), the
    importance NULL when None."""
    block_size, type_size = BLOCK_SIZES[t]
    x = np.ascontiguousarray(x, dtype=np.float32)
    assert x.size % n_per_row == 0
    if importance is not None:
        importance = np.ascontiguousarray(importance, dtype=np.float32)
        assert importance.size == n_per_row
    nrow = x.size // n_per_row
    n_bytes = x.size // block_size * type_size
    out = ctypes.create_string_buffer(n_bytes)
    ggml_name = GGML_REF_TYPES.get(t) or GGML_IQ4_TYPES.get(t) or t.name.lower()
    fn = getattr(lib, f"quantize_{ggml_name}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    written = fn(x.ctypes.data, out, nrow, n_per_row,
                 None if importance is None else importance.ctypes.data)
    assert written == n_bytes, (t, written, n_bytes)
    return out.raw


def weighted_entry(lib: ctypes.CDLL, t: T, input_name: str, x: np.ndarray, n_per_row: int,
                   imp: str, w: np.ndarray) -> dict:
    raw = ggml_quantize_weighted(lib, t, x, n_per_row, w)
    if t in IMPORTANCE_ONLY:
        return {"input": input_name, "importance": imp, "type": type_name(t), "sha256": sha256(raw)}
    if t in LATTICE_TYPES or t in IQ1_TYPES:
        unweighted = ggml_quantize_weighted(lib, t, x, x.size, None)
    else:
        unweighted = ggml_quantize(lib, t, x)
    if t == T.Q8_0:
        assert raw == unweighted, (input_name, t)
    else:
        # The importance changes something, or the weighted path was not taken.
        assert raw != unweighted, (input_name, t)
    return {"input": input_name, "importance": imp, "type": type_name(t), "sha256": sha256(raw)}


def gen_quantize_weighted(src: Path, commit_name: str | None) -> None:
    sigs = signals()
    # The inputs are quantize.json's files: check they are these signals.
    for name, x in sigs.items():
        assert (OUT / "quantize" / f"{name}.f32").read_bytes() == x.astype("<f4").tobytes(), name
    vectors = importance_vectors()
    (OUT / "weighted").mkdir(parents=True, exist_ok=True)
    importance = []
    for name, v in vectors.items():
        raw = v.astype("<f4").tobytes()
        (OUT / "weighted" / f"{name}.f32").write_bytes(raw)
        importance.append({"name": name, "file": f"weighted/{name}.f32", "n_per_row": int(v.size),
                           "sha256": sha256(raw)})
    cases = []
    expected = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_ggml_reference(src, Path(tmp))
        for input_name, n_per_row, imp in WEIGHTED_CASES:
            x = sigs[input_name]
            w = vectors[imp]
            assert w.size == n_per_row
            cases.append({"input": input_name, "importance": imp, "n_per_row": n_per_row,
                          "rows": int(x.size // n_per_row)})
            for t in WEIGHTED_TYPES:
                expected.append(weighted_entry(lib, t, input_name, x, n_per_row, imp, w))
        for input_name, n_per_row, imp in WEIGHTED_CASES:
            for t in WEIGHTED_TYPES_LATER:
                expected.append(weighted_entry(lib, t, input_name, sigs[input_name], n_per_row,
                                               imp, vectors[imp]))
        init_lattices(lib)
        for input_name, n_per_row, imp in WEIGHTED_CASES:
            for t in LATTICE_TYPES:
                expected.append(weighted_entry(lib, t, input_name, sigs[input_name], n_per_row,
                                               imp, vectors[imp]))
        for input_name, n_per_row, imp in WEIGHTED_CASES:
            for t in IQ1_TYPES:
                expected.append(weighted_entry(lib, t, input_name, sigs[input_name], n_per_row,
                                               imp, vectors[imp]))
    write_json("quantize_weighted.json", {
        "generator": "scripts/gen_quant_fixtures.py --ggml-src",
        "reference": "ggml quantize_<type>(src, dst, nrow, n_per_row, imatrix) "
                     "(ggml-quants.c, cc -O2 -ffp-contract=off)",
        "ggml_source": ggml_commit(src, commit_name),
        "inputs": "quantize.json",
        "importance": importance,
        "cases": cases,
        "expected": expected,
    })


def tensor_sha256(reader: gguf.GGUFReader, t) -> str:
    """sha256 of a tensor's dequantized f32 LE bytes, a slice of rows at a time."""
    block_size, type_size = GGML_QUANT_SIZES[t.tensor_type]
    raw = np.asarray(reader.data[t.data_offset:t.data_offset + t.n_bytes])
    assert raw.size == t.n_bytes
    h = hashlib.sha256()
    step = type_size * 16384  # a multiple of the block size in bytes
    for start in range(0, raw.size, step):
        chunk = raw[start:start + step]
        if t.tensor_type in (T.F32, T.F16):
            f = gguf.quants.dequantize(chunk.copy().view(np.uint8), t.tensor_type)
        else:
            f = gguf.quants.dequantize(chunk.reshape(1, -1), t.tensor_type)
        h.update(np.ascontiguousarray(f, dtype="<f4").tobytes())
    return h.hexdigest()


def gen_models(models_dir: Path) -> None:
    models = []
    for file in MODELS:
        path = models_dir / file
        if not path.exists():
            raise SystemExit(f"model file {path} is missing (set --models-dir or REALM_MODELS)")
        reader = gguf.GGUFReader(path)
        tensors = []
        for t in reader.tensors:
            # The offset is absolute: check it against the reader's own view.
            assert bytes(reader.data[t.data_offset:t.data_offset + 16]) == bytes(t.data.reshape(-1).view(np.uint8)[:16])
            tensors.append({
                "name": t.name,
                "type": type_name(t.tensor_type),
                "type_id": int(t.tensor_type),
                "offset": int(t.data_offset),
                "n_bytes": int(t.n_bytes),
                "n_elements": int(t.n_elements),
                "sha256": tensor_sha256(reader, t),
            })
            print(f"{file}: {t.name} {t.tensor_type.name}")
        models.append({"file": file, "size": path.stat().st_size, "tensors": tensors})
    write_json("models.json", {
        "generator": "scripts/gen_quant_fixtures.py",
        "reference": f"gguf {GGUF_VERSION} GGUFReader + quants.dequantize",
        "models": models,
    })


def write_json(name: str, value) -> None:
    """Writes `value` with one line per innermost object, to keep diffs and
    files small."""

    def fmt(v, indent: str) -> str:
        inner = indent + " "
        if isinstance(v, dict) and any(isinstance(x, (dict, list)) for x in v.values()):
            items = [f"{inner}{json.dumps(k)}: {fmt(x, inner)}" for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        if isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            return "[\n" + ",\n".join(inner + fmt(x, inner) for x in v) + "\n" + indent + "]"
        return json.dumps(v)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(fmt(value, "") + "\n")


def main() -> None:
    default_dir = Path(os.environ.get("REALM_MODELS", Path.home() / ".cache" / "realm" / "models"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=default_dir)
    ap.add_argument("--skip-models", action="store_true", help="leave models.json as it is")
    ap.add_argument("--ggml-src", type=Path, help="a llama.cpp checkout: also write quantize_ggml.json")
    ap.add_argument("--ggml-commit", help="the --ggml-src commit, where it is no git checkout "
                    "(llama-cpp-python's sdist vendors llama.cpp without its history)")
    ap.add_argument("--only-weighted", action="store_true",
                    help="write only quantize_weighted.json and weighted/ (needs --ggml-src)")
    ap.add_argument("--only-mxfp4", action="store_true",
                    help="write only mxfp4.json and its data (needs --ggml-src)")
    ap.add_argument("--only-iq123", action="store_true",
                    help="write only iq123.json and its data (needs --ggml-src)")
    ap.add_argument("--only-lattice", action="store_true",
                    help="write only quantize_lattice.json, its data and quantize_weighted.json "
                    "(needs --ggml-src)")
    ap.add_argument("--only-ternary", action="store_true",
                    help="write only ternary.json and its data (needs --ggml-src)")
    ap.add_argument("--only-ggml", action="store_true",
                    help="write only the fixtures that need ggml (needs --ggml-src)")
    args = ap.parse_args()
    if (args.only_weighted or args.only_ggml or args.only_mxfp4 or args.only_ternary
            or args.only_iq123 or args.only_lattice) and args.ggml_src is None:
        ap.error("--only-weighted, --only-mxfp4, --only-ternary, --only-iq123, --only-lattice "
                 "and --only-ggml need --ggml-src")
    if args.only_mxfp4:
        gen_mxfp4(args.ggml_src, args.ggml_commit)
        return
    if args.only_ternary:
        gen_ternary(args.ggml_src, args.ggml_commit)
        return
    if args.only_iq123:
        gen_iq123(args.ggml_src, args.ggml_commit)
        return
    if args.only_lattice:
        gen_quantize_lattice(args.ggml_src, args.ggml_commit)
        gen_quantize_weighted(args.ggml_src, args.ggml_commit)
        return
    if args.only_weighted:
        gen_quantize_weighted(args.ggml_src, args.ggml_commit)
        return
    if not args.only_ggml:
        gen_synthetic()
        gen_quantize()
    if args.ggml_src is not None:
        gen_quantize_ggml(args.ggml_src, args.ggml_commit)
        gen_quantize_iq4(args.ggml_src, args.ggml_commit)
        gen_quantize_weighted(args.ggml_src, args.ggml_commit)
        gen_mxfp4(args.ggml_src, args.ggml_commit)
        gen_ternary(args.ggml_src, args.ggml_commit)
        gen_iq123(args.ggml_src, args.ggml_commit)
        gen_quantize_lattice(args.ggml_src, args.ggml_commit)
    if args.only_ggml:
        return
    if not args.skip_models:
        gen_models(args.models_dir)


if __name__ == "__main__":
    main()
