#!/usr/bin/env python3
"""Copies a GGUF file with every tensor dequantized to f32 (same metadata).

Realm and llama.cpp multiply f32 weights without quantizing activations, so
their logits on such a copy compare the model code itself, free of the 8-bit
activation rounding that dominates the golden tests' differences.
Usage: python3 scripts/gguf_to_f32.py IN.gguf OUT.gguf
"""
import numpy as np, sys, os
from gguf import GGUFReader, GGUFWriter, GGUFValueType
from gguf.quants import dequantize
src, dst = sys.argv[1], sys.argv[2]
r = GGUFReader(src)
arch = r.fields['general.architecture'].contents()
w = GGUFWriter(dst, arch)
for name, f in r.fields.items():
    if name.startswith('GGUF.') or name == 'general.architecture': continue
    vt = f.types[0]
    if name == 'general.file_type': w.add_key_value(name, 0, GGUFValueType.UINT32); continue
    if vt == GGUFValueType.ARRAY:
        w.add_key_value(name, f.contents(), vt, sub_type=f.types[-1])
    else:
        w.add_key_value(name, f.contents(), vt)
for t in r.tensors:
    a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    w.add_tensor(t.name, a)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print('ok', dst)
