"""The one event vocabulary of a generation, from a model session to the HTTP response and the CLI.

A stream is `Start` (once: the model whose output the caller sees is leased and has the prompt), then `Token`s,
then one `Done` carrying the result (a worker's GenStats, a model call, or the whole Answer). Code matches on
the classes; `ev["type"]` and `ev["text"]` / `ev["answer"]` still work for scripts written against the dict events
of earlier versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

R = TypeVar("R")


class _Indexable:
    type: ClassVar[str]

    def __getitem__(self, key: str) -> Any:
        if key == "type":
            return self.type
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass(frozen=True)
class Start(_Indexable):
    """The answer begins: `model` is the one whose output follows (`route`: why, on whole answers)."""

    model: str
    route: Any = None
    type: ClassVar[str] = "start"


@dataclass(frozen=True)
class Token(_Indexable):
    """A piece of text, as the model produced it. `sent`: the client already has it (the worker wrote it to the
    client's socket itself: workers/direct.py), and `at` is when the first of it went out (perf_counter)."""

    text: str
    sent: bool = False
    at: float | None = None
    type: ClassVar[str] = "token"


@dataclass(frozen=True)
class Done(_Indexable, Generic[R]):
    """The stream's last event."""

    result: R
    type: ClassVar[str] = "done"

    @property
    def answer(self) -> R:
        return self.result


Event = Start | Token | Done[Any]

__all__ = ["Done", "Event", "Start", "Token"]
