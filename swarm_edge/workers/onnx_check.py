"""The .onnx file's protobuf wire format, walked in Python before onnxruntime parses it: every length inside its
message, names in UTF-8, no tensor stored in an external file, none of the omitted inputs that segfault
onnxruntime. A bad file is a CorruptModelError naming it."""

from __future__ import annotations

from swarm_edge.errors import CorruptModelError

MAX_MODEL_BYTES = (1 << 31) - 1  # protobuf cannot parse a message of 2 GiB; bigger models keep external data
MAX_DEPTH = 32                  # messages inside messages: graphs in If/Loop attributes nest a few levels

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
