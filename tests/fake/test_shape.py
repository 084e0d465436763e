"""The code's shape, checked by reading it (no model, no I/O; in the fast tier): no module in swarm_edge/ over 400
lines, no function over 60, no block of logic written twice, every module named in docs/architecture.md.

A ratchet while issue 14's splits land: what is over a limit today is listed here by name and size, so nothing new
may cross a limit and a listed one may only shrink (the list must then shrink with it)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "swarm_edge"
MAX_MODULE, MAX_FUNCTION, WINDOW = 400, 60, 6
# module (relative to swarm_edge/) or module:function -> its size when this list was written; may only shrink
KNOWN_OVER: dict[str, int] = {
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def rel(p: Path) -> str:
    return p.relative_to(PACKAGE).as_posix()


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def over_limits() -> dict[str, int]:
    out = {}
    for p in modules():
        text = p.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE:
            out[rel(p)] = n
        for f in functions(ast.parse(text)):
            size = f.end_lineno - f.lineno + 1
            if size > MAX_FUNCTION:
                out[f"{rel(p)}:{f.name}"] = size
    return out


def test_no_module_or_function_grows_past_the_limits():
    found = over_limits()
    new = {k: v for k, v in found.items() if k not in KNOWN_OVER}
    grown = {k: (KNOWN_OVER[k], v) for k, v in found.items() if k in KNOWN_OVER and v > KNOWN_OVER[k]}
    gone = sorted(k for k in KNOWN_OVER if k not in found)
    assert not new, f"over {MAX_MODULE} lines per module / {MAX_FUNCTION} per function: {new}"
    assert not grown, f"grew past its recorded size: {grown}"
    assert not gone, f"now within the limits: take them off KNOWN_OVER: {gone}"


def _flat(body: list[ast.stmt]) -> list[str]:
    """A body's statements in source order, compound ones as their header then their bodies."""
    out = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstrings
        inner = [getattr(node, f) for f in ("body", "orelse", "finalbody") if getattr(node, f, None)]
        inner += [h.body for h in getattr(node, "handlers", [])]
        if inner:
            head = getattr(node, "test", None) or getattr(node, "iter", None) or getattr(node, "items", None)
            out.append(type(node).__name__ + (ast.dump(head) if isinstance(head, ast.AST) else repr(
                [ast.dump(i.context_expr) for i in head] if isinstance(head, list) else "")))
            for b in inner:
                out += _flat(b)
        else:
            out.append(ast.dump(node))
    return out


def test_no_block_of_logic_is_written_twice():
    seen: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for p in modules():
        for f in functions(ast.parse(p.read_text())):
            stmts = _flat(f.body)
            for i in range(len(stmts) - WINDOW + 1):
                seen[tuple(stmts[i:i + WINDOW])].add(f"{rel(p)}:{f.name}")
    twice = sorted({tuple(sorted(places)) for places in seen.values() if len(places) > 1})
    assert not twice, f"the same {WINDOW} statements in several functions: {twice}"


@pytest.mark.parametrize("module", [rel(p) for p in modules() if p.name != "__init__.py"])
def test_every_module_is_in_the_architecture_document(module):
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert module in doc, f"docs/architecture.md does not name swarm_edge/{module}"
