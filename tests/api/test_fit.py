"""A box too small for the route's model: a real daemon answers with the model that fits and says so in the
trace, where it used to refuse with 507; an explicit request for the big model still gets the 507.

The "big" model is smollm2's real GGUF under a second id with a 64k-token context: its KV cache alone (~1.4 GiB)
cannot fit a 1 GiB budget, while smollm2 at 1,024 tokens fits easily."""

from __future__ import annotations

import shutil

from tests.api.conftest import Daemon, private_root
from tests.conftest import registry_yaml


def test_a_route_to_a_model_that_cannot_fit_is_answered_by_one_that_does(model_files, calibrated_home, tmp_path):
    yaml = registry_yaml(model_files, twin=True).replace(
        "  - id: smollm2-135m-b\n    format: gguf\n    tasks: [rewrite]\n    n_ctx: 1024",
        "  - id: smollm2-135m-b\n    format: gguf\n    tasks: [rewrite]\n    n_ctx: 65536")
    yaml = yaml.replace("chat: {keywords: [hello, hi], models: [smollm2-135m]}",
                        "chat: {keywords: [hello, hi], models: [smollm2-135m-b]}")
    assert "n_ctx: 65536" in yaml and "models: [smollm2-135m-b]" in yaml
    config = tmp_path / "models.yaml"
    config.write_text(yaml)
    root = private_root()
    d = Daemon(root, config, "--budget", "1GiB", seed=calibrated_home).start()
    try:
        r = d.http.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 8, "temperature": 0,
                                                      "messages": [{"role": "user", "content": "hello there"}]})
        assert r.status_code == 200, r.text
        trace = r.json()["swarm"]
        assert trace["model"] == "smollm2-135m", trace
        assert "smollm2-135m-b needs about" in trace["route"]["reason"] and "smollm2-135m instead" in \
            trace["route"]["reason"]
        explicit = d.http.post("/v1/chat/completions", json={
            "model": "smollm2-135m-b", "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]})
        assert explicit.status_code == 507 and explicit.json()["error"]["budget_bytes"] == 2**30, explicit.text
    finally:
        assert d.stop() == 0, d.output()
        shutil.rmtree(root, ignore_errors=True)


def test_a_model_not_fetched_yet_that_cannot_fit_is_not_downloaded_to_be_refused(model_files, tmp_path):
    """A board's route to a heavy model whose files are not here: its declared weights alone exceed the budget, so
    `fitted` picks a model that fits at once (before, the request downloaded gigabytes and then got a 507)."""
    from swarm_edge.config import Settings
    from swarm_edge.engine import Engine
    from swarm_edge.orchestration.fit import fitted, planned
    from swarm_edge.registry import load_registry
    from swarm_edge.router import Route

    heavy = f"""
  - id: heavy
    format: gguf
    tasks: [chat]
    files:
      - name: heavy.gguf
        size: {64 * 2**30}
        sha256: {"ab" * 32}
        sources: [{{path: "{tmp_path / 'nowhere' / 'heavy.gguf'}"}}]
"""
    text = registry_yaml(model_files)
    text = text.replace("\nmodels:\n", "\nmodels:\n" + heavy.lstrip("\n"), 1)
    (tmp_path / "models.yaml").write_text(text)
    registry = load_registry(tmp_path / "models.yaml")
    # the budget is charged with this (test) process's own memory as the engine's base: room for the small model
    engine = Engine(registry, Settings.load(home=tmp_path / "home", threads=1), budget="32GiB", spare=False,
                    fetch=False)
    why = engine.too_big("heavy")
    assert why is not None and why.startswith("heavy needs at least 65,536 MiB, the 32,768 MiB budget"), why
    assert not (tmp_path / "home" / "models" / "heavy").exists()  # nothing was fetched to learn that
    route = fitted(engine, Route(task="chat", model="heavy", confidence=1.0, reason="routed"))
    assert route.model == "smollm2-135m" and "heavy needs at least" in route.reason, route
    assert planned(engine, "chat") != "heavy"
