"""Finding and reclaiming posix segments whose owner is gone.

One implementation serves both the automatic reclaim on a process's first
posix segment and ``nocopy.cleanup()`` / ``nocopy gc``.

A file is only ever touched when all of these hold: its name is a nocopy
segment name, it is a regular file (not a symlink, FIFO or directory) owned by
this user, the process named in it (pid *and* start time, so a recycled pid is
not mistaken for the owner) is gone, and no process holds the owner's lock on
it. The lock is the second, independent proof: every owner keeps a shared
``flock`` on its segment for as long as it holds it, the kernel drops it when
the owner dies however it dies, and it works across pid namespaces (containers
sharing /dev/shm), where the pid in a name may mean another process. For that
the lock must be held from the moment the name exists: the store creates the
file nameless and links it in once locked. A reclaim unlinks a file while
holding its own exclusive lock on it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import stat
from dataclasses import dataclass

from . import _names

__all__ = ["PosixFile", "held", "lock_owned", "reclaim", "scan"]


@dataclass(frozen=True)
class PosixFile:
    """One nocopy file in the shm directory, as found on disk."""

    name: str
    path: str
    size: int
    pid: int
    start: int
    created: float  # oldest inode timestamp: never later than creation
    ino: int
    dev: int

    @property
    def owner_alive(self) -> bool:
        return _names.pid_alive(self.pid, self.start)


def lock_owned(fd: int) -> None:
    """Mark *fd*'s segment as held (called by the owner right after creating it).

    Blocking on purpose: a reclaim probe holds its exclusive lock only for
    microseconds, and failing here would leave the new file behind.
    """
    fcntl.flock(fd, fcntl.LOCK_SH)


def scan(directory: str) -> list[PosixFile]:
    """Every nocopy segment file of this user in *directory* (owners alive or not)."""
    uid = os.geteuid()
    out: list[PosixFile] = []
    try:
        it = os.scandir(directory)
    except OSError:
        return out
    with it:
        for entry in it:
            parsed = _names.parse_name(entry.name)
            if parsed is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
            out.append(
                PosixFile(
                    name=entry.name,
                    path=entry.path,
                    size=st.st_size,
                    pid=parsed.pid,
                    start=parsed.start,
                    created=min(st.st_atime, st.st_mtime, st.st_ctime),
                    ino=st.st_ino,
                    dev=st.st_dev,
                )
            )
    return out


def _lock_unheld(f: PosixFile) -> int | None:
    """An fd holding an exclusive lock on *f* if nobody holds the owner's lock (and it is still *f*)."""
    try:
        fd = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_ino, st.st_dev) == (f.ino, f.dev) and stat.S_ISREG(st.st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def held(f: PosixFile) -> bool:
    """Whether a process holds the owner's lock on *f*: a live owner, in any pid namespace."""
    fd = _lock_unheld(f)
    if fd is None:
        # Gone or replaced since the scan counts as not held; a lock we could
        # not take is held.
        try:
            st = os.stat(f.path, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_ino, st.st_dev) == (f.ino, f.dev)
    os.close(fd)
    return False


def reclaim(directory: str, *, dry_run: bool = False) -> list[PosixFile]:
    """Remove the segments of dead owners in *directory*; return what was (or would be) removed.

    The ``size`` of each returned file is the bytes its removal gives back: 0
    for a name whose file lives on under another hard link (another name in
    the directory, or a link someone made elsewhere on the filesystem).
    """
    done: list[PosixFile] = []
    # Links of each file still to be removed (dry run: as if the earlier ones were).
    links_left: dict[tuple[int, int], int] = {}
    for f in scan(directory):
        if f.owner_alive:
            continue
        fd = _lock_unheld(f)
        if fd is None:
            continue
        try:
            # Unlinked while our exclusive lock is held: no owner can have
            # taken its lock on this file in between.
            if not dry_run:
                try:
                    os.unlink(f.path)
                except OSError:
                    continue  # another process reclaimed it first
                left = os.fstat(fd).st_nlink
            else:
                key = (f.dev, f.ino)
                left = links_left.get(key, os.fstat(fd).st_nlink) - 1
                links_left[key] = left
        finally:
            os.close(fd)
        done.append(f if left == 0 else dataclasses.replace(f, size=0))
    return done
