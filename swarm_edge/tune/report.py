"""Reporting for `swarm-edge tune`: the table of routes against each model alone, and a models.yaml written with
the routes decided."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from swarm_edge.errors import ConfigError
from swarm_edge.tune.decide import Decision, alone, check_quality, evaluate, route_update, to_json


def report(decisions: dict[str, Decision], records: list[dict], models: list[str]) -> tuple[list[str], dict]:
    """Markdown lines and a JSON summary: each task's route with its dev and test figures, and each model alone."""
    lines = ["| task | route | dev | test | test latency s | " + " | ".join(f"{m} alone dev / test" for m in models)
             + " |", "|---" * (5 + len(models)) + "|"]
    summary: dict[str, Any] = {"tasks": {}, "totals": {}}
    totals: dict[str, list[float]] = {}
    for task, d in decisions.items():
        dev_c, dev_n, _ = evaluate(d, records, "dev")
        test_c, test_n, test_lat = evaluate(d, records, "test")
        cells = []
        row = {"route": to_json(d), "dev": [dev_c, dev_n], "test": [test_c, test_n], "test_latency_s": test_lat}
        for m in models:
            dc, dn, _ = alone(records, task, m, "dev")
            tc, tn, tl = alone(records, task, m, "test")
            cells.append(f"{dc}/{dn} / {tc}/{tn}")
            row[m] = {"dev": [dc, dn], "test": [tc, tn], "test_latency_s": tl}
            for key, c, n, lat in ((f"{m}:dev", dc, dn, 0.0), (f"{m}:test", tc, tn, tl * tn)):
                acc = totals.setdefault(key, [0, 0, 0.0])
                acc[0] += c
                acc[1] += n
                acc[2] += lat
        for key, c, n, lat in (("routes:dev", dev_c, dev_n, 0.0), ("routes:test", test_c, test_n, test_lat * test_n)):
            acc = totals.setdefault(key, [0, 0, 0.0])
            acc[0] += c
            acc[1] += n
            acc[2] += lat
        row["checks"] = check_quality(records, task)
        summary["tasks"][task] = row
        lines.append(f"| {task} | {d.chosen.label()} | {dev_c}/{dev_n} | {test_c}/{test_n} | "
                     f"{f'{test_lat:.2f}' if test_n else '-'} | "
                     + " | ".join(cells) + " |")
    for key, (right, count, seconds) in totals.items():
        test = key.endswith(":test")
        summary["totals"][key] = {"correct": int(right), "n": int(count),
                                  "accuracy": round(right / count, 4) if count else None,
                                  "mean_latency_s": round(seconds / count, 3) if count and test else None}
    t = summary["totals"]

    def frac(key: str) -> str:
        return f"{t[key]['correct']}/{t[key]['n']}" if key in t else "-"

    lat = t.get("routes:test", {}).get("mean_latency_s")
    lines.append(f"| **all** | (the task given: routing not included) | {frac('routes:dev')} | {frac('routes:test')} "
                 f"| {'-' if lat is None else f'{lat:.2f}'} | "
                 + " | ".join(f"{frac(m + ':dev')} / {frac(m + ':test')}" for m in models) + " |")
    lines += ["", "Self-checks (selfcheck.py) on the dev answers, plain request: flagged, precision (flagged and "
              "wrong / flagged), recall (flagged and wrong / wrong):", "",
              "| task | " + " | ".join(models) + " |", "|---" * (1 + len(models)) + "|"]
    for task, row in summary["tasks"].items():
        cells = []
        for m in models:
            q = row["checks"].get(m)
            cells.append("-" if not q else f"{q['flagged']}/{q['answers']}, p {q['precision']}, r {q['recall']}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines, summary


def write_config(source: Path, target: Path, decisions: dict[str, Decision], registry) -> None:
    """A copy of models.yaml with each decided route's models, strategy, threshold, system prompt and tool,
    checked by loading it before it replaces `target` (comments are not kept: YAML is rewritten)."""
    import os
    import tempfile

    import yaml

    from swarm_edge.registry import load_registry

    doc = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    for task, d in decisions.items():
        upd = route_update(d, registry.routes[task])
        entry = doc["routes"][task]
        for k, v in upd.items():
            if v in ("", None):
                entry.pop(k, None)
            else:
                entry[k] = v
        if upd["strategy"] == "single":
            entry.pop("min_logprob", None)
    target = Path(target)
    if not target.parent.is_dir():
        raise ConfigError(f"--write {target}: the directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ConfigError(f"--write {target}: cannot write there ({exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"# written by `swarm-edge tune` from {source}; the rule: swarm_edge/tune/__init__.py\n")
            yaml.safe_dump(doc, f, sort_keys=False, allow_unicode=True, width=120)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, Path(source).stat().st_mode & 0o777)  # the permissions of the models.yaml it came from
        load_registry(Path(tmp))  # refuse to write a file that does not load
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
