"""ask, chat and route: over a library Session (the daemon's, or an in-process one)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Optional

import typer

from swarm_edge.cli.options import Budget, Config, Json, Local, MaxTokens, Offline, Socket, System, Temperature, Threads
from swarm_edge.cli.render import echo_token, fail, progress_factory, read_prompt, setup, trace_line
from swarm_edge.errors import SwarmEdgeError

Model = typer.Option(None, "--model", "-m", help="Model id, pipeline:NAME (see models.yaml), or cloud (the configured "
                     "cloud fallback, redacted); default: auto (routed, planned; may escalate to the cloud when one is "
                     "configured).")
CHAT_HELP = """commands: /reset (forget the conversation), /model ID|auto, /system TEXT, /help, /exit (or Ctrl-D).
Ctrl-C stops an answer."""


def _session(settings, registry, *, local: bool, keep: bool, budget, threads, config):
    """The session a command answers through (a note on stderr when in-process-only options bypass a daemon)."""
    from swarm_edge.session import DaemonSession, LocalSession, find_daemon

    client, given = find_daemon(settings, local, budget=budget, threads=threads, config=config)
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        typer.secho(f"({flags} given: answering in-process, not through the daemon)", err=True, dim=True)
    if client is not None:
        return DaemonSession(client)
    return LocalSession(registry, settings, budget=budget, keep=keep, progress_factory=progress_factory)


def ask(
    prompt: str = typer.Argument(..., help="The question or instruction. Use - to read it from stdin."),
    model: Optional[str] = Model,
    as_json: Json = False,
    max_tokens: MaxTokens = None,
    temperature: Temperature = 0.0,
    system: System = None,
    offline: Offline = False,
    local: Local = False,
    threads: Threads = None,
    budget: Budget = None,
    config: Config = None,
    socket: Socket = None,
) -> None:
    """Answer PROMPT with the model that fits it; prints the answer, then which model answered.

    Goes through the daemon when one is running (`swarm-edge serve`), else runs in this process.
    --budget, --threads and --config describe an in-process engine, so giving one of them runs in-process.
    """
    prompt = read_prompt(prompt)
    streamed = not as_json and sys.stdout.isatty()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    try:
        settings, registry = setup(config, threads=threads, offline=offline, socket=socket)
        session = _session(settings, registry, local=local, keep=False, budget=budget, threads=threads, config=config)
        try:
            answer = session.ask(messages, model=model, max_tokens=max_tokens, temperature=temperature,
                                 offline=offline, on_token=echo_token if streamed else None).to_dict()
        finally:
            session.close()
    except SwarmEdgeError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps({**answer, "via": session.via}, ensure_ascii=False))
        return
    typer.echo("" if streamed else answer["text"].strip())
    typer.secho(trace_line(answer, session.via), err=True, dim=True)


def _command(text: str, conversation, known: list[str], current: Optional[str]) -> tuple[bool, Optional[str]]:
    """A /command: (go on?, the model now)."""
    cmd, _, arg = text.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit"):
        return False, current
    if cmd == "/reset":
        conversation.reset()
        typer.secho("(conversation cleared)", err=True, dim=True)
    elif cmd == "/model":
        if arg and arg != "auto" and arg not in known:
            typer.secho(f"unknown model {arg!r}; known: auto, {', '.join(known)}", err=True, fg=typer.colors.RED)
        else:
            current = None if arg in ("", "auto") else arg
            typer.secho(f"(model: {current or 'auto'})", err=True, dim=True)
    elif cmd == "/system":
        conversation.set_system(arg)
    else:
        typer.secho(CHAT_HELP, err=True, dim=True)
    return True, current


def chat(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model id; default: routed per turn (auto)."),
    system: Optional[str] = typer.Option(None, help="A system message that starts the conversation."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Cap on tokens per answer."),
    temperature: Temperature = 0.0,
    offline: Offline = False,
    local: Local = False,
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads. In-process only."),
    budget: Budget = None,
    config: Config = None,
    socket: Socket = None,
) -> None:
    """Talk with the swarm: answers stream as they are written and the conversation is remembered.

    Reads one message per line (from a pipe too: each line is a turn). Type /help for commands.
    Uses the daemon when one is running, else an in-process engine that keeps models loaded between turns.
    """
    from swarm_edge.chat import Conversation

    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    try:
        settings, registry = setup(config, threads=threads, offline=offline, socket=socket)
        session = _session(settings, registry, local=local, keep=True, budget=budget, threads=threads, config=config)
    except SwarmEdgeError as exc:
        raise fail(exc) from None
    if interactive:
        typer.secho(f"swarm-edge chat ({session.via}). {CHAT_HELP}", err=True, dim=True)
    conversation, current, known = Conversation(system), model, [m.id for m in registry]
    try:
        while True:
            try:
                text = input("you> " if interactive else "").strip()
            except EOFError:
                break
            except KeyboardInterrupt:
                typer.echo("", err=True)
                continue
            if text.startswith("/"):
                go_on, current = _command(text, conversation, known, current)
                if not go_on:
                    break
            elif text:
                conversation.ask(text)
                answer = _turn(session, conversation, current, max_tokens, temperature, offline, interactive)
                conversation.answered(answer.text) if answer is not None else conversation.unask()
    finally:
        session.close()


def _turn(session, conversation, model, max_tokens, temperature, offline, interactive):
    """One answer; drops the oldest turns when the conversation outgrows the model's context."""
    from swarm_edge.errors import ContextLengthError

    if interactive:
        typer.secho("bot> ", nl=False, bold=True)
    while True:
        try:
            answer = session.ask(list(conversation.messages), model=model, max_tokens=max_tokens,
                                 temperature=temperature, offline=offline, on_token=echo_token)
            typer.echo("")
            if interactive:
                typer.secho(trace_line(answer.to_dict(), session.via), err=True, dim=True)
            return answer
        except ContextLengthError:
            if not conversation.drop_oldest_turn():
                typer.secho("\nerror: this message alone is too long for the model's context", err=True,
                            fg=typer.colors.RED)
                return None
            typer.secho("(dropped the oldest turn to fit the model's context)", err=True, dim=True)
        except KeyboardInterrupt:
            typer.secho("\n(stopped)", err=True, dim=True)
            return None
        except SwarmEdgeError as exc:
            typer.secho(f"\nerror: {exc}", err=True, fg=typer.colors.RED)
            return None


def route(
    prompt: str = typer.Argument(..., help="The prompt to route, or - to read one prompt per line from stdin."),
    as_json: Json = False,
    local: Local = False,
    config: Config = None,
    socket: Socket = None,
) -> None:
    """Explain which task and model a prompt would go to, without generating anything.

    The router compares the prompt with each task's examples in models.yaml (minilm-l6 embeddings) and
    matches the tasks' keywords; confidence is the calibrated probability of the chosen task. With -,
    prints one JSON object per line of input (the Route JSON: task, model, target, confidence, reason,
    scores).
    """
    try:
        settings, registry = setup(config, socket=socket)
        session = _session(settings, registry, local=local, keep=False, budget=None, threads=None, config=config)
        try:
            if prompt == "-":
                for line in sys.stdin:
                    if line.strip():
                        typer.echo(json.dumps(session.route(line.rstrip("\n")), ensure_ascii=False))
                return
            r = session.route(read_prompt(prompt))
        finally:
            session.close()
    except SwarmEdgeError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps(r, ensure_ascii=False))
        return
    typer.echo(f"task {r['task']} -> {r['model']} ({r['target']}), confidence {r['confidence']:.2f}: {r['reason']}")
    scores = ", ".join(f"{t} {s:.2f}" for t, s in sorted(r["scores"].items(), key=lambda kv: -kv[1]) if s)
    if scores:
        typer.echo(f"scores: {scores}")


def register(app: typer.Typer) -> None:
    app.command()(ask)
    app.command()(chat)
    app.command()(route)
