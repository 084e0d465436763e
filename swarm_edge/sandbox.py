"""Run model-written Python where it can do no harm: a fresh `python -I` in an empty temporary directory, in a
network namespace of its own (no interface but loopback: `unshare --net`, as root, else `unshare -rn` with a
user namespace), under CPU, memory, file-size and process limits, its whole process group killed at the timeout.

No sandbox, no run: where neither unshare works, run_untrusted raises SandboxUnavailable (the caller reports
it; `SWARM_EDGE_UNSAFE_CHECKS=1` runs without the network namespace, the limits still apply, for a machine that
has no user namespaces and whose owner accepts that).
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

CPU_S = 10                  # CPU seconds (RLIMIT_CPU): a busy loop dies here even if the wall clock is generous
MEMORY = 1 << 30            # address space (RLIMIT_AS)
FILE_SIZE = 16 << 20        # the largest file it may write (RLIMIT_FSIZE)
PROCESSES = 64              # RLIMIT_NPROC (per user: only bites when not root; the namespace adds nothing)


class SandboxUnavailable(RuntimeError):
    """Neither `unshare --net` nor `unshare -rn` works on this machine."""


@functools.cache
def _prefix() -> tuple[str, ...]:
    """The command that puts a child into a network namespace of its own, tried once per process."""
    unshare = shutil.which("unshare")
    if unshare:
        for flags in (("--net",), ("--map-root-user", "--net")):
            probe = subprocess.run([unshare, *flags, "true"], capture_output=True, timeout=10)
            if probe.returncode == 0:
                return (unshare, *flags)
    if os.environ.get("SWARM_EDGE_UNSAFE_CHECKS") == "1":
        return ()
    raise SandboxUnavailable("cannot isolate model-written code from the network: `unshare --net` and "
                             "`unshare -rn` both fail here (install util-linux, allow user namespaces, or set "
                             "SWARM_EDGE_UNSAFE_CHECKS=1 to run the checks with limits but with the network)")


def _limits() -> None:  # runs in the child between fork and exec
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE, FILE_SIZE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() != 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))


def run_untrusted(program: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Run `program` (Python source) sandboxed; (exited 0, why not: the last line of stderr or the limit hit)."""
    prefix = _prefix()
    with tempfile.TemporaryDirectory(prefix="swarm-check-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen([*prefix, sys.executable, "-I", path], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_limits)  # noqa: PLW1509
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it started
            proc.communicate()
            return False, f"timed out after {timeout:.0f} s"
    if proc.returncode == 0:
        return True, ""
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        return False, f"killed by a limit (signal {-proc.returncode})"
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return False, lines[-1][:300] if lines else f"exit code {proc.returncode}"
