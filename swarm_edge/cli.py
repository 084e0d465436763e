"""`swarm-edge`: a thin typer CLI over the library. Errors become one message and an exit code."""

from __future__ import annotations

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
    "SWARM_EDGE_CONFIG (models.yaml; default: the embedded default swarm), SWARM_EDGE_THREADS.",
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


@app.command()
def ask(
    prompt: str = typer.Argument(..., help="The question or instruction. Use - to read it from stdin."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model id; default: routed by task."),
    as_json: bool = JsonOpt,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Cap on generated tokens."),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 = greedy (deterministic)."),
    system: Optional[str] = typer.Option(None, help="A system message for chat models."),
    offline: bool = typer.Option(False, "--offline", help="Never download; use only fetched models."),
    local: bool = typer.Option(False, "--local", help="Run in this process (today always; the daemon comes next)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: physical cores)."),
    budget: Optional[str] = BudgetOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Answer PROMPT with the model that fits it; prints the answer, then which model answered."""
    from swarm_edge.orchestrator import ask as run_ask

    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        typer.secho("error: the prompt is empty", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    try:
        settings, registry = _setup(config, threads=threads, offline=offline)
        streamed = not as_json and sys.stdout.isatty()
        answer = run_ask(prompt, registry, settings, budget=budget, model_id=model, max_tokens=max_tokens,
                         temperature=temperature, system=system,
                         on_token=(lambda t: (sys.stdout.write(t), sys.stdout.flush())) if streamed else None,
                         progress_factory=_progress_factory)
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    typer.echo("" if streamed else answer.text)
    t = answer.timings
    rate = f", {t['decode_tok_s']:.1f} tok/s" if t.get("decode_tok_s") else ""
    typer.secho(f"-- {answer.model} (task {answer.route.task}: {answer.route.reason}; load {t['load_s']:.2f} s, "
                f"{answer.tokens} tokens in {t['generate_s']:.2f} s{rate})", err=True, dim=True)


@app.command()
def status(as_json: bool = JsonOpt, budget: Optional[str] = BudgetOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Budget, resident models (PSS each), queue, loads/evictions, and each model's memory estimate.

    Without a running daemon this describes a fresh in-process engine: nothing is resident yet, and the
    estimates show what admission would reserve (formula, or calibrated from a measured peak).
    """
    from swarm_edge.engine import Engine

    try:
        settings, registry = _setup(config, offline=True)
        snap = Engine(registry, settings, budget=budget).status()
    except SwarmEdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(snap))
        return
    mib = 2**20
    typer.echo(f"budget {snap['budget'] / mib:,.0f} MiB, in use {snap['used'] / mib:,.0f} MiB "
               f"(swarm-edge itself {snap['base'] / mib:,.0f} MiB), waiting {snap['waiting']}")
    typer.echo("resident: " + (", ".join(f"{r['model']} ({(r['pss'] or r['reserved']) / mib:,.0f} MiB)"
                                         for r in snap["residents"]) or "none (no daemon running)"))
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
