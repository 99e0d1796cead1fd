#!/usr/bin/env python3
"""Golden fixtures for realm-core's GGUF reader, made with the `gguf` package.

For each real model it records what the reference reader sees: version,
alignment, data offset, every tensor (name, type id, shape, offset, bytes) and
every metadata key (type, value; arrays as element type, length and the first
items). Usage: python3 scripts/gen_gguf_fixtures.py [MODELS_DIR]
"""
import json
import os
import sys

import gguf
from gguf import GGUFValueType as VT

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
OUT = os.path.join(os.path.dirname(__file__), "..", "realm-core", "tests", "fixtures", "gguf")
TYPE_NAMES = {
    VT.UINT8: "u8", VT.INT8: "i8", VT.UINT16: "u16", VT.INT16: "i16", VT.UINT32: "u32",
    VT.INT32: "i32", VT.FLOAT32: "f32", VT.BOOL: "bool", VT.STRING: "string", VT.ARRAY: "array",
    VT.UINT64: "u64", VT.INT64: "i64", VT.FLOAT64: "f64",
}


def scalar(field, part_index):
    part = field.parts[part_index]
    if field.types[-1] == VT.STRING or (len(field.types) == 1 and field.types[0] == VT.STRING):
        return bytes(part).decode("utf-8")
    v = part.tolist()[0]
    if field.types[-1] == VT.BOOL:
        return bool(v)
    return v


def describe(field):
    t0 = field.types[0]
    if t0 != VT.ARRAY:
        return {"type": TYPE_NAMES[t0], "value": scalar(field, field.data[0])}
    elem = field.types[1] if len(field.types) > 1 else VT.UINT8
    first = [scalar(field, i) for i in field.data[:5]] if elem != VT.ARRAY else []
    return {"type": "array", "element": TYPE_NAMES[elem], "len": len(field.data), "first": first}


def main():
    models_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "REALM_MODELS", os.path.expanduser("~/.cache/realm/models"))
    os.makedirs(OUT, exist_ok=True)
    for short, file_name in MODELS.items():
        r = gguf.GGUFReader(os.path.join(models_dir, file_name))
        data_offset = r.data_offset
        tensors = [{
            "name": t.name,
            "type": int(t.tensor_type),
            "shape": [int(d) for d in t.shape],
            "offset": int(t.data_offset) - data_offset,
            "n_bytes": int(t.n_bytes),
        } for t in r.tensors]
        metadata = {}
        for key, field in r.fields.items():
            if key.startswith("GGUF."):
                continue
            metadata[key] = describe(field)
        doc = {
            "file": file_name,
            "version": int(r.fields["GGUF.version"].parts[-1][0]),
            "alignment": int(r.alignment),
            "data_offset": int(data_offset),
            "tensors": tensors,
            "metadata": metadata,
        }
        with open(os.path.join(OUT, f"{short}.json"), "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{short}: {len(tensors)} tensors, {len(metadata)} keys")


if __name__ == "__main__":
    main()
