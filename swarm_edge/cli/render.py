"""What the CLI prints besides answers: errors, the trace line, download progress."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from swarm_edge.errors import SwarmEdgeError


def fail(exc: SwarmEdgeError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(exc.exit_code)


def setup(config: Optional[Path], **kw: Any):
    """(settings, registry) for a command; raises SwarmEdgeError on a bad configuration."""
    from swarm_edge.config import Settings
    from swarm_edge.registry import load_registry

    settings = Settings.load(config=config, **kw)
    return settings, load_registry(settings.config_path)


def read_prompt(prompt: str) -> str:
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        typer.secho("error: the prompt is empty", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    return prompt


def progress_factory(label: str, total: int, source: str):
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


def echo_token(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _step(s: dict) -> str:
    sure = f" {s['mean_logprob']:.2f}" if s.get("mean_logprob") is not None else ""
    return f"{s['task']}:{s['model']}{sure}{' unsure' if s.get('accepted') is False else ''}"


def trace_line(a: dict, via: str) -> str:
    """One dim line under an answer: who answered, why, the plan's steps, and where the time went."""
    t = a["timings"]
    rate = f", {t['decode_tok_s']:.1f} tok/s" if t.get("decode_tok_s") else ""
    route = a["route"]
    steps = a.get("steps") or []
    plan = f"plan {a.get('plan')}: " + " -> ".join(_step(s) for s in steps) + "; " if len(steps) > 1 else ""
    line = (f"-- {a['model']} (task {route.get('task')}: {route.get('reason')}; {plan}{via}; "
            f"load {t.get('load_s') or 0:.2f} s, {a['tokens']} tokens in {t.get('generate_s') or 0:.2f} s{rate})")
    esc = a.get("escalation")
    if esc:
        red = ", ".join(f"{k} x{n}" for k, n in (esc.get("redacted") or {}).items())
        line += (f"\n-- cloud: {esc.get('reason')}; {esc.get('outcome')}"
                 + (f"; redacted before sending: {red}" if red else "")
                 + ("".join(f"; {n}" for n in esc.get("notes") or [])))
    return line
