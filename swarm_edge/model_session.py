"""One way to use a model: its files prepared, a lease on its worker, a compute slot, and the timings of each.

`Engine.session(model_id)` opens one; the orchestrator, the embeddings endpoint and the Ollama load endpoint all go
through it, so the order (files -> lease -> compute slot) and what each wait is called in a trace live here only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from swarm_edge.events import Done, Start, Token
from swarm_edge.workers.base import GenerateRequest, GenStats
from swarm_edge.workers.direct import Sink


def rounded(x: float | None) -> float | None:
    """Seconds as a trace shows them."""
    return None if x is None else round(x, 4)


class ModelSession:
    """A leased model. `timings` holds files_s, queue_s and load_s from the start, the rest once a call is done."""

    def __init__(self, model_id: str, worker: Any, *, t0: float, t_files: float, t_leased: float,
                 count_tokens: Callable[[str, int], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self.model_id, self.worker = model_id, worker
        self._t0, self._t_leased, self._count, self._clock = t0, t_leased, count_tokens, clock
        waited = t_leased - t_files
        # a first request that waited for the load: the load's share of the wait is load_s, the rest queueing
        load_s = min(waited, worker.info.get("spawn_to_ready_s") or 0.0) if worker.requests == 0 else 0.0
        self.timings: dict[str, Any] = {"files_s": rounded(t_files - t0), "queue_s": rounded(waited - load_s),
                                        "load_s": rounded(load_s)}

    async def generate(self, request: GenerateRequest, sink: Sink | None = None,
                       ) -> AsyncGenerator[Start | Token | Done[GenStats], None]:
        """Start (the worker has the prompt), Tokens, then Done with the worker's figures. Closing the stream at
        Start abandons the generation in the worker; closing it later cancels it there. With a `sink` the worker may
        write the tokens to the client itself: they then come as one Token marked `sent`, at the end."""
        await self.worker.begin(request, sink)  # the model reads the prompt while our caller prepares its response
        try:
            yield Start(self.model_id)
        except BaseException:
            await self.worker.abandon()
            raise
        t_first, stats = None, GenStats()
        async with contextlib.aclosing(self.worker.generate(request, sent=True)) as events:
            async for event in events:
                if event["type"] == "token":
                    if t_first is None:
                        t_first = self._clock()
                    yield Token(event["text"])
                elif event["type"] == "sent":  # the direct path: what the worker wrote to the client
                    if event.get("t_first") is not None:
                        t_first = event["t_first"]  # perf_counter is CLOCK_MONOTONIC: one clock for every process
                        yield Token(event.get("text") or "", sent=True, at=t_first)
                elif event["type"] == "done":
                    stats = GenStats.from_wire(event)
        t_end = self._clock()
        self._count(self.model_id, stats.chunks)
        self.timings.update(ttft_s=rounded(t_first - self._t0 if t_first else None),
                            model_ttft_s=rounded(stats.ttft_s), decode_tok_s=rounded(stats.decode_tok_s),
                            generate_s=rounded(t_end - self._t_leased), total_s=rounded(t_end - self._t0))
        yield Done(stats)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors for texts; `timings` gains embed_s, total_s and tokens (where the backend counts them)."""
        vectors = await self.worker.embed(texts)
        t_end = self._clock()
        self.timings.update(embed_s=rounded(t_end - self._t_leased), total_s=rounded(t_end - self._t0),
                            tokens=self.worker.last_embed_tokens)
        return vectors


__all__ = ["ModelSession", "rounded"]
