"""The engine: registry + model files + footprint + worker pool + scheduler, wired together.

One Engine per process (the daemon, or `ask --local`). It owns the forkserver and every worker; its
`generate`/`embed` take a lease, talk to the worker and release the lease on every path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from swarm_edge.boxmem import family, pss_sum, resolve_budget, subtree
from swarm_edge.cloud import cloud_policy, make_client
from swarm_edge.config import Settings
from swarm_edge.engine_room import Room
from swarm_edge.errors import ConfigError, ModelFileError
from swarm_edge.events import Done, Token
from swarm_edge.footprint import FootprintStore, estimate, gguf_formula, onnx_formula
from swarm_edge.idle import Sleeper, sleep_after
from swarm_edge.model_session import ModelSession
from swarm_edge.registry import ModelSpec, Registry
from swarm_edge.router import Route
from swarm_edge.router_host import local_router
from swarm_edge.scheduler import Scheduler
from swarm_edge.sources import ensure_model, recheck
from swarm_edge.workers import GenerateRequest, backend_options
from swarm_edge.workers.pool import Pool
from swarm_edge.workers.process import WORKER_NAME

BASE_TTL_S = 3.0   # the base PSS reads every process's smaps (ms of CPU): reuse a reading for this long
BASE_WINDOW_S = 60.0  # admission counts the highest base seen in this window
# What a wake brings back before any measurement of it (benchmarks/results/idle.md, x86_64): the forkserver and
# multiprocessing's resource tracker (24.5 + 6.9 MiB), and the spare worker (19.5 MiB).
WAKE_ALLOWANCE = 32 << 20
SPARE_ALLOWANCE = 20 << 20
IO_THREADS = 2        # fetch/verify/parse threads: two models prepare at once; the rest of the daemon never waits


class Engine(Room):
    """Runs models for one process inside a memory budget."""

    def __init__(self, registry: Registry, settings: Settings, *, budget: int | str | None = None,
                 idle_ttl: float | None = None, max_waiting: int = 64, policy=None,
                 fetch: bool | None = None, spare: bool = True) -> None:
        self.registry, self.settings = registry, settings
        self.store = FootprintStore(settings.home)
        self.pool = Pool(spare=spare)  # a one-shot CLI call has no next load to pre-fork a worker for
        self.offline = settings.offline or registry.offline
        self.fetch = (not self.offline) if fetch is None else fetch
        # the cloud fallback: None when offline or not configured (then no client object exists at all)
        self.cloud = make_client(registry, settings)
        # when to escalate: the client's config, or offline the one a configured cloud would have (so a trace can
        # say what stayed on the device); None without a configured cloud
        self.cloud_policy = self.cloud.config if self.cloud is not None else \
            (cloud_policy(registry, settings) if self.offline else None)
        self._files: dict[str, dict[str, Path]] = {}
        # fetches, hashing and GGUF parsing run here, not in the default executor the rest of the daemon uses
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="swarm-edge-files")
        self._preparing: dict[str, asyncio.Future] = {}    # model id -> its preparation in flight (event loop only)
        self._prepared: set[str] = set()
        self._background: set[asyncio.Task] = set()
        self._files_lock: dict[str, threading.Lock] = {}   # files() runs in threads (start-up warm-up, requests)
        self.tokens: dict[str, int] = {}          # tokens generated per model, for /metrics
        # semantic routing in this process (router.py says why); the embedder is loaded on first use or warm-up
        self.router = local_router(registry, settings, self._embedder_files)
        self.sleeper: Sleeper | None = None       # the daemon's (start(lazy=True)): idle.py
        self._sleep_after = sleep_after(settings.env)  # a bad SWARM_EDGE_SLEEP_S fails here, at start-up
        self._base: tuple[float, int] | None = None
        self._spare_pss = 0
        self._awake_base = 0      # the base last measured with the forkserver up (base_pss while asleep)
        self._base_seen: list[tuple[float, int]] = []
        self._smallest: int | None = None  # the smallest chat model's estimate (_router_room)
        self._base_high = 0   # the highest base ever measured: what a woken daemon will hold again (too_big)
        # Compute slots: llama.cpp and onnxruntime threads spin while they wait for each other, so two models
        # decoding at once with `threads` each on a machine with fewer cores than that are not twice as slow
        # but ten to a hundred times (measured: two smollm2 workers at 2 threads on 2 cores crawled for minutes).
        # A model runs only while it holds a slot; with threads = cores there is one slot.
        self.compute_slots = max(1, (os.cpu_count() or 1) // max(1, settings.threads))
        self._compute: asyncio.Semaphore | None = None
        kw: dict[str, Any] = {"policy": policy} if policy is not None else {}
        budget_bytes, self.budget_source = resolve_budget(budget, settings.env)
        self.scheduler = Scheduler(
            budget_bytes,
            spawn=self._spawn, estimate=self._admission_estimate, measure_base=self.base_pss, idle_ttl=idle_ttl,
            max_waiting=max_waiting, pins={m.id for m in registry if m.pin}, on_release=self._on_release,
            on_exit=self._base_stale, **kw)
        self.scheduler.pss_comparable = lambda: self.pool.running

    # ------------------------------------------------------------ files and footprint

    def files(self, model_id: str, progress_factory=None, *, fetch: bool | None = None,
              wait: bool = True) -> dict[str, Path]:
        """Verified files of a model (fetched first unless offline); cached for the engine's life. With
        `wait=False`, a model whose files another thread is verifying or fetching right now is a ModelFileError
        at once (status pages must not queue behind a download)."""
        if model_id in self._files:
            return self._files[model_id]
        lock = self._files_lock.setdefault(model_id, threading.Lock())
        if not lock.acquire(blocking=wait):
            raise ModelFileError(f"{model_id}: its files are being fetched or verified right now")
        try:  # one verification per model at a time
            if model_id in self._files:
                return self._files[model_id]
            spec = self.registry.get(model_id)
            self._files[model_id] = ensure_model(self.settings, spec, self.registry.base_dir,
                                                 fetch=self.fetch if fetch is None else fetch and self.fetch,
                                                 progress_factory=progress_factory)
        finally:
            lock.release()
        return self._files[model_id]

    async def prepare(self, model_id: str, progress_factory=None, *, fetch: bool | None = None) -> dict[str, Path]:
        """Files verified (fetched if allowed) and the model's footprint facts read, in the engine's own small
        thread pool, never on the event loop; concurrent requests for one model share one preparation and hold
        no thread while they wait, so a download cannot starve routing, status or other models."""
        if model_id in self._prepared:
            return self._files[model_id]
        self.registry.get(model_id)  # an unknown id fails here, before any thread is used
        task = self._preparing.get(model_id)
        if task is None:
            loop = asyncio.get_running_loop()
            task = loop.run_in_executor(self._io, self._prepare, model_id, progress_factory, fetch)
            self._preparing[model_id] = task
            task.add_done_callback(lambda _: self._preparing.pop(model_id, None))
        return await asyncio.shield(task)  # a waiter that gives up does not cancel the others' preparation

    def _prepare(self, model_id: str, progress_factory, fetch: bool | None) -> dict[str, Path]:
        files = self.files(model_id, progress_factory, fetch=fetch)
        self.estimate_detail(model_id)  # structure check and facts now, so admission on the loop finds them
        self._prepared.add(model_id)
        return files

    def _key(self, spec: ModelSpec) -> str:
        return self.store.key(spec.file("model").sha256, spec.n_ctx, spec.n_batch, spec.mmap, spec.n_ubatch,
                              spec.kv_type)

    def estimate_detail(self, model_id: str, *, fetch: bool | None = None, wait: bool = True, walked: bool = False):
        """The Estimate (bytes, formula or calibrated, parts) for a model. `walked`: its GGUF was structure-checked
        by this engine already (prepared), so the facts come from memory, without touching the file."""
        spec = self.registry.get(model_id)
        files = self.files(model_id, fetch=fetch, wait=wait)
        if spec.format == "gguf":
            sha = spec.file("model").sha256
            # one bounded walk checks the file and reads the formula's inputs (no GGUFReader); then one stat()
            facts = self.store.facts(sha, files["model"]) if walked else self.store.checked_facts(sha, files["model"])
            parts = gguf_formula(facts, spec.n_ctx, spec.n_batch, spec.mmap, spec.n_ubatch, spec.kv_type)
        else:
            parts = onnx_formula(spec.file("model").size, spec.file("tokenizer").size)
        return estimate(parts, self.store.calibrated(self._key(spec)))

    def estimate(self, model_id: str) -> int:
        """Bytes the scheduler reserves for a model."""
        return self.estimate_detail(model_id).bytes

    def _embedder_files(self, model_id: str) -> dict[str, Path]:
        # the router loads its embedding model in this process: the same re-check as before a worker's load
        files = self.files(model_id)
        recheck(self.settings, self.registry.get(model_id), files)
        return files

    def _admission_estimate(self, model_id: str) -> int:
        # The scheduler asks on the event loop: only a prepared model's estimate is that cheap (facts cached).
        if model_id not in self._prepared:
            raise ModelFileError(f"{model_id} is not prepared yet (its files are not verified)")
        return self.estimate_detail(model_id, walked=True).bytes  # no file I/O here: facts cached by _prepare

    def hint(self, upcoming: list[str]) -> None:
        """A plan's next models, in order: the scheduler may prefetch them; their files are prepared meanwhile."""
        self.scheduler.hint(upcoming)
        for model_id in dict.fromkeys(upcoming):
            if model_id not in self._prepared and model_id not in self._preparing:
                task = asyncio.get_running_loop().create_task(self.prepare(model_id))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its error is the request's

    def base_pss(self) -> int:
        """PSS of everything of ours that is not a resident model: this process, the forkserver, the spare, the
        router's embedder worker. Resident (and exiting) workers are accounted as the scheduler's reservations."""
        now = time.monotonic()
        if self._base is not None and now - self._base[0] < BASE_TTL_S:
            return self._base[1] + self._pending_growth(self._base[1])  # as of now: the router may have loaded
        # this process and its children (the forkserver, the resource tracker), not the workers: they are our
        # children too (child.py) but counted apart (the spare and the router's below, models as reservations);
        # one just forked, not registered yet, is known by its name; where workers stay the forkserver's, they are
        # grandchildren and left out as such
        workers = self.pool.pids()
        root, kin = family()  # one scan of /proc for all of it
        value = pss_sum([root, *(p for p, parent, name in kin if parent == root.pid and p.pid not in workers
                                 and name != WORKER_NAME)])
        if self.pool.running and self.pool.server_up():
            self._awake_base = value  # not while it is only about to start: that base would lack it
        elif self.pool.wants_spare:
            # Asleep (or not started yet): the request being admitted wakes the forkserver and tracker first, so
            # the base is what it was awake, not the sleeping daemon alone (the first admission after a sleep
            # under-counted them by 50-70 MiB: found by a second read).
            value = max(value, self._awake_base or value + WAKE_ALLOWANCE)
        router = self.router.pid()  # the router's embedder, when it runs in a worker (router_host.py)
        if router is not None:
            value += pss_sum(subtree(kin, router))
        spare = self.pool.spare_pid()
        if spare is not None and (spare_tree := subtree(kin, spare)):
            self._spare_pss = pss_sum(spare_tree)
        if self.pool.wants_spare:
            # Between a load (which takes the spare) and the refill the spare is missing; its room stays booked,
            # or the refill would push a full budget over the top.
            value += self._spare_pss or SPARE_ALLOWANCE
        # PSS splits shared pages (the preloaded runtimes) among the processes that map them, so when a worker
        # exits the forkserver's and spare's share grows. Admission uses the highest base of the last minute,
        # so a swap cannot push the total over the budget through that back door.
        self._base_seen = [(t, v) for t, v in self._base_seen if now - t < BASE_WINDOW_S] + [(now, value)]
        self._base_high = max(self._base_high, value)  # measured, without the router's pending growth
        value = max(v for _, v in self._base_seen)
        self._base = (now, value)
        return value + self._pending_growth(value)

    @contextlib.asynccontextmanager
    async def compute(self):
        """Hold one of the machine's compute slots while a model runs."""
        if self._compute is None:
            self._compute = asyncio.Semaphore(self.compute_slots)
        async with self._compute:
            yield

    def count_tokens(self, model_id: str, n: int) -> None:
        """Add to the generated-token counter of a model."""
        self.tokens[model_id] = self.tokens.get(model_id, 0) + n

    # ------------------------------------------------------------ workers

    async def _spawn(self, model_id: str):
        spec = self.registry.get(model_id)
        files = await self.prepare(model_id)
        await asyncio.get_running_loop().run_in_executor(self._io, self._verify_for_load, spec, files)
        key = self._key(spec)
        options = backend_options(spec, files, self.settings.threads)
        if spec.format == "gguf":
            options["structure_checked"] = True
        calibrate = self.store.calibrated(key) is None
        worker = await self.pool.spawn(model_id, spec.format, str(files["model"]), options, calibrate=calibrate)
        if worker.info.get("calibration_pss"):
            self.store.record(key, worker.info["calibration_pss"])
        return worker

    def _verify_for_load(self, spec: ModelSpec, files: dict[str, Path]) -> None:
        # verified once, loaded many times: a `path:` file replaced since is hashed again before it is loaded; once
        # its sha256 is proven again the bytes are the ones _prepare structure-checked, so no second walk
        try:
            recheck(self.settings, spec, files)
        except ModelFileError:
            # forget the verification: the next request verifies (or fetches) the file anew instead of failing
            self._prepared.discard(spec.id)
            self._files.pop(spec.id, None)
            raise

    def _on_release(self, model_id: str, worker) -> None:
        spec = self.registry.get(model_id)
        if worker.last_pss and self.store.calibrated(self._key(spec)):
            self.store.record(self._key(spec), worker.last_pss)  # real requests only ever raise the peak

    @contextlib.asynccontextmanager
    async def session(self, model_id: str, *, fetch: bool | None = None, progress_factory=None,
                      compute: bool = True) -> AsyncGenerator[ModelSession, None]:
        """A model ready to use: files prepared (fetched if allowed), its worker leased (loaded within the budget
        if needed), then a compute slot (none with `compute=False`: a preload). Released on every path."""
        with self.sleeper.busy() if self.sleeper is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            await self.prepare(model_id, progress_factory, fetch=fetch)
            t_files = time.perf_counter()
            async with self.scheduler.lease(model_id) as worker, \
                    (self.compute() if compute else contextlib.nullcontext()):
                yield ModelSession(model_id, worker, t0=t0, t_files=t_files, t_leased=time.perf_counter(),
                                   count_tokens=self.count_tokens)

    async def generate(self, model_id: str, request: GenerateRequest) -> AsyncGenerator[dict, None]:
        """Stream a generation from a model as the worker's dict events (token..., done), loading it if needed."""
        async with self.session(model_id) as session, contextlib.aclosing(session.generate(request)) as events:
            async for event in events:
                if isinstance(event, Token):
                    yield {"type": "token", "text": event.text}
                elif isinstance(event, Done):
                    yield {"type": "done", **asdict(event.result)}

    async def embed(self, model_id: str, texts: list[str]) -> list[list[float]]:
        """Embed texts with an embedding model."""
        spec = self.registry.get(model_id)
        if spec.kind != "embedding":
            raise ConfigError(f"{model_id} is not an embedding model")
        async with self.session(model_id) as session:
            return await session.embed(texts)

    def resident(self) -> frozenset[str]:
        """The models loaded and ready now."""
        return frozenset(self.scheduler.ready())

    def route(self, text: str, resident: frozenset[str] = frozenset()) -> Route:
        """The router's choice for `text` (blocking: the embedding runs here). A request has come: a sleeping
        daemon starts its forkserver meanwhile."""
        if self.sleeper is None:
            return self.router.route(text, resident)
        with self.sleeper.route():
            return self.router.route(text, resident)

    def tool_format(self, model_id: str) -> str | None:
        """How the model's chat template renders tool calls (from its GGUF facts), or None: an ONNX model, a
        template without tools, or files not prepared yet."""
        spec = self.registry.get(model_id)
        files = self._files.get(model_id)
        if spec.format != "gguf" or spec.kind == "completion" or files is None:
            return None
        return self.store.facts(spec.file("model").sha256, files["model"]).get("tool_format")

    def named_tasks(self, text: str) -> list[str]:
        """The tasks the keyword rules find named in `text`, in order."""
        return self.router.keywords.named_tasks(text)

    async def start(self, lazy: bool = False) -> None:
        """Start the forkserver, fork the spare worker, start the TTL sweeper. `lazy` (the daemon): the router's
        embedder runs in a worker, the daemon starts asleep (the forkserver and spare start with the first
        request) and sleeps again when idle (idle.py), unless SWARM_EDGE_SLEEP_S=never."""
        after = self._sleep_after
        if lazy:
            loop = asyncio.get_running_loop()
            self.router.opener = lambda spec, files, threads: self._remote_embedder(loop, spec, files, threads)
            self.sleeper = Sleeper(self.pool, self.router, self.scheduler, after, on_sleep=self._forget_base)
            self.router.awake = self.sleeper.route  # a retry of the embedder's load keeps the daemon awake
            self.sleeper.start(asleep=after is not None)
        if not lazy or after is None:
            await asyncio.to_thread(self.pool.start_server)
            await self.pool.prepare_spare()
        self.scheduler.start_ttl()

    async def close(self) -> None:
        """Stop every worker and the spare."""
        if self.sleeper is not None:
            await self.sleeper.close()
        # the router's embedder worker; final: a warm-up or route thread still in flight loads none again
        await asyncio.to_thread(self.router.drop, final=True)
        for task in list(self._background):
            task.cancel()
        await self.pool.close(final=True)  # first: a load that comes now is refused, not left running
        await self.scheduler.close()
        self._io.shutdown(wait=False, cancel_futures=True)
        if self.cloud is not None:
            await self.cloud.aclose()

    def model_estimates(self) -> dict[str, dict[str, Any]]:
        """Each model's memory estimate, for the models whose files are here (never downloads)."""
        out: dict[str, dict[str, Any]] = {}
        for spec in self.registry:
            try:
                est = self.estimate_detail(spec.id, fetch=False, wait=False)
                out[spec.id] = {"estimate": est.bytes, "source": est.source, "formula": est.formula_bytes}
            except Exception as exc:  # not fetched, unreadable: say so instead of failing the whole status
                out[spec.id] = {"estimate": None, "error": str(exc).splitlines()[0]}
        return out

    def describe(self) -> dict[str, Any]:
        """What status pages and /metrics read: the scheduler's snapshot, tokens generated per model, the cloud
        client's view (None without one) and the idle TTL."""
        return {"scheduler": self.scheduler.snapshot(), "tokens": dict(self.tokens),
                "idle_ttl": self.scheduler.idle_ttl, "cloud": self.cloud.describe() if self.cloud is not None else None}

    def status(self) -> dict[str, Any]:
        """Budget, residents with their PSS, queue and counters."""
        snap = self.scheduler.snapshot()
        snap["budget_source"] = self.budget_source
        snap["models"] = self.model_estimates()
        return snap
