"""The daemon's handle on a worker process that is its own child: a worker forked by the forkserver leaves it at
once (process.py `_leave_the_forkserver`) and the kernel hands it to the daemon, a child subreaper. So the forkserver
may stop while models are resident (idle.py: the daemon dozes), and the daemon reaps its workers itself and reads
their real exit status (multiprocessing's handle reads it from the forkserver, and says 255 once that is gone).

The same face as multiprocessing.Process where the pool and Worker use it: pid, is_alive(), join(), exitcode, kill().
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time


class Child:
    """One worker process, this process's child, by pid. Thread-safe: the event loop asks is_alive() while a
    process thread joins. The pid cannot be reused before we reap it, so kill() never hits a stranger."""

    def __init__(self, pid: int) -> None:
        if pid <= 1:  # waitpid(0) and kill(0) mean the whole process group
            raise ValueError(f"not a worker's pid: {pid}")
        self.pid = pid
        self.exitcode: int | None = None
        self._lock = threading.Lock()
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):  # Linux 5.3+; else join() polls
            self._pidfd = os.pidfd_open(pid)

    def _reap(self) -> bool:
        """Whether the process has ended (reaped now or before)."""
        with self._lock:
            if self.exitcode is not None:
                return True
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): gone, its status unknown
                self.exitcode = 255
            else:
                if pid == 0:
                    return False
                self.exitcode = os.waitstatus_to_exitcode(status)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            return True

    def is_alive(self) -> bool:
        """False once the process has ended."""
        return not self._reap()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process has ended, or `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._reap():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            fd = self._pidfd
            if fd is None:
                time.sleep(0.005 if left is None else min(0.005, left))
                continue
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile by a reap on another thread
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll(100 if left is None else max(1, int(min(left, 0.1) * 1000)))  # an fd reaped meanwhile

    def kill(self) -> None:
        """SIGKILL it, if it has not ended."""
        with self._lock:
            if self.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)

    def __del__(self) -> None:
        fd = getattr(self, "_pidfd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
