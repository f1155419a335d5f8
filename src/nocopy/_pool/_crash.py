"""Crash attribution: which task each worker was running, and the error naming it when one dies.

Every task writes (task id, pid, state) into one row of a small shared table
(`TaskTable`) as it starts and ends. When a worker dies, the table
tells which task it had started and not finished, so the caller's
`nocopy.errors.WorkerCrashedError` names the exit code or signal *and*
the task.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import MutableMapping
from multiprocessing.connection import wait as _wait_sentinels
from typing import Any

import numpy as np

from .._shared import Shared, zeros
from ..errors import NocopyError, StartMethodError, WorkerCrashedError
from ._start import EXIT_UNGUARDED_MAIN, unguarded_main_error

__all__ = ["FINISHED", "RING", "STARTED", "TaskTable", "describe_exit"]

# Rows of the crash-attribution table; a task is attributed while fewer than
# this many later tasks have started meanwhile.
RING = 4096
STARTED, FINISHED = 1, 2

# (dead workers as (pid, exit code), task id -> pid that was running it)
CrashInfo = tuple[list[tuple[int, int | None]], dict[int, int]]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe_exit(pid: int, code: int | None) -> str:
    """How worker *pid* ended, in words (with the usual cause of a fatal signal)."""
    if code is None:
        return f"worker pid {pid} stopped responding"
    if code < 0:
        name = _signal_name(code)
        why = ""
        if -code == signal.SIGKILL:
            why = " (killed from outside: often the kernel's OOM killer -- check memory limits and dmesg)"
        elif -code == signal.SIGSEGV:
            why = " (a segmentation fault in native code)"
        elif -code == signal.SIGBUS:
            why = " (a bus error: often a shared-memory file that ran out of room)"
        return f"worker pid {pid} was killed by {name}{why}"
    return f"worker pid {pid} exited with code {code}"


class TaskTable:
    """The pool's side of the table: the shared segment the workers write, and crash reports.

    The first report is kept (and reused by every later one): once the pool's
    resources are released, neither the table nor the processes are there.
    """

    def __init__(self) -> None:
        self.shared: Shared[np.ndarray] = zeros((RING, 3), "i8")
        # The executor's pid -> process dict, which the stdlib drops at shutdown:
        # crash reports still need to know which processes there were.
        self.procs: MutableMapping[int, Any] = {}
        self._view: np.ndarray | None = None
        self._crash: CrashInfo | None = None
        self._lock = threading.Lock()

    def view(self) -> np.ndarray | None:
        """The table as the workers write it, or None once it is freed."""
        if self._view is None:
            with contextlib.suppress(NocopyError, OSError):
                self._view = self.shared.get()
        return self._view

    def crash_info(self) -> CrashInfo:
        """(dead workers as (pid, exit code), task id -> pid that was running it)."""
        with self._lock:
            if self._crash is not None:
                return self._crash
            dead: list[tuple[int, int | None]] = []
            for pid, proc in list(self.procs.items()):
                code = proc.exitcode
                if code is None and _wait_sentinels([proc.sentinel], 0):
                    proc.join(2.0)  # its pipe closed a moment before it became reapable
                    code = proc.exitcode
                if code is not None:
                    dead.append((pid, code))
            running: dict[int, int] = {}
            table = self.view()
            if table is not None and dead:
                for pid, _ in dead:
                    rows = table[(table[:, 1] == pid) & (table[:, 2] == STARTED)]
                    if len(rows):
                        running[int(rows[:, 0].max())] = pid
            self._crash = (dead, running)
            return self._crash

    def crash_error(self, task_id: int | None, label: str | None) -> WorkerCrashedError | StartMethodError:
        """The error for task *task_id* (None: for the pool) of a pool whose worker died.

        A worker that could not start because the main module starts a pool at
        import time is not a crash: `nocopy.errors.StartMethodError` names the fix.
        """
        dead, running = self.crash_info()
        unguarded = self.unguarded_main(dead)
        if unguarded is not None:
            return unguarded_main_error(unguarded)
        exitcode = dead[0][1] if dead else None
        if not dead:
            what = "a worker process terminated abruptly"
        else:
            what = "; ".join(describe_exit(pid, code) for pid, code in dead)
        crashed_task: str | None = None
        if task_id is not None and task_id in running:
            pid = running[task_id]
            exitcode = dict(dead).get(pid, exitcode)
            crashed_task = label
            msg = f"{describe_exit(pid, exitcode)} while running {label}"
        elif task_id is not None:
            culprit = sorted(running)
            where = (
                f" (it was running task{'s' if len(culprit) > 1 else ''} "
                f"#{', #'.join(map(str, culprit))})" if culprit else ""
            )
            msg = f"{label} was lost: {what}{where}, which broke the pool"
        else:
            msg = f"the pool is broken: {what}"
        msg += (
            ". The data and the caller are fine; this executor cannot run tasks any more. "
            "Fix: start a new executor (and find out why the worker died)."
        )
        return WorkerCrashedError(msg, exitcode=exitcode, task=crashed_task)

    def unguarded_main(self, dead: list[tuple[int, int | None]]) -> int | None:
        """The pid of a dead worker that exited with `EXIT_UNGUARDED_MAIN` before running any task."""
        table = self.view()
        for pid, code in dead:
            if code == EXIT_UNGUARDED_MAIN and (table is None or not (table[:, 1] == pid).any()):
                return pid
        return None

    def close(self) -> None:
        """Free the table and let go of the processes (futures hold this long after)."""
        self.procs = {}
        self._view = None
        self.shared.close()
