"""`swarm-edge`: a thin typer CLI over the library. Errors become one message and an exit code."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from swarm_edge.config import Settings
from swarm_edge.errors import SwarmEdgeError

app = typer.Typer(
    help="On-device runtime for swarms of small language models (GGUF + ONNX), routed by content.\n\n"
    "Environment: SWARM_EDGE_HOME (models, calibration; default ~/.local/share/swarm-edge), "
    "SWARM_EDGE_CONFIG (models.yaml; default: the embedded default swarm), SWARM_EDGE_THREADS, "
    "SWARM_EDGE_BUDGET, SWARM_EDGE_SOCKET (the daemon's socket).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, fetch and verify the models of models.yaml.", no_args_is_help=True)
app.add_typer(models_app, name="models")

ConfigOpt = typer.Option(None, "--config", "-c", help="models.yaml to use (env SWARM_EDGE_CONFIG).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
BudgetOpt = typer.Option(None, "--budget", "-b", help="Memory budget for all of swarm-edge: bytes, 1.5GiB, 800MB "
                         "or a share of RAM like 60% (env SWARM_EDGE_BUDGET; default 60%).")


def _fail(exc: SwarmEdgeError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(exc.exit_code)


def _setup(config: Optional[Path], **kw):
    from swarm_edge.registry import load_registry

    settings = Settings.load(config=config, **kw)
    return settings, load_registry(settings.config_path)


def _select(config: Optional[Path], ids: Optional[list[str]]):
    """(settings, registry, the named models or all of them); bad config or ids exit with one message."""
    try:
        settings, registry = _setup(config)
        return settings, registry, [registry.get(i) for i in ids] if ids else list(registry)
    except SwarmEdgeError as exc:
        raise _fail(exc) from None


def _progress_factory(label: str, total: int, source: str):
    """tqdm byte bar on a terminal; one line per fetch otherwise (CI logs stay readable)."""
    from tqdm import tqdm

    typer.echo(f"fetching {label} ({total / 2**20:,.1f} MiB) from {source}", err=True)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr,
               disable=None, leave=False, dynamic_ncols=True)

    def status(text: str | None) -> None:
        if text is None:
            bar.close()
        else:
            bar.set_postfix_str(text, refresh=True)

    return bar.update, status


LocalOpt = typer.Option(False, "--local", help="Run in this process even if a daemon is running.")
TemperatureOpt = typer.Option(0.0, min=0.0, max=2.0, help="0 = greedy (deterministic).")
OfflineOpt = typer.Option(False, "--offline", help="Never download, never use the cloud: only fetched models, "
                          "and no cloud client is even built.")
SocketOpt = typer.Option(None, "--socket", help="The daemon's Unix socket (env SWARM_EDGE_SOCKET; default "
                         "$XDG_RUNTIME_DIR/swarm-edge/swarm-edge.sock, else SWARM_EDGE_HOME/run/swarm-edge.sock).")


def _daemon(settings: Settings, local: bool, **local_only):
    """A client for the running daemon, or None to run in-process (--local, no daemon, or in-process-only flags)."""
    if local:
        return None
    from swarm_edge.api.client import DaemonClient

    client = DaemonClient.find(settings.socket_path)
    given = [f"--{k.replace('_', '-')}" for k, v in local_only.items() if v is not None]
    if client is not None and given:
        typer.secho(f"({', '.join(given)} given: answering in-process, not through the daemon)", err=True, dim=True)
        client.close()
        return None
    return client


def _read_prompt(prompt: str) -> str:
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        typer.secho("error: the prompt is empty", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    return prompt


def _chat_body(messages: list[dict], model: Optional[str], max_tokens: Optional[int], temperature: float,
               offline: bool) -> dict:
    body = {"model": model or "auto", "messages": messages, "temperature": temperature,
            "stream_options": {"include_usage": True}}
    if max_tokens:
        body["max_tokens"] = max_tokens
    if offline:
        body["offline"] = True
    return body


def _stream_from_daemon(client, body: dict, on_token) -> dict:
    """Stream a chat answer through the daemon; returns the Answer-shaped dict (text, model, route, timings...)."""
    parts: list[str] = []
    trace: dict = {}
    finish = "stop"
    for chunk in client.stream("/v1/chat/completions", body):
        for choice in chunk.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                parts.append(text)
                if on_token:
                    on_token(text)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        if "swarm" in chunk:
            trace = chunk["swarm"]
    return {"text": "".join(parts), "model": trace.get("model"), "route": trace.get("route", {}),
            "finish_reason": finish, "timings": trace.get("timings", {}), "tokens": trace.get("tokens", 0),
            "prompt_tokens": trace.get("prompt_tokens"), "left_device": trace.get("left_device", False),
            "plan": trace.get("plan", "single"), "steps": trace.get("steps", []),
            "escalation": trace.get("escalation")}


def _trace_line(a: dict, via: str) -> str:
    t = a["timings"]
    rate = f", {t['decode_tok_s']:.1f} tok/s" if t.get("decode_tok_s") else ""
    route = a["route"]
    steps = a.get("steps") or []
    plan = ""
    if len(steps) > 1:
        def one(s: dict) -> str:
            sure = f" {s['mean_logprob']:.2f}" if s.get("mean_logprob") is not None else ""
            return f"{s['task']}:{s['model']}{sure}{' unsure' if s.get('accepted') is False else ''}"
        plan = f"plan {a.get('plan')}: " + " -> ".join(one(s) for s in steps) + "; "
    line = (f"-- {a['model']} (task {route.get('task')}: {route.get('reason')}; {plan}{via}; "
            f"load {t.get('load_s') or 0:.2f} s, {a['tokens']} tokens in {t.get('generate_s') or 0:.2f} s{rate})")
    esc = a.get("escalation")
    if esc:
        red = ", ".join(f"{k} x{n}" for k, n in (esc.get("redacted") or {}).items())
        line += (f"\n-- cloud: {esc.get('reason')}; {esc.get('outcome')}"
                 + (f"; redacted before sending: {red}" if red else "")
                 + ("".join(f"; {n}" for n in esc.get("notes") or [])))
    return line


def _echo_token(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def ask(
    prompt: str = typer.Argument(..., help="The question or instruction. Use - to read it from stdin."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model id, pipeline:NAME (see models.yaml), or cloud (the configured cloud "
        "fallback, redacted); default: auto (routed, planned; may escalate to the cloud when one is configured)."),
    as_json: bool = JsonOpt,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Cap on generated tokens."),
    temperature: float = TemperatureOpt,
    system: Optional[str] = typer.Option(None, help="A system message for chat models."),
    offline: bool = OfflineOpt,
    local: bool = LocalOpt,
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: physical cores). In-process only."),
    budget: Optional[str] = BudgetOpt,
    config: Optional[Path] = ConfigOpt,
    socket: Optional[Path] = SocketOpt,
) -> None:
    """Answer PROMPT with the model that fits it; prints the answer, then which model answered.

    Goes through the daemon when one is running (`swarm-edge serve`), else runs in this process.
    --budget, --threads and --config describe an in-process engine, so giving one of them runs in-process.
    """
    prompt = _read_prompt(prompt)
    streamed = not as_json and sys.stdout.isatty()
    on_token = _echo_token if streamed else None
    try:
        settings, registry = _setup(config, threads=threads, offline=offline, socket=socket)
        client = _daemon(settings, local, budget=budget, threads=threads, config=config)
        if client is not None:
            with client:
                messages = ([{"role": "system", "content": system}] if system else []) + \
                    [{"role": "user", "content": prompt}]
                answer = _stream_from_daemon(client, _chat_body(messages, model, max_tokens, temperature, offline),
                                             on_token)
            via = "daemon"
        else:
            from swarm_edge.orchestrator import ask as run_ask

            answer = run_ask(prompt, registry, settings, budget=budget, model_id=model, max_tokens=max_tokens,
                             temperature=temperature, system=system, on_token=on_token,
                             progress_factory=_progress_factory).to_dict()
            via = "in-process"
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({**answer, "via": via}, ensure_ascii=False))
        return
    typer.echo("" if streamed else answer["text"].strip())
    typer.secho(_trace_line(answer, via), err=True, dim=True)


CHAT_HELP = """commands: /reset (forget the conversation), /model ID|auto, /system TEXT, /help, /exit (or Ctrl-D).
Ctrl-C stops an answer."""


class _LocalChat:
    """In-process chat: one engine (and its workers) for the whole session, so models stay loaded."""

    def __init__(self, registry, settings, budget) -> None:
        import asyncio

        from swarm_edge.engine import Engine

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(registry, settings, budget=budget)
        self.loop.run_until_complete(self.engine.start())

    def answer(self, messages, model, max_tokens, temperature, offline, on_token) -> dict:
        from swarm_edge import orchestrator

        async def run():
            answer = None
            events = orchestrator.stream(self.engine, messages=messages, model_id=model, max_tokens=max_tokens,
                                         temperature=temperature, progress_factory=_progress_factory,
                                         fetch=False if offline else None)
            async with contextlib.aclosing(events):
                async for ev in events:
                    if ev["type"] == "token":
                        on_token(ev["text"])
                    elif ev["type"] == "done":
                        answer = ev["answer"]
            return answer.to_dict()

        task = self.loop.create_task(run())
        try:
            return self.loop.run_until_complete(task)
        except KeyboardInterrupt:
            task.cancel()
            self.loop.run_until_complete(self._asyncio.gather(task, return_exceptions=True))
            raise

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


class _DaemonChat:
    def __init__(self, client) -> None:
        self.client = client

    def answer(self, messages, model, max_tokens, temperature, offline, on_token) -> dict:
        return _stream_from_daemon(self.client, _chat_body(messages, model, max_tokens, temperature, offline),
                                   on_token)

    def close(self) -> None:
        self.client.close()


@app.command()
def chat(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model id; default: routed per turn (auto)."),
    system: Optional[str] = typer.Option(None, help="A system message that starts the conversation."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Cap on tokens per answer."),
    temperature: float = TemperatureOpt,
    offline: bool = OfflineOpt,
    local: bool = LocalOpt,
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads. In-process only."),
    budget: Optional[str] = BudgetOpt,
    config: Optional[Path] = ConfigOpt,
    socket: Optional[Path] = SocketOpt,
) -> None:
    """Talk with the swarm: answers stream as they are written and the conversation is remembered.

    Reads one message per line (from a pipe too: each line is a turn). Type /help for commands.
    Uses the daemon when one is running, else an in-process engine that keeps models loaded between turns.
    """
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    try:
        settings, registry = _setup(config, threads=threads, offline=offline, socket=socket)
        client = _daemon(settings, local, budget=budget, threads=threads, config=config)
        session = _DaemonChat(client) if client is not None else _LocalChat(registry, settings, budget)
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    via = "daemon" if client is not None else "in-process"
    if interactive:
        typer.secho(f"swarm-edge chat ({via}). {CHAT_HELP}", err=True, dim=True)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    current = model
    try:
        while True:
            try:
                line = input("you> " if interactive else "")
            except EOFError:
                break
            except KeyboardInterrupt:
                typer.echo("", err=True)
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                cmd, _, arg = text.partition(" ")
                if cmd in ("/exit", "/quit"):
                    break
                known = [m.id for m in registry]
                if cmd == "/reset":
                    history = [m for m in history if m["role"] == "system"]
                    typer.secho("(conversation cleared)", err=True, dim=True)
                elif cmd == "/model":
                    if arg.strip() and arg.strip() != "auto" and arg.strip() not in known:
                        typer.secho(f"unknown model {arg.strip()!r}; known: auto, {', '.join(known)}",
                                    err=True, fg=typer.colors.RED)
                    else:
                        current = None if arg.strip() in ("", "auto") else arg.strip()
                        typer.secho(f"(model: {current or 'auto'})", err=True, dim=True)
                elif cmd == "/system":
                    history = [m for m in history if m["role"] != "system"]
                    if arg.strip():
                        history.insert(0, {"role": "system", "content": arg.strip()})
                else:
                    typer.secho(CHAT_HELP, err=True, dim=True)
                continue
            history.append({"role": "user", "content": text})
            answer = _chat_turn(session, history, current, max_tokens, temperature, offline, interactive)
            if answer is None:
                history.pop()
                continue
            history.append({"role": "assistant", "content": answer["text"]})
    finally:
        session.close()


def _chat_turn(session, history, model, max_tokens, temperature, offline, interactive) -> dict | None:
    """One answer; drops the oldest turns when the conversation outgrows the model's context."""
    from swarm_edge.errors import ContextLengthError

    if interactive:
        typer.secho("bot> ", nl=False, bold=True)
    while True:
        try:
            answer = session.answer(list(history), model, max_tokens, temperature, offline, _echo_token)
            typer.echo("")
            if interactive:
                typer.secho(_trace_line(answer, "daemon" if isinstance(session, _DaemonChat) else "in-process"),
                            err=True, dim=True)
            return answer
        except ContextLengthError:
            first_user = next((i for i, m in enumerate(history) if m["role"] == "user"), None)
            if first_user is None or sum(m["role"] == "user" for m in history) < 2:
                typer.secho("\nerror: this message alone is too long for the model's context", err=True,
                            fg=typer.colors.RED)
                return None
            end = first_user + 2 if first_user + 1 < len(history) and history[first_user + 1]["role"] == "assistant" \
                else first_user + 1
            del history[first_user:end]
            typer.secho("(dropped the oldest turn to fit the model's context)", err=True, dim=True)
        except KeyboardInterrupt:
            typer.secho("\n(stopped)", err=True, dim=True)
            return None
        except SwarmEdgeError as exc:
            typer.secho(f"\nerror: {exc}", err=True, fg=typer.colors.RED)
            return None


@app.command()
def route(
    prompt: str = typer.Argument(..., help="The prompt to route, or - to read one prompt per line from stdin."),
    as_json: bool = JsonOpt,
    local: bool = LocalOpt,
    config: Optional[Path] = ConfigOpt,
    socket: Optional[Path] = SocketOpt,
) -> None:
    """Explain which task and model a prompt would go to, without generating anything.

    The router compares the prompt with each task's examples in models.yaml (minilm-l6 embeddings) and
    matches the tasks' keywords; confidence is the calibrated probability of the chosen task. With -,
    prints one JSON object per line of input (the Route JSON: task, model, target, confidence, reason,
    scores).
    """
    try:
        settings, registry = _setup(config, socket=socket)
        client = _daemon(settings, local, config=config)
        if client is None:
            from swarm_edge.router import Router
            from swarm_edge.sources import ensure_model

            # never downloads: without the embedding model's files the rules decide, and the reason says so
            router = Router(registry, lambda mid: ensure_model(settings, registry.get(mid), registry.base_dir,
                                                               fetch=False),
                            cache_dir=settings.home / "cache")

            def decide(text: str) -> dict:
                return router.route(text).to_dict()
        else:
            def decide(text: str) -> dict:
                return client.post("/swarm/route", {"prompt": text})

        if prompt == "-":
            for line in sys.stdin:
                if line.strip():
                    typer.echo(json.dumps(decide(line.rstrip("\n")), ensure_ascii=False))
            return
        prompt = _read_prompt(prompt)
        r = decide(prompt)
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(r, ensure_ascii=False))
        return
    typer.echo(f"task {r['task']} -> {r['model']} ({r['target']}), confidence {r['confidence']:.2f}: {r['reason']}")
    scores = ", ".join(f"{t} {s:.2f}" for t, s in sorted(r["scores"].items(), key=lambda kv: -kv[1]) if s)
    if scores:
        typer.echo(f"scores: {scores}")


@app.command()
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
    budget: Optional[str] = BudgetOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
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
    from swarm_edge.engine import Engine

    try:
        settings, registry = _setup(config)
        tasks = list(registry.routes)
        exs = tuning.load_examples(examples, tasks)
        chosen = models or [m.id for m in registry if m.kind in ("chat", "completion")]
        for m in chosen:
            if registry.get(m).kind not in ("chat", "completion"):
                raise SwarmEdgeError(f"{m} does not generate text (kind {registry.get(m).kind})")
        n_dev = sum(tuning.split_of(e) == "dev" for e in exs)
        typer.echo(f"{len(exs)} examples: {n_dev} dev, {len(exs) - n_dev} test{' (not measured)' if dev_only else ''};"
                   f" models: {', '.join(chosen)}", err=True)
        if dev_only:
            exs = [e for e in exs if tuning.split_of(e) == "dev"]
        cache = tuning.Cache(settings.home / "cache" / "tune.jsonl")
        total = sum(len([v for v in tuning.variants(registry.routes[e["task"]])
                         if not (v.system and registry.get(m).kind == "completion")]) for e in exs for m in chosen)
        from tqdm import tqdm

        # a bar on a terminal; elsewhere (CI logs, nohup) tqdm's plain line every 30 s
        bar = tqdm(total=total, desc="measuring", unit="answer", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        engine = Engine(registry, settings, budget=budget, spare=False, fetch=False)
        records = tuning.run_measure(engine, exs, chosen, cache=cache, max_tokens=max_tokens,
                                     on_record=lambda r: bar.update(1))
        bar.close()
        decisions = {t: tuning.decide(records, t, chosen, epsilon=epsilon)
                     for t in tasks if any(r["task"] == t for r in records)}
        sizes = {m: sum(f.size for f in registry.get(m).files) for m in chosen}
        dropped = {} if per_task else tuning.consolidate(decisions, sizes, epsilon=epsilon)
        lines, summary = tuning.report(decisions, records, chosen)
        summary["left_the_swarm"] = dropped
        if write:
            tuning.write_config(settings.config_path, write, decisions, registry)
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False, indent=1))
    else:
        typer.echo("\n".join(lines))
        for d in decisions.values():
            typer.echo(f"{d.task}: {d.why}" + "".join(f"\n  no route: {k}: {v}" for k, v in d.dominated.items()))
        for m, why in dropped.items():
            typer.echo(f"left the swarm: {m}: {why}")
    if write:
        typer.echo(f"wrote {write}", err=True)


@app.command()
def status(as_json: bool = JsonOpt, budget: Optional[str] = BudgetOpt, config: Optional[Path] = ConfigOpt,
           local: bool = LocalOpt, socket: Optional[Path] = SocketOpt) -> None:
    """Budget, resident models (PSS each), queue, loads/evictions, and each model's memory estimate.

    Asks the running daemon; without one this describes a fresh in-process engine: nothing is resident
    yet, and the estimates show what admission would reserve (formula, or calibrated from a measured peak).
    """
    try:
        settings, registry = _setup(config, offline=True, socket=socket)
        client = _daemon(settings, local, budget=budget, config=config)
        if client is not None:
            with client:
                snap = client.get("/swarm/status")
        else:
            from swarm_edge.engine import Engine

            snap = Engine(registry, settings, budget=budget).status()
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(snap))
        return
    mib = 2**20
    if client is not None:
        typer.echo(f"daemon pid {snap.get('pid')} on {snap.get('socket')}")
    typer.echo(f"budget {snap['budget'] / mib:,.0f} MiB, in use {snap['used'] / mib:,.0f} MiB "
               f"(swarm-edge itself {snap['base'] / mib:,.0f} MiB), waiting {snap['waiting']}")
    none = "none" if client is not None else "none (no daemon running)"
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


@app.command()
def serve(
    socket: Optional[Path] = SocketOpt,
    budget: Optional[str] = BudgetOpt,
    config: Optional[Path] = ConfigOpt,
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
    from swarm_edge.api.server import serve as run_server
    from swarm_edge.engine import Engine

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        typer.secho(f"error: --log-level must be debug, info, warning or error, not {log_level!r}", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(2)
    log_level = log_level.lower()
    try:
        settings, registry = _setup(config, threads=threads, offline=offline, socket=socket)
        engine = Engine(registry, settings, budget=budget, max_waiting=max_queue, idle_ttl=idle_ttl)
        run_server(engine, socket_path=settings.socket_path, tcp=tcp, token_file=token_file, log_level=log_level,
                   say=lambda m: typer.echo(m, err=True), send_timeout=send_timeout,
                   request_timeout=request_timeout or None)
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        typer.echo("swarm-edge stopped", err=True)


@models_app.command("list")
def models_list(as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Show every declared model, its size, tasks and whether its files are here."""
    from swarm_edge.sources import file_status

    try:
        settings, registry = _setup(config)
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    rows = []
    for spec in registry:
        states = [file_status(settings, spec, f, registry.base_dir) for f in spec.files]
        status = "missing" if "missing" in states else "changed" if "changed" in states else \
            "verified" if all(s == "verified" for s in states) else "fetched"
        rows.append({"id": spec.id, "format": spec.format, "kind": spec.kind, "tasks": spec.tasks,
                     "bytes": sum(f.size for f in spec.files), "status": status, "pin": spec.pin})
    if as_json:
        typer.echo(json.dumps(rows))
        return
    typer.echo(f"{'ID':<22}{'FORMAT':<8}{'KIND':<12}{'SIZE':>10}  {'STATUS':<10}TASKS")
    for r in rows:
        typer.echo(f"{r['id']:<22}{r['format']:<8}{r['kind']:<12}{r['bytes'] / 2**20:>7.1f}MiB  "
                   f"{r['status']:<10}{','.join(r['tasks'])}")


@models_app.command("fetch")
def models_fetch(ids: Optional[list[str]] = typer.Argument(None, help="Model ids; default: all."),
                 as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Download (or find) each model's files, verify size and sha256, store them under SWARM_EDGE_HOME."""
    from swarm_edge.sources import ensure_model

    settings, registry, specs = _select(config, ids)
    results, failed = [], 0
    for spec in specs:
        try:
            paths = ensure_model(settings, spec, registry.base_dir, progress_factory=_progress_factory)
            results.append({"id": spec.id, "ok": True, "files": {k: str(v) for k, v in paths.items()}})
            if not as_json:
                typer.echo(f"ok  {spec.id}: {paths['model']}")
        except SwarmEdgeError as exc:
            failed += 1
            results.append({"id": spec.id, "ok": False, "error": str(exc)})
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    if as_json:
        typer.echo(json.dumps(results))
    if failed:
        raise typer.Exit(1)


@models_app.command("verify")
def models_verify(ids: Optional[list[str]] = typer.Argument(None, help="Model ids; default: all fetched."),
                  as_json: bool = JsonOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Re-hash every fetched file against models.yaml (slow but certain); exit 1 if any differs."""
    from swarm_edge.sources import verify_model

    settings, registry, specs = _select(config, ids)
    results = [verify_model(settings, spec, registry.base_dir, explicit=bool(ids)) for spec in specs]
    bad = [r for r in results if r["status"] not in ("ok", "not fetched")]
    if as_json:
        typer.echo(json.dumps(results))
    else:
        for r in results:
            line = f"{r['status']:<12}{r['id']}" + (f": {r['error']}" if r.get("error") else "")
            typer.secho(line, err=r["status"] not in ("ok", "not fetched"),
                        fg=typer.colors.RED if r in bad else None)
    if bad:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
