"""The engine's file path: a file replaced between two loads is verified again before it is loaded, and many
requests for one model share one preparation without holding threads."""

from __future__ import annotations

import asyncio
import shutil
import threading

import pytest

from swarm_edge.engine import Engine
from swarm_edge.errors import ChecksumError, ModelFileError
from swarm_edge.registry import parse_registry
from swarm_edge.workers import GenerateRequest
from tests.conftest import registry_yaml

pytestmark = pytest.mark.real_model


def _own_copy(model_files, tmp_path):
    """The test models with smollm2's GGUF copied into tmp_path (the test may damage its copy)."""
    copy = tmp_path / "smollm2.gguf"
    shutil.copyfile(model_files["smollm2-135m"]["model"], copy)
    files = {k: dict(v) for k, v in model_files.items()}
    files["smollm2-135m"]["model"] = copy
    text = registry_yaml(files)
    return parse_registry(text, tmp_path / "models.yaml"), copy


async def _one_token(engine: Engine) -> str:
    out = []
    async for ev in engine.generate("smollm2-135m", GenerateRequest(prompt="Hello", max_tokens=1)):
        if ev["type"] == "token":
            out.append(ev["text"])
    return "".join(out)


def test_a_file_replaced_between_two_loads_is_not_loaded(model_files, tmp_path, settings):
    registry, copy = _own_copy(model_files, tmp_path)

    async def go():
        engine = Engine(registry, settings, budget="8GiB", spare=False, idle_ttl=0.01)
        try:
            await _one_token(engine)
            await asyncio.sleep(0.05)
            await engine.scheduler.sweep_idle()  # unloaded; its files stay verified in this engine
            assert engine.scheduler.snapshot()["residents"] == []
            data = bytearray(copy.read_bytes())
            data[len(data) // 2] ^= 0xFF  # same size, other bytes: what a replaced `path:` file looks like
            copy.write_bytes(bytes(data))
            with pytest.raises(ChecksumError):
                await _one_token(engine)
            assert engine.scheduler.snapshot()["residents"] == []  # nothing was loaded from the changed file
        finally:
            await engine.close()
    asyncio.run(go())


def test_requests_for_one_model_share_one_preparation(model_files, tmp_path, settings, monkeypatch):
    registry, _ = _own_copy(model_files, tmp_path)
    import swarm_edge.engine as engine_module

    calls, gate = [], threading.Event()
    real = engine_module.ensure_model

    def slow_ensure(settings, spec, *args, **kw):  # smollm2's real fetch, held back until the test lets it go
        if spec.id == "smollm2-135m":
            calls.append(threading.current_thread().name)
            gate.wait(30)
        return real(settings, spec, *args, **kw)

    monkeypatch.setattr(engine_module, "ensure_model", slow_ensure)

    async def go():
        engine = Engine(registry, settings, budget="8GiB", spare=False)
        try:
            waiters = [asyncio.ensure_future(engine.prepare("smollm2-135m")) for _ in range(8)]
            for _ in range(1000):  # until the engine's file thread holds smollm2's preparation (at the gate)
                if calls:
                    break
                await asyncio.sleep(0.01)
            # while it is being fetched: status does not wait for it, and the default pool is untouched
            t0 = asyncio.get_running_loop().time()
            est = await asyncio.to_thread(engine.model_estimates)
            assert asyncio.get_running_loop().time() - t0 < 2
            assert "being fetched" in est["smollm2-135m"]["error"]
            with pytest.raises(ModelFileError):
                engine.files("smollm2-135m", wait=False)
            gate.set()
            results = await asyncio.gather(*waiters)
            assert all(r == results[0] for r in results)
            assert len(calls) == 1 and calls[0].startswith("swarm-edge-files")  # one fetch, in the engine's pool
        finally:
            gate.set()
            await engine.close()
    asyncio.run(go())


def test_admission_charges_the_embedder_the_daemon_is_about_to_load(model_files, tmp_path, settings):
    """The router's embedding model loads into this process (at start-up or on the first routed request): a model
    admitted against the base measured before that would push the tree over the budget once it has loaded."""
    from swarm_edge.boxmem import tree_pss

    registry = parse_registry(registry_yaml(model_files, swarm=True), tmp_path / "models.yaml")

    async def go():
        engine = Engine(registry, settings, budget="4GiB", spare=False)
        try:
            assert engine.router.will_load == "minilm-l6"
            before = engine.base_pss()
            measured_before = tree_pss()
            assert before >= measured_before + 100 * 2**20  # the embedder's charge is in the admission base
            await asyncio.to_thread(engine.router.warm)
            assert engine.router.will_load is None
            grown = tree_pss() - measured_before
            assert grown > 20 * 2**20  # loading it really did grow this process
            assert before >= measured_before + grown  # the charge covered the growth
        finally:
            await engine.close()
    asyncio.run(go())
