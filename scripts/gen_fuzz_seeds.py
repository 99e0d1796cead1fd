#!/usr/bin/env python3
"""Seed corpora for realm-core's fuzz targets, written with the `gguf`
package's writer (and `struct`) so the seeds do not come from the code under
test: the GGUF reader's (realm-core/fuzz/seeds/) and the importance matrix
reader's (realm-core/fuzz/seeds-imatrix/: a GGUF matrix as llama-imatrix
writes it, and one in its older .dat layout)."""
import os
import struct

import numpy as np
import gguf

OUT = os.path.join(os.path.dirname(__file__), "..", "realm-core", "fuzz", "seeds")
IMATRIX = os.path.join(os.path.dirname(__file__), "..", "realm-core", "fuzz", "seeds-imatrix")


def write(name, build, alignment=None):
    path = os.path.join(OUT, name)
    w = gguf.GGUFWriter(path, "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def small_model(w):
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab", "<s>"])
    w.add_token_types([1, 1, 1, 3])
    w.add_token_merges(["a b"])
    w.add_float32("f", 1.5)
    w.add_array("nested", [[1, 2], [3]])
    w.add_tensor("token_embd.weight", np.arange(4 * 32, dtype=np.float32).reshape(4, 32))
    q = np.zeros((2, 18), dtype=np.uint8)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor("norm", np.ones(32, dtype=np.float16))


def metadata_only(w):
    w.add_string("general.name", "seed")
    w.add_bool("b", True)
    w.add_int64("i", -5)
    w.add_float64("d", 2.25)
    w.add_array("s", ["x", "yy", "zzz"])


def imatrix_gguf(path):
    """Two matrices' sums and counts, with llama-imatrix's keys."""
    w = gguf.GGUFWriter(path, arch="")
    # gguf-py always writes general.architecture; llama-imatrix does not.
    w.kv_data[0].pop("general.architecture", None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["perplexity.txt"])
    w.add_uint32("imatrix.chunk_count", 6)
    w.add_uint32("imatrix.chunk_size", 128)
    rng = np.random.default_rng(7)
    for name, cols in (("blk.0.attn_k.weight", 64), ("blk.1.attn_k.weight", 64)):
        sums = (rng.random(cols, dtype=np.float32) * 10).astype(np.float32)
        w.add_tensor(name + ".in_sum2", sums, raw_dtype=gguf.GGMLQuantizationType.F32)
        w.add_tensor(name + ".counts", np.array([[768.0]], dtype=np.float32),
                     raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def imatrix_dat(path):
    """The older layout: entries (name, calls, values), then the chunk
    count and the dataset."""
    b = struct.pack("<i", 2)
    for name, calls, values in (("blk.0.attn_k.weight", 10, [1.0, 2.0, 3.0, 4.0]),
                                ("blk.0.ffn_down.weight", 10, [0.5] * 8)):
        n = name.encode()
        b += struct.pack("<i", len(n)) + n + struct.pack("<ii", calls, len(values))
        b += struct.pack("<%df" % len(values), *values)
    b += struct.pack("<ii", 6, 4) + b"data"
    with open(path, "wb") as f:
        f.write(b)


if __name__ == "__main__":
    os.makedirs(IMATRIX, exist_ok=True)
    imatrix_gguf(os.path.join(IMATRIX, "two_matrices.gguf"))
    imatrix_dat(os.path.join(IMATRIX, "legacy.dat"))
    print(sorted(os.listdir(IMATRIX)))
    os.makedirs(OUT, exist_ok=True)
    write("small_model.gguf", small_model)
    write("small_model_align64.gguf", small_model, alignment=64)
    write("metadata_only.gguf", metadata_only)
    print(sorted(os.listdir(OUT)))
