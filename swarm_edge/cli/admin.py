"""status, serve and tune: the daemon and the swarm's configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from swarm_edge.cli.options import Budget, Config, Json, Local, Socket
from swarm_edge.cli.render import fail, setup
from swarm_edge.errors import SwarmEdgeError


def status(as_json: Json = False, budget: Budget = None, config: Config = None, local: Local = False,
           socket: Socket = None) -> None:
    """Budget, resident models (PSS each), queue, loads/evictions, and each model's memory estimate.

    Asks the running daemon; without one this describes a fresh in-process engine: nothing is resident
    yet, and the estimates show what admission would reserve (formula, or calibrated from a measured peak).
    """
    from swarm_edge.session import DaemonSession, LocalSession, find_daemon

    try:
        settings, registry = setup(config, offline=True, socket=socket)
        client, given = find_daemon(settings, local, budget=budget, config=config)
        if given:
            flags = ", ".join(f"--{k}" for k in given)
            typer.secho(f"({flags} given: answering in-process, not through the daemon)", err=True, dim=True)
        session = DaemonSession(client) if client is not None else LocalSession(registry, settings, budget=budget)
        try:
            snap = session.status()
        finally:
            session.close()
    except SwarmEdgeError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps(snap))
        return
    _print_status(snap, client is not None)


def _print_status(snap: dict, daemon: bool) -> None:
    mib = 2**20
    if daemon:
        typer.echo(f"daemon pid {snap.get('pid')} on {snap.get('socket')}")
    typer.echo(f"budget {snap['budget'] / mib:,.0f} MiB, in use {snap['used'] / mib:,.0f} MiB "
               f"(swarm-edge itself {snap['base'] / mib:,.0f} MiB), waiting {snap['waiting']}")
    if snap.get("budget_source"):
        typer.echo(f"budget from: {snap['budget_source']}")
    none = "none" if daemon else "none (no daemon running)"
    typer.echo("resident: " + (", ".join(f"{r['model']} ({(r['pss'] or r['reserved']) / mib:,.0f} MiB)"
                                         for r in snap["residents"]) or none))
    st = snap["stats"]
    typer.echo(f"loads {st['loads']}, evictions {st['evictions']}, ttl unloads {st['ttl_unloads']}, "
               f"crashes {st['crashes']}, busy {st['busy_rejections']}")
    typer.echo(f"\n{'MODEL':<22}{'ESTIMATE':>10}  SOURCE")
    for mid, m in snap["models"].items():
        if m.get("estimate"):
            typer.echo(f"{mid:<22}{m['estimate'] / mib:>7,.0f}MiB  {m['source']}"
                       + (f" (formula {m['formula'] / mib:,.0f} MiB)" if m["source"] == "calibrated" else ""))
        else:
            typer.echo(f"{mid:<22}{'-':>10}  {m.get('error', '')}")


def serve(
    socket: Socket = None,
    budget: Budget = None,
    config: Config = None,
    offline: bool = typer.Option(False, "--offline", help="Never download models (use only fetched ones) and never "
                                 "build the cloud client: no outbound connection is possible."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads per model (default: physical cores)."),
    tcp: Optional[str] = typer.Option(None, "--tcp", help="Also listen on loopback TCP, e.g. 127.0.0.1:11435; "
                                      "requests then need the bearer token from --token-file."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="0600 file with the TCP bearer token "
                                              "(created with a random token if missing; default: next to the socket)."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests that may wait for a model; more get 503."),
    idle_ttl: Optional[float] = typer.Option(None, "--idle-ttl", min=1.0,
                                             help="Unload a model idle for this many seconds (default: never)."),
    log_level: str = typer.Option("warning", "--log-level", help="debug, info, warning or error."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=0.0,
                                          help="Seconds one generation request may take, queue and load included; "
                                          "then it ends with a timeout error and its model is freed (0: no limit)."),
    send_timeout: float = typer.Option(30.0, "--send-timeout", min=1.0,
                                       help="Cut off a client that reads nothing for this many seconds while its "
                                       "answer waits (a frozen app); the model never waits for a slow reader."),
) -> None:
    """Run the daemon: an OpenAI- and Ollama-compatible API on a private Unix socket.

    The socket is 0600 in a 0700 directory and only your uid (and root) get answers. Stop it with Ctrl-C
    or SIGTERM: in-flight answers finish (up to 10 s), workers stop, the socket is removed.

    Try: curl --unix-socket SOCKET http://x/v1/models
    """
    import logging

    from swarm_edge.api.server import serve as run_server
    from swarm_edge.boxmem import one_malloc_arena
    from swarm_edge.engine import Engine

    one_malloc_arena()  # before any thread starts

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        typer.secho(f"error: --log-level must be debug, info, warning or error, not {log_level!r}", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(2)
    log_level = log_level.lower()
    # the process entry point sets up logging, once (the library never does)
    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        settings, registry = setup(config, threads=threads, offline=offline, socket=socket)
        _again_without_the_key(settings, registry)
        engine = Engine(registry, settings, budget=budget, max_waiting=max_queue, idle_ttl=idle_ttl)
        run_server(engine, socket_path=settings.socket_path, tcp=tcp, token_file=token_file, log_level=log_level,
                   say=lambda m: typer.echo(m, err=True), send_timeout=send_timeout,
                   request_timeout=request_timeout or None)
    except SwarmEdgeError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        typer.echo("swarm-edge stopped", err=True)


def _again_without_the_key(settings, registry) -> None:
    """With the cloud API key in its environment, `serve` starts the cloud egress (which takes the key), then runs
    again as a new process image without it: not a byte of the key stays in the daemon, which parses model files
    (swarm_edge/egress.py). Returns when there is nothing to do."""
    import os
    import sys

    from swarm_edge.cloud_config import KEY_ENV, CloudConfig
    from swarm_edge.egress import FD_ENV, EgressClient

    if settings.cloud_key is None or settings.offline or registry.offline or FD_ENV in os.environ \
            or sys.argv[1:2] != ["serve"]:  # (not when called in-process, e.g. by a test's CliRunner)
        return
    cloud = CloudConfig.resolve(registry.cloud, settings.env)
    if cloud is None:
        return
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    env.update(EgressClient.handoff(cloud, settings.cloud_key, settings.home / "audit" / "cloud.jsonl"))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "swarm_edge.cli", *sys.argv[1:]], env)


def tune(
    examples: Path = typer.Option(..., "--examples", "-e", help="JSONL of labelled requests: prompt, task, check "
                                  "and the check's fields (number: answer; contains/summary: expect; label: answer, "
                                  "options; python: test), optionally id. See swarm_edge/checks.py."),
    write: Optional[Path] = typer.Option(None, "--write", "-w", help="Write models.yaml with the routes decided "
                                         "here to this path (checked by loading it first; comments are not kept; "
                                         "write it next to the original so relative `path:` sources still resolve)."),
    models: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Measure only these models (repeat); "
                                               "default: every model that generates text."),
    epsilon: int = typer.Option(1, min=0, help="A route may be this many dev examples below the best option "
                                "if it is faster."),
    max_tokens: Optional[int] = typer.Option(None, min=1, help="Cap every answer (default: each model's max_tokens)."),
    dev_only: bool = typer.Option(False, "--dev-only", help="Measure the dev split only (about half the time); "
                                  "the test split is measured by a later run without this flag (cached answers "
                                  "are reused)."),
    per_task: bool = typer.Option(False, "--per-task", help="Choose each task's route alone; by default a model "
                                  "is dropped where every task it serves has an option within --epsilon without it "
                                  "(one model less resident)."),
    budget: Budget = None,
    config: Config = None,
    as_json: Json = False,
) -> None:
    """Measure every model on every task of your examples, then choose each task's route by evidence.

    The examples are split into dev and test by a fixed hash of each one's id before anything runs; the
    routes are chosen on dev only, and both splits are reported (test shows what to expect on requests
    the choice never saw). Per task: a model that is no more accurate than a faster one gets no route;
    the route is the fastest option (a model alone, or a cascade with its log-prob threshold fitted on dev;
    with or without the route's system prompt or tool) within --epsilon examples of the best. Then a model
    is dropped where every task it serves has such an option without it (--per-task keeps it). Answers are
    cached in SWARM_EDGE_HOME/cache/tune.jsonl: an interrupted run resumes, a re-run is instant.
    Loads are not counted in latency. Never downloads: fetch the models first.
    """
    from swarm_edge import tune as tuning

    try:
        settings, registry = setup(config)
        result = tuning.run_command(settings, registry, examples, models=models, epsilon=epsilon,
                                    max_tokens=max_tokens, dev_only=dev_only, per_task=per_task, budget=budget,
                                    write=write, say=lambda m: typer.echo(m, err=True))
    except SwarmEdgeError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps(result.summary, ensure_ascii=False, indent=1))
    else:
        typer.echo("\n".join(result.lines))
        for d in result.decisions.values():
            typer.echo(f"{d.task}: {d.why}" + "".join(f"\n  no route: {k}: {v}" for k, v in d.dominated.items()))
        for m, why in result.dropped.items():
            typer.echo(f"left the swarm: {m}: {why}")
    if write:
        typer.echo(f"wrote {write}", err=True)


def register(app: typer.Typer) -> None:
    app.command()(tune)
    app.command()(status)
    app.command()(serve)


__all__ = ["register", "serve", "status", "tune"]
