"""How a request is answered: plans as data (plan.py), strategies as small parts (strategies/), one run loop
(run.py). `swarm_edge.orchestrator` is the public face; docs/architecture.md draws the whole flow."""
