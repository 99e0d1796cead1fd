#!/usr/bin/env python3
"""Write realm-core/src/quant/iq_grids.rs: the lattices ("grids") that the
IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S formats index, as
ggml defines them (ggml/src/ggml-common.h of a llama.cpp checkout). They
are part of the formats: a block's bytes are indices into them, so a
reader needs the same tables to give the same values.

Usage: scripts/gen_iq_grids.py LLAMA_CPP_DIR
"""

import re
import sys
from pathlib import Path

TABLES = [
    # (ggml name, Rust name, element type, entries, what it holds)
    ("iq2xxs_grid", "IQ2XXS_GRID", "u64", 256, "IQ2_XXS: 8 magnitudes (8, 25 or 43) a byte each"),
    ("iq2xs_grid", "IQ2XS_GRID", "u64", 512, "IQ2_XS: 8 magnitudes (8, 25 or 43) a byte each"),
    ("iq2s_grid", "IQ2S_GRID", "u64", 1024, "IQ2_S: 8 magnitudes (8, 25 or 43) a byte each"),
    ("iq3xxs_grid", "IQ3XXS_GRID", "u32", 256, "IQ3_XXS: 4 magnitudes a byte each"),
    ("iq3s_grid", "IQ3S_GRID", "u32", 512, "IQ3_S: 4 magnitudes a byte each"),
    ("iq1s_grid", "IQ1S_GRID", "u64", 2048, "IQ1_S and IQ1_M: 8 values (-1, 0 or 1, as signed bytes)"),
]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    src = (Path(sys.argv[1]) / "ggml" / "src" / "ggml-common.h").read_text()
    out = [
        "//! The lattices the IQ1-IQ3 formats index (ggml's `iq*_grid` tables),",
        "//! written by `scripts/gen_iq_grids.py` from ggml-common.h: entry `i`",
        "//! packs one group's values, a byte each, the first in the low byte.",
        "",
    ]
    for ggml, rust, ty, n, what in TABLES:
        m = re.search(r"GGML_TABLE_BEGIN\(\w+, " + ggml + r", [\w]+\)(.*?)GGML_TABLE_END\(\)", src, re.S)
        assert m, ggml
        values = re.findall(r"0x[0-9a-fA-F]+", m.group(1))
        assert len(values) == n, (ggml, len(values))
        width = 16 if ty == "u64" else 8
        out.append(f"/// {what}.")
        out.append(f"pub static {rust}: [{ty}; {n}] = [")
        per_line = 4 if ty == "u64" else 6
        for i in range(0, n, per_line):
            row = ", ".join(f"0x{int(v, 16):0{width}x}" for v in values[i:i + per_line])
            out.append(f"    {row},")
        out.append("];")
        out.append("")
    dst = Path(__file__).resolve().parent.parent / "realm-core" / "src" / "quant" / "iq_grids.rs"
    dst.write_text("\n".join(out))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
