"""models list / fetch / verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from swarm_edge.cli.options import Config, Json
from swarm_edge.cli.render import fail, progress_factory, setup
from swarm_edge.errors import SwarmEdgeError

Ids = typer.Argument(None, help="Model ids; default: all.")


def _select(config: Optional[Path], ids: Optional[list[str]]):
    """(settings, registry, the named models or all of them); bad config or ids exit with one message."""
    try:
        settings, registry = setup(config)
        return settings, registry, [registry.get(i) for i in ids] if ids else list(registry)
    except SwarmEdgeError as exc:
        raise fail(exc) from None


def models_list(as_json: Json = False, config: Config = None) -> None:
    """Show every declared model, its size, tasks and whether its files are here."""
    from swarm_edge.sources import file_status

    settings, registry, specs = _select(config, None)
    rows = []
    for spec in specs:
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


def models_fetch(ids: Optional[list[str]] = Ids, as_json: Json = False, config: Config = None) -> None:
    """Download (or find) each model's files, verify size and sha256, store them under SWARM_EDGE_HOME."""
    from swarm_edge.sources import ensure_model

    settings, registry, specs = _select(config, ids)
    results, failed = [], 0
    for spec in specs:
        try:
            paths = ensure_model(settings, spec, registry.base_dir, progress_factory=progress_factory)
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


def models_verify(ids: Optional[list[str]] = typer.Argument(None, help="Model ids; default: all fetched."),
                  as_json: Json = False, config: Config = None) -> None:
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


def register(models_app: typer.Typer) -> None:
    models_app.command("list")(models_list)
    models_app.command("fetch")(models_fetch)
    models_app.command("verify")(models_verify)
