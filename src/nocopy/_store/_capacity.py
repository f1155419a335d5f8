"""Room checks before a segment is allocated.

Running out of shared memory must be an exception, never SIGBUS (tmpfs full at
first write) nor an OOM kill (cgroup over its limit): fallocate does not report
a cgroup overrun, so the cgroup and MemAvailable are read before allocating.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._text import format_bytes
from ..errors import InsufficientMemoryError
from . import _hugepages
from ._mapping import Mapping, huge_page_size

if TYPE_CHECKING:  # pathlib costs a worker ~4 ms to import: only made when a limit is read
    from pathlib import Path

__all__ = [
    "Cgroup",
    "Limit",
    "cgroup_memory",
    "check_room",
    "mem_available",
    "memory_cgroups",
    "raise_no_room",
    "reserve",
    "tmpfs_room",
]

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
_CGROUP_FS: str | Path = "/sys/fs/cgroup"
_PROC_CGROUP: str | Path = "/proc/self/cgroup"


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
        with open(_PROC_CGROUP) as f:
            lines = f.read().splitlines()
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


@dataclass(frozen=True)
class Cgroup:
    """One memory cgroup of this process: version, directory, limit (None: none) and usage."""

    version: int
    path: Path
    limit: int | None
    usage: int | None


def _root(version: int) -> Path:
    from pathlib import Path

    fs = Path(_CGROUP_FS)
    if version == 1:
        return fs / "memory"
    if not (fs / "cgroup.controllers").exists():
        return fs / "unified"
    return fs


# (limit, usage, inactive page cache in memory.stat) file names per cgroup version.
_FILES = {
    1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    2: ("memory.max", "memory.current", "inactive_file"),
}
_LIMIT_NAME = {1: "cgroup v1 memory.limit_in_bytes", 2: "cgroup v2 memory.max"}


def memory_cgroups() -> list[Cgroup]:
    """This process's own memory cgroup(s), v1 and v2 (not their ancestors), as ``nocopy doctor`` shows them."""
    out = []
    for version, rel in _cgroup_paths():
        d = _root(version).joinpath(*[p for p in rel.split("/") if p])
        limit_file, usage_file, _ = _FILES[version]
        if not (d / usage_file).exists():
            continue  # e.g. the v2 hierarchy of a v1 machine: no memory controller there
        out.append(Cgroup(version, d, _read_int(d / limit_file), _read_int(d / usage_file)))
    return out


def cgroup_memory() -> Limit | None:
    """The tightest memory cgroup limit on this process (v1 or v2), or None.

    "available" is the limit minus usage, not counting inactive page cache,
    which the kernel reclaims before it OOM-kills.
    """
    best: Limit | None = None
    for version, rel in _cgroup_paths():
        rel_parts = [p for p in rel.split("/") if p]
        limit_file, usage_file, inactive_key = _FILES[version]
        # Walk from our cgroup up to the root: any ancestor's limit applies.
        for depth in range(len(rel_parts), -1, -1):
            d = _root(version).joinpath(*rel_parts[:depth])
            # The limit first: usage and memory.stat (large, slow to read)
            # only matter where there is one.
            limit = _read_int(d / limit_file)
            if limit is None:
                continue
            usage = _read_int(d / usage_file)
            inactive = _stat_value(d / "memory.stat", inactive_key)
            avail = max(0, limit - max(0, (usage or 0) - inactive))
            if best is None or avail < best.available:
                best = Limit(f"{_LIMIT_NAME[version]} ({d})", limit, avail)
    return best


def mem_available() -> Limit | None:
    """MemAvailable and MemTotal from /proc/meminfo, or None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            text = f.read()
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
        f"cannot allocate {format_bytes(requested)} of shared memory for {what}: "
        f"only {format_bytes(limit.available)} available under {limit.name} "
        f"(total {format_bytes(limit.total)}). Fix: {fix}.",
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


def reserve(fd: int, size: int, what: str, *, shm_dir: str | None) -> Mapping | None:
    """Size *fd* to *size* bytes and reserve its pages: a full tmpfs is an error now, not SIGBUS later.

    *shm_dir* is the tmpfs holding the file (None for memfd). Returns a
    writable mapping of the file when its pages are huge (filling through
    it beats pwrite; see `_hugepages.collapse`), else None.
    """
    os.ftruncate(fd, size)
    if not size:
        return None
    mapping = _hugepages.collapse(fd, size)
    # A collapsed file needs only its tail beyond the last huge page reserved.
    block = huge_page_size()
    start = size // block * block if mapping is not None else 0
    try:
        if start < size:
            os.posix_fallocate(fd, start, size - start)
    except OSError as exc:
        if mapping is not None:
            mapping.close()
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise
        lim = tmpfs_room(shm_dir) if shm_dir is not None else Limit("memfd (kernel refused fallocate)", 0, 0)
        raise_no_room(what, size, lim, shm_dir=shm_dir)
    return mapping
