"""The evaluation sets (benchmarks/data/eval): well-formed, the test split frozen, every code check sound (its
reference passes, a stub fails) - a broken check would score every model wrong, or right, for nothing."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import evalsets  # noqa: E402

from swarm_edge.checks import check, run_python  # noqa: E402

TASKS = {"chat", "summarize", "extract", "classify", "translate", "code", "math", "rewrite"}


def test_the_test_split_is_the_frozen_one():
    assert evalsets.test_digest() == evalsets.frozen(), "the test split changed: see benchmarks/evalsets.py"
    assert evalsets.announce("test").endswith(evalsets.frozen())


def test_splits_are_fixed_disjoint_and_cover_every_item():
    for name in evalsets.SETS:
        items = evalsets.load(name)
        dev, test = evalsets.load(name, "dev"), evalsets.load(name, "test")
        ids = [it["id"] for it in items]
        assert len(set(ids)) == len(ids), f"{name}: duplicate ids"
        assert {it["id"] for it in dev} | {it["id"] for it in test} == set(ids)
        assert not {it["id"] for it in dev} & {it["id"] for it in test}
        assert 0.35 < len(test) / len(items) < 0.65, (name, len(test), len(items))
    assert evalsets.split_of("x-math-001") == evalsets.split_of("x-math-001")
    with pytest.raises(ValueError, match="unknown set"):
        evalsets.load("nope")


def test_task_items_are_well_formed():
    items = evalsets.load("tasks")
    per = Counter(it["task"] for it in items)
    assert set(per) == TASKS and min(per.values()) >= 40, per
    for it in items:
        kind = it["check"]
        assert kind in {"number", "contains", "summary", "label", "python"}, it["id"]
        if kind in ("contains", "summary"):
            assert it["expect"] and all(g and all(a.strip() for a in g) for g in it["expect"]), it["id"]
        if kind == "summary":  # the text summarised is what follows the first colon; the answer must be shorter
            assert len(it["prompt"].split(":", 1)[1].strip()) >= 350, it["id"]
        if kind == "label":
            assert it["answer"] in it["options"], it["id"]
        if it["task"] == "extract":  # what must be extracted is in the text (first alternative, verbatim)
            assert all(g[0].lower() in it["prompt"].lower() for g in it["expect"]), it["id"]
    compound, single = evalsets.load("compound"), evalsets.load("single")
    assert len(compound) >= 60 and len(single) >= 100
    assert all(2 <= len(c["subtasks"]) <= 3 and set(c["subtasks"]) <= TASKS for c in compound)
    assert all(s["task"] in TASKS for s in single)


def test_checks_accept_a_right_answer_and_refuse_a_wrong_one():
    math = next(it for it in evalsets.load("tasks") if it["check"] == "number")
    assert check(math, f"so the answer is {math['answer']}")[0]
    assert not check(math, f"so the answer is {float(math['answer']) + 1}")[0]
    label = next(it for it in evalsets.load("tasks") if it["check"] == "label")
    assert check(label, label["answer"])[0]
    other = next(o for o in label["options"] if o != label["answer"])
    assert not check(label, other)[0] and not check(label, f"{label['answer']} or {other}")[0]


def test_every_code_check_passes_its_reference_and_fails_a_stub():
    refs = json.loads((evalsets.DATA / "code_references.json").read_text())
    code = [it for it in evalsets.load("tasks") if it["check"] == "python"]
    assert {it["id"] for it in code} == set(refs)
    for it in code:
        ok, why = run_python(refs[it["id"]], it["test"])
        assert ok, f"{it['id']}: the reference fails its own test: {why}"
        names = set(re.findall(r"^def (\w+)", refs[it["id"]], re.M))
        stub = "\n".join(f"def {n}(*a, **k):\n    return None" for n in names)
        assert not run_python(stub, it["test"])[0], f"{it['id']}: a stub passes the test"


def test_humaneval_harness_keeps_the_prompts_helpers():
    """An answer that restates only the entry point still sees the prompt's imports and helper functions
    (HumanEval/38: decode_cyclic calls the prompt's encode_cyclic); a wrong answer still fails."""
    import bench_humaneval

    problem = next(p for p in evalsets.load("humaneval") if p["id"] == "HumanEval/38")
    right = "```python\ndef decode_cyclic(s: str):\n" + problem["canonical_solution"] + "```"
    assert bench_humaneval.passes(problem, right)[0]
    assert not bench_humaneval.passes(problem, "```python\ndef decode_cyclic(s: str):\n    return s\n```")[0]
    # a bare continuation of the prompt works as before
    assert bench_humaneval.passes(problem, problem["canonical_solution"])[0]


def test_the_extraction_set_is_well_formed_and_its_test_split_frozen():
    """benchmarks/data/eval/extract.jsonl (structured outputs): every schema is one the daemon takes, every expected
    answer follows it, and the test split is the one whose digest was recorded before anything was tuned."""
    import bench_structured

    from swarm_edge.structured import from_openai

    items = bench_structured.load(None)
    assert len(items) >= 50 and len({i["id"] for i in items}) == len(items)
    for item in items:
        out = from_openai({"type": "json_schema", "json_schema": {"name": "x", "schema": item["schema"]}})
        assert out.problem(json.dumps(item["expected"])) is None, item["id"]
    assert bench_structured.test_digest() == bench_structured.FROZEN.read_text().strip()
    assert {evalsets.split_of(i["id"]) for i in items} == {"dev", "test"}


def test_route_fit_chooses_with_tunes_rule_and_the_case_log_resumes(tmp_path, monkeypatch):
    """benchmarks/route_fit.py on made-up measurements (a labelled fake: pure decision logic): a cheap model kept
    when sure and valid, the accurate one otherwise; and a log cut mid-line loses only that line."""
    import route_fit

    cheap = [{"id": f"c{i}", "ok": i < 6, "latency_s": 1.0, "sure": -0.1 if i < 6 else -0.9, "problem": None}
             for i in range(10)]
    cheap[9]["problem"] = "the call breaks its function's schema"
    good = [{"id": f"c{i}", "ok": True, "latency_s": 5.0, "sure": -0.2, "problem": None} for i in range(10)]
    lines = route_fit.fit("tools", {"small": cheap, "big": good})
    chosen = next(line for line in lines if line.startswith("Chosen"))
    assert "small -> big" in chosen and "cascade" in chosen, lines
    assert any("| big (plain, alone) | 10/10 | 5.00 |" in line for line in lines)

    monkeypatch.setattr(route_fit, "CACHE", tmp_path)
    log = route_fit.CaseLog("x")
    log.add({"config": "a", "id": "1", "right": True})
    with log.path.open("a") as f:
        f.write('{"config": "a", "id": "2", "ri')  # killed mid-write
    again = route_fit.CaseLog("x")
    assert again.get("a", "1") == {"config": "a", "id": "1", "right": True} and again.get("a", "2") is None
    again.add({"config": "a", "id": "2", "right": False})
    assert route_fit.CaseLog("x").get("a", "2") == {"config": "a", "id": "2", "right": False}
    assert route_fit.CaseLog("x", fresh=True).get("a", "1") is None
