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
        visible = True
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
        fd, visible = _create_locked(directory, path)
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
        if path is not None and not visible:
            # Sized and reserved while nobody can see it: the name appears with
            # the owner's lock already held, so no reclaim (in any pid
            # namespace) can ever find it unlocked.
            # Never overwrites (EEXIST). A src_dir_fd (ignored for an absolute
            # path) makes CPython call linkat(AT_SYMLINK_FOLLOW): plain link()
            # would link the /proc symlink itself and fail with EXDEV.
            os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)
            visible = True
            fd = _reopen_locked(fd, path)
    except BaseException:
        os.close(fd)
        if path is not None and visible:
            os.unlink(path)
        raise
    loc = Locator(backend, name, os.getpid(), fd if backend == "memfd" else -1, sock)
    return OwnedSegment(loc, fd, size, path)


_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}
_no_tmpfile: set[str] = set()


def _create_locked(directory: str, path: str) -> tuple[int, bool]:
    """A new segment file for *path*, holding the owner's lock; and whether *path* names it yet.

    Where the kernel allows it (Linux: O_TMPFILE and /proc/self/fd), the file
    starts with no name and create_segment links it at *path* only after
    locking it: between an O_CREAT|O_EXCL and the flock, a reclaim in another
    pid namespace (a container sharing /dev/shm), where the pid in the name
    means nothing, would see an unlocked file of a "dead" owner and unlink it.
    Elsewhere there are no pid namespaces, and the pid and start time in the
    name protect the file in that window.
    """
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile and directory not in _no_tmpfile and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.open(directory, tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            _note_fd_limit(exc)
            if exc.errno not in _NO_TMPFILE:
                raise
            _no_tmpfile.add(directory)  # this filesystem cannot: do not ask again
        else:
            _orphans.lock_owned(fd)
            return fd, False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        _note_fd_limit(exc)
        raise
    _orphans.lock_owned(fd)  # held until release or death: reclaim skips it
    return fd, True


def _reopen_locked(fd: int, path: str) -> int:
    """A descriptor of the same file opened by *path*, holding the owner's lock; closes *fd*.

    The file was opened nameless, so /proc/<pid>/fd and maps lines of *fd*
    show "#<inode> (deleted)": `nocopy ls`, lsof and leak checks find a
    segment by its name. The new descriptor takes its lock before the old
    one lets go, so the file is never unlocked. On failure *fd* stays open.
    """
    try:
        new = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        _note_fd_limit(exc)
        raise
    try:
        a, b = os.fstat(fd), os.fstat(new)
        if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):  # pragma: no cover - replaced by this user
            raise SegmentNotFoundError(f"segment {path} was replaced while it was being created")
        _orphans.lock_owned(new)
    except BaseException:
        os.close(new)
        raise
    os.close(fd)
    return new


def invisible_until_locked(directory: str) -> bool:
    """Whether new posix segments in *directory* get their name only once locked (see _create_locked)."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if not tmpfile or directory in _no_tmpfile or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        os.close(os.open(directory, tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600))
    except OSError:
        return False
    return True


def _note_fd_limit(exc: OSError, *, attaching: bool = False) -> None:
    if exc.errno not in (errno.EMFILE, errno.ENFILE):
        return
    if any(note.startswith("nocopy:") for note in getattr(exc, "__notes__", ())):
        return
    if attaching:
        exc.add_note(
            "nocopy: attaching a segment needs one file descriptor for a moment (views and "
            "mappings hold none afterwards), and this process has used up its limit. In a "
            "process that shares, every live segment it owns holds one. Fix: close files, "
            "sockets and Shared handles you no longer need, or raise the limit (`ulimit -n`, "
            "resource.setrlimit(resource.RLIMIT_NOFILE, ...))."
        )
    else:
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
    """Open another (or this) process's segment; returns a new fd.

    *writable* is what the handle asks for; the segment itself says whether
    its owner granted writes (an output of empty()/zeros()), so a handle or
    URI that claims more is refused with SegmentAccessError.
    """
    # O_NONBLOCK/O_NOCTTY: a hostile name or fd number pointing at a FIFO or a
    # terminal must fail the checks below, not block or become our tty.
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        if loc.store == "memfd":
            fd = _open_memfd(loc, flags, token)
        elif loc.store == "posix":
            fd = _open_posix(loc, flags)
        else:
            raise SegmentNotFoundError(f"unknown store {loc.store!r} for segment {loc.name}")
    except OSError as exc:
        _note_fd_limit(exc, attaching=True)
        raise
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
        if writable and not _write_granted(loc, fd, st):
            raise _read_only(loc)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_granted(loc: Locator, fd: int, st: os.stat_result) -> bool:
    """Whether the owner made this segment a writable output (not what any handle says).

    share() seals a memfd against writes and makes a posix file 0400 before
    anyone can attach; empty()/zeros() leave out the write seal and keep 0600.
    Root opens a 0400 file read-write all the same, so the mode is checked here.
    """
    if loc.store == "memfd":
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        # F_SEAL_SEAL: the owner has finished (keep_writable/make_read_only ran).
        return bool(seals & fcntl.F_SEAL_SEAL) and not seals & fcntl.F_SEAL_WRITE
    return bool(st.st_mode & _stat.S_IWUSR)


def _read_only(loc: Locator) -> SegmentAccessError:
    return SegmentAccessError(
        f"segment {loc.name} is read-only: its owner (pid {loc.pid}) shared it with share(), "
        "which never grants writes, but this handle asks for a writable mapping (w=1 in its "
        "URI): the URI or handle was altered. Only outputs made by nocopy.empty()/zeros() are "
        "writable. Fix: use the exact Shared.uri, or get(private=True) for a private writable copy."
    )


def _open_posix(loc: Locator, flags: int) -> int:
    path = os.path.join(shm_dir(), loc.name)
    try:
        return os.open(path, flags | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"segment {loc.name} does not exist in {shm_dir()}: its owner (pid {loc.pid}) "
            "closed it or exited. Fix: keep the owner's Shared open while other processes attach."
        ) from None
    except PermissionError:
        if flags & os.O_RDWR:
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                st = None
            if st is not None and st.st_uid == os.geteuid() and not st.st_mode & _stat.S_IWUSR:
                raise _read_only(loc) from None
        raise SegmentAccessError(
            f"segment {path} is not accessible to uid {os.geteuid()}: segments are private "
            "to their owner's user (mode 0600). Fix: attach as the owner's user."
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EISDIR, errno.EOPNOTSUPP):
            raise
        # ELOOP: a symlink (O_NOFOLLOW); ENXIO/ENODEV/EOPNOTSUPP: a socket or a device.
        raise SegmentNotFoundError(
            f"segment {loc.name}: {path} is not a nocopy segment ({_what_is(path)}): the name "
            "was taken by something else. Fix: use the uri of a live Shared."
        ) from None


def _what_is(path: str) -> str:
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except OSError as exc:
        return exc.strerror or "unreadable"
    for test, what in (
        (_stat.S_ISLNK, "a symbolic link"), (_stat.S_ISSOCK, "a socket"), (_stat.S_ISFIFO, "a FIFO"),
        (_stat.S_ISDIR, "a directory"), (_stat.S_ISCHR, "a character device"), (_stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


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
