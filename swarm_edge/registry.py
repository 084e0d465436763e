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
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from swarm_edge.errors import RegistryError, UnknownModelError
from swarm_edge.registry_files import (  # noqa: F401  (FileSpec, the sources: re-exported)
    _ID_RE,
    FileSpec,
    HFSource,
    PyPISource,
    Source,
    _path_text,
    _Strict,
    _version_problem,
)
from swarm_edge.registry_yaml import _friendly, _key_path, _load_yaml, _node_at


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
    n_ubatch: int | None = Field(None, ge=1, le=1 << 16, description=(
        "GGUF: llama.cpp's physical batch (default min(n_batch, 512)). Its compute buffer holds n_ubatch rows of "
        "vocabulary logits: 256 x 151,936 x 4 B is 148 MiB on a Qwen; 32 is 19 MiB, for a slower prompt"))
    kv_type: Literal["f16", "q8_0"] = Field("f16", description=(
        "GGUF: the KV cache's type. q8_0 halves it (with flash attention, which llama.cpp needs for a quantized V)"))
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


# Routes chosen by the shape of a request, not by its words: never routed to by content, never planned.
SHAPE_TASKS = {"json": "a JSON response format", "tools": "functions offered"}


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

    @property
    def content_tasks(self) -> list[str]:
        """The tasks a request's words are routed and planned to (every route but the shape routes)."""
        return [t for t in self.routes if t not in SHAPE_TASKS]

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
        raise RegistryError(_friendly(first) + more, path=file, key=_key_path(loc),  # type: ignore[arg-type]
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
    for task in SHAPE_TASKS:
        shaped = parsed.routes.get(task)
        if shaped is not None and (shaped.keywords or shaped.examples or shaped.tool or shaped.strategy == "ensemble"):
            which = "keywords" if shaped.keywords else "examples" if shaped.examples else "tool" if shaped.tool \
                else "strategy"
            fail(f"route {task!r} is chosen by the request's shape ({SHAPE_TASKS[task]}), never by its words: "
                 f"{which} do not apply to it (cascade and single do)", ("routes", task, which))
    if parsed.routes and parsed.default_task not in parsed.routes:
        fail(f"default_task {parsed.default_task!r} has no route", ("default_task",))
    if parsed.default_task in SHAPE_TASKS:
        fail(f"default_task {parsed.default_task!r} is chosen by a request's shape, not a default", ("default_task",))
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
