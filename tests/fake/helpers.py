"""Running the orchestrator over a FakeRuntime (FAKE model sessions): one call, everything it produced."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from swarm_edge import orchestrator


@dataclass
class Run:
    """What one orchestrator.stream call produced."""

    answer: Any = None
    text: str = ""
    kinds: list[str] = field(default_factory=list)
    starts: list[Any] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def trace(self) -> dict:
        return self.answer.trace()

    def roles(self) -> list[str]:
        return [s["role"] for s in self.answer.steps]


async def collect(rt, text: str | None = None, *, messages=None, raises: bool = True, **kw) -> Run:
    """`text`: the user's message (or give `messages`, or a raw `prompt`)."""
    run = Run()
    if messages is None and "prompt" not in kw:
        messages = [{"role": "user", "content": text}]
    try:
        async with contextlib.aclosing(orchestrator.stream(rt, messages=messages, **kw)) as events:
            async for ev in events:
                run.kinds.append(ev["type"])
                if ev["type"] == "token":
                    run.text += ev["text"]
                elif ev["type"] == "start":
                    run.starts.append(ev)
                else:
                    run.answer = ev["answer"]
    except Exception as exc:
        if raises:
            raise
        run.error = exc
    return run


def ask(rt, text: str | None = None, **kw) -> Run:
    """One request, run to its end (or its error, with raises=False)."""
    return asyncio.run(collect(rt, text, **kw))
