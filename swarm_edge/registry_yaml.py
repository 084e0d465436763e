"""Reading models.yaml safely: a bounded YAML loader (size, depth, node count after aliases; no duplicate keys;
text that can be printed), line numbers for every key, and short readable messages for pydantic's errors."""

from __future__ import annotations

import re
import reprlib
from typing import Any

import yaml

from swarm_edge.errors import RegistryError

MAX_DEPTH = 32        # models.yaml nests 9 deep; PyYAML's composer recurses, so depth is bounded while composing
MAX_NODES = 100_000   # after expanding aliases: a few anchors must not stand for billions of nodes
MAX_CHARS = 1 << 20   # the default models.yaml has 15,000; PyYAML reads about 150,000 a second
_SURROGATE = re.compile("[\ud800-\udfff]")  # from "\\ud800" escapes: such text cannot be printed or logged


def _text(value: Any, limit: int = 80) -> str:
    """A short repr for messages (repr of a 5,000-digit int raises ValueError: say what it is instead)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = limit
    short.maxlevel = 2
    try:
        return short.repr(value)
    except ValueError:
        return f"<a {type(value).__name__} too large to show>"


def _plain(part: Any) -> str:
    try:
        return str(part)
    except ValueError:  # an int past Python's digit limit, as a mapping key
        return "?"


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{_plain(part)}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _node_at(root: yaml.Node, loc: tuple[Any, ...]) -> yaml.Node:
    """The deepest YAML node along `loc` (a pydantic error location)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == _plain(part):
                    # for an unknown key, the key itself is the best place to point at
                    nxt = v
                    break
            if nxt is None:
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


class _Loader(yaml.SafeLoader):
    """The safe loader, with nesting bounded while composing and constructor errors that name a line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose one node, refusing to nest deeper than MAX_DEPTH (before Python's recursion limit does)."""
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[return-value]
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct one value; a date like 2024-13-45, `!!bool maybe` or an int past Python's digit limit names
        its line instead of raising ValueError, KeyError..."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # the safe constructors build plain values only: any failure is a bad value
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value ({type(exc).__name__}: "
                                                    f"{exc})", node.start_mark) from None


def _check_keys(node: yaml.MappingNode, path: str, file: str) -> None:
    seen: dict[str, int] = {}
    for k, _ in node.value:
        key = getattr(k, "value", None)
        if isinstance(key, str):
            if key in seen:
                raise RegistryError(f"key {_text(key)} appears twice (first on line {seen[key]})",
                                    path=file, key=f"{path}.{key}" if path else key, line=k.start_mark.line + 1)
            seen[key] = k.start_mark.line + 1


def _children(node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
    if isinstance(node, yaml.MappingNode):
        out = []
        for k, v in node.value:
            name = k.value if isinstance(k.value, str) else "?"
            out += [(k, path), (v, f"{path}.{name}" if path else name)]
        return out
    if isinstance(node, yaml.SequenceNode):
        return [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    return []


def _check_tree(root: yaml.Node, file: str) -> None:
    """Repeated keys; aliases that form a cycle or expand past MAX_NODES nodes or MAX_DEPTH levels.

    Iterative and memoised (each node walked once): with aliases the tree is a graph, and a few anchors can
    stand for billions of nodes that pydantic, a recursive walk or an error message would otherwise expand.
    """
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth) with aliases expanded
    walking: set[int] = set()              # nodes whose subtree is being walked: meeting one again is a cycle
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, leaving = stack.pop()
        line = node.start_mark.line + 1
        if leaving:
            kids = [done[id(k)] for k, _ in _children(node, path)]
            size, depth = 1 + sum(n for n, _ in kids), 1 + max((d for _, d in kids), default=0)
            if size > MAX_NODES or depth > MAX_DEPTH:
                what = f"more than {MAX_NODES:,} values" if size > MAX_NODES else f"deeper than {MAX_DEPTH} levels"
                raise RegistryError(f"aliases expand to {what}", path=file, key=path or None, line=line)
            walking.discard(id(node))
            done[id(node)] = (size, depth)
        elif id(node) in walking:
            raise RegistryError("an alias refers to a node that contains it (a cycle)", path=file,
                                key=path or None, line=line)
        elif id(node) not in done:
            walking.add(id(node))
            if isinstance(node, yaml.MappingNode):
                _check_keys(node, path, file)
            elif isinstance(node, yaml.ScalarNode) and _SURROGATE.search(node.value):
                raise RegistryError("a \\ud800-\\udfff escape is half of a character, not text", path=file,
                                    key=path or None, line=line)
            stack.append((node, path, True))
            stack += [(k, p, False) for k, p in _children(node, path)]


def _load_yaml(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    """(node tree, data) of a one-document YAML text; RegistryError naming the line of any problem."""
    if len(text) > MAX_CHARS:
        raise RegistryError(f"file has {len(text):,} characters; models.yaml may have at most {MAX_CHARS:,}",
                            path=file, line=text.count("\n", 0, MAX_CHARS) + 1)
    loader = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_tree(root, file)
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = f"{exc.context}: {exc.problem}" if exc.context and exc.problem else exc.problem or str(exc)
        if "constructor for the tag" in problem:
            problem = f"tag not allowed ({problem}); models.yaml is plain data, never code"
        raise RegistryError(f"YAML error: {problem}", path=file, line=mark.line + 1 if mark else 1) from None
    except yaml.reader.ReaderError as exc:  # a control character: unmarked, but its offset gives the line
        raise RegistryError(f"YAML error: character {_text(exc.character)} is not allowed in a YAML file",
                            path=file, line=text.count("\n", 0, max(0, exc.position)) + 1) from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"YAML error: {exc}", path=file, line=1) from None
    finally:
        if loader is not None:
            loader.dispose()


def _friendly(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; allowed keys are in models.yaml's documentation)"
    if kind == "missing":
        return "required key is missing"
    msg = err.get("msg", "invalid value")
    msg = re.sub(r"^Value error, ", "", msg)
    if kind.endswith(("_type", "_parsing")) or kind == "literal_error":
        return f"{msg} (got {_text(err.get('input'))})"
    return msg
