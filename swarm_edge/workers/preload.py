"""Imported once by the forkserver, so every worker forked from it starts with the runtimes loaded."""

import contextlib

for _name in ("numpy", "llama_cpp", "llama_cpp.llama", "onnxruntime", "tokenizers", "gguf", "jinja2"):
    with contextlib.suppress(ImportError):
        __import__(_name)
