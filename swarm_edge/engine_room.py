"""The engine's room accounting beyond admission (a mixin of Engine, kept apart for size): whether a model can
ever fit the budget (`too_big`, for orchestration/fit.py), whether the router's embedder may load beside the
smallest chat model, and its pending growth until it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swarm_edge.errors import BudgetError
from swarm_edge.footprint import onnx_formula
from swarm_edge.registry import ModelSpec
from swarm_edge.router_host import RemoteEmbedder


class Room:
    """Mixed into Engine: uses its registry, scheduler, router, pool, sleeper, base_pss and estimate_detail."""

    registry: Any
    scheduler: Any
    router: Any
    pool: Any
    sleeper: Any
    base_pss: Any
    estimate_detail: Any
    _base: tuple[float, int] | None
    _base_seen: list[tuple[float, int]]
    _base_high: int
    _smallest: int | None

    def _forget_base(self) -> None:
        # asleep: the bases measured awake (the embedder among them) are gone, and it is charged again as pending
        self._base, self._base_seen = None, []

    def _base_stale(self) -> None:
        # a worker exited: its share of the pages it shared with the base (the preloaded runtimes) is the base's now,
        # so the reading kept for BASE_TTL_S is too small; the minute's highest (_base_seen) still counts
        self._base = None

    def _pending_growth(self, raw: int | None = None) -> int:
        """The router's embedder until it loads (the ONNX formula, an upper bound): admission charges the base as it
        will be. Not when the budget has no room for it beside the smallest chat model: it never loads then."""
        embedder = self.router.will_load
        if embedder is None:
            return 0
        spec = self.registry.get(embedder)
        sizes = {f.role: f.size for f in spec.files}
        need = sum(onnx_formula(sizes.get("model", 0), sizes.get("tokenizer", 0)).values())
        raw = (self._base[1] if self._base is not None else 0) if raw is None else raw
        return need if self.sleeper is None or self._router_room(raw, need) else 0

    def _router_room(self, raw_base: int, need: int, compute: bool = False) -> bool:
        """Whether the router's embedder (`need`) fits beside the smallest chat model. The estimates are read
        (files, GGUF facts) only with `compute` (a routing thread, never the event loop), and kept once all known."""
        smallest = self._smallest
        if smallest is None and compute:
            known = [self._known_estimate(m.id) for m in self.registry if m.kind == "chat"]
            smallest = min((e for e in known if e is not None), default=0)
            if None not in known:
                self._smallest = smallest
        return raw_base + need + (smallest or 0) <= self.scheduler.budget

    def _remote_embedder(self, loop, spec: ModelSpec, files: dict[str, Path], threads: int) -> RemoteEmbedder:
        """The router's embedder in a worker, if the budget has room for it beside the smallest chat model (else,
        a 1 GiB board, the keyword rules route: Router falls back on this BudgetError, and says why)."""
        need, mib = self.estimate_detail(spec.id, fetch=False).bytes, 2**20
        if not self._router_room(self.base_pss() - self._pending_growth(), need, compute=True):
            small = (self._smallest or 0) / mib
            raise BudgetError(f"the {self.scheduler.budget / mib:,.0f} MiB budget has no room for the router's "
                              f"embedder (~{need / mib:,.0f} MiB) beside the smallest model (~{small:,.0f} MiB)")
        return RemoteEmbedder(self.pool, loop, spec, files, threads)

    def _known_estimate(self, model_id: str) -> int | None:  # None: not fetched or unreadable
        try:
            return self.estimate_detail(model_id, fetch=False, wait=False).bytes
        except Exception:  # noqa: BLE001
            return None

    def too_big(self, model_id: str) -> str | None:
        """Why a model can never load inside the budget beside swarm-edge itself (its highest base: asleep it holds
        less) and pinned models, or None: it fits, or admission decides. A model not fetched yet has no estimate:
        its weights' declared size is a floor (they are read into its worker whole), so a board is not made to
        download gigabytes only to refuse them. Blocking."""
        need = self._known_estimate(model_id)
        about = "about"
        if need is None:
            need, about = self.registry.get(model_id).file("model").size, "at least"
        base = max(self.base_pss(), self._base_high)
        room = self.scheduler.budget - base - self.scheduler.pinned_other(model_id)
        if need <= room:
            return None
        return (f"{model_id} needs {about} {need / 2**20:,.0f} MiB, the {self.scheduler.budget / 2**20:,.0f} MiB "
                f"budget leaves {max(0, room) / 2**20:,.0f} MiB")

