"""Room checks before a segment is allocated.

Running out of shared memory must be an exception, never SIGBUS (tmpfs full at
first write) nor an OOM kill (cgroup over its limit): fallocate does not report
a cgroup overrun, so the cgroup and MemAvailable are read before allocating.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InsufficientMemoryError

__all__ = ["Limit", "cgroup_memory", "check_room", "mem_available", "raise_no_room", "tmpfs_room"]

_FIX_TMPFS = (
    "free space in {path} (nocopy gc reclaims orphaned segments), use backend='memfd' "
    "(not bounded by the tmpfs size), or enlarge it: `docker run --shm-size=8g`, "
    "Kubernetes `emptyDir: {{medium: Memory, sizeLimit: 8Gi}}` mounted at /dev/shm, "
    "or `mount -o remount,size=8G {path}`"
)
_FIX_MEMORY = (
    "share less data at once, free memory, or raise the limit (`docker run --memory`, "
    "Kubernetes resources.limits.memory)"
)


# Where the kernel shows them (module attributes so tests can point at a fake tree).
_CGROUP_FS = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Limit:
    """One memory limit: what it is, its size and what is free under it."""

    name: str
    total: int
    available: int


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    # cgroup v1 reports "no limit" as a huge page-rounded number.
    return None if value >= 1 << 60 else value


def _cgroup_paths() -> list[tuple[int, str]]:
    try:
        lines = _PROC_CGROUP.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            out.append((2, path))
        elif "memory" in controllers.split(","):
            out.append((1, path))
    return out


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory() -> Limit | None:
    """The tightest memory cgroup limit on this process (v1 or v2), or None.

    "available" is the limit minus usage, not counting inactive page cache,
    which the kernel reclaims before it OOM-kills.
    """
    best: Limit | None = None
    for version, rel in _cgroup_paths():
        root = _CGROUP_FS if version == 2 else _CGROUP_FS / "memory"
        if version == 2 and not (root / "cgroup.controllers").exists():
            root = _CGROUP_FS / "unified"
        rel_parts = [p for p in rel.split("/") if p]
        # Walk from our cgroup up to the root: any ancestor's limit applies.
        for depth in range(len(rel_parts), -1, -1):
            d = root.joinpath(*rel_parts[:depth])
            # The limit first: usage and memory.stat (large, slow to read)
            # only matter where there is one.
            if version == 2:
                limit = _read_int(d / "memory.max")
                if limit is None:
                    continue
                usage = _read_int(d / "memory.current")
                inactive = _stat_value(d / "memory.stat", "inactive_file")
                name = f"cgroup v2 memory.max ({d})"
            else:
                limit = _read_int(d / "memory.limit_in_bytes")
                if limit is None:
                    continue
                usage = _read_int(d / "memory.usage_in_bytes")
                inactive = _stat_value(d / "memory.stat", "total_inactive_file")
                name = f"cgroup v1 memory.limit_in_bytes ({d})"
            avail = max(0, limit - max(0, (usage or 0) - inactive))
            if best is None or avail < best.available:
                best = Limit(name, limit, avail)
    return best


def mem_available() -> Limit | None:
    """MemAvailable and MemTotal from /proc/meminfo, or None off Linux."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            values[key] = int(fields[0]) * 1024
    if "MemAvailable" not in values:
        return None
    return Limit("MemAvailable (/proc/meminfo)", values.get("MemTotal", 0), values["MemAvailable"])


def tmpfs_room(path: str) -> Limit:
    """Size and free space of the filesystem holding *path*."""
    st = os.statvfs(path)
    return Limit(f"tmpfs {path}", st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def raise_no_room(what: str, requested: int, limit: Limit, *, shm_dir: str | None = None) -> None:
    fix = _FIX_TMPFS.format(path=shm_dir) if limit.name.startswith("tmpfs") else _FIX_MEMORY
    raise InsufficientMemoryError(
        f"cannot allocate {_fmt(requested)} of shared memory for {what}: "
        f"only {_fmt(limit.available)} available under {limit.name} "
        f"(total {_fmt(limit.total)}). Fix: {fix}.",
        requested=requested,
        available=limit.available,
        limit=limit.name,
    )


SMALL_REQUEST = 1 << 20


def check_room(what: str, requested: int, *, shm_dir: str | None = None) -> None:
    """Raise InsufficientMemoryError if *requested* bytes do not fit.

    *shm_dir* is the tmpfs a posix segment goes into (None for memfd, which the
    tmpfs size does not bound).
    """
    limits: list[Limit] = []
    if shm_dir is not None:
        limits.append(tmpfs_room(shm_dir))
    # Reading the cgroup and /proc/meminfo costs ~1 ms; a request below
    # SMALL_REQUEST cannot get a process OOM-killed on its own, and
    # posix_fallocate still turns a full tmpfs into ENOSPC.
    if requested >= SMALL_REQUEST:
        for lim in (cgroup_memory(), mem_available()):
            if lim is not None:
                limits.append(lim)
    for lim in limits:
        if requested > lim.available:
            raise_no_room(what, requested, lim, shm_dir=shm_dir)


def _fmt(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    raise AssertionError("unreachable")
