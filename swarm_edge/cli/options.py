"""Every option more than one command takes, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="models.yaml to use (env SWARM_EDGE_CONFIG).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Budget = Annotated[Optional[str], typer.Option(
    "--budget", "-b", help="Memory budget for all of swarm-edge: bytes, 1.5GiB, 800MB or a share of RAM like 60% "
    "(env SWARM_EDGE_BUDGET; default 60%).")]
Local = Annotated[bool, typer.Option("--local", help="Run in this process even if a daemon is running.")]
Temperature = Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy (deterministic).")]
Offline = Annotated[bool, typer.Option("--offline", help="Never download, never use the cloud: only fetched models, "
                                       "and no cloud client is even built.")]
Socket = Annotated[Optional[Path], typer.Option(
    "--socket", help="The daemon's Unix socket (env SWARM_EDGE_SOCKET; default "
    "$XDG_RUNTIME_DIR/swarm-edge/swarm-edge.sock, else SWARM_EDGE_HOME/run/swarm-edge.sock).")]
MaxTokens = Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Cap on generated tokens.")]
System = Annotated[Optional[str], typer.Option(help="A system message for chat models.")]
Threads = Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: physical cores). In-process only.")]
