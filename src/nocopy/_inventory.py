"""What shared memory nocopy holds on this machine, and reclaiming what crashed owners left.

Each store finds its own segments (memfd: through the processes that hold
them, freed by the kernel with their last holder, so never anything to clean;
posix: files in the shm directory, a dead owner's left until `cleanup`
or the next process that creates a posix segment removes it). This module
only asks every store and reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ._store import Found, stores

__all__ = ["Segment", "cleanup", "segments"]


@dataclass(frozen=True)
class Segment:
    """One nocopy segment of this user, as `segments` and `cleanup` report it.

    ``age`` is in seconds since the segment was made (from its oldest inode
    timestamp); ``holders`` are the pids that hold it open or mapped (the
    owner included, when it still does); ``path`` is the file of a posix
    segment, empty for memfd.

    Examples
    --------
    >>> ref = nocopy.share(np.zeros(1000))
    >>> seg = next(s for s in nocopy.segments() if s.name == ref.name)
    >>> seg.size >= ref.nbytes, seg.owner_alive, seg.orphaned
    (True, True, False)
    >>> seg.backend, seg.owner_pid                       # doctest: +SKIP
    ('memfd', 4242)
    >>> ref.close()
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


def segments() -> list[Segment]:
    """Every live nocopy segment of this user on this machine, oldest first.

    memfd segments are found through the processes that hold them; posix
    segments in this user's directory ``nocopy-<uid>`` of ``$NOCOPY_SHM_DIR``
    (default /dev/shm), and in that directory itself (nocopy 0.2). A posix segment whose
    owner died is listed (``owner_alive=False``) until `cleanup`
    removes it; one whose owner's lock is held counts as alive whatever pid
    its name carries (an owner in another pid namespace, or a hard link to
    a live segment).

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> ref = nocopy.share(np.zeros(1000))
    >>> any(s.name == ref.name for s in nocopy.segments())
    True
    >>> ref.close()
    """
    now = time.time()
    out = [_segment(f, now) for store in stores() for f in store.find()]
    out.sort(key=lambda s: (-s.age, s.name))
    return out


def _segment(f: Found, now: float) -> Segment:
    return Segment(
        name=f.name,
        backend=f.store,
        size=f.size,
        owner_pid=f.owner_pid,
        owner_alive=f.owner_alive,
        age=max(0.0, now - f.created) if f.created != float("inf") else 0.0,
        path=f.path,
        holders=f.holders,
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

    Examples
    --------
    What a crashed owner left, then the bytes given back:

    >>> would = nocopy.cleanup(dry_run=True)       # doctest: +SKIP
    >>> [(s.name, s.size) for s in would]          # doctest: +SKIP
    [('nocopy-4242-1187263-5f0c...', 80000128)]
    >>> sum(s.size for s in nocopy.cleanup())      # doctest: +SKIP
    80000128
    """
    now = time.time()
    return [_segment(f, now) for store in stores() for f in store.reclaim(dry_run=dry_run)]
