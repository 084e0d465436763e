"""The daemon asleep (idle.py): it starts with no process but itself, wakes for a request (the router's embedder
in a worker, the forkserver, the spare), and once every model is unloaded (TTL) it stops them all again. Real
daemon, real models, real processes; the memory it saves is measured in benchmarks/bench_idle.py, not here."""

from __future__ import annotations

import contextlib

import psutil
import pytest

from swarm_edge.errors import ConfigError
from swarm_edge.idle import SLEEP_AFTER_S, sleep_after
from tests.api.conftest import until_built, wait_for, worker_processes


def children(d) -> list[psutil.Process]:
    return psutil.Process(d.proc.pid).children(recursive=True)


def cmdlines(d) -> list[str]:
    """The command lines of the daemon's descendants that are still there when read (a spare's middle process
    exits as it is forked)."""
    out = []
    for k in children(d):
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(" ".join(k.cmdline()))
    return out


def chat(d, model: str, prompt: str) -> dict:
    r = d.http.post("/v1/chat/completions", json={"model": model, "max_tokens": 8, "temperature": 0,
                                                  "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text + "\nLOG " + d.output()[-6000:]
    return r.json()


def test_sleep_after_reads_the_environment():
    assert sleep_after({}) == SLEEP_AFTER_S
    assert sleep_after({"SWARM_EDGE_SLEEP_S": "2.5"}) == 2.5
    assert sleep_after({"SWARM_EDGE_SLEEP_S": "never"}) is None
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigError, match="SWARM_EDGE_SLEEP_S"):
            sleep_after({"SWARM_EDGE_SLEEP_S": bad})


def test_the_daemon_sleeps_with_nothing_but_itself_wakes_for_a_request_and_sleeps_again(make_daemon, swarm_config):
    # the semantic router (its embedder runs in a worker, the head in that worker too): asleep, it must wake with
    # the request, not fall back to the keyword rules
    d = make_daemon("--idle-ttl", "1", config=swarm_config, env={"SWARM_EDGE_SLEEP_S": "1"})
    until_built(d)
    # the router's warm-up and the head's training (the embedder's worker) are given back a second after them
    wait_for(lambda: d.status()["asleep"] and not children(d))

    routed = chat(d, "auto", "Hi! How are you today?")
    route = routed["swarm"]["route"]
    assert route["reason"].startswith("the trained head says"), route  # semantic, with its worker woken
    assert route["task"] == "chat", route
    assert not d.status()["asleep"]
    assert any("forkserver" in line for line in cmdlines(d))  # the forkserver and its workers

    # every model unloaded (TTL 1 s), then asleep: no child process left, and the next request works again
    wait_for(lambda: (st := d.status())["asleep"] and not st["residents"] and not children(d))
    assert d.status()["stats"]["ttl_unloads"] >= 1
    again = chat(d, "smollm2-135m", "Say hi.")
    assert again["choices"][0]["message"]["content"]
    wait_for(lambda: d.status()["asleep"] and not children(d))


def test_with_a_model_resident_the_daemon_dozes_and_the_next_load_starts_the_forkserver(make_daemon):
    """Dozing (idle.py): a model resident, nothing in flight for SWARM_EDGE_SLEEP_S: the spare and the forkserver
    stop, the model stays (its worker is the daemon's child: workers/child.py); a request for it does not start them,
    a load does. A kill -9 of the dozing daemon leaves no worker behind, even a stopped one."""
    d = make_daemon("--idle-ttl", "600", env={"SWARM_EDGE_SLEEP_S": "1"})
    chat(d, "smollm2-135m", "Say hi.")
    def others() -> list[psutil.Process]:  # anything but the workers: the forkserver, the resource tracker
        workers = {w.pid for w in worker_processes(d.proc.pid)}
        return [k for k in children(d) if k.pid not in workers]

    # "dozing" turns true once the forkserver is reaped; the resource tracker is stopped after it, on the same
    # thread (pool.py `_stop_forkserver`): wait for both
    st = wait_for(lambda: (st := d.status())["dozing"] and others() == [] and st)
    resident = {r["pid"] for r in st["residents"]}
    assert len(resident) == 1 and not st["asleep"]
    assert {w.pid for w in worker_processes(d.proc.pid)} == resident  # no spare either
    assert chat(d, "smollm2-135m", "Say hi again.")["choices"][0]["message"]["content"]
    assert d.status()["dozing"] and others() == []  # served by the resident worker: nothing started
    chat(d, "smollm2-135m-b", "Say hello.")  # a load: the forkserver starts again
    st = d.status()
    assert {r["model"] for r in st["residents"]} == {"smollm2-135m", "smollm2-135m-b"}
    assert all(psutil.Process(r["pid"]).ppid() == d.proc.pid for r in st["residents"])
    st = wait_for(lambda: (st := d.status())["dozing"] and others() == [] and st)  # and dozes again
    tree = children(d)
    assert len(tree) == 2, tree
    tree[0].suspend()  # SIGSTOP: it cannot see the daemon die; the kernel kills it (PR_SET_PDEATHSIG)
    d.proc.kill()
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"orphans of the killed daemon: {[(p.pid, p.status()) for p in alive]}"
