"""Which process is which: a pid plus its start time identifies a process for good.

A pid alone is recycled; its start time (clock ticks since boot, from /proc) is not. Segment
names, the stores' liveness checks and a pool worker's watch on its caller all use this pair.
Also what this process may run on: `usable_cpus`.
"""

from __future__ import annotations

import os

__all__ = ["pid_alive", "process_start_time", "usable_cpus"]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def process_start_time(pid: int) -> int | None:
    """Start time of *pid* in clock ticks since boot, or None if it is gone.

    With the pid it identifies a process for good: a recycled pid has a later
    start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start: int) -> bool:
    """Whether the process that had *pid* and *start* time still runs."""
    now = process_start_time(pid)
    if now is None:
        return False
    # start == 0 means "unknown" (no /proc when it was made): trust the pid.
    return start == 0 or now == start
