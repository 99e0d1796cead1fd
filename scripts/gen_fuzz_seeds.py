#!/usr/bin/env python3
"""Seed corpus for the GGUF reader's fuzz target (realm-core/fuzz/seeds/),
written with the `gguf` package's writer so the seeds do not come from the
code under test."""
import os

import numpy as np
import gguf

OUT = os.path.join(os.path.dirname(__file__), "..", "realm-core", "fuzz", "seeds")


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


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    write("small_model.gguf", small_model)
    write("small_model_align64.gguf", small_model, alignment=64)
    write("metadata_only.gguf", metadata_only)
    print(sorted(os.listdir(OUT)))
