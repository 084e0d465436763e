"""ONNX embedding backend: onnxruntime + a tokenizers tokenizer, mean pooling, L2 normalisation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swarm_edge.errors import BackendUnavailableError, CorruptModelError, InferenceError, ModelLoadError
from swarm_edge.workers.base import GenerateRequest, LoadInfo

BATCH = 4  # texts per onnxruntime call: bounds the padded activations (4 x 256 tokens)


class ONNXBackend:
    """A sentence-embedding model (e.g. all-MiniLM-L6-v2) in onnxruntime."""

    def __init__(self, model_path: str, *, options: dict[str, Any]) -> None:
        """Load the tokenizer and the ONNX graph; options: tokenizer, threads, pooling, normalize, max_length."""
        t0 = time.perf_counter()
        try:
            import numpy as np
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailableError(
                f"ONNX models need onnxruntime, tokenizers and numpy: pip install onnxruntime tokenizers numpy ({exc})"
            ) from exc
        self._np = np
        self.pooling = options.get("pooling", "mean")
        self.normalize = bool(options.get("normalize", True))
        max_length = int(options.get("max_length", 256))
        tok_path = options.get("tokenizer")
        if not tok_path:
            raise ModelLoadError("an ONNX embedding model needs a tokenizer file")
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise CorruptModelError(f"{Path(tok_path).name}: not a valid tokenizer.json: {exc}") from exc
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(options.get("threads") or 1)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # The CPU arena keeps the high-water mark of every batch shape forever (700 MiB after one padded
        # batch of 32 x 256 tokens here); without it memory follows the batch and returns after it.
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
        try:
            # Loaded from bytes, not from a path: a graph that points at external data has no base directory
            # to resolve it against, so a hostile file cannot make onnxruntime read outside its folder.
            model_bytes = Path(model_path).read_bytes()
            self.session = ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])
            del model_bytes
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types, all at load
            raise ModelLoadError(f"onnxruntime could not load {model_path}: {str(exc).splitlines()[0]}") from exc
        self.input_names = {i.name for i in self.session.get_inputs()}
        if "input_ids" not in self.input_names:
            raise ModelLoadError(f"{model_path}: graph has no input_ids input (inputs: {sorted(self.input_names)})")
        self.dim = self.session.get_outputs()[0].shape[-1]
        self.max_length = max_length
        self._closed = False
        self.info = LoadInfo(load_s=time.perf_counter() - t0, meta={"dim": self.dim})

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, pooled over real tokens (padding excluded)."""
        if self._closed:
            raise InferenceError("model is closed")
        np = self._np
        out: list[list[float]] = []
        self.last_tokens = 0
        for start in range(0, len(texts), BATCH):
            batch = texts[start:start + BATCH]
            enc = self.tokenizer.encode_batch(batch)
            self.last_tokens += sum(sum(e.attention_mask) for e in enc)
            hidden, mask = self._forward(enc)
            if self.pooling == "cls":
                vec = hidden[:, 0, :]
            else:
                m = mask[:, :, None].astype(hidden.dtype)
                vec = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            if self.normalize:
                vec = vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
            out.extend(vec.astype(np.float32).tolist())
        return out

    def _forward(self, encodings):
        """The graph's token vectors for a batch of encodings, and their attention mask (numpy)."""
        np = self._np
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = mask
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        try:
            return self.session.run(None, feeds)[0], mask
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed: {str(exc).splitlines()[0]}") from exc

    def embed_with_prefix(self, text: str, prefix_chars: int):
        """Two vectors from one forward pass: pooled over the tokens of text[:prefix_chars], and over all of it.

        The router's instruction head ("Summarize this") and the whole prompt cost one embedding, not two;
        the head's tokens are read in the context of the whole prompt. In-process use only (the router):
        returns two float32 numpy vectors.
        """
        if self._closed:
            raise InferenceError("model is closed")
        np = self._np
        enc = self.tokenizer.encode(text)
        self.last_tokens = len(enc.ids)
        hidden = self._forward([enc])[0][0]
        # special tokens have empty offsets; the first one ([CLS]) is kept, as whole-text pooling keeps it
        keep = [0] + [i for i, (_, end) in enumerate(enc.offsets) if 0 < end <= prefix_chars]
        head, whole = hidden[keep].mean(axis=0), hidden.mean(axis=0)
        if self.normalize:
            head = head / max(float(np.linalg.norm(head)), 1e-12)
            whole = whole / max(float(np.linalg.norm(whole)), 1e-12)
        return head.astype(np.float32), whole.astype(np.float32)

    def calibrate(self) -> None:
        """Embed three full batches of maximum-length texts: the largest working set a request touches (the
        allocator keeps some freed memory between batches, so one batch would under-report)."""
        self.embed(["calibration " * self.max_length] * BATCH * 3)

    def generate(self, request: GenerateRequest) -> Iterator[dict[str, Any]]:
        """Embedding models do not generate text."""
        raise InferenceError("this is an embedding model; it cannot generate text")

    def close(self) -> None:
        """Drop the session; idempotent."""
        if not self._closed:
            self._closed = True
            self.session = None
