"""How much memory the box this process runs in has: the host's RAM, or less when a memory cgroup caps it.

A container, a systemd unit with MemoryMax, or a board profile puts swarm-edge in a memory cgroup whose limit
the kernel enforces with the OOM killer; `psutil.virtual_memory()` still reports the host. So the default budget
(a share of "the box") takes the smallest of: the host's RAM, and every limit on this process's cgroup path,
its own and its ancestors' (a parent's limit binds its children too):
- cgroup v2: `memory.max` and `memory.high` (above `high` the kernel throttles and reclaims hard);
- cgroup v1: `memory.limit_in_bytes` (the "unlimited" value is a page-rounded 2^63).

Both hierarchies are found from /proc/self/mountinfo and /proc/self/cgroup, so hybrid systems (v1 memory
controller, v2 mounted at /sys/fs/cgroup/unified), containers with a cgroup namespace, and cgroup trees mounted
elsewhere all resolve. Unreadable or absent files mean "no limit there", never an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_edge.config import parse_size

DEFAULT_BUDGET = "60%"
UNLIMITED = 1 << 60  # v1 reports 9223372036854771712 for "no limit"; anything this large is no limit


@dataclass(frozen=True)
class BoxMemory:
    """The memory a budget share is taken from, and where that figure came from."""

    total: int
    source: str           # e.g. "RAM 23.5 GiB" or "cgroup v1 memory.limit_in_bytes 1.0 GiB (/sys/fs/...)"
    ram: int
    cgroup: int | None    # the tightest cgroup limit, None when nothing caps this process


def box_memory(proc: str | os.PathLike = "/proc/self") -> BoxMemory:
    """The host's RAM, or the tightest memory cgroup limit on this process when that is smaller."""
    import psutil

    ram = psutil.virtual_memory().total
    limit = cgroup_limit(proc)
    if limit is not None and limit[0] < ram:
        return BoxMemory(limit[0], f"{limit[1]} {_gib(limit[0])} ({limit[2]})", ram, limit[0])
    return BoxMemory(ram, f"RAM {_gib(ram)}", ram, None if limit is None else limit[0])


def cgroup_limit(proc: str | os.PathLike = "/proc/self") -> tuple[int, str, str] | None:
    """(bytes, which file, which directory) of the tightest memory limit on this process's cgroups, or None."""
    proc = Path(proc)
    try:
        mounts = _cgroup_mounts((proc / "mountinfo").read_text())
        groups = _groups((proc / "cgroup").read_text())
    except OSError:
        return None
    best: tuple[int, str, str] | None = None
    for version, mount_root, mount_point in mounts:
        path = groups.get(version)
        if path is None:
            continue
        names = ["memory.max", "memory.high"] if version == "v2" else ["memory.limit_in_bytes"]
        for directory in _chain(Path(mount_point), mount_root, path):
            for name in names:
                value = _read_limit(directory / name)
                if value is not None and (best is None or value < best[0]):
                    best = (value, f"cgroup {version} {name}", str(directory))
    return best


def _cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(version, root inside the hierarchy, mount point) of the cgroup2 mounts and the v1 memory mounts."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 1:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            out.append(("v2", root, point))
        elif tail[0] == "cgroup" and len(tail) >= 3 and "memory" in tail[2].split(","):
            out.append(("v1", root, point))
    return out


def _groups(cgroup: str) -> dict[str, str]:
    """This process's cgroup path in the v2 hierarchy ("0::/path") and in the v1 memory hierarchy."""
    out: dict[str, str] = {}
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ident, controllers, path = parts
        if ident == "0" and controllers == "":
            out["v2"] = path
        elif "memory" in controllers.split(","):
            out["v1"] = path
    return out


def _chain(mount_point: Path, mount_root: str, path: str) -> list[Path]:
    """The directories from this process's cgroup up to the mount point. A path outside the mount's root (a
    container that sees its own cgroup as the root without a namespace) is the mount point itself."""
    rel = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
    if rel.startswith(".."):
        rel = "."
    parts = [p for p in Path(rel).parts if p not in (".", "")]
    return [mount_point.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max", or garbage: no limit here
        return None
    value = int(text)
    return value if 0 < value < UNLIMITED else None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


def give_back() -> None:
    """Return freed heap to the system: a garbage collection, then glibc's malloc_trim (Python's and onnxruntime's
    frees otherwise stay mapped in the process). A no-op where there is no glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def one_malloc_arena() -> None:
    """Make glibc keep one malloc arena for the whole process (M_ARENA_MAX = 1), before any thread allocates.

    By default every thread that allocates gets an arena of its own (up to 8 per core), and what a thread frees
    stays in its arena: the daemon's helper threads (file checks, routing, the thread pool) left 25-30 MiB there
    that malloc_trim did not return. The daemon's threads allocate little and rarely at once, so one arena costs
    nothing measurable; the daemon idles at 57 MiB instead of 77 (benchmarks/bench_idle.py). No-op without glibc.
    """
    import ctypes
    import ctypes.util

    M_ARENA_MAX = -8
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


def resolve_budget(value: str | int | None, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(bytes, where they came from) from a flag, SWARM_EDGE_BUDGET, or the default share of the box: this
    machine's RAM, or its memory cgroup's limit when that is smaller (boxmem.py)."""
    env = os.environ if env is None else env
    if isinstance(value, int):
        return parse_size(value, name="budget"), f"{value / 2**20:,.0f} MiB given"
    raw, how = ((value, "--budget") if value is not None else
                (env["SWARM_EDGE_BUDGET"], "SWARM_EDGE_BUDGET") if env.get("SWARM_EDGE_BUDGET") else
                (DEFAULT_BUDGET, "default"))
    box = box_memory()
    size = parse_size(raw, total=box.total, name="budget (--budget / SWARM_EDGE_BUDGET)")
    source = f"{how} {raw} of {box.source}" if "%" in raw else f"{how} {raw}"
    if size > box.total:
        source += f", above the box's {box.source}: the kernel may kill models before the budget is reached"
    return size, source


def tree_pss(pid: int | None = None) -> int:
    """Summed PSS of a process and all its descendants, in bytes, read now (no parents or names: family())."""
    import psutil

    root = psutil.Process(pid)
    return pss_sum([root, *root.children(recursive=True)])


def family(pid: int | None = None) -> tuple[Any, list[tuple[Any, int, str]]]:
    """A process and its descendants, each with its parent's pid and its name, from one scan of /proc (psutil's
    children() reads every process's stat file: 1.7 ms here; the daemon's base took three scans a reading). A
    process gone meanwhile is left out."""
    import psutil

    root = psutil.Process(pid)
    kin = []
    for p in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            kin.append((p, p.ppid(), p.name()))
    return root, kin


def subtree(kin: list[tuple[Any, int, str]], top: int) -> list:
    """The process `top` and its descendants, from family()'s list."""
    parents = {p.pid: parent for p, parent, _ in kin}
    out = []
    for p, _, _ in kin:
        pid: int | None = p.pid
        for _ in range(len(kin) + 1):  # a parent chain longer than the family: a pid reused during the scan
            if pid is None or pid == top:
                break
            pid = parents.get(pid)
        if pid == top:
            out.append(p)
    return out


def pss_sum(procs) -> int:
    """Summed PSS of psutil Processes in bytes, read now; those that exited meanwhile count nothing."""
    import psutil

    out = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out += p.memory_full_info().pss
    return out
