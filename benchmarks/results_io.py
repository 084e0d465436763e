"""What the benchmarks share: which models are here to measure, where results go (JSON for machines next
to a Markdown table for people), and a package's source fetched from PyPI (benchmark-only builds)."""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def fetch_sdist(project: str, version: str, dest: Path) -> Path:
    """`project`'s sdist of `version` unpacked under dest/src (the archive kept in dest), its sha256 checked against
    the index's. Found through the simple index (PEP 691 JSON): the part of PyPI that mirrors and proxies serve."""
    index = urllib.request.Request(f"https://pypi.org/simple/{project}/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(index, timeout=60) as resp:
        where, files = resp.geturl(), json.load(resp)["files"]
    name = f"{project.replace('-', '_')}-{version}.tar.gz"
    sdist = next((f for f in files if f["filename"] == name), None)
    if sdist is None:
        raise SystemExit(f"{name} is not in the package index ({where})")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / name
    if not archive.exists():
        print(f"fetching {name}", file=sys.stderr)
        urllib.request.urlretrieve(urllib.parse.urljoin(where, sdist["url"]), archive)  # PEP 691: may be relative
    if hashlib.sha256(archive.read_bytes()).hexdigest() != sdist["hashes"]["sha256"]:
        archive.unlink()
        raise SystemExit(f"{name}: sha256 does not match the index's; removed, run again")
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "src", filter="data")
    return dest / "src" / name.removesuffix(".tar.gz")


def write_results(name: str, data: dict, lines: list[str]) -> str:
    """Write results/NAME.json and results/NAME.md (the table lines), print the table, return it."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    table = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    return table


def fetched_models(settings, registry, ids) -> Iterator[tuple]:
    """(spec, files) for each id whose files are already here; the others are named on stderr and skipped."""
    from swarm_edge.errors import ModelFileError
    from swarm_edge.sources import ensure_model

    for mid in ids:
        spec = registry.get(mid)
        try:
            yield spec, ensure_model(settings, spec, registry.base_dir, fetch=False)
        except ModelFileError as exc:
            print(f"skip {mid}: {exc}", file=sys.stderr)


def default_router():
    """(registry, the embedder's spec and files, a warmed Router) for the default swarm, 1 thread; exits with a
    clear message when minilm-l6 is not fetched or cannot load."""
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.registry import load_registry
    from swarm_edge.router_host import Router

    settings = Settings.load(threads=1)
    registry = load_registry(DEFAULT_CONFIG)
    spec, files = next(fetched_models(settings, registry, [registry.router.embedder]), (None, None))
    if spec is None:
        raise SystemExit("minilm-l6 is not fetched: swarm-edge models fetch minilm-l6")
    router = Router(registry, lambda mid: files, threads=1, cache_dir=settings.home / "cache")
    if why := router.warm():
        raise SystemExit(why)
    return registry, spec, files, router


def wait_health(http, proc, timeout: float = 120) -> None:
    """Until a server started as `proc` answers GET /health (httpx client `http`); SystemExit if it exits or
    stays silent."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if http.get("/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{proc.args[0]} did not answer /health within {timeout:.0f} s")
