"""Counters the daemon keeps, and the Prometheus text of /metrics (built from them and `Engine.describe()`)."""

from __future__ import annotations

import time
from typing import Any


class Metrics:
    """Counters for /metrics, kept in the event loop's thread."""

    def __init__(self, max_connections: int | None = None) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.seconds: dict[str, list[float]] = {}     # path -> [sum, count]
        self.streams_open = 0
        self.refused_peers = 0
        self.stalled_clients = 0       # connections aborted because their client stopped reading
        self.slow_clients = 0          # connections closed because a request arrived too slowly (slowloris)
        self.connections = 0           # open connections (the server's protocol counts them)
        self.max_connections = max_connections  # past this many, requests are answered 503
        self.deadlines = 0             # requests cut off by the per-request deadline
        self.direct_streams = 0        # streamed answers whose tokens the worker wrote to the client itself
        self.started = time.time()

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
        acc = self.seconds.setdefault(path, [0.0, 0])
        acc[0] += seconds
        acc[1] += 1


def _labels(**kv: Any) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in kv.items())
    return "{" + inner + "}" if inner else ""


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, name: str, kind: str, help_: str, samples: list[tuple[dict, Any]]) -> None:
        self.lines.append(f"# HELP swarm_edge_{name} {help_}")
        self.lines.append(f"# TYPE swarm_edge_{name} {kind}")
        for labels, value in samples:
            self.lines.append(f"swarm_edge_{name}{_labels(**labels)} {value:g}" if isinstance(value, float)
                              else f"swarm_edge_{name}{_labels(**labels)} {value}")


SCHEDULER_COUNTERS = [
    ("loads", "Model loads."), ("evictions", "Models evicted to make room."),
    ("ttl_unloads", "Models unloaded after the idle TTL."), ("crashes", "Workers that died."),
    ("load_failures", "Loads that failed."), ("busy_rejections", "Requests refused: queue full."),
    ("prefetches", "Loads started ahead of a plan's next step.")]


def _http(metric: _Exposition, m: Metrics) -> None:
    metric("requests_total", "counter", "HTTP requests answered, by path and status.",
           [({"path": p, "status": s}, n) for (p, s), n in sorted(m.requests.items())])
    metric("request_duration_seconds_sum", "counter", "Total seconds spent answering, by path.",
           [({"path": p}, float(v[0])) for p, v in sorted(m.seconds.items())])
    metric("request_duration_seconds_count", "counter", "Requests timed, by path.",
           [({"path": p}, v[1]) for p, v in sorted(m.seconds.items())])


def _connections(metric: _Exposition, m: Metrics) -> None:
    metric("refused_connections_total", "counter", "Unix-socket connections refused by the peer uid check.",
           [({}, m.refused_peers)])
    metric("stalled_connections_total", "counter", "Connections aborted: the client stopped reading.",
           [({}, m.stalled_clients)])
    metric("slow_connections_total", "counter", "Connections closed: a request's headers or body came too slowly.",
           [({}, m.slow_clients)])
    metric("request_deadlines_total", "counter", "Requests cut off by the per-request deadline.", [({}, m.deadlines)])
    metric("direct_streams_total", "counter",
           "Streamed answers whose tokens the model's worker wrote to the client itself (the direct path).",
           [({}, m.direct_streams)])
    metric("connections_open", "gauge", "Open client connections.", [({}, m.connections)])


def _memory(metric: _Exposition, snap: dict[str, Any]) -> None:
    metric("memory_budget_bytes", "gauge", "The memory budget.", [({}, snap["budget"])])
    metric("memory_used_bytes", "gauge", "Bytes held against the budget (base + reservations).", [({}, snap["used"])])
    metric("memory_base_bytes", "gauge", "PSS of the daemon, forkserver and spare worker.", [({}, snap["base"])])
    metric("model_resident_bytes", "gauge", "Bytes each resident model holds (measured PSS, else reserved).",
           [({"model": r["model"]}, r["pss"] or r["reserved"]) for r in snap["residents"]])
    metric("models_resident", "gauge", "Resident models.", [({}, len(snap["residents"]))])


def prometheus_text(description: dict[str, Any], metrics: Metrics) -> str:
    """The Prometheus text exposition of requests, tokens, loads, evictions, queue and memory. `description`:
    what `Engine.describe()` returns."""
    snap = description["scheduler"]
    metric = _Exposition()
    _http(metric, metrics)
    metric("tokens_generated_total", "counter", "Tokens generated, by model.",
           [({"model": m}, n) for m, n in sorted(description["tokens"].items())])
    for key, help_ in SCHEDULER_COUNTERS:
        if key in snap["stats"]:
            metric(f"{key}_total", "counter", help_, [({}, snap["stats"][key])])
    _connections(metric, metrics)
    metric("queue_depth", "gauge", "Requests waiting for a model.", [({}, snap["waiting"])])
    metric("streams_open", "gauge", "Streamed responses in progress.", [({}, metrics.streams_open)])
    _memory(metric, snap)
    cloud = description.get("cloud")
    if cloud is not None:
        metric("cloud_calls_total", "counter", "Calls to the cloud fallback, by outcome.",
               [({"outcome": k}, v) for k, v in cloud["calls"].items()])
        metric("cloud_circuit_open", "gauge", "1 while the cloud's circuit breaker is open.",
               [({}, int(cloud["breaker"] == "open"))])
    metric("uptime_seconds", "gauge", "Seconds since the daemon started.",
           [({}, round(time.time() - metrics.started, 3))])
    return "\n".join(metric.lines) + "\n"


__all__ = ["Metrics", "prometheus_text"]
