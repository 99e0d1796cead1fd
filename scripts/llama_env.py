"""What the scripts that run llama.cpp share: the models' folder, and
llama-cpp-python 0.3.36 (with llama.cpp's gguf-py) bound to the CPU build
`build_llama_cpp.sh --tools` makes."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def models_dir():
    """The first argument, or $REALM_MODELS, or the model cache."""
    return sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "REALM_MODELS", os.path.expanduser("~/.cache/realm/models"))


def tools():
    """Builds llama.cpp's tools once, puts llama-cpp-python and gguf-py on
    the module path, bound to that build; returns the tools' folder."""
    bin_dir = subprocess.run([os.path.join(HERE, "build_llama_cpp.sh"), "--tools"],
                             check=True, capture_output=True, text=True).stdout.strip()
    os.environ["LLAMA_CPP_LIB_PATH"] = bin_dir
    vendor = os.path.dirname(os.path.dirname(bin_dir))
    sys.path.insert(0, os.path.dirname(os.path.dirname(vendor)))
    sys.path.insert(0, os.path.join(vendor, "gguf-py"))
    return bin_dir


def fnv1a(data):
    """FNV-1a of `data` (64 bits): how the tests know a synthetic file is
    the one llama.cpp ran."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h
