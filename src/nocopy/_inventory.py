"""What shared memory nocopy holds on this machine, and reclaiming what crashed owners left.

memfd segments have no name in any directory: they are found through the
processes that hold them (``/proc/<pid>/fd`` links and ``/proc/<pid>/maps``
lines read ``/memfd:nocopy-... (deleted)``), and the kernel frees them when
the last holder goes, so there is never anything to clean. posix segments are
files in the shm directory (``$NOCOPY_SHM_DIR`` or /dev/shm); one whose owner
died stays until :func:`cleanup` (or the next process that creates a posix
segment) removes it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ._store import _names, _orphans, shm_dir

__all__ = ["Segment", "cleanup", "segments"]


@dataclass(frozen=True)
class Segment:
    """One nocopy segment of this user, as :func:`segments` and :func:`cleanup` report it.

    ``age`` is in seconds since the segment was made (from its oldest inode
    timestamp); ``holders`` are the pids that hold it open or mapped (the
    owner included, when it still does); ``path`` is the file of a posix
    segment, empty for memfd.

    Example::

        >>> seg = nocopy.segments()[0]          # doctest: +SKIP
        >>> seg.backend, seg.size, seg.owner_pid, seg.owner_alive
        ('memfd', 8000064, 4242, True)
    """

    name: str
    backend: str
    size: int
    owner_pid: int
    owner_alive: bool
    age: float
    path: str = ""
    holders: tuple[int, ...] = field(default=())

    @property
    def orphaned(self) -> bool:
        """True when the owner is gone: a posix orphan waits for cleanup(), a memfd one for its last holder."""
        return not self.owner_alive

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict (``nocopy ls --json`` prints a list of these)."""
        return {
            "name": self.name,
            "backend": self.backend,
            "size": self.size,
            "owner_pid": self.owner_pid,
            "owner_alive": self.owner_alive,
            "age": round(self.age, 3),
            "path": self.path,
            "holders": list(self.holders),
        }


class _Found:
    __slots__ = ("created", "holders", "size")

    def __init__(self) -> None:
        self.size = -1
        self.created = float("inf")
        self.holders: set[int] = set()

    def saw(self, pid: int, st: os.stat_result | None) -> None:
        self.holders.add(pid)
        if st is not None:
            self.size = max(self.size, st.st_size)
            self.created = min(self.created, st.st_atime, st.st_mtime, st.st_ctime)


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _scan_processes(posix_dir: str) -> tuple[dict[str, _Found], dict[str, set[int]]]:
    """memfd segments of this user held by any process, and who maps which posix file."""
    uid = os.geteuid()
    memfd: dict[str, _Found] = {}
    posix_holders: dict[str, set[int]] = {}
    posix_prefix = os.path.join(posix_dir, "nocopy-")
    for pid in _pids():
        base = f"/proc/{pid}"
        try:
            fds = os.listdir(f"{base}/fd")
        except OSError:
            fds = []  # gone, a zombie, or another user's process
        for fd in fds:
            try:
                link = os.readlink(f"{base}/fd/{fd}")
            except OSError:
                continue
            m = _names.MEMFD_LINK_RE.match(link)
            if m is None:
                continue
            st = _stat_or_none(f"{base}/fd/{fd}")
            if st is None or st.st_uid != uid:
                continue
            memfd.setdefault(m.group(1), _Found()).saw(pid, st)
        try:
            with open(f"{base}/maps", encoding="utf-8", errors="replace") as f:
                maps = f.read()
        except OSError:
            continue
        if "nocopy-" not in maps:
            continue
        for line in maps.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            path = parts[5]
            m = _names.MEMFD_LINK_RE.match(path)
            if m is not None:
                name = m.group(1)
                found = memfd.get(name)
                if found is not None and found.size >= 0:
                    found.holders.add(pid)
                    continue
                # Only mapped (its owner is gone): size and uid from the mapping's file.
                st = _stat_or_none(f"{base}/map_files/{parts[0]}")
                if st is not None and st.st_uid != uid:
                    continue
                found = memfd.setdefault(name, _Found())
                found.saw(pid, st)
                if st is None:
                    start, _, end = parts[0].partition("-")
                    found.size = max(found.size, int(end, 16) - int(start, 16))
            elif path.startswith(posix_prefix):
                name = os.path.basename(path.removesuffix(" (deleted)"))
                posix_holders.setdefault(name, set()).add(pid)
    return memfd, posix_holders


def segments() -> list[Segment]:
    """Every live nocopy segment of this user on this machine, oldest first.

    memfd segments are found through the processes that hold them; posix
    segments in ``$NOCOPY_SHM_DIR`` (default /dev/shm). A posix segment whose
    owner died is listed (``owner_alive=False``) until :func:`cleanup`
    removes it; one whose owner's lock is held counts as alive whatever pid
    its name carries (an owner in another pid namespace, or a hard link to
    a live segment).

    Example::

        >>> import numpy as np, nocopy
        >>> ref = nocopy.share(np.zeros(1000))
        >>> any(s.name == ref.name for s in nocopy.segments())
        True
        >>> ref.close()
    """
    now = time.time()
    directory = shm_dir()
    memfd, posix_holders = _scan_processes(directory)
    out: list[Segment] = []
    for name, found in memfd.items():
        parsed = _names.parse_name(name)
        if parsed is None:  # pragma: no cover - the regex already matched
            continue
        out.append(
            Segment(
                name=name,
                backend="memfd",
                size=max(found.size, 0),
                owner_pid=parsed.pid,
                owner_alive=_names.pid_alive(parsed.pid, parsed.start),
                age=max(0.0, now - found.created) if found.created != float("inf") else 0.0,
                holders=tuple(sorted(found.holders)),
            )
        )
    for f in _orphans.scan(directory):
        # The lock as well as the pid: a live owner in another pid namespace,
        # or a hard link to a live segment under a name with another pid, is alive.
        alive = f.owner_alive or _orphans.held(f)
        holders = set(posix_holders.get(f.name, ()))
        if f.owner_alive:
            holders.add(f.pid)
        out.append(_posix_segment(f, now, alive, tuple(sorted(holders))))
    out.sort(key=lambda s: (-s.age, s.name))
    return out


def _posix_segment(f: _orphans.PosixFile, now: float, alive: bool, holders: tuple[int, ...]) -> Segment:
    return Segment(
        name=f.name,
        backend="posix",
        size=f.size,
        owner_pid=f.pid,
        owner_alive=alive,
        age=max(0.0, now - f.created),
        path=f.path,
        holders=holders,
    )


def cleanup(dry_run: bool = False) -> list[Segment]:
    """Reclaim the posix segments whose owner process is gone; return them.

    Only files this user owns, named like a nocopy segment, regular files,
    whose owner (pid *and* process start time, so a recycled pid does not
    count) has exited and holds no lock on them are removed; live owners'
    segments and anything else in the directory are never touched. Processes
    that still map a removed segment keep their view; its memory is freed
    when they let go. memfd segments need no cleanup: the kernel frees them
    with their last holder. With ``dry_run=True`` nothing is removed and the
    result says what would be. Each result's ``size`` is the bytes its
    removal gives back: 0 for a name whose file lives on under another hard
    link, so ``sum(s.size for s in cleanup())`` is what was freed.

    Example::

        >>> would = nocopy.cleanup(dry_run=True)       # doctest: +SKIP
        >>> [(s.name, s.size) for s in would]   # what a crashed owner left  # doctest: +SKIP
        [('nocopy-4242-1187263-5f0c...', 80000128)]
        >>> sum(s.size for s in nocopy.cleanup())   # bytes given back  # doctest: +SKIP
        80000128
    """
    now = time.time()
    return [_posix_segment(f, now, False, ()) for f in _orphans.reclaim(shm_dir(), dry_run=dry_run)]
