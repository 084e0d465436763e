"""ONNX embedding backend: onnxruntime + a tokenizers tokenizer, mean pooling, L2 normalisation.

Both files are checked before native code reads them, because the router loads its embedder inside the daemon
process: the .onnx file's protobuf wire format is walked in Python (every length inside its message, names in
UTF-8, no tensor stored in an external file, none of the omitted inputs that segfault onnxruntime) and
tokenizer.json is capped in size; after onnxruntime loads the
graph, one probe sentence (and the tokenizer's highest token id) must embed to finite (batch, tokens, dim)
vectors. A bad file is a CorruptModelError or ModelLoadError naming it, never a later failure per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swarm_edge.errors import BackendUnavailableError, CorruptModelError, InferenceError, ModelLoadError
from swarm_edge.workers.base import GenerateRequest, LoadInfo
from swarm_edge.workers.onnx_check import MAX_MODEL_BYTES, check_onnx  # noqa: F401  (re-exported)

BATCH = 4  # texts per onnxruntime call: bounds the padded activations (4 x 256 tokens)
MAX_TOKENIZER_BYTES = 64 << 20  # the largest real tokenizer.json files (262k-token vocabularies) are ~33 MiB
FEEDS = ("input_ids", "attention_mask", "token_type_ids")  # the graph inputs this backend gives values to
# words, digits, accents and symbols that are in no vocabulary: the tokenizer's unknown-token path runs too
PROBE = "Probe sentence: héllo wörld 42 ☃ ⟨𝔘⟩"
# seconds the probe may run: ~50 ms on MiniLM; a graph that loops for ever would hold the router's load (and
# its lock) for ever - every route waiting behind it
PROBE_TIMEOUT_S = 20.0


def _native_error(exc: BaseException) -> bool:
    """An error raised by native code: any Exception, or a Rust panic in tokenizers, which pyo3 raises as a
    PanicException deriving from BaseException (so `except Exception` would let it through)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def load_tokenizer(path: str | Path, max_length: int):
    """A tokenizers.Tokenizer from a tokenizer.json of at most MAX_TOKENIZER_BYTES, truncating and padding."""
    from tokenizers import Tokenizer

    name = Path(path).name
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKENIZER_BYTES + 1)  # read at most one byte over the cap, whatever the file says
    except OSError as exc:
        raise ModelLoadError(f"cannot read the tokenizer {path}: {exc.strerror}") from exc
    if len(raw) > MAX_TOKENIZER_BYTES:
        raise CorruptModelError(f"{name}: over {MAX_TOKENIZER_BYTES >> 20} MiB, larger than any real "
                                "tokenizer.json; nothing was loaded")
    try:
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptModelError(f"{name}: not a valid tokenizer.json: not UTF-8 text (byte {exc.start:,})") from exc
    except BaseException as exc:
        if not _native_error(exc):
            raise
        raise CorruptModelError(f"{name}: not a valid tokenizer.json: {_first_line(exc)}") from exc
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding()
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class ONNXBackend:
    """A sentence-embedding model (e.g. all-MiniLM-L6-v2) in onnxruntime."""

    last_tokens: int | None = None  # tokens of the last embed() batch (padding excluded)

    def __init__(self, model_path: str, *, options: dict[str, Any]) -> None:
        """Load the tokenizer and the ONNX graph; options: tokenizer, threads, pooling, normalize, max_length,
        probe_timeout (seconds, PROBE_TIMEOUT_S by default)."""
        t0 = time.perf_counter()
        try:
            import numpy as np
            import onnxruntime  # noqa: F401  (here for the install hint; _session imports it again)
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                f"ONNX models need onnxruntime, tokenizers and numpy: pip install onnxruntime tokenizers numpy ({exc})"
            ) from exc
        self._np = np
        self.probe_timeout = float(options.get("probe_timeout") or PROBE_TIMEOUT_S)
        self.pooling = options.get("pooling", "mean")
        self.normalize = bool(options.get("normalize", True))
        self.max_length = int(options.get("max_length", 256))
        tok_path = options.get("tokenizer")
        if not tok_path:
            raise ModelLoadError("an ONNX embedding model needs a tokenizer file")
        self.tokenizer = load_tokenizer(tok_path, self.max_length)
        self.session = _session(model_path, int(options.get("threads") or 1))
        self.input_names = {i.name for i in self.session.get_inputs()}
        if "input_ids" not in self.input_names:
            raise ModelLoadError(f"{model_path}: graph has no input_ids input (inputs: {sorted(self.input_names)})")
        unfed = sorted(self.input_names - set(FEEDS))
        if unfed:
            raise ModelLoadError(f"{model_path}: graph needs inputs {unfed} that an embedding model has no values "
                                 f"for (it is given {', '.join(FEEDS)})")
        self._closed = False
        self.dim = self._probe(model_path, Path(tok_path).name)
        self.info = LoadInfo(load_s=time.perf_counter() - t0, meta={"dim": self.dim})

    def _probe(self, model_path: str, tok_name: str) -> int:
        """Embed PROBE, then a batch of two ("hello", and the tokenizer's highest id), before anyone relies on the
        model; returns its dim.

        A tokenizer that cannot encode text, an id the graph cannot look up, an output that is not finite
        (batch, tokens, dim) vectors or that is the same for two texts (zero, say), or a graph that only runs at
        one batch size or length (two batches of different sizes and lengths: a hard-coded shape fails one of
        them) fails here, at load, instead of in every request that meets it (or silently, in every route).
        """
        np = self._np
        try:
            enc, short = self.tokenizer.encode(PROBE), self.tokenizer.encode("hello")
            top = max(self.tokenizer.get_vocab(with_added_tokens=True).values(), default=0)
        except BaseException as exc:
            if not _native_error(exc):
                raise
            raise CorruptModelError(f"{tok_name}: cannot tokenize a test sentence: {_first_line(exc)}") from exc
        if not enc.ids or not short.ids:
            raise CorruptModelError(f"{tok_name}: gives no tokens at all for a test sentence")
        if enc.ids == short.ids:  # e.g. a post-processor template without the text: every text is [CLS] [SEP]
            raise CorruptModelError(f"{tok_name}: gives two different texts the same tokens {enc.ids[:8]}: the text "
                                    "is lost")
        n = len(short.ids)
        batches = [([enc.ids], [enc.attention_mask], [enc.type_ids]),
                   ([short.ids, [top] + [0] * (n - 1)], [short.attention_mask, [1] + [0] * (n - 1)],
                    [short.type_ids, [0] * n])]
        dims, pooled = set(), []
        for ids, mask, types in batches:
            ids, mask, types = (np.array(a, dtype=np.int64) for a in (ids, mask, types))
            what = f"{ids.shape[0]} x {ids.shape[1]} token ids"
            try:
                hidden = self._run(ids, mask, types, deadline=self.probe_timeout)
            except InferenceError as exc:
                raise ModelLoadError(f"{model_path} (with {tok_name}): cannot embed {what} (largest {ids.max()}): "
                                     f"{exc}") from exc
            shape, kind = getattr(hidden, "shape", ()), getattr(getattr(hidden, "dtype", None), "kind", "")
            if len(shape) != 3 or shape[:2] != ids.shape or shape[2] < 1 or kind != "f":  # type: ignore[misc]
                got = f"{tuple(shape)} {getattr(hidden, 'dtype', type(hidden).__name__)}"
                raise ModelLoadError(f"{model_path}: the graph's first output for {what} is {got}, not float "
                                     "(batch, tokens, dim)")
            if not np.isfinite(hidden).all():
                raise ModelLoadError(f"{model_path}: the graph's output for {what} is not finite (NaN or infinity): "
                                     "damaged weights?")
            dims.add(int(shape[2]))  # type: ignore[misc]
            pooled.append(hidden[0, :int(mask[0].sum())].mean(axis=0))  # the first text's vector
        if len(dims) != 1:
            raise ModelLoadError(f"{model_path}: the graph's vectors change size with the batch: {sorted(dims)}")
        # damaged weights can also make every vector zero, or the same for every text: both embed nothing
        if max(float(np.abs(v).max()) for v in pooled) < 1e-6 or np.allclose(*pooled, rtol=1e-5, atol=1e-7):
            raise ModelLoadError(f"{model_path}: the graph gives two different texts the same vector "
                                 f"{pooled[0][:4].tolist()}...: damaged weights?")
        return dims.pop()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, pooled over real tokens (padding excluded)."""
        if self._closed:
            raise InferenceError("model is closed")
        np = self._np
        out: list[list[float]] = []
        self.last_tokens = 0
        for start in range(0, len(texts), BATCH):
            enc = self._encode(texts[start:start + BATCH])
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

    def _encode(self, texts: list[str]):
        try:
            return self.tokenizer.encode_batch(texts)
        except BaseException as exc:
            if not _native_error(exc):
                raise
            raise InferenceError(f"the tokenizer failed: {_first_line(exc)}") from exc

    def _forward(self, encodings):
        """The graph's token vectors for a batch of encodings, and their attention mask (numpy)."""
        np = self._np
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return self._run(ids, mask, types), mask

    def _run(self, ids, mask, types, deadline: float | None = None):
        """The graph's first output; a run past `deadline` seconds is stopped (onnxruntime's terminate flag)."""
        feeds = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = mask
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = types
        run_options = timer = None
        if deadline is not None:
            import onnxruntime as ort

            run_options = ort.RunOptions()
            timer = threading.Timer(deadline, setattr, (run_options, "terminate", True))
            timer.daemon = True
            timer.start()
        try:
            return self.session.run(None, feeds, run_options)[0]
        except Exception as exc:
            if run_options is not None and run_options.terminate:
                raise InferenceError(f"onnxruntime was still running after {deadline:g} s (a loop that does not "
                                     "end?)") from exc
            raise InferenceError(f"onnxruntime failed: {_first_line(exc)}") from exc
        finally:
            if timer is not None:
                timer.cancel()

    def embed_with_prefix(self, text: str, prefix_chars: int):
        """Two vectors from one forward pass: pooled over the tokens of text[:prefix_chars], and over all of it.

        The router's instruction head ("Summarize this") and the whole prompt cost one embedding, not two;
        the head's tokens are read in the context of the whole prompt. In-process use only (the router):
        returns two float32 numpy vectors.
        """
        if self._closed:
            raise InferenceError("model is closed")
        np = self._np
        enc = self._encode([text])[0]
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


def _session(model_path: str, threads: int):
    """An onnxruntime session on the checked bytes of model_path (never on the path itself)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # The CPU arena keeps the high-water mark of every batch shape forever (700 MiB after one padded
    # batch of 32 x 256 tokens here); without it memory follows the batch and returns after it.
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    name = Path(model_path).name
    try:
        size = Path(model_path).stat().st_size
        if size > MAX_MODEL_BYTES:
            raise CorruptModelError(f"{name}: {size:,} bytes is over protobuf's 2 GiB limit; nothing was loaded")
        model_bytes = Path(model_path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read the model {model_path}: {exc.strerror}") from exc
    check_onnx(model_bytes, name)
    try:
        # From bytes, so a graph has no directory of its own; onnxruntime would resolve external data against
        # the daemon's working directory instead, which is why check_onnx refuses any external data first.
        return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types, all at load
        raise ModelLoadError(f"onnxruntime could not load {model_path}: {_first_line(exc)}") from exc
