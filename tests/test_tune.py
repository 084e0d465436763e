"""swarm-edge tune's rule (decide, simulate, route_update) on FAKE measured records (labelled: pure decision
logic, no model runs), and its example loader's errors. tests/test_tune_real.py measures real models."""

from __future__ import annotations

import json

import pytest

from swarm_edge import tune
from swarm_edge.errors import ConfigError


def rec(model, i, ok, lat, sure=None, variant="plain", split="dev", echo=False, task="t"):
    return {"model": model, "id": f"e{i}", "ok": ok, "latency_s": lat, "sure": sure, "variant": variant,
            "split": split, "echo": echo, "task": task}


def records(spec: dict[tuple[str, str], list[tuple[bool, float, float | None]]], split="dev"):
    out = []
    for (model, variant), rows in spec.items():
        out += [rec(model, i, ok, lat, sure, variant, split) for i, (ok, lat, sure) in enumerate(rows)]
    return out


def test_a_model_no_better_and_no_faster_than_another_gets_no_route():
    rs = records({("small", "plain"): [(True, 1.0, -0.1)] * 5 + [(False, 1.0, -0.1)] * 5,
                  ("slow", "plain"): [(True, 3.0, -0.1)] * 4 + [(False, 3.0, -0.1)] * 6})
    d = tune.decide(rs, "t", ["small", "slow"])
    assert d.chosen.models == ["small"] and "slow (plain)" in d.dominated


def test_the_cheap_model_wins_within_epsilon_and_the_big_one_beyond():
    near = records({("small", "plain"): [(True, 1.0, -0.1)] * 9 + [(False, 1.0, -0.1)],
                    ("big", "plain"): [(True, 4.0, -0.1)] * 10})
    assert tune.decide(near, "t", ["small", "big"], epsilon=1).chosen.models == ["small"]
    # the small model is equally sure when wrong: no threshold separates, so no cascade beats the big one alone
    assert tune.decide(near, "t", ["small", "big"], epsilon=0).chosen.models == ["big"]


def test_the_cascade_threshold_is_fitted_to_where_the_cheap_model_is_wrong():
    # the small model is wrong exactly when it is unsure (mean log-prob -1.0): a threshold between -1.0 and
    # -0.1 keeps its right answers and hands the rest to the big one, at a fraction of the big one's latency
    small = [(True, 1.0, -0.1)] * 6 + [(False, 1.0, -1.0)] * 4
    rs = records({("small", "plain"): small, ("big", "plain"): [(True, 5.0, -0.1)] * 10})
    d = tune.decide(rs, "t", ["small", "big"], epsilon=0)
    assert d.chosen.strategy == "cascade" and d.chosen.models == ["small", "big"]
    assert -1.0 < d.chosen.min_logprob <= -0.1 and d.chosen.correct == 10
    assert d.chosen.latency_s == pytest.approx(1.0 + 0.4 * 5.0)
    upd = tune.route_update(d, type("R", (), {"system": "S", "tool": None})())
    assert upd == {"models": ["small", "big"], "strategy": "cascade", "system": "", "tool": None,
                   "min_logprob": d.chosen.min_logprob}


def test_an_echo_is_never_kept_by_a_cascade():
    rs = records({("small", "plain"): [(True, 1.0, -0.01)] * 4, ("big", "plain"): [(True, 3.0, -0.1)] * 4})
    rs[0]["echo"], rs[0]["ok"] = True, False
    opt = tune.Option(["small", "big"], "plain", "cascade", -0.5, n=4)
    table = tune._by(rs, "dev")
    assert tune.simulate(opt, table, ["e0", "e1", "e2", "e3"]) == (4, pytest.approx((4 * 1.0 + 3.0) / 4))


def test_a_system_prompt_stays_only_where_it_measurably_helps():
    same = records({("m", "plain"): [(True, 1.0, None)] * 5, ("m", "system"): [(True, 1.0, None)] * 5})
    d = tune.decide(same, "t", ["m"])
    assert d.chosen.variant == "plain"
    better = records({("m", "plain"): [(True, 1.0, None)] * 3 + [(False, 1.0, None)] * 2,
                      ("m", "system"): [(True, 1.0, None)] * 5})
    d = tune.decide(better, "t", ["m"], epsilon=0)
    assert d.chosen.variant == "system"
    assert tune.route_update(d, type("R", (), {"system": "S", "tool": None})())["system"] == "S"


def test_decisions_read_dev_only_and_test_is_reported():
    dev = records({("small", "plain"): [(True, 1.0, None)] * 5, ("big", "plain"): [(True, 3.0, None)] * 5})
    test = records({("small", "plain"): [(False, 1.0, None)] * 5, ("big", "plain"): [(True, 3.0, None)] * 5}, "test")
    d = tune.decide(dev + test, "t", ["small", "big"])
    assert d.chosen.models == ["small"]  # test says otherwise, and must not be heard
    assert tune.evaluate(d, dev + test, "test")[:2] == (0, 5)


def test_split_is_by_id_and_fixed():
    assert tune.split_of({"id": "x-math-001", "prompt": "a"}) == tune.split_of({"id": "x-math-001", "prompt": "b"})
    splits = {tune.split_of({"id": f"i{n}", "prompt": ""}) for n in range(50)}
    assert splits == {"dev", "test"}


@pytest.mark.parametrize("line, error", [
    ("not json", "not JSON"),
    (json.dumps({"prompt": "", "task": "math", "check": "number", "answer": 1}), "non-empty"),
    (json.dumps({"prompt": "2+2", "task": "nope", "check": "number", "answer": 4}), "one of the routes' tasks"),
    (json.dumps({"prompt": "2+2", "task": "math", "check": "regex"}), "\"check\" must be one of"),
    (json.dumps({"prompt": "2+2", "task": "math", "check": "number"}), "needs answer"),
    (json.dumps({"prompt": "x", "task": "classify", "check": "label", "answer": "a", "options": ["b"]}),
     "answer is one of them"),
    (json.dumps({"prompt": "x", "task": "math", "check": "number", "answer": "four"}), "must be a number"),
    (json.dumps({"prompt": "x", "task": "math", "check": "contains", "expect": ["Paris"]}), "list of groups"),
    (json.dumps({"prompt": "x", "task": "math", "check": ["number"]}), "\"check\" must be one of"),
])
def test_bad_examples_name_their_line(tmp_path, line, error):
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"prompt": "2+2", "task": "math", "check": "number", "answer": 4}) + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=error) as info:
        tune.load_examples(path, ["math", "classify"])
    assert f"{path}:2" in str(info.value)


def test_a_report_without_test_answers_and_equal_twins_do_not_crash():
    """Found by a second reader: --dev-only crashed in the report (no test records), and two models with the same
    answers (one GGUF under two ids) dominated each other until no option was left."""
    dev = records({("a", "plain"): [(True, 1.0, None)] * 3, ("b", "plain"): [(True, 1.0, None)] * 3})
    d = tune.decide(dev, "t", ["a", "b"])
    assert d.chosen.correct == 3 and not d.dominated
    assert tune.evaluate(d, dev, "test") == (0, 0, 0.0)
    lines, summary = tune.report({"t": d}, dev, ["a", "b"])
    assert summary["tasks"]["t"]["test"] == [0, 0] and any(line.startswith("| **all**") for line in lines)


def test_a_flagged_answer_is_never_kept_by_a_cascade():
    rs = records({("small", "plain"): [(True, 1.0, -0.01)] * 2, ("big", "plain"): [(True, 3.0, -0.1)] * 2})
    rs[0]["flags"], rs[0]["ok"] = ["extracted value not in the text: 'x'"], False
    opt = tune.Option(["small", "big"], "plain", "cascade", -0.5, n=2)
    assert tune.simulate(opt, tune._by(rs, "dev"), ["e0", "e1"]) == (2, pytest.approx((2 * 1.0 + 3.0) / 2))


def test_a_model_only_one_task_needs_leaves_when_a_kept_model_is_within_epsilon_there():
    # FAKE records: "small" wins task a by speed only (equal accuracy); "big" is needed by task b anyway
    rs = [dict(r, task="a") for r in records({("small", "plain"): [(True, 1.0, None)] * 9 + [(False, 1.0, None)],
                                              ("big", "plain"): [(True, 3.0, None)] * 9 + [(False, 3.0, None)]})]
    rs += [dict(r, task="b") for r in records({("small", "plain"): [(True, 1.0, None)] * 5 + [(False, 1.0, None)] * 5,
                                               ("big", "plain"): [(True, 3.0, None)] * 10})]
    decisions = {t: tune.decide(rs, t, ["small", "big"], epsilon=1) for t in ("a", "b")}
    assert decisions["a"].chosen.models == ["small"] and decisions["b"].chosen.models == ["big"]
    dropped = tune.consolidate(decisions, {"small": 400, "big": 1000}, epsilon=1)
    assert list(dropped) == ["small"] and decisions["a"].chosen.models == ["big"]
    assert "small left the swarm" in decisions["a"].why


def test_a_model_stays_where_dropping_it_costs_more_than_epsilon():
    # FAKE records: without "small", task a would fall from 10/10 to 7/10
    rs = [dict(r, task="a") for r in records({("small", "plain"): [(True, 1.0, None)] * 10,
                                              ("big", "plain"): [(True, 3.0, None)] * 7 + [(False, 3.0, None)] * 3})]
    rs += [dict(r, task="b") for r in records({("small", "plain"): [(False, 1.0, None)] * 10,
                                               ("big", "plain"): [(True, 3.0, None)] * 10})]
    decisions = {t: tune.decide(rs, t, ["small", "big"], epsilon=1) for t in ("a", "b")}
    assert tune.consolidate(decisions, {"small": 400, "big": 1000}, epsilon=1) == {}
    assert decisions["a"].chosen.models == ["small"] and decisions["b"].chosen.models == ["big"]
