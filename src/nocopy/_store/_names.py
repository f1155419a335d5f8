"""Segment names: who made it (pid + process start time) and 128 random bits."""

from __future__ import annotations

import functools
import os
import re
import secrets

__all__ = ["MEMFD_LINK_RE", "NAME_RE", "ParsedName", "make_name", "memfd_link", "parse_name", "pid_alive", "process_start_time"]

PREFIX = "nocopy"
# nocopy-<pid>-<start ticks>-<32 hex>: no path separators, nothing to traverse.
_NAME = r"nocopy-([0-9]{1,10})-([0-9]{1,20})-([0-9a-f]{32})"
NAME_RE = re.compile(f"^{_NAME}$")
# What /proc/<pid>/fd/<n> (and a maps line) shows for a memfd segment.
MEMFD_LINK_RE = re.compile(rf"^/memfd:({_NAME}) \(deleted\)$")


def memfd_link(name: str) -> str:
    """The /proc link text of memfd segment *name*."""
    return f"/memfd:{name} (deleted)"


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


@functools.cache
def _own_start(pid: int) -> int:
    return process_start_time(pid) or 0


def make_name() -> str:
    pid = os.getpid()
    return f"{PREFIX}-{pid}-{_own_start(pid)}-{secrets.token_hex(16)}"


class ParsedName:
    __slots__ = ("pid", "start")

    def __init__(self, pid: int, start: int) -> None:
        self.pid = pid
        self.start = start


def parse_name(name: str) -> ParsedName | None:
    m = NAME_RE.fullmatch(name)  # not match(): "$" would accept a trailing newline
    if m is None:
        return None
    return ParsedName(int(m.group(1)), int(m.group(2)))


def pid_alive(pid: int, start: int) -> bool:
    """Whether the process that had *pid* and *start* time still runs."""
    now = process_start_time(pid)
    if now is None:
        return False
    # start == 0 means "unknown" (no /proc when it was made): trust the pid.
    return start == 0 or now == start
