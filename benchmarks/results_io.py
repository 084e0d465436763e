"""Where benchmarks put their results: JSON for machines next to a Markdown table for people."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: dict, lines: list[str]) -> str:
    """Write results/NAME.json and results/NAME.md (the table lines), print the table, return it."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    table = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    return table
