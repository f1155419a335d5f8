"""Segment names: who made it (pid + process start time) and 128 random bits."""

from __future__ import annotations

import functools
import os
import re

from .._process import pid_alive, process_start_time

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


@functools.cache
def _own_start(pid: int) -> int:
    return process_start_time(pid) or 0


def make_name() -> str:
    pid = os.getpid()
    return f"{PREFIX}-{pid}-{_own_start(pid)}-{os.urandom(16).hex()}"


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
