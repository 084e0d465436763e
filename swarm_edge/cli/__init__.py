"""`swarm-edge`: a thin typer CLI over the library (swarm_edge.session and friends). Errors become one message and
an exit code. Commands import what they need when they run: `swarm-edge --help` loads nothing heavy."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    help="On-device runtime for swarms of small language models (GGUF + ONNX), routed by content.\n\n"
    "Environment: SWARM_EDGE_HOME (models, calibration; default ~/.local/share/swarm-edge), "
    "SWARM_EDGE_CONFIG (models.yaml; default: the embedded default swarm), SWARM_EDGE_THREADS, "
    "SWARM_EDGE_BUDGET, SWARM_EDGE_SOCKET (the daemon's socket).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, fetch and verify the models of models.yaml.", no_args_is_help=True)
app.add_typer(models_app, name="models")

from swarm_edge.cli import admin, answer, models  # noqa: E402  (the commands register themselves on the apps)

answer.register(app)
admin.register(app)
models.register(models_app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["app", "main", "models_app"]
