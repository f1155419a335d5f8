"""What the processes of this machine hold open and mapped, read from /proc.

memfd segments have no name in any directory: they are found through the
processes that hold them (``/proc/<pid>/fd`` links and ``/proc/<pid>/maps``
lines). Only the stores use this; everything else asks a store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["fd_links", "fd_path", "mapped", "pids", "stat_or_none"]


def pids() -> list[int]:
    """Every process visible in /proc (another user's too; what it may read is checked later)."""
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def fd_path(pid: int, fd: int) -> str:
    """The /proc path by which another process opens descriptor *fd* of *pid*."""
    return f"/proc/{pid}/fd/{fd}"


def fd_links(pid: int) -> Iterator[tuple[str, str]]:
    """(path under /proc, link text) of each open descriptor of *pid* this user may read."""
    base = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return  # gone, a zombie, or another user's process
    for fd in fds:
        try:
            yield f"{base}/{fd}", os.readlink(f"{base}/{fd}")
        except OSError:
            continue


def mapped(pid: int, marker: str) -> Iterator[tuple[str, str, int]]:
    """(map_files path, mapped file, length) of each mapping of *pid* whose file contains *marker*."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
    except OSError:
        return
    if marker not in maps:
        return
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or marker not in parts[5]:
            continue
        start, _, end = parts[0].partition("-")
        yield f"/proc/{pid}/map_files/{parts[0]}", parts[5], int(end, 16) - int(start, 16)


def stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
