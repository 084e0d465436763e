"""What the scheduler works with: a worker handle's contract, a resident's states, the eviction policies (pure
functions of what is evictable, the plan's upcoming models and the time) and the counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable


@runtime_checkable
class WorkerHandle(Protocol):
    """The scheduler's view of a worker (workers/worker.py's Worker; tests' fakes)."""

    last_pss: int       # the worker's last measured PSS (0: not measured)
    pid: int | None

    @property
    def alive(self) -> bool: ...

    async def stop(self) -> None: ...


class State(str, Enum):
    """A resident model's state. A str, so snapshots and JSON show "loading", "ready", "stopping"."""

    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"

    def __str__(self) -> str:  # f"{state}" says "ready", not "State.READY"
        return self.value


@dataclass(frozen=True)
class Candidate:
    """What an eviction policy sees of an idle, evictable model."""

    model_id: str
    last_used: float
    reserved: int


def lru(candidates: list[Candidate], future: list[str], now: float) -> str:
    """Least recently used first."""
    return min(candidates, key=lambda c: c.last_used).model_id


def plan_aware(candidates: list[Candidate], future: list[str], now: float) -> str:
    """Evict what the plan does not need (LRU among those), else what it needs furthest in the future."""
    unneeded = [c for c in candidates if c.model_id not in future]
    if unneeded:
        return lru(unneeded, future, now)
    return max(candidates, key=lambda c: future.index(c.model_id)).model_id


Policy = Callable[[list[Candidate], list[str], float], str]


@dataclass
class Stats:
    """Counters for status and /metrics."""

    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    ttl_unloads: int = 0
    crashes: int = 0
    busy_rejections: int = 0
    prefetches: int = 0


__all__ = ["Candidate", "Policy", "State", "Stats", "WorkerHandle", "lru", "plan_aware"]
