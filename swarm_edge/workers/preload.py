"""Imported once by the forkserver, so every worker forked from it starts with the GGUF runtime loaded.

Not onnxruntime and tokenizers: ~20 MiB of PSS in every worker that imports them, which a GGUF worker, most of
them, never uses (and holds alone once the forkserver has stopped under it: idle.py's doze). An ONNX worker imports
them when it loads, in ~40 ms (numpy is here already)."""

import contextlib

for _name in ("numpy", "llama_cpp", "llama_cpp.llama", "gguf", "jinja2"):
    with contextlib.suppress(ImportError):
        __import__(_name)
