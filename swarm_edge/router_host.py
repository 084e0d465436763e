"""Where the router's embedding model runs, and its life: loaded on the first route (or warm()), dropped when the
daemon sleeps (idle.py), rebuilt when its worker dies; while it cannot be had, the keyword rules route and every
Route says why.

In a one-shot CLI process it runs in that process (workers.open_backend). In the daemon it runs in a worker
forked from the forkserver (`RemoteEmbedder`): in-process, onnxruntime and tokenizers cost the daemon ~14 MiB it
never gives back, and the session itself ~110 MiB while loaded (onnxruntime turns the int8 MiniLM into float
weights at session start). In a worker the daemon keeps neither; it sends the prompt and gets the two vectors
back (one JSON frame each way, a fraction of a millisecond next to the 4-8 ms embedding), and the worker exits
when the daemon goes to sleep. Its PSS is part of the daemon's measured base, as the in-process model's was, so
routing never competes with generation models for the budget. The router calls it from routing threads, never
from the event loop: `embed_with_prefix` blocks on the loop's answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarm_edge.errors import BudgetError, InferenceError, ModelLoadError, SwarmEdgeError, WorkerCrashedError
from swarm_edge.registry import ModelSpec, Registry
from swarm_edge.router import KeywordRouter, Route, SemanticRouter
from swarm_edge.workers import backend_options

log = logging.getLogger("swarm_edge.router")


class TransientError(SwarmEdgeError):
    """The remote embedder could not be had this time (a load that failed or took too long, a dead worker)."""

RETRY_S = 30.0          # after a failed load of the remote embedder, the rules route this long before a retry
RETRY_MAX_S = 600.0     # ... doubled after each failure in a row, up to this
_now = time.monotonic   # the retry clock (a module attribute, so a test can move it without moving time itself)
CALL_TIMEOUT_S = 120.0  # a load or an embedding this slow means something is wrong: the rules route meanwhile


class Router:
    """The engine's router: semantic when the registry names an embedder whose files are here, else rules.

    The embedding model is loaded on the first route (or by `warm()`); if it cannot be (not fetched and
    offline, corrupt), routing falls back to the keyword rules and every Route says why.
    """

    def __init__(self, registry: Registry, files=None, *, threads: int = 1, cache_dir=None) -> None:
        self.registry = registry
        self.keywords = KeywordRouter(registry)
        self._files = files              # callable(model_id) -> verified files, or None: rules only
        self.threads = threads
        self.cache_dir = cache_dir
        self._semantic: SemanticRouter | None = None
        self._failed: str | None = None
        self._head = None                # the trained head, kept when the embedder is dropped
        self._later: tuple[float, str] | None = None  # (retry time, cause): a remote embedder that failed to load
        self._retries = 0                # failures in a row of the above (the wait doubles with each)
        self._retry: threading.Thread | None = None   # the retry after that wait, off the requests' routing threads
        # held while a retry loads the embedder (the daemon's Sleeper.route: awake meanwhile, the forkserver up)
        self.awake: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        # how the embedder is opened: in this process (workers.open_backend), or the daemon's remote one
        # (RemoteEmbedder below); (spec, files, threads) -> an object with embed_with_prefix and close
        self.opener: Callable[..., Any] | None = None
        self._lock = threading.Lock()
        self._lock_retry = threading.Lock()
        self._closed = False             # drop(final=True): the engine is closing; no embedder is loaded again

    @property
    def kind(self) -> str:
        """"semantic" or "keywords" (before the first route: what the configuration asks for)."""
        if self._semantic is not None:
            return "semantic"
        return "keywords" if self._failed or not self.registry.router.embedder or self._files is None else "semantic"

    @property
    def will_load(self) -> str | None:
        """The embedder's id while it is configured to run in this process but not loaded (nor failed) yet."""
        embedder = self.registry.router.embedder
        if self._semantic is None and self._failed is None and embedder and self._files is not None:
            return embedder
        return None

    @property
    def unavailable(self) -> str | None:
        """Why semantic routing fell back to the rules, if it did."""
        return self._failed

    @property
    def loaded(self) -> bool:
        """Whether the embedding model is loaded in this process now."""
        return self._semantic is not None

    def pid(self) -> int | None:
        """The embedder's worker process, when it runs in one."""
        semantic = self._semantic
        return getattr(semantic.backend, "pid", None) if semantic is not None else None

    def drop(self, expected: SemanticRouter | None = None, *, final: bool = False) -> bool:
        """Unload the embedding model (the daemon goes to sleep: idle.py); the trained head is kept, so the next
        route loads the embedder again (a fraction of a second) and waits for it. True if one was loaded.
        `expected`: only if that one is still the one loaded (a route that saw its worker die). `final`: the engine
        is closing; a warm-up or route still in flight finds the router closed and never loads it again (the keyword
        rules answer it)."""
        if final:  # before the lock, which a first start holds while the head trains: that training stops now
            self._closed = True
        with self._lock:
            if expected is not None and self._semantic is not expected:
                return False
            semantic, self._semantic = self._semantic, None
            if semantic is None:
                return False
            self._head = semantic.head
            semantic.backend.close()
        return True

    def warm(self) -> str | None:
        """Load the embedding model and the trained head now; returns why semantic routing is off, or None."""
        self._get(inline=True)
        return self._failed

    def _get(self, wait: bool = True, inline: bool = False) -> SemanticRouter | None:
        """The semantic router, built on first use. `wait=False`: None while another thread builds it (the
        first start with new examples trains the head: seconds), so requests meanwhile use the rules. A retry after
        a failure runs in a thread of its own unless `inline`: the request that finds the wait over is routed by
        the rules at once instead of waiting for a load (and maybe a training) that failed last time."""
        if self._semantic is not None or self._failed is not None or self._closed:
            return self._semantic
        if self._later is not None:
            if _now() < self._later[0]:
                return None  # a remote embedder failed a moment ago: the rules route until it is tried again
            if not inline:
                self._retry_in_background()
                return None
        embedder = self.registry.router.embedder
        if not embedder or self._files is None:
            return None  # rules only, as configured
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            if self._semantic is None and self._failed is None and not self._closed:
                try:
                    from swarm_edge.workers import open_backend

                    spec = self.registry.get(embedder)
                    backend = (self.opener or open_backend)(spec, self._files(embedder), self.threads)
                    try:
                        self._semantic = SemanticRouter(self.registry, backend, cache_dir=self.cache_dir,
                                                        embedder_sha=spec.file("model").sha256, head=self._head,
                                                        stop=lambda: self._closed)
                    except BaseException:  # no router (its training stopped, say): no embedder left loaded
                        backend.close()
                        raise
                    self._retries, self._later = 0, None
                except (BudgetError, TransientError, InferenceError) as exc:
                    # the daemon's remote embedder could not be had, or its worker refused the head it was sent
                    # (loaded, then failed): try again later, waiting twice as long after each failure in a row
                    delay = min(RETRY_S * 2 ** min(self._retries, 5), RETRY_MAX_S)
                    self._retries += 1
                    self._later = (_now() + delay, str(exc))
                except SwarmEdgeError as exc:
                    self._failed = f"semantic router unavailable ({exc}); keyword rules only"
                except Exception as exc:  # noqa: BLE001 - onnxruntime or numpy: the rules route, and say why
                    log.warning("the semantic router could not be built", exc_info=True)
                    self._failed = f"semantic router unavailable ({type(exc).__name__}: {exc}); keyword rules only"
        finally:
            self._lock.release()
        return self._semantic

    def _waiting(self) -> str | None:
        """Why the rules route while a remote embedder that failed waits for its retry (or is being retried)."""
        later = self._later
        if later is None:
            return None
        retry = self._retry
        when = ("while the daemon stops" if self._closed else
                "while it is tried again" if retry is not None and retry.is_alive()
                else f"until it is tried again in {max(0.0, later[0] - _now()):.0f} s")
        return f"semantic router unavailable for now ({later[1]}); keyword rules {when}"

    def _retry_in_background(self) -> None:
        with self._lock_retry:
            if self._retry is not None and self._retry.is_alive():
                return

            def retry() -> None:
                with self.awake():
                    self._get(inline=True)

            self._retry = threading.Thread(target=retry, name="router-retry", daemon=True)
            self._retry.start()

    def route(self, text: str, resident: frozenset[str] | set[str] = frozenset()) -> Route:
        """Route `text` (blocking: 3-4 ms of embedding; call it from a thread in async code)."""
        semantic = self._get(wait=self._head is not None) or self._semantic  # or a retry's, finished meanwhile
        failed = self._failed or (self._waiting() if semantic is None else None)
        if semantic is None and failed is None and self.will_load:
            failed = "the semantic router is still being built (its head trains once per set of examples)"
        if semantic is not None:
            try:
                return semantic.route(text, resident)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors: one prompt must not fail a request
                log.warning("semantic routing failed on one prompt (%s: %s); keyword rules for it",
                            type(exc).__name__, exc)
                if getattr(getattr(semantic, "backend", None), "alive", True) is False:
                    self.drop(expected=semantic)  # its worker died: the next route starts another
                failed = f"semantic routing failed on this prompt ({type(exc).__name__}); keyword rules"
        r = self.keywords.route(text)
        return Route(task=r.task, model=r.model, confidence=r.confidence,
                     reason=f"{r.reason} ({failed})" if failed else r.reason, scores=r.scores)


def local_router(registry: Registry, settings, files=None) -> Router:
    """The router of a process: its embedding model's files from `files` (model id -> verified files), else found
    here without ever downloading them (without them the keyword rules decide, and the reason says so)."""
    if files is None:
        from swarm_edge.sources import ensure_model

        def files(mid: str):
            return ensure_model(settings, registry.get(mid), registry.base_dir, fetch=False)
    return Router(registry, files, threads=1, cache_dir=settings.home / "cache")


class RemoteEmbedder:
    """`embed_with_prefix` and `close` as the in-process ONNX backend has them, over a worker."""

    def __init__(self, pool, loop: asyncio.AbstractEventLoop, spec: ModelSpec, files: dict[str, Path],
                 threads: int) -> None:
        self.loop = loop
        self._lock = threading.Lock()  # the worker answers one order at a time; routes come from several threads
        options = backend_options(spec, files, threads)
        self.worker = self._call(pool.spawn(spec.id, spec.format, str(files["model"]), options, calibrate=False))

    def _call(self, coro) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("the remote embedder is called from routing threads, not the event loop")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            coro.close()
            raise TransientError("the router's embedder is unavailable: the daemon is stopping") from None
        try:
            return future.result(CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()  # Pool.spawn kills a half-loaded worker when cancelled: nothing is left behind
            raise TransientError(f"the router's embedder did not answer within {CALL_TIMEOUT_S:.0f} s") from None
        except (WorkerCrashedError, ModelLoadError, OSError) as exc:
            raise TransientError(f"the router's embedder failed: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.worker.pid

    @property
    def alive(self) -> bool:
        return self.worker.alive

    def embed_with_prefix(self, text: str, prefix_chars: int):
        """(head, whole) float32 vectors of one text, from one forward pass in the worker."""
        import numpy as np

        with self._lock:
            head, whole = self._call(self.worker.embed([text], prefix_chars=prefix_chars))
        return np.asarray(head, dtype=np.float32), np.asarray(whole, dtype=np.float32)

    def load_head(self, wire: dict) -> None:
        """Give the worker the router's trained head (`Head.wire` or `HeadRef.wire`): it answers `scores` from now
        on. InferenceError if it cannot load it (a cache file gone or corrupt)."""
        with self._lock:
            self._call(self.worker.embed([], head=wire))

    def scores(self, text: str, prefix_chars: int, shares: list[float], keyword_weight: float) -> list[float]:
        """One prompt's task probabilities, computed in the worker (features and head): one frame each way, and
        the daemon needs no numpy."""
        with self._lock:
            (probs,) = self._call(self.worker.embed([text], prefix_chars=prefix_chars, shares=shares,
                                                    keyword_weight=keyword_weight))
        return probs

    def close(self) -> None:
        """Stop the worker (its memory goes with it)."""
        if self.loop.is_closed():
            return
        with self._lock:
            try:
                self._call(self.worker.stop())
            except Exception:  # noqa: BLE001 - already dead or the loop is stopping: kill is all that is left
                self.worker.kill()
