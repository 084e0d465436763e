"""A memory cgroup to run a process tree in, as a board with that much memory would: the board profiles of
bench_boards.py and the cgroup-aware budget's test. Root only. The cgroup v1 memory controller when this machine
has one (these machines: hybrid hierarchy), else cgroup v2 with its memory controller enabled. Created under this
process's own cgroup, so the limits above it still apply.

    with Cgroup("board-1g", 1 << 30) as cg:
        subprocess.run([...], preexec_fn=cg.enter)   # the child and all it spawns live in the cgroup
        cg.oom_kills(), cg.peak()
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _mount(kind: str) -> tuple[Path, str] | None:
    """(mount point, this process's path in it) of the v1 memory hierarchy ("v1") or the v2 one ("v2")."""
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        ident, controllers, path = line.split(":", 2)
        if kind == "v2" and ident == "0" and controllers == "":
            groups[kind] = path
        elif kind == "v1" and "memory" in controllers.split(","):
            groups[kind] = path
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if kind in groups and fields[3] == "/" and (
                (kind == "v2" and tail[0] == "cgroup2")
                or (kind == "v1" and tail[0] == "cgroup" and "memory" in tail[2].split(","))):
            return Path(fields[4]), groups[kind]
    return None


def available() -> str | None:
    """Why a memory cgroup cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "memory cgroups need root"
    v1, v2 = _mount("v1"), _mount("v2")
    if v1 is not None and os.access(v1[0] / v1[1].lstrip("/"), os.W_OK):
        return None
    if v2 is not None and "memory" in (v2[0] / v2[1].lstrip("/") / "cgroup.controllers").read_text():
        return None
    return "no writable cgroup memory controller (neither v1 nor v2)"


class Cgroup:
    """A child memory cgroup with a hard limit (and no swap beyond it); removed on exit."""

    def __init__(self, name: str, limit: int) -> None:
        why = available()
        if why:
            raise RuntimeError(why)
        v1 = _mount("v1")
        if v1 is not None and os.access(v1[0] / v1[1].lstrip("/"), os.W_OK):
            self.version, base = "v1", v1[0] / v1[1].lstrip("/")
        else:
            v2 = _mount("v2")
            assert v2 is not None
            self.version, base = "v2", v2[0] / v2[1].lstrip("/")
        self.path = base / f"{name}-{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        self.limit = limit
        if self.version == "v1":
            self._write("memory.limit_in_bytes", str(limit))
            if (self.path / "memory.memsw.limit_in_bytes").exists():
                self._write("memory.memsw.limit_in_bytes", str(limit))
        else:
            self._write("memory.max", str(limit))
            if (self.path / "memory.swap.max").exists():
                self._write("memory.swap.max", "0")

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def enter(self) -> None:
        """Move the calling process into the cgroup (a Popen preexec_fn: the child, before it execs)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in this cgroup so far."""
        text = self._read("memory.oom_control" if self.version == "v1" else "memory.events")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak(self) -> int:
        """The most memory the cgroup has held (the kernel's count: anonymous memory and page cache)."""
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        return int(self._read(name)) if (self.path / name).exists() else 0

    def swapped(self) -> int:
        """Bytes of the cgroup's memory in swap right now (0 on a machine without swap)."""
        for line in self._read("memory.stat").splitlines():
            key, _, value = line.partition(" ")
            if key in ("swap", "total_swap"):
                return int(value)
        return 0

    def close(self) -> None:
        """Remove the cgroup; processes still in it are moved to the parent first."""
        parent = self.path.parent / "cgroup.procs"
        for _ in range(50):
            try:
                pids = self._read("cgroup.procs").split()
            except OSError:
                return
            for pid in pids:
                try:
                    parent.write_text(pid)
                except OSError:
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
