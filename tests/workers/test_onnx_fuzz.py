"""Fuzzing the ONNX backend's load: truncated, bit-flipped and structurally mutated .onnx and tokenizer.json files
load and embed, or are refused with a CorruptModelError or ModelLoadError naming the file - never another
exception, a hang or a native crash. Each input loads (and embeds two texts) in a fork of a process that has
imported onnxruntime, so a crash or a hang is seen, not suffered. The builders, mutators and the loader are
also the campaign's (benchmarks/fuzz_onnx.py)."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm_edge.errors import CorruptModelError
from swarm_edge.workers.onnx import check_onnx
from tests.workers.test_onnx import ld, tiny_model, tiny_tokenizer, tiny_vocab_size, varint, vi

TIMEOUT_S = 30.0     # per input: a load and two embeddings; over it is a "hang"
VIOLATIONS = ("other", "late", "unclear", "bad_vectors", "crash", "hang")


# ---------------------------------------------------------------- reading protobuf into a tree to mutate

# message type of each message-valued field, wider than the check's (shapes and types too, to mutate them)
SCHEMA = {
    "model": {7: "graph", 8: "opset", 14: "sse", 20: "training", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse", 11: "vi", 12: "vi", 13: "vi", 16: "sse"},
    "node": {5: "attr"}, "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 14: "type", 15: "type"},
    "tensor": {13: "sse"}, "sparse": {1: "tensor", 2: "tensor"}, "vi": {2: "type"},
    "type": {1: "ttensor", 4: "tseq", 8: "ttensor"}, "ttensor": {2: "shape"}, "tseq": {1: "type"},
    "shape": {1: "dim"}, "function": {4: "node"}, "training": {1: "graph", 2: "graph"},
}


def _read_varint(b, p: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        c = b[p]
        value |= (c & 0x7F) << shift
        p, shift = p + 1, shift + 7
        if c < 0x80:
            return value, p


def parse_tree(b, start: int = 0, end: int | None = None, kind: str = "model") -> list:
    """A valid protobuf message as [field, wire, value, message type or None, offset of the value] lists; the
    values of message fields are trees themselves, other length-delimited values are memoryview slices."""
    out, p, end = [], start, len(b) if end is None else end
    while p < end:
        key, p = _read_varint(b, p)
        field, wire = key >> 3, key & 7
        sub, at = None, p
        if wire == 0:
            value, p = _read_varint(b, p)
        elif wire in (1, 5):
            value, p = b[p:p + (8 if wire == 1 else 4)], p + (8 if wire == 1 else 4)
        elif wire == 2:
            n, p = _read_varint(b, p)
            sub, at = SCHEMA.get(kind, {}).get(field), p
            value, p = (parse_tree(b, p, p + n, sub) if sub else b[p:p + n]), p + n
        else:
            raise ValueError(f"wire type {wire}")
        out.append([field, wire, value, sub, at])
    return out


def serialize(tree: list) -> bytes:
    """The bytes of a tree (lengths recomputed, so an edited tree is well-formed protobuf again)."""
    parts = []
    for field, wire, value, sub, _ in tree:
        parts.append(varint(field << 3 | wire))
        if wire == 0:
            parts.append(varint(value))
        elif wire == 2:
            body = serialize(value) if sub else value
            parts += [varint(len(body)), body]
        else:
            parts.append(value)
    return b"".join(parts)


def fields(tree: list, kind: str = "model", path: tuple = ()):
    """(container, index, path of (message type, field number)) for every field, depth first."""
    for i, f in enumerate(tree):
        yield tree, i, path + ((kind, f[0]),)
        if f[3]:
            yield from fields(f[2], f[3], path + ((kind, f[0]),))


def _copy(tree: list) -> list:
    return [[f[0], f[1], _copy(f[2]) if f[3] else f[2], f[3], f[4]] for f in tree]


# ---------------------------------------------------------------- mutating

EDGES = [0, 1, 2, 3, 7, 16, 255, 256, 65535, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 53,
         (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 2]


class OnnxMutator:
    """Mutants of one .onnx file: truncations, bit flips in its structure or its tensor data, and edits of its
    protobuf tree (numbers set to edge values, names swapped, fields deleted, duplicated or moved, tensor data
    resized, external data added) re-serialized with consistent lengths."""

    KINDS = {"truncate": 25, "flip_structure": 30, "flip_data": 10, "tree": 35}

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.tree = parse_tree(memoryview(data))
        self.spans = [(c[i][4], c[i][4] + len(c[i][2])) for c, i, p in fields(self.tree) if p[-1] == ("tensor", 9)]
        self.strings = sorted({bytes(c[i][2]) for c, i, p in fields(self.tree)
                               if c[i][1] == 2 and not c[i][3] and p[-1] != ("tensor", 9) and len(c[i][2]) < 100})

    def mutate(self, rng: random.Random) -> tuple[str, str, bytes]:
        """(kind, what was done, the mutant's bytes)."""
        kind = rng.choices(list(self.KINDS), list(self.KINDS.values()))[0]
        if kind == "truncate":
            cut = rng.randrange(len(self.data)) if rng.random() < 0.5 else self._structure_pos(rng)
            return kind, f"cut at byte {cut:,}", self.data[:cut]
        if kind.startswith("flip"):
            b, where = bytearray(self.data), []
            for _ in range(rng.choice((1, 1, 2, 4, 8))):
                if kind == "flip_structure" or not self.spans:
                    p = self._structure_pos(rng)
                else:
                    start, end = rng.choice(self.spans)
                    p = rng.randrange(start, end)
                b[p] ^= 1 << rng.randrange(8)
                where.append(p)
            return kind, f"bits flipped at bytes {where}", bytes(b)
        tree = _copy(self.tree)
        what = [self._edit(tree, rng) for _ in range(rng.choice((1, 1, 2, 3)))]
        return kind, "; ".join(what), serialize(tree)

    def _structure_pos(self, rng: random.Random) -> int:
        while True:  # tensor data is >99% of a real model: draw again until outside it
            p = rng.randrange(len(self.data))
            if not any(a <= p < b for a, b in self.spans):
                return p

    EDITS = {"number": 35, "name": 12, "delete": 9, "duplicate": 9, "swap": 8, "small_data": 15, "resize_data": 6,
             "external": 6}

    def _edit(self, tree: list, rng: random.Random) -> str:
        every = list(fields(tree))
        pick = {"number": [x for x in every if x[0][x[1]][1] == 0],
                "name": [x for x in every if x[0][x[1]][1] == 2 and not x[0][x[1]][3] and x[2][-1] != ("tensor", 9)],
                "resize_data": [x for x in every if x[2][-1] == ("tensor", 9)],
                "small_data": [x for x in every if x[2][-1] == ("tensor", 9) and 0 < len(x[0][x[1]][2]) <= 64
                               and len(x[0][x[1]][2]) % 8 == 0],
                "external": [x for x in every if x[0][x[1]][3] == "tensor"]}
        op = rng.choices(list(self.EDITS), list(self.EDITS.values()))[0]
        c, i, path = rng.choice(pick.get(op) or every)
        if op == "number" and c[i][1] == 0:
            old = c[i][2]
            c[i][2] = rng.choice(EDGES + [max(0, old - 1), old + 1, rng.getrandbits(rng.choice((4, 8, 32, 64)))])
            return f"{_where(path)} = {c[i][2]} (was {old})"
        if op == "name" and pick["name"]:
            c[i][2] = rng.choice([b"", rng.choice(self.strings), rng.choice(self.strings), b"x" * 5000,
                                  bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))])
            return f"{_where(path)} = {bytes(c[i][2][:20])!r}"
        if op == "small_data" and pick["small_data"]:  # shapes, axes, indices: int64 constants the graph reads
            b = bytearray(c[i][2])
            k = rng.randrange(len(b) // 8)
            value = rng.choice([-1, -2, 0, 1, 1 << 31, -(1 << 31), (1 << 63) - 1, -(1 << 63), 1 << 40, 30522, 512])
            b[8 * k:8 * k + 8] = struct.pack("<q", value)
            c[i][2] = bytes(b)
            return f"{_where(path)} element {k} = {value}"
        if op == "resize_data" and pick["resize_data"]:
            b = bytes(c[i][2])
            c[i][2] = rng.choice([b[:len(b) // 2], b + b"\0", b[:-1], b"", b * 2])
            return f"{_where(path)} resized {len(b)} -> {len(c[i][2])} bytes"
        if op == "external" and pick["external"]:
            loc = rng.choice([b"weights.bin", b"../weights.bin", b"/etc/hostname", b"model.onnx", b"sub/w.bin"])
            c[i][2] += [[13, 2, [[1, 2, b"location", None, 0], [2, 2, loc, None, 0]], "sse", 0], [14, 0, 1, None, 0]]
            return f"{_where(path)} data moved to external {loc.decode()!r}"
        if op == "duplicate":
            c.insert(rng.randrange(len(c) + 1), _copy([c[i]])[0])
            return f"{_where(path)} duplicated"
        if op == "swap":
            j = rng.randrange(len(c))
            c[i], c[j] = c[j], c[i]
            return f"{_where(path)} swapped with a sibling"
        del c[i]
        return f"{_where(path)} deleted"


def _where(path: tuple) -> str:
    return ".".join(f"{kind}#{field}" for kind, field in path[-3:])


EDGE_JSON = [None, True, -1, 0, 1, 1 << 31, 1 << 32, 1 << 64, -(1 << 63), 1e308, 0.5, "", "x" * 1000, "[UNK]",
             [], {}, [1, 2], {"type": "x"}]


def _json_paths(obj, path=()):
    yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _json_paths(v, path + (k,))


class TokenizerMutator:
    """Mutants of one tokenizer.json: truncations, byte edits, whole-file replacements (not JSON, the wrong
    JSON, 100k-deep nesting, over the size cap) and edits of its JSON tree (values set to edge values or other
    component types, keys deleted, list items duplicated, vocabulary ids changed, tokens renamed or dropped)."""

    KINDS = {"truncate": 20, "bytes": 20, "json": 50, "whole": 10}

    def __init__(self, text: str, cap: int) -> None:
        self.text, self.cap = text, cap
        obj = json.loads(text)
        self.paths = [p for p in _json_paths({k: v for k, v in obj.items() if k != "model"}) if p]
        self.paths += [("model", k) for k in obj["model"] if k != "vocab"]
        self.vocab_keys = list(obj["model"].get("vocab") or {})
        self.types = sorted({v for p in _json_paths(obj) if p and p[-1] == "type" for v in [_get(obj, p)]
                             if isinstance(v, str)} | {"BPE", "Unigram", "WordLevel", "Sequence", "Split", "Replace"})

    def mutate(self, rng: random.Random) -> tuple[str, str, bytes]:
        """(kind, what was done, the mutant's bytes)."""
        kind = rng.choices(list(self.KINDS), list(self.KINDS.values()))[0]
        if kind == "truncate":
            cut = rng.randrange(len(self.text))
            return kind, f"cut at character {cut:,}", self.text[:cut].encode()
        if kind == "bytes":
            b, what = bytearray(self.text.encode()), []
            for _ in range(rng.choice((1, 1, 2, 4))):
                p, op = rng.randrange(len(b)), rng.randrange(3)
                if op == 0:
                    b[p] ^= 1 << rng.randrange(8)
                elif op == 1:
                    del b[p]
                else:
                    b.insert(p, rng.choice(b'{}[]",:0\\\x00\xff'))
                what.append(f"{('flip', 'delete', 'insert')[op]} at {p:,}")
            return kind, ", ".join(what), bytes(b)
        if kind == "whole":
            return kind, *self._whole(rng)
        obj, what = json.loads(self.text), []
        for _ in range(rng.choice((1, 1, 2, 3))):
            what.append(self._edit(obj, rng))
        return kind, "; ".join(what), json.dumps(obj).encode()

    def _whole(self, rng: random.Random) -> tuple[str, bytes]:
        c = rng.randrange(9)
        if c == 8:  # valid JSON, one byte over the cap
            text = self.text.encode()
            return "over the size cap", text + b" " * (self.cap + 1 - len(text))
        return ("empty", "NULs", "random bytes", "UTF-16", "BOM", "100k-deep nesting", "wrong JSON",
                "empty vocabulary")[c], [
            b"", b"\x00" * 100, bytes(rng.getrandbits(8) for _ in range(200)), self.text.encode("utf-16"),
            b"\xef\xbb\xbf" + self.text.encode(), b"[" * 100_000 + b"]" * 100_000,
            rng.choice([b"[]", b"{}", b"null", b"1", b'"tokenizer"', b'{"model": {}}', b'{"model": null}']),
            json.dumps({"model": {"type": "WordPiece", "vocab": {}, "unk_token": "[UNK]"}}).encode()][c]

    def _edit(self, obj: dict, rng: random.Random) -> str:
        vocab = obj["model"].get("vocab") if isinstance(obj.get("model"), dict) else None
        if isinstance(vocab, dict) and vocab and rng.random() < 0.35:
            key = rng.choice(self.vocab_keys)
            op = rng.randrange(4)
            if key not in vocab:
                return "vocabulary edit on a token already gone"
            if op == 0:
                vocab[key] = rng.choice([-1, 1 << 32, 1 << 31, len(vocab), 10 ** 6, 0, 2, None, "x", 1.5])
                return f"vocab[{key!r}] = {vocab[key]!r}"
            if op == 1:
                del vocab[key]
                return f"vocab[{key!r}] deleted"
            if op == 2:
                new = rng.choice(["", "##", "[UNK]x", "\x00", "a" * 300])
                vocab[new] = vocab.pop(key)
                return f"vocab[{key!r}] renamed {new[:10]!r}"
            n = rng.choice((0, 1, 3, 100, 101))
            obj["model"]["vocab"] = dict(list(vocab.items())[:n])
            return f"vocabulary cut to {n} tokens"
        path = rng.choice(self.paths)
        try:
            parent, last = _get(obj, path[:-1]), path[-1]
            value = parent[last]
        except (KeyError, IndexError, TypeError):
            return f"{path}: gone already"
        op = rng.randrange(4)
        if op == 1:
            del parent[last]
            return f"{path} deleted"
        if op == 2 and isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), value)
            return f"{path} duplicated"
        if last == "type":
            parent[last] = rng.choice(self.types)
        elif op == 3 and isinstance(value, int) and not isinstance(value, bool):
            parent[last] = rng.choice([value + 1, value - 1, -value, value * 1000, value + (1 << 32)])
        elif op == 3 and isinstance(value, str):
            parent[last] = rng.choice(["", value * 2, value[:-1], "\x00", "(" * 50, "[" + value])
        else:
            parent[last] = rng.choice(EDGE_JSON)
        return f"{path} = {str(parent[last])[:30]!r}"


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


# ---------------------------------------------------------------- loading in forks

ZYGOTE = r'''
import json, os, resource, select, signal, sys, time
import numpy, onnxruntime, tokenizers  # imported once: every input loads in a fork of this process
from swarm_edge.errors import SwarmEdgeError
from swarm_edge.workers.onnx import ONNXBackend

def work(job):
    stage = "load"
    try:
        backend = ONNXBackend(job["model"], options={"tokenizer": job["tokenizer"], "threads": 1, **job["options"]})
        stage = "embed"
        vecs = backend.embed(["hello world", "a second, longer sentence that pads the first one"])
    except SwarmEdgeError as exc:
        return {"outcome": "refused", "type": type(exc).__name__, "stage": stage, "message": str(exc)}
    except BaseException as exc:
        return {"outcome": "other", "type": type(exc).__name__, "stage": stage, "message": str(exc)[:500]}
    good = all(len(v) == backend.dim and abs(sum(x * x for x in v) - 1) < 1e-3 for v in vecs)
    return {"outcome": "accepted" if good else "bad_vectors", "dim": backend.dim}

for line in sys.stdin:
    job = json.loads(line)
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:  # whatever happens (even a write to a loader that is gone), the fork never returns to this loop
            os.close(r)
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            resource.setrlimit(resource.RLIMIT_AS, (job["mem"], job["mem"]))
            os.write(w, json.dumps(work(job)).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline, hung = [], t0 + job["timeout"], False
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    status = os.waitpid(pid, 0)[1]
    res = {"seconds": round(time.monotonic() - t0, 3)}
    if hung:
        res["outcome"] = "hang"
    elif os.WIFSIGNALED(status):
        res.update(outcome="crash", signal=signal.Signals(os.WTERMSIG(status)).name)
    elif os.WEXITSTATUS(status) != 0 or not chunks:
        res.update(outcome="crash", exit_code=os.WEXITSTATUS(status))
    else:
        res.update(json.loads(b"".join(chunks)))
    for name in ("stdout", "stderr"):
        with open(job[name], "rb") as f:
            text = f.read()[-1500:].decode("utf-8", "replace").strip()
        if text and (name == "stdout" or res["outcome"] in ("crash", "hang")):
            res[name] = text
    print(json.dumps(res), flush=True)
'''


class Loader:
    """A process that forks once per input to load it with ONNXBackend and embed two texts; reports the
    outcome, exit signal or timeout (and what the fork printed on stdout)."""

    def __init__(self, workdir: Path, *, timeout: float = TIMEOUT_S, mem: int = 4 << 30) -> None:
        self.workdir, self.timeout, self.mem = Path(workdir), timeout, mem
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=self.workdir)

    def run(self, model: Path, tokenizer: Path, options: dict | None = None) -> dict:
        """Load model + tokenizer (+ backend options) in a fresh fork; the child's result as a dict (see judge)."""
        job = {"model": str(model), "tokenizer": str(tokenizer), "options": options or {}, "timeout": self.timeout,
               "mem": self.mem,
               "stdout": str(self.workdir / "child.stdout"), "stderr": str(self.workdir / "child.stderr")}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the loader process exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def judge(result: dict, name: str) -> str:
    """The property's verdict on one load of a mutant of the file `name`: 'accepted' (loaded, embedded to unit
    vectors), 'refused' (CorruptModelError or ModelLoadError at load, naming the file), or a violation: 'other'
    (another exception), 'late' (loaded, failed at embed), 'unclear' (does not name the file), 'bad_vectors',
    'crash', 'hang'."""
    outcome = result["outcome"]
    if outcome != "refused":
        return outcome
    if result["stage"] != "load":
        return "late"
    if result["type"] not in ("CorruptModelError", "ModelLoadError"):
        return "other"
    return "refused" if name in result["message"] else "unclear"


# ---------------------------------------------------------------- the bounded property tests

@pytest.fixture(scope="module")
def loader(tmp_path_factory):
    ld = Loader(tmp_path_factory.mktemp("onnx-loader"))
    yield ld
    ld.close()


def _campaign(loader, tmp_path, mutator, n: int, seed: str, target: str, write_pair) -> dict:
    counts: dict[str, int] = {}
    violations = []
    for i in range(n):
        kind, what, data = mutator.mutate(random.Random(f"{seed}/{i}"))
        model, tok = write_pair(tmp_path, data)
        result = loader.run(model, tok)
        verdict = judge(result, target)
        counts[verdict] = counts.get(verdict, 0) + 1
        if verdict in VIOLATIONS or "stdout" in result:
            violations.append((i, kind, what, verdict, result))
    assert not violations, violations[:3]
    return counts


def _pair(model: bytes | None = None, tokenizer: bytes | None = None):
    def write(tmp_path: Path, data: bytes):
        (tmp_path / "model.onnx").write_bytes(model if model is not None else data)
        (tmp_path / "tokenizer.json").write_bytes(tokenizer if tokenizer is not None else data)
        return tmp_path / "model.onnx", tmp_path / "tokenizer.json"
    return write


def test_seeds_load_and_embed(loader, tmp_path):
    # the unmutated seeds load, or every mutant below would be refused for the seed's own fault
    model, tok = _pair(tiny_model(tiny_vocab_size()), json.dumps(tiny_tokenizer()).encode())(tmp_path, b"")
    result = loader.run(model, tok)
    assert (result["outcome"], result.get("dim")) == ("accepted", 8), result


def test_onnx_mutants_load_or_are_refused_clearly(loader, tmp_path):
    t0 = time.perf_counter()
    mutator = OnnxMutator(tiny_model(tiny_vocab_size()))
    counts = _campaign(loader, tmp_path, mutator, 250, "onnx-tiny", "model.onnx",
                       _pair(tokenizer=json.dumps(tiny_tokenizer()).encode()))
    assert counts.get("accepted", 0) > 20 and counts.get("refused", 0) > 150, counts  # both sides exercised
    assert time.perf_counter() - t0 < 60


def test_tokenizer_mutants_load_or_are_refused_clearly(loader, tmp_path):
    t0 = time.perf_counter()
    mutator = TokenizerMutator(json.dumps(tiny_tokenizer()), cap=64 << 20)
    mutator.KINDS = {**TokenizerMutator.KINDS, "whole": 5}  # the 64 MiB mutant: a few, not dozens
    counts = _campaign(loader, tmp_path, mutator, 200, "tokenizer-tiny", "tokenizer.json",
                       _pair(model=tiny_model(tiny_vocab_size())))
    assert counts.get("accepted", 0) > 20 and counts.get("refused", 0) > 100, counts
    assert time.perf_counter() - t0 < 60


EQUATION = ld(5, ld(1, "equation") + vi(20, 3) + ld(4, "bsd,bsd->bsd"))  # a string AttributeProto
# Valid-looking graphs on which onnxruntime 1.32 segfaults while loading (the campaign found the first, a sweep
# of every op's inputs the others); each must be refused by the structure check before onnxruntime sees it.
CRASHERS = {
    "LayerNormalization bias named ''": {"norm_inputs": ("h", "gamma", "")},
    "Max with its second input unnamed": {"combine": ("Max", ("e0", ""))},
    "Sum with its second input unnamed": {"combine": ("Sum", ("e0", ""))},
    "Einsum with its second input unnamed": {"combine": ("Einsum", ("e0", ""), EQUATION)},
}


@pytest.mark.parametrize("case", CRASHERS)
def test_inputs_that_crash_onnxruntime_are_refused_first(loader, tmp_path, case):
    model, tok = _pair(tiny_model(tiny_vocab_size(), **CRASHERS[case]), json.dumps(tiny_tokenizer()).encode())(
        tmp_path, b"")
    result = loader.run(model, tok)
    assert (judge(result, "model.onnx"), result.get("type")) == ("refused", "CorruptModelError"), result
    assert "unnamed, which crashes onnxruntime" in result["message"]


def test_the_same_graphs_with_the_inputs_named_load(loader, tmp_path):
    # the check refuses the unnamed input, not the op: LayerNormalization without a bias (two inputs) and Max of
    # two named inputs load and embed
    for kwargs in ({"norm_inputs": ("h", "gamma")}, {"combine": ("Max", ("e0", "e1"))}):
        model, tok = _pair(tiny_model(tiny_vocab_size(), **kwargs), json.dumps(tiny_tokenizer()).encode())(
            tmp_path, b"")
        assert loader.run(model, tok)["outcome"] == "accepted", kwargs


def test_a_graph_that_never_finishes_is_stopped_at_load(tmp_path):
    # a Loop of 2**62 trips: the probe ran for ever - in the daemon, holding the router's load lock, so every
    # route waited behind it (before the probe: the first route never returned)
    loader = Loader(tmp_path, timeout=15)
    try:
        model, tok = _pair(tiny_model(tiny_vocab_size(), loop_trips=1 << 62), json.dumps(tiny_tokenizer()).encode())(
            tmp_path, b"")
        result = loader.run(model, tok, options={"probe_timeout": 1.0})
        assert (judge(result, "model.onnx"), result.get("type")) == ("refused", "ModelLoadError"), result
        assert "onnxruntime was still running after 1 s (a loop that does not end?)" in result["message"]
        model.write_bytes(tiny_model(tiny_vocab_size(), loop_trips=3))  # a loop that ends loads
        assert loader.run(model, tok, options={"probe_timeout": 1.0})["outcome"] == "accepted"
    finally:
        loader.close()


@pytest.mark.real_model
def test_real_model_mutants(model_files, loader, tmp_path):
    """The real 23 MB model: byte-level mutants through the structure check in this process (each under
    0.2 s, refused or passed on), and a few loads in forks: truncations refused by the check, flips either way."""
    data = model_files["minilm-l6"]["model"].read_bytes()
    mutator = OnnxMutator(data)
    mutator.KINDS = {"truncate": 50, "flip_structure": 40, "flip_data": 10}
    passed, refused = [], 0
    for i in range(60):
        kind, what, mutant = mutator.mutate(random.Random(f"onnx-real/{i}"))
        t0 = time.perf_counter()
        try:
            check_onnx(mutant, "model.onnx")
            passed.append(i)
        except CorruptModelError as exc:
            refused += 1
            assert str(exc).startswith("model.onnx: not a valid ONNX model: ")
            assert kind != "truncate" or "truncated?" in str(exc), (what, str(exc))
        assert time.perf_counter() - t0 < 0.2
    assert refused > 30 and passed, (refused, passed)
    tok = model_files["minilm-l6"]["tokenizer"]
    for i in [*passed[:4], 0, 1]:
        kind, what, mutant = mutator.mutate(random.Random(f"onnx-real/{i}"))
        (tmp_path / "model.onnx").write_bytes(mutant)
        result = loader.run(tmp_path / "model.onnx", tok)
        assert judge(result, "model.onnx") in ("accepted", "refused"), (what, result)

