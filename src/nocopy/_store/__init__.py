"""Where the bytes live: memfd (anonymous, Linux) and posix (named) segments.

A store knows nothing of numpy or pandas: it creates a segment of a given size
with the room checked and the pages reserved, hands out a writable mapping to
fill, then makes the segment read-only (sealed) and lets other processes open
it. Nothing here uses multiprocessing's resource tracker, which unlinks
segments that other processes still use.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as _stat
import sys
from dataclasses import dataclass

from ..errors import SegmentAccessError, SegmentNotFoundError
from . import _capacity, _fdserver, _names, _orphans

__all__ = [
    "BACKENDS",
    "Locator",
    "OwnedSegment",
    "create_segment",
    "default_backend",
    "open_segment",
    "shm_dir",
]

BACKENDS = ("memfd", "posix")
_HAS_MEMFD = hasattr(os, "memfd_create") and sys.platform.startswith("linux")


def default_backend() -> str:
    """The store used when share() is not told: $NOCOPY_BACKEND, else memfd on Linux."""
    env = os.environ.get("NOCOPY_BACKEND", "").strip().lower()
    if env:
        return check_backend(env)
    return "memfd" if _HAS_MEMFD else "posix"


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown nocopy backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "memfd" and not _HAS_MEMFD:
        raise ValueError("backend 'memfd' needs Linux (os.memfd_create); use backend='posix'")
    return name


def shm_dir() -> str:
    """Directory of posix segments: $NOCOPY_SHM_DIR, else /dev/shm."""
    return os.environ.get("NOCOPY_SHM_DIR", "/dev/shm")


@dataclass(frozen=True)
class Locator:
    """How another process finds a segment. Small and picklable."""

    store: str
    name: str
    pid: int
    fd: int = -1  # memfd: the owner's descriptor number
    sock: str = ""  # memfd: the owner's fd-server address (SCM_RIGHTS fallback)


class OwnedSegment:
    """A segment this process created. Releasing it is idempotent and fork-safe."""

    def __init__(self, locator: Locator, fd: int, size: int, path: str | None) -> None:
        self.locator = locator
        self.fd = fd
        self.size = size
        self.path = path
        self.owner_pid = os.getpid()
        self.released = False

    def make_read_only(self, token: str) -> None:
        """After the writable mapping is gone: forbid any further write."""
        if self.locator.store == "memfd":
            seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
        else:
            os.fchmod(self.fd, 0o400)
        self._publish(token)

    def keep_writable(self, token: str) -> None:
        """Shared outputs stay writable but may never shrink (a shrink is SIGBUS for readers)."""
        if self.locator.store == "memfd":
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
        self._publish(token)

    def _publish(self, token: str) -> None:
        if self.locator.sock:
            _fdserver.server().register(self.locator.name, self.fd, token)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.locator.sock and os.getpid() == self.owner_pid:
            _fdserver.server().unregister(self.locator.name)
        try:
            os.close(self.fd)
        except OSError:
            pass
        # A process that inherited this object through fork never unlinks
        # the parent's segment.
        if self.path is not None and os.getpid() == self.owner_pid:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def create_segment(size: int, *, backend: str, what: str) -> OwnedSegment:
    """Create a segment of *size* bytes with its pages reserved.

    Raises InsufficientMemoryError (before writing anything, leaving nothing
    behind) when the room is not there.
    """
    backend = check_backend(backend)
    name = _names.make_name()
    if backend == "memfd":
        _capacity.check_room(what, size)
        try:
            fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            _note_fd_limit(exc)
            raise
        os.fchmod(fd, 0o600)  # memfd starts 0777; keep it private like a posix segment
        path = None
        sock = _fdserver.server().address
    else:
        directory = shm_dir()
        if not os.path.isdir(directory):
            raise SegmentNotFoundError(
                f"cannot make a posix segment: the shm directory {directory} ($NOCOPY_SHM_DIR, "
                "default /dev/shm) does not exist or is not a directory. Fix: point "
                "NOCOPY_SHM_DIR at a tmpfs directory, or use backend='memfd'."
            )
        _gc_once(directory)
        _capacity.check_room(what, size, shm_dir=directory)
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            _note_fd_limit(exc)
            raise
        _orphans.lock_owned(fd)  # held until release or death: reclaim skips it
        sock = ""
    try:
        os.ftruncate(fd, size)
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise
                lim = (
                    _capacity.tmpfs_room(path.rsplit("/", 1)[0])
                    if path is not None
                    else _capacity.Limit("memfd (kernel refused fallocate)", 0, 0)
                )
                _capacity.raise_no_room(what, size, lim, shm_dir=None if path is None else shm_dir())
    except BaseException:
        os.close(fd)
        if path is not None:
            os.unlink(path)
        raise
    loc = Locator(backend, name, os.getpid(), fd if backend == "memfd" else -1, sock)
    return OwnedSegment(loc, fd, size, path)


def _note_fd_limit(exc: OSError) -> None:
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        exc.add_note(
            "nocopy: every live segment holds one file descriptor in the process that "
            "shared it. Fix: close() the handles you no longer need, share fewer, larger "
            "objects (e.g. one dict of arrays), or raise the limit (`ulimit -n`, "
            "resource.setrlimit(resource.RLIMIT_NOFILE, ...))."
        )


_gc_done: set[str] = set()


def _gc_once(directory: str) -> None:
    """Reclaim posix orphans of dead owners the first time this process creates one there."""
    if directory in _gc_done:
        return
    _gc_done.add(directory)
    _orphans.reclaim(directory)


def open_segment(loc: Locator, *, writable: bool, token: str) -> int:
    """Open another (or this) process's segment; returns a new fd."""
    # O_NONBLOCK/O_NOCTTY: a hostile name or fd number pointing at a FIFO or a
    # terminal must fail the checks below, not block or become our tty.
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    if loc.store == "memfd":
        fd = _open_memfd(loc, flags, token)
    elif loc.store == "posix":
        path = os.path.join(shm_dir(), loc.name)
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SegmentNotFoundError(
                f"segment {loc.name} does not exist in {shm_dir()}: its owner (pid {loc.pid}) "
                "closed it or exited. Fix: keep the owner's Shared open while other processes attach."
            ) from None
        except PermissionError:
            raise SegmentAccessError(
                f"segment {path} is not accessible to uid {os.geteuid()}: segments are private "
                "to their owner's user (mode 0600). Fix: attach as the owner's user."
            ) from None
    else:
        raise SegmentNotFoundError(f"unknown store {loc.store!r} for segment {loc.name}")
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            raise SegmentNotFoundError(
                f"segment {loc.name} is not a nocopy segment (not a regular file): the name "
                "was reused by something else. Fix: use the uri of a live Shared."
            )
        if st.st_uid != os.geteuid():
            raise SegmentAccessError(
                f"segment {loc.name} belongs to uid {st.st_uid}, not to this process's uid "
                f"{os.geteuid()}: nocopy refuses another user's segment. Fix: attach as uid {st.st_uid}."
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_memfd(loc: Locator, flags: int, token: str) -> int:
    proc = f"/proc/{loc.pid}/fd/{loc.fd}"
    expected = _names.memfd_link(loc.name)
    # Look before opening: the fd number may now be any other file of the owner.
    try:
        before = os.readlink(proc)
    except FileNotFoundError:
        before = expected  # let open() report the missing segment
    except OSError:
        before = expected  # unreadable (another user): open() or the fd server decides
    if before != expected:
        raise SegmentNotFoundError(
            f"segment {loc.name} is gone: fd {loc.fd} of pid {loc.pid} is now {before!r}. "
            "Its owner closed it. Fix: keep the owner's Shared open while other processes attach."
        )
    try:
        fd = os.open(proc, flags)
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"segment {loc.name} is gone: its owner (pid {loc.pid}) closed it or exited. "
            "Fix: keep the owner's Shared open while other processes attach."
        ) from None
    except PermissionError:
        if not loc.sock:
            raise SegmentAccessError(
                f"cannot open {proc} (permission denied) and segment {loc.name} has no fd server"
            ) from None
        fd = _fdserver.request_fd(loc.sock, loc.name, token)
        if flags & os.O_RDWR:
            # SCM_RIGHTS passes the owner's read-write fd; that is what was asked.
            pass
    # The owner may have closed that fd number and reused it for another file.
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        link = expected
    if link != expected:
        os.close(fd)
        raise SegmentNotFoundError(
            f"segment {loc.name} is gone: fd {loc.fd} of pid {loc.pid} is now {link!r}. "
            "Its owner closed it. Fix: keep the owner's Shared open while other processes attach."
        )
    return fd
