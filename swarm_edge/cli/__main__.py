"""`python -m swarm_edge.cli`: the same as the `swarm-edge` command (serve re-executes itself this way)."""

from swarm_edge.cli import main

main()
