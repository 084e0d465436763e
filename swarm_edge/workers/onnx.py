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

BATCH = 4  # texts per onnxruntime call: bounds the padded activations (4 x 256 tokens)
MAX_MODEL_BYTES = (1 << 31) - 1  # protobuf cannot parse a message of 2 GiB; bigger models keep external data
MAX_TOKENIZER_BYTES = 64 << 20  # the largest real tokenizer.json files (262k-token vocabularies) are ~33 MiB
MAX_DEPTH = 32                  # messages inside messages: graphs in If/Loop attributes nest a few levels
FEEDS = ("input_ids", "attention_mask", "token_type_ids")  # the graph inputs this backend gives values to
# words, digits, accents and symbols that are in no vocabulary: the tokenizer's unknown-token path runs too
PROBE = "Probe sentence: héllo wörld 42 ☃ ⟨𝔘⟩"
# seconds the probe may run: ~50 ms on MiniLM; a graph that loops for ever would hold the router's load (and
# its lock) for ever - every route waiting behind it
PROBE_TIMEOUT_S = 20.0

# The ONNX messages the walk descends into (those that can hold a tensor or a graph): field -> (name, message).
# Every other field is skipped by its wire length, which is still checked against its message's end.
_NESTED: dict[str, dict[int, tuple[str, str]]] = {
    "ModelProto": {7: ("graph", "GraphProto"), 20: ("training_info", "TrainingInfoProto"),
                   25: ("functions", "FunctionProto")},
    "GraphProto": {1: ("node", "NodeProto"), 5: ("initializer", "TensorProto"), 11: ("input", "ValueInfoProto"),
                   12: ("output", "ValueInfoProto"), 13: ("value_info", "ValueInfoProto"),
                   15: ("sparse_initializer", "SparseTensorProto")},
    "NodeProto": {5: ("attribute", "AttributeProto")},
    "AttributeProto": {5: ("t", "TensorProto"), 6: ("g", "GraphProto"), 10: ("tensors", "TensorProto"),
                       11: ("graphs", "GraphProto"), 22: ("sparse_tensor", "SparseTensorProto"),
                       23: ("sparse_tensors", "SparseTensorProto")},
    "SparseTensorProto": {1: ("values", "TensorProto"), 2: ("indices", "TensorProto")},
    "TrainingInfoProto": {1: ("initialization", "GraphProto"), 2: ("algorithm", "GraphProto")},
    "FunctionProto": {4: ("node", "NodeProto"), 6: ("attribute_proto", "AttributeProto")},
}
# names that onnxruntime turns into Python str (a non-UTF-8 one fails late, after printing to stdout)
_NAMES = {"NodeProto": {1, 2, 3, 4, 7}, "GraphProto": {2}, "TensorProto": {8}, "AttributeProto": {1},
          "ValueInfoProto": {1}, "FunctionProto": {1, 2, 3, 10}}
_SINGULAR = {"graph", "t", "g", "sparse_tensor", "values", "indices", "initialization", "algorithm"}
_TENSOR_NAME, _EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1
_INPUT, _NODE_NAME, _OP_TYPE, _DOMAIN = 1, 3, 4, 7
# Inputs named "" (omitted) that onnxruntime 1.32 does not refuse but dereferences: it segfaults at load (found
# by benchmarks/fuzz_onnx.py, then op by op). The inputs of these ops are one variadic list, in which nothing may
# be omitted (onnxruntime refuses only an unnamed first one) ...
_VARIADIC = {"Concat", "Einsum", "Max", "Mean", "Min", "SequenceConstruct", "Sum"}
# ... and these optional inputs crash it when named "" rather than left off the end (LayerNormalization's bias:
# X, scale works, X, scale, "" crashes, with or without a preceding Add).
_UNSAFE_OMITTED = {("LayerNormalization", 2)}


class _ProtoWalk:
    """A bounds-checked walk of an ONNX ModelProto's protobuf wire format; raises CorruptModelError."""

    def __init__(self, data: bytes | memoryview, name: str) -> None:
        self.data, self.name = data, name

    def fail(self, what: str, pos: int) -> CorruptModelError:
        return CorruptModelError(f"{self.name}: not a valid ONNX model: {what} (at byte {pos:,} of "
                                 f"{len(self.data):,}); nothing was loaded")

    def varint(self, pos: int, end: int, where: str) -> tuple[int, int]:
        data, value, shift = self.data, 0, 0
        while True:
            if pos >= end:
                raise self.fail(f"a number in {where} runs past its end: truncated?", pos)
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80:
                return value, pos
            shift += 7
            if shift >= 70:
                raise self.fail(f"a number in {where} is longer than 10 bytes", pos)

    def message(self, kind: str, start: int, end: int, where: str, depth: int = 0) -> set[int]:
        """Walk one message (recursing into _NESTED fields); returns the field numbers it holds."""
        if depth > MAX_DEPTH:
            raise self.fail(f"{where}: messages nest more than {MAX_DEPTH} deep", start)
        nested, names = _NESTED.get(kind, {}), _NAMES.get(kind, ())
        seen: dict[int, int] = {}
        texts: dict[int, list[str]] = {}  # the names read, by field (a node's inputs, a tensor's name)
        external, pos = False, start
        while pos < end:
            key, pos = self.varint(pos, end, where)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise self.fail(f"{where} has a field numbered 0", pos)
            seen[field] = seen.get(field, 0) + 1
            if wire == 0:
                value, pos = self.varint(pos, end, where)
                external |= kind == "TensorProto" and field == _DATA_LOCATION and value == _EXTERNAL
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
                if pos > end:
                    raise self.fail(f"a number in {where} runs past its end: truncated?", end)
            elif wire == 2:
                size, pos = self.varint(pos, end, where)
                label = self._label(where, nested.get(field), seen[field]) or f"field {field} of {where}"
                if size > end - pos:
                    raise self.fail(f"{label} is {size:,} bytes long but only {end - pos:,} bytes of {where} "
                                    "follow: truncated?", pos)
                if field in nested:
                    self.message(nested[field][1], pos, pos + size, label, depth + 1)
                elif field in names:
                    texts.setdefault(field, []).append(self._text(pos, size, where))
                external |= kind == "TensorProto" and field == _EXTERNAL_DATA
                pos += size
            else:
                raise self.fail(f"field {field} of {where} has wire type {wire}, which ONNX files do not use", pos)
        if external:
            raise self.fail(f"tensor {texts.get(_TENSOR_NAME, [''])[-1]!r} ({where}) keeps its data in an external "
                            "file; only self-contained .onnx files are loaded", start)
        if kind == "NodeProto":
            self._node(texts, where, start)
        return set(seen)

    def _node(self, texts: dict[int, list[str]], where: str, pos: int) -> None:
        """Refuse the unnamed (omitted) inputs that crash onnxruntime instead of being refused by it."""
        op, domain = texts.get(_OP_TYPE, [""])[-1], texts.get(_DOMAIN, [""])[-1]  # protobuf: the last one wins
        if domain not in ("", "ai.onnx"):
            return
        for i, name in enumerate(texts.get(_INPUT, [])):
            if not name and (op in _VARIADIC or (op, i) in _UNSAFE_OMITTED):
                raise self.fail(f"{where} ({op} {texts.get(_NODE_NAME, [''])[-1]!r}) leaves its input {i} unnamed, "
                                "which crashes onnxruntime (SIGSEGV) instead of being refused", pos)

    @staticmethod
    def _label(where: str, nested: tuple[str, str] | None, count: int) -> str:
        if nested is None:
            return ""
        return f"{where}.{nested[0]}" if nested[0] in _SINGULAR else f"{where}.{nested[0]}[{count - 1}]"

    def _text(self, pos: int, size: int, where: str) -> str:
        try:
            return bytes(self.data[pos:pos + size]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"a name in {where} is not UTF-8", pos) from None


def check_onnx(data: bytes, name: str) -> None:
    """Walk an ONNX model's protobuf structure before onnxruntime parses it; raises CorruptModelError."""
    if len(data) > MAX_MODEL_BYTES:
        raise CorruptModelError(f"{name}: {len(data):,} bytes is over protobuf's 2 GiB limit; nothing was loaded")
    walk = _ProtoWalk(memoryview(data), name)
    if 7 not in walk.message("ModelProto", 0, len(data), "model"):
        raise walk.fail("the model has no graph (field 7)", 0)


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
            if len(shape) != 3 or shape[:2] != ids.shape or shape[2] < 1 or kind != "f":
                got = f"{tuple(shape)} {getattr(hidden, 'dtype', type(hidden).__name__)}"
                raise ModelLoadError(f"{model_path}: the graph's first output for {what} is {got}, not float "
                                     "(batch, tokens, dim)")
            if not np.isfinite(hidden).all():
                raise ModelLoadError(f"{model_path}: the graph's output for {what} is not finite (NaN or infinity): "
                                     "damaged weights?")
            dims.add(int(shape[2]))
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
