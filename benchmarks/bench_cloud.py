"""The cloud fallback, measured: a RouteLLM-style quality/escalation curve and the fallback's TTFT overhead.

The stand-in cloud is llama-cpp-python's own OpenAI-compatible server on loopback serving qwen2.5-coder-1.5b
(2 threads; it idles while the device computes, so the two never compete for the cores).

1. Curve, on the mixed task suite of the router issue (benchmarks/data/task_suite.jsonl, swarm_edge/checks.py):
   weak   = the local swarm (`auto`: router, task prompts, calculator, cascades) with escalation off;
   strong = every request escalated: routed, given its route's system prompt, redacted, answered by the
            stand-in cloud through swarm-edge's client (what an escalated request really gets).
   Escalating the requests whose router confidence is under a threshold mixes the two per item; sweeping
   the threshold gives quality vs the share escalated. Random escalation of the same share is computed in
   the same run (its exact expectation, and the mean of 1000 seeded random orders). CPT(50%) = the smallest
   share escalated that recovers half of the quality gap between weak and strong.
2. Fallback overhead: time to first token of a request that swarm-edge escalates (`auto`, routed, redacted,
   audited) and of `model: "cloud"`, vs a direct streaming call of the same body to the same server, with a
   distinct prompt for every call (no prompt cache helps either side), calls interleaved.

Rerun:  .venv/bin/python benchmarks/bench_cloud.py [--limit N] [--pairs 20]
Writes: benchmarks/results/cloud.json and benchmarks/results/cloud.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_results

from swarm_edge.checks import check

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SUITE = Path(__file__).resolve().parent / "data" / "task_suite.jsonl"
STRONG = "qwen2.5-coder-1.5b"
KEY = "sk-bench-" + "5ecret" * 6


def load_suite(limit: int | None) -> list[dict]:
    items = [json.loads(line) for line in SUITE.read_text().splitlines() if line.strip()]
    return items[:limit] if limit else items


def _engine(mode: str, url: str):
    """An engine on the default swarm. mode "strong": every routed request escalates to `url`. "weak" / "weak-small"
    (the default swarm / without qwen2.5-coder-1.5b): the cloud at `url` is unreachable, so every answer is
    local, but cascades measure (and the trace keeps) how sure their last local model was."""
    from bench_tasks import registry_for

    from swarm_edge.config import Settings
    from swarm_edge.engine import Engine
    from swarm_edge.registry import CloudSpec

    registry, _ = registry_for("auto-small" if mode == "weak-small" else "auto")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_EDGE_CLOUD")}
    if mode == "strong":
        registry.cloud = CloudSpec(base_url=url, model=STRONG, hard_tasks=list(registry.routes),
                                   escalate_below=None, read_timeout_s=120, total_timeout_s=600)
        env["SWARM_EDGE_CLOUD_API_KEY"] = KEY
    else:
        registry.cloud = CloudSpec(base_url=url, model=STRONG, escalate_below=None, on_local_failure=False,
                                   retries=0)
    return Engine(registry, Settings.load(threads=2, environ=env), budget="6GiB", spare=False, fetch=False)


async def answer_all(items: list[dict], mode: str, url: str) -> list[dict]:
    from swarm_edge import orchestrator

    engine = _engine(mode, url)
    await engine.start()
    out = []
    try:
        for item in items:
            t0 = time.perf_counter()
            try:
                a = await orchestrator.ask_async(item["prompt"], engine, model_id="auto", decompose=False)
                text, err = a.text, None
            except Exception as exc:  # a failed answer is a wrong answer; say why
                a, text, err = None, "", f"{type(exc).__name__}: {exc}"
            ok, note = check(item, text) if err is None else (False, err)
            esc = a.escalation if a else None
            final = [st for st in (a.steps if a else []) if st["model"] == a.model and "mean_logprob" in st]
            out.append({"id": item["id"], "task": item["task"], "ok": ok, "note": note,
                        "confidence": a.route.confidence if a else 0.0, "model": a.model if a else None,
                        "routed_task": a.route.task if a else None,
                        "sureness": final[-1]["mean_logprob"] if final else None,
                        "latency_s": round(time.perf_counter() - t0, 3), "left_device": bool(a and a.left_device),
                        "redacted": (esc or {}).get("redacted"), "answer": text[:300]})
            sure = out[-1]["sureness"]
            print(f"  {mode:<10} {item['id']:<13} {'ok ' if ok else 'BAD'} conf {out[-1]['confidence']:.3f} "
                  f"sure {'-' if sure is None else f'{sure:.2f}':>5} {out[-1]['latency_s']:6.2f}s {out[-1]['model']}",
                  file=sys.stderr, flush=True)
    finally:
        await engine.close()
    return out


def curve(weak: list[dict], strong: list[dict], signal: str) -> dict:
    """Quality vs share escalated when escalating the items lowest on `signal` first (router confidence, or
    the sureness of the local answer: None = not measured, never escalated by it), vs random."""
    n = len(weak)
    conf = [w[signal] if w[signal] is not None else float("inf") for w in weak]
    w_ok = [int(w["ok"]) for w in weak]
    s_ok = [int(s["ok"]) for s in strong]
    q_weak, q_strong = sum(w_ok) / n, sum(s_ok) / n
    thresholds = sorted({c for c in conf if c != float("inf")}) + [float("inf")]  # inf: every measured item
    points = []
    for t in thresholds:
        esc = [i for i in range(n) if conf[i] < t]
        q = (sum(s_ok[i] for i in esc) + sum(w_ok[i] for i in range(n) if conf[i] >= t)) / n
        share = len(esc) / n
        points.append({"threshold": round(t, 4) if t != float("inf") else None, "share": round(share, 4),
                       "quality": round(q, 4),
                       "random_expected": round(q_weak + share * (q_strong - q_weak), 4)})
    if points[-1]["share"] < 1:  # and the rest (not measured by this signal): everything escalated
        points.append({"threshold": "all", "share": 1.0, "quality": round(q_strong, 4),
                       "random_expected": round(q_strong, 4)})
    rng = random.Random(7)
    rand = [0.0] * (n + 1)
    orders = 1000
    for _ in range(orders):
        order = list(range(n))
        rng.shuffle(order)
        correct = sum(w_ok)
        rand[0] += correct
        for k, i in enumerate(order, 1):
            correct += s_ok[i] - w_ok[i]
            rand[k] += correct
    rand = [r / orders / n for r in rand]
    gap = q_strong - q_weak
    oracle = sum(max(a, b) for a, b in zip(w_ok, s_ok, strict=True)) / n

    def cpt(qualities_by_share: list[tuple[float, float]]) -> float | None:
        if gap <= 0:
            return None
        target = q_weak + 0.5 * gap
        return next((s for s, q in qualities_by_share if q >= target - 1e-9), None)

    by_router = [(p["share"], p["quality"]) for p in points]
    by_random = [(k / n, rand[k]) for k in range(n + 1)]

    def apgr(pairs):  # average performance gap recovered, trapezoid over share 0..1
        if gap <= 0:
            return None
        pts = sorted(pairs)
        area = sum((s2 - s1) * ((q1 + q2) / 2 - q_weak) for (s1, q1), (s2, q2) in zip(pts, pts[1:], strict=False))
        return round(area / gap, 4)

    return {"items": n, "weak_quality": round(q_weak, 4), "strong_quality": round(q_strong, 4),
            "oracle_quality": round(oracle, 4), "gap": round(gap, 4),
            "cpt50_router": cpt(by_router), "cpt50_random": cpt(by_random),
            "apgr_router": apgr(by_router), "apgr_random": apgr(by_random),
            "weak_only_right": sum(1 for a, b in zip(w_ok, s_ok, strict=True) if a and not b),
            "strong_only_right": sum(1 for a, b in zip(w_ok, s_ok, strict=True) if b and not a),
            "points": points, "random_by_k": [round(r, 4) for r in rand]}


def as_configured(weak: list[dict], strong: list[dict]) -> dict:
    """The default policy of models.yaml: escalate when the router's confidence is under cloud.escalate_below, or
    a cascade's last local model is under its route's min_logprob (on_cascade_unsure)."""
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry

    registry = load_registry(DEFAULT_CONFIG)
    below = registry.cloud.escalate_below
    n, escalated, correct = len(weak), 0, 0
    for w, s in zip(weak, strong, strict=True):
        route = registry.routes.get(w["routed_task"])
        unsure = route is not None and route.strategy == "cascade" and w["sureness"] is not None \
            and w["sureness"] < route.min_logprob
        esc = unsure or (below is not None and w["confidence"] < below)
        escalated += esc
        correct += s["ok"] if esc else w["ok"]
    return {"escalate_below": below, "share": round(escalated / n, 4), "quality": round(correct / n, 4)}


async def ttft(url: str, pairs: int) -> dict:
    """TTFT of an escalated request (auto) and of model "cloud", each vs a direct call of the same messages.

    The server reuses the KV cache of the previous prompt's common prefix, so calls are compared within
    blocks of the same message shape (with the route's system prompt for the escalated path, without for
    model "cloud"), alternating which goes first; every prompt is distinct."""
    import httpx2

    from swarm_edge import orchestrator

    engine = _engine("strong", url)
    await engine.start()
    subjects = ["owls", "tides", "glass", "bread", "comets", "moss", "violins", "salt", "bridges", "bees",
                "lanterns", "rivers", "maps", "clocks", "snow", "copper", "kites", "ferns", "deserts", "whales",
                "paper", "islands", "thunder", "honey", "mirrors", "cedar", "trains", "coral", "wool", "caves"]
    prompts = [f"Tell me one surprising fact about {s}, in one sentence." for s in subjects]
    random.Random(3).shuffle(prompts)

    async with httpx2.AsyncClient(base_url=url, timeout=120) as direct:
        async def call_direct(messages: list[dict]) -> float:
            t0 = time.perf_counter()
            body = {"model": STRONG, "stream": True, "max_tokens": 8, "temperature": 0.0, "top_p": 1.0,
                    "messages": messages}
            async with direct.stream("POST", "/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {KEY}"}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                            return time.perf_counter() - t0
            raise RuntimeError("no token from the direct call")

        async def call_ours(prompt: str, model_id: str) -> float:
            t0 = time.perf_counter()
            async with contextlib.aclosing(orchestrator.stream(
                    engine, messages=[{"role": "user", "content": prompt}], model_id=model_id, max_tokens=8,
                    decompose=False)) as events:
                async for ev in events:
                    if ev["type"] == "token" and ev["text"]:
                        return time.perf_counter() - t0
            raise RuntimeError(f"no token via {model_id}")

        def sent_messages(prompt: str, model_id: str) -> list[dict]:
            """What swarm-edge sends for this request: the route's system prompt joins an escalated one."""
            user = [{"role": "user", "content": prompt}]
            if model_id == "cloud":
                return user
            system = engine.registry.routes[engine.router.route(prompt).task].system
            return ([{"role": "system", "content": system}] if system else []) + user

        out: dict[str, dict] = {}
        try:
            await asyncio.to_thread(engine.router.warm)
            for label, model_id in (("fallback (auto, escalated)", "auto"), ('model "cloud"', "cloud")):
                ours, theirs = [], []
                for warm in ("Warm up: say hi.", "Warm up: say hello."):  # connections, first-call costs
                    await call_ours(warm, model_id)
                    await call_direct(sent_messages(warm, model_id))
                # every prompt goes both ways (the same multiset on each side: prompt lengths cancel), never twice
                # in a row (no exact prefix-cache hit), and who goes first alternates
                block = prompts[:pairs]
                half = max(2, pairs // 2)
                for i in range(pairs):
                    mine, other = block[i], block[(i + half) % pairs]
                    if i % 2:
                        theirs.append(await call_direct(sent_messages(other, model_id)))
                        ours.append(await call_ours(mine, model_id))
                    else:
                        ours.append(await call_ours(mine, model_id))
                        theirs.append(await call_direct(sent_messages(other, model_id)))
                out[label] = {"ours_s": [round(x, 4) for x in ours], "direct_s": [round(x, 4) for x in theirs],
                              "median_ours_s": round(statistics.median(ours), 4),
                              "median_direct_s": round(statistics.median(theirs), 4),
                              "ratio": round(statistics.median(ours) / statistics.median(theirs), 3)}
        finally:
            await engine.close()
    return {"pairs": pairs, "paths": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="only the first N suite items (a quick look)")
    ap.add_argument("--pairs", type=int, default=20, help="TTFT samples per path (at most 30 prompts)")
    ap.add_argument("--skip-curve", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="rewrite results/cloud.md from results/cloud.json")
    args = ap.parse_args()
    if args.render_only:
        from results_io import RESULTS

        render(json.loads((RESULTS / "cloud.json").read_text()))
        return

    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.registry import load_registry
    from swarm_edge.sources import ensure_model
    from tests.cloudkit import StandIn, free_port

    registry = load_registry(DEFAULT_CONFIG)
    strong_file = ensure_model(Settings.load(), registry.get(STRONG), registry.base_dir, fetch=False)["model"]
    log = Path(tempfile.mkdtemp(prefix="bench-cloud-")) / "stand-in.log"
    server = StandIn(strong_file, log, key=KEY, alias=STRONG, n_ctx=4096).wait(300)
    items = load_suite(args.limit)
    try:
        data: dict = {"stand_in": f"llama_cpp.server {STRONG} on loopback, 2 threads", "suite": SUITE.name}
        if not args.skip_curve:
            closed = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens: the weak runs never leave the device
            runs = {mode: asyncio.run(answer_all(items, mode, closed)) for mode in ("weak", "weak-small")}
            runs["strong"] = asyncio.run(answer_all(items, "strong", server.url))
            data["curves"] = {f"{w} by {sig}": curve(runs[w], runs["strong"], sig)
                              for w in ("weak", "weak-small") for sig in ("confidence", "sureness")}
            data["as_configured"] = {w: as_configured(runs[w], runs["strong"]) for w in ("weak", "weak-small")}
            data["runs"] = runs
        data["ttft"] = asyncio.run(ttft(server.url, args.pairs))
    finally:
        server.close()
    render(data)


def render(data: dict) -> None:
    """Write results/cloud.json and the Markdown table from the measurements in `data`."""
    lines = [f"# Cloud fallback ({platform.machine()}, {os.cpu_count()} cores): stand-in cloud = {data['stand_in']}",
             "", "rerun: .venv/bin/python benchmarks/bench_cloud.py", ""]
    names = {"weak": "the default swarm (0.5B, cascades to the local 1.5B)",
             "weak-small": "the swarm without the local 1.5B (a Pi-class device: the cloud replaces it)",
             "confidence": "router confidence (escalate_below)",
             "sureness": "the local answer's mean token log-prob (cascades' last model; on_cascade_unsure)"}

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    for label, c in data.get("curves", {}).items():
        weak, sig = label.split(" by ")
        lines += [f"## weak = {names[weak]}; escalating by {names[sig]}", "",
                  f"{c['items']} suite items. weak {c['weak_quality']:.3f}, strong (all escalated to the stand-in) "
                  f"{c['strong_quality']:.3f}, gap {c['gap']:+.3f}, per-item oracle {c['oracle_quality']:.3f} "
                  f"(only weak right: {c['weak_only_right']}, only strong right: {c['strong_only_right']}). "
                  f"CPT(50%): this signal {fmt(c['cpt50_router'])}, random {fmt(c['cpt50_random'])}; "
                  f"APGR: this signal {fmt(c['apgr_router'])}, random {fmt(c['apgr_random'])}"
                  + (" (no positive gap: nothing to recover)" if c["gap"] <= 0 else ""), ""]
        if sig == "sureness" and weak in data.get("as_configured", {}):
            cfg = data["as_configured"][weak]
            lines += [f"As configured (escalate_below {cfg['escalate_below']} or a cascade's last local model under "
                      f"its route's min_logprob): {cfg['share']:.3f} escalated, quality {cfg['quality']:.3f}", ""]
        lines += ["| threshold | share escalated | quality | random, same share |", "|---|---|---|---|"]
        shown = []  # the table samples the curve (every point is in the JSON)
        for target in (0, .05, .1, .15, .2, .25, .3, .4, .5, .6, .7, .8, .9, 1):
            p = min(c["points"], key=lambda p, t=target: abs(p["share"] - t))
            if p not in shown:
                shown.append(p)
        for p in sorted(shown, key=lambda p: p["share"]):
            th = p["threshold"] if isinstance(p["threshold"], str) else \
                ("all measured" if p["threshold"] is None else f"{p['threshold']:.3f}")
            lines.append(f"| {th} | {p['share']:.3f} | {p['quality']:.3f} | {p['random_expected']:.3f} |")
        lines.append("")
    t = data["ttft"]
    lines += [f"## Time to first token, median of {t['pairs']} each (each prompt both ways, never twice in a row; "
              "the same messages)", "",
              "| path | median TTFT s | direct call, same messages, s | ratio |", "|---|---|---|---|"]
    for k, v in t["paths"].items():
        lines.append(f"| {k} | {v['median_ours_s']:.3f} | {v['median_direct_s']:.3f} | {v['ratio']:.3f} |")
    write_results("cloud", data, lines)


if __name__ == "__main__":
    main()
