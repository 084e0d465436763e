"""The budget knows its box: the memory cgroup limit (v1 and v2) caps the default budget.

The parsing tests build /proc/self-like directories and cgroup trees in tmp_path (real files, read by the real
code); the last test puts a real `swarm-edge status` in a real 1.5 GiB memory cgroup on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm_edge.boxmem import box_memory, cgroup_limit, resolve_budget

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cgroups  # noqa: E402

GIB = 2**30


def proc_dir(tmp_path: Path, mountinfo: list[str], cgroup: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("\n".join(mountinfo) + "\n")
    (proc / "cgroup").write_text("\n".join(cgroup) + "\n")
    return proc


def limits(root: Path, files: dict[str, str]) -> None:
    for rel, value in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(value + "\n")


def test_v2_takes_the_tightest_limit_on_the_path_including_parents_and_memory_high(tmp_path):
    cg = tmp_path / "cg2"
    limits(cg, {"user.slice/memory.max": str(3 * GIB), "user.slice/app.service/memory.max": "max",
                "user.slice/app.service/memory.high": str(2 * GIB), "memory.max": "max"})
    proc = proc_dir(tmp_path, [f"30 1 0:26 / {cg} rw - cgroup2 cgroup2 rw"], ["0::/user.slice/app.service"])
    assert cgroup_limit(proc) == (2 * GIB, "cgroup v2 memory.high", str(cg / "user.slice/app.service"))
    limits(cg, {"user.slice/memory.max": str(GIB)})
    assert cgroup_limit(proc) == (GIB, "cgroup v2 memory.max", str(cg / "user.slice"))


def test_v1_hybrid_ignores_the_unlimited_value_and_other_controllers(tmp_path):
    mem, cpu, uni = tmp_path / "memory", tmp_path / "cpu", tmp_path / "unified"
    limits(mem, {"memory.limit_in_bytes": "9223372036854771712", "box/memory.limit_in_bytes": str(GIB)})
    limits(cpu, {"box/memory.limit_in_bytes": "1"})  # not the memory hierarchy: never read
    limits(uni, {"other/memory.max": "12"})          # a sibling of the process's v2 cgroup: not on its path
    proc = proc_dir(tmp_path, [
        f"32 31 0:29 / {cpu} rw,relatime - cgroup cgroup rw,cpu",
        f"35 31 0:32 / {mem} rw,relatime - cgroup cgroup rw,memory",
        f"41 31 0:38 / {uni} rw,relatime - cgroup2 cgroup2 rw"],
        ["4:memory:/box", "1:cpu:/box", "0::/elsewhere"])
    assert cgroup_limit(proc) == (GIB, "cgroup v1 memory.limit_in_bytes", str(mem / "box"))
    limits(mem, {"box/memory.limit_in_bytes": "9223372036854771712"})
    assert cgroup_limit(proc) is None


def test_a_container_view_and_an_escaped_mount_point_resolve(tmp_path):
    cg = tmp_path / "sys fs"  # mountinfo writes the space as \040
    limits(cg, {"memory.max": str(512 * 2**20)})
    mount = str(cg).replace(" ", "\\040")
    # the process's path is outside the mount's root (a container without a cgroup namespace): the mount point
    proc = proc_dir(tmp_path, [f"30 1 0:26 /docker/abc {mount} rw - cgroup2 cgroup2 rw"], ["0::/docker/xyz"])
    assert cgroup_limit(proc) == (512 * 2**20, "cgroup v2 memory.max", str(cg))


def test_no_cgroup_files_means_no_limit_and_garbage_is_no_limit(tmp_path):
    assert cgroup_limit(tmp_path / "missing") is None
    cg = tmp_path / "cg"
    limits(cg, {"memory.max": "lots"})
    proc = proc_dir(tmp_path, [f"30 1 0:26 / {cg} rw - cgroup2 cgroup2 rw", "garbage line"], ["0::/", "x"])
    assert cgroup_limit(proc) is None


def test_the_default_budget_is_a_share_of_the_box_and_says_so(tmp_path):
    cg = tmp_path / "cg"
    limits(cg, {"memory.max": str(GIB)})
    proc = proc_dir(tmp_path, [f"30 1 0:26 / {cg} rw - cgroup2 cgroup2 rw"], ["0::/"])
    box = box_memory(proc)
    assert (box.total, box.cgroup) == (GIB, GIB) and box.source.startswith("cgroup v2 memory.max 1.00 GiB")
    size, source = resolve_budget(None, {})
    host = box_memory()
    assert size == int(host.total * 0.6) and source == f"default 60% of {host.source}"
    assert resolve_budget("2GiB", {})[1] == "--budget 2GiB"
    assert resolve_budget(None, {"SWARM_EDGE_BUDGET": "50%"})[1].startswith("SWARM_EDGE_BUDGET 50% of ")
    too_big = resolve_budget(f"{host.total + GIB}", {})[1]
    assert "above the box's" in too_big and "kernel may kill" in too_big


def test_status_inside_a_real_memory_cgroup_budgets_from_its_limit(tmp_path):
    why = cgroups.available()
    if why:
        pytest.skip(why)
    exe = str(Path(sys.executable).with_name("swarm-edge"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SWARM_EDGE_HOME": str(tmp_path / "home")}
    with cgroups.Cgroup("se-test-box", 1536 * 2**20) as cg:
        out = subprocess.run([exe, "status", "--local", "--json"], preexec_fn=cg.enter, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)
        assert snap["budget"] == int(1536 * 2**20 * 0.6)
        assert snap["budget_source"] == f"default 60% of cgroup {cg.version} " + (
            "memory.limit_in_bytes" if cg.version == "v1" else "memory.max") + f" 1.50 GiB ({cg.path})"
        text = subprocess.run([exe, "status", "--local"], preexec_fn=cg.enter, env=env, capture_output=True,
                              text=True, timeout=120).stdout
        assert f"budget from: default 60% of cgroup {cg.version}" in text
    outside = json.loads(subprocess.run([exe, "status", "--local", "--json"], env=env, capture_output=True,
                                        text=True, timeout=120, check=True).stdout)
    assert outside["budget"] == int(box_memory().total * 0.6)


# ------------------------------------------------------------ the base's processes, from one scan of /proc

def test_one_scan_finds_a_family_with_parents_and_names_and_its_subtrees():
    from swarm_edge.boxmem import family, pss_sum, subtree, tree_pss

    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])  # a child with a grandchild
    try:
        for _ in range(100):
            root, kin = family()
            grandchildren = [p for p, parent, _ in kin if parent == child.pid]
            if grandchildren and [name for p, _, name in kin if p.pid == grandchildren[0].pid] == ["sleep"]:
                break  # not caught between its fork and its exec (named "sh" then)
            time.sleep(0.05)
        assert (child.pid, os.getpid()) in {(p.pid, parent) for p, parent, _ in kin}
        assert [name for p, _, name in kin if p.pid == grandchildren[0].pid] == ["sleep"]
        assert {p.pid for p in subtree(kin, child.pid)} == {child.pid, grandchildren[0].pid}
        assert subtree(kin, 999_999_999) == []
        assert pss_sum(subtree(kin, child.pid)) == pytest.approx(tree_pss(child.pid), abs=2**20)
    finally:
        child.kill()
        child.wait()
    gone = [p for p, _, _ in kin if p.pid == child.pid]
    assert pss_sum(gone) == 0  # exited meanwhile: counts nothing, raises nothing


def test_a_workers_end_of_request_pss_walks_its_pages_only_when_its_peak_grew():
    import resource

    from swarm_edge.workers import process
    from swarm_edge.workers.process import RSS_SLACK

    reads = []
    real_open = open

    def counting_open(path, *a, **k):
        if str(path) == "/proc/self/smaps_rollup":
            reads.append(path)
        return real_open(path, *a, **k)

    process._last_pss.clear()
    base = process._pss()
    import builtins

    builtins.open, saved = counting_open, builtins.open
    try:
        again = process._pss(fresh=False)
        assert abs(again - base) <= RSS_SLACK and reads == []   # the peak did not grow (past the slack): no reading
        import psutil

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        above = peak - psutil.Process().memory_info().rss + 64 * 2**20  # earlier tests may have left a higher peak
        block = bytearray(above)  # touched (zeroed): a new peak, 64 MiB above the old one
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > peak
        grown = process._pss(fresh=False)
        assert len(reads) == 1 and grown - base > 60 * 2**20, (grown - base) / 2**20
        del block
        assert process._pss(fresh=False) == grown and len(reads) == 1  # freed: the peak stands, so does the value
        assert process._pss() >= grown - 2**20 and len(reads) == 2     # fresh: read, and the freed peak still counts
    finally:
        builtins.open = saved
