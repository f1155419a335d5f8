"""What every store shares: the Store protocol, a segment's locator, an owned segment, a found one.

A store is one way of keeping a segment's bytes (memfd, posix; later file).
Everything outside ``_store/`` goes through `Store` (via the facade's
``get_store``), so nothing else branches on a store's name or knows where a
store keeps its segments.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._ipc import _fdserver
from ..errors import SegmentAccessError, SegmentNotFoundError
from ._mapping import Mapping

__all__ = [
    "Advice",
    "Checkup",
    "Found",
    "Locator",
    "OwnedSegment",
    "Store",
    "check_opened",
    "note_fd_limit",
    "open_checked",
    "open_flags",
    "read_only_error",
]


@dataclass(frozen=True)
class Locator:
    """How another process finds a segment. Small and picklable."""

    store: str
    name: str
    pid: int
    fd: int = -1  # memfd: the owner's descriptor number
    sock: str = ""  # memfd: the owner's fd-server address (SCM_RIGHTS fallback)


class OwnedSegment:
    """A segment this process holds a descriptor of. Releasing it is idempotent, interrupt-safe and fork-safe.

    *fd* is the descriptor (-1: none yet, the store opens one with `open_fd`).
    *path* is the name to remove on release (the creator of a posix segment),
    None when closing the descriptor is all there is to do. *mapping*, until
    the segment is sealed, is a writable mapping of the fresh segment when its
    pages are huge: writing through it is faster than pwrite (None otherwise).

    Every descriptor of the segment the process opened is recorded here the
    moment it exists, and closed exactly once: by `release`, or, if an
    exception (Ctrl-C) cut a release or a creation short, when the object is
    collected. A process forked from the owner closes its inherited copies at
    once and never removes the segment (see `_after_fork_in_child`).
    """

    def __init__(
        self, locator: Locator, fd: int, size: int, path: str | None, mapping: Mapping | None = None
    ) -> None:
        self.locator = locator
        self.size = size
        self.path = path
        self.mapping = mapping
        self.owner_pid = os.getpid()
        self.released = False
        # Descriptors of the segment still to close; the segment's (st_dev, st_ino).
        self._fds: list[int] = []
        self._ident: tuple[int, int] | None = None
        _live.add(self)
        if fd >= 0:
            self._fds.append(fd)
            self._ident = _identity(fd)

    @property
    def fd(self) -> int:
        """The descriptor (the newest, after a store reopened the segment by name)."""
        return self._fds[-1] if self._fds else -1

    def open_fd(self, opener: Callable[..., int], *args: Any) -> int:
        """``opener(*args)``'s new descriptor of this segment, recorded before anything can interrupt.

        A signal handler's exception (KeyboardInterrupt) is raised between
        bytecodes, also between a call's return and the store of its result:
        a descriptor returned that way would be lost. ``list.extend`` runs the
        ``map`` in C and stores the result with no bytecode in between
        (CPython runs Python signal handlers only from its evaluation loop),
        so `release` always finds it.
        """
        self._fds.extend(map(opener, *[(a,) for a in args]))
        fd = self._fds[-1]
        if self._ident is None:
            self._ident = _identity(fd)
        return fd

    def close_fd(self, fd: int, *, same_file: bool = True) -> None:
        """Close *fd*, one of the recorded descriptors (after a reopen); *same_file*: it is this segment's.

        Closed, then forgotten: a release after an interrupt in between finds
        the number no longer this segment's and leaves it alone.
        """
        if same_file:
            _close_if(fd, self._ident)
        else:
            os.close(fd)
        self._fds.remove(fd)

    def held(self) -> bool:
        """Whether this process still holds the descriptor (not released, not a forked copy)."""
        return not self.released and self.owner_pid == os.getpid() and bool(self._fds)

    def end_writes(self) -> None:
        """Let go of the writer's mapping (before sealing: no writable mapping may outlive the fill).

        Not unmapped by hand: CPython unmaps it the moment its last holder
        lets go, which is now unless an array over it still lives (then the
        seal that needs it gone fails cleanly instead of a view pointing into
        freed address space).
        """
        self.mapping = None

    def release(self) -> None:
        self.released = True
        # Dropped, not unmapped: after a failed fill, arrays over it may live on in
        # a traceback's frames; it is unmapped with the last of them.
        self.mapping = None
        self._finish()

    def _finish(self) -> None:
        """Close what is left and remove the name; each step is idempotent, so a cut-short call can be repeated."""
        owner = os.getpid() == self.owner_pid
        if self._fds:
            if self.locator.sock and owner:
                # Before closing: the fd server must never send a closed (reused) number.
                _fdserver.server().unregister(self.locator.name)
            self._close_all()
        # A process that inherited this object through fork never unlinks
        # the parent's segment.
        if self.path is not None:
            if owner:
                _unlink_if(self.path, self._ident)
            self.path = None

    def _forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptors, never touch the parent's segment."""
        self.released = True
        self.mapping = None  # its pages are not in the child (MADV_DONTFORK): never unmapped here
        self.path = None
        self._close_all()

    def _close_all(self) -> None:
        if self._ident is None and self._fds:
            # open_fd was cut short before it learned the file: none was closed yet.
            self._ident = _identity(self._fds[0])
        while self._fds:
            _close_if(self._fds[-1], self._ident)
            self._fds.pop()

    def __del__(self) -> None:
        # A creation or release cut short by an exception: finish it now. The
        # mapping, if any, unmaps itself.
        try:
            if self._fds or self.path is not None:
                self._finish()
        except Exception:  # pragma: no cover - a finalizer must not raise (interpreter exit)
            pass


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _close_if(fd: int, ident: tuple[int, int] | None) -> None:
    """Close *fd* if it is still a descriptor of the segment *ident* (None: it must be).

    A number closed earlier (by a release cut short after its close) is free
    or another file's now: closing it again would close another thread's file.
    """
    if ident is not None and _identity(fd) != ident:
        return
    try:
        os.close(fd)
    except OSError:
        pass


def _unlink_if(path: str, ident: tuple[int, int] | None) -> None:
    """Remove *path* if it names the segment *ident* (None: this process never opened it, not ours)."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if ident is not None and (st.st_dev, st.st_ino) == ident:
            os.unlink(path)
    except OSError:
        pass


# Every OwnedSegment alive in this process, for the fork hook.
_live: weakref.WeakSet[OwnedSegment] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child (a fork-context pool worker) inherits every owner
    # descriptor: kept open, they would hold each segment's memory until the
    # child exits, whatever the parent's close() does. The child attaches
    # through the parent like any other process.
    for seg in list(_live):
        seg._forget_in_child()  # noqa: SLF001 - same module


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True)
class Found:
    """One segment of this user as a store finds it on the machine (for ``ls`` and ``gc``).

    *created* is the oldest inode timestamp seen (never later than creation),
    inf when unknown; *holders* the pids holding it open or mapped; *path*
    its file, empty when it has none.
    """

    name: str
    store: str
    size: int
    owner_pid: int
    owner_alive: bool
    created: float
    path: str = ""
    holders: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class Checkup:
    """What a store found about this machine, for ``nocopy doctor``.

    *key* names the report's section for *report*; *isolation* says what
    another process of the same user can do to a segment of this store.
    """

    key: str
    report: dict[str, Any]
    isolation: dict[str, Any]


@dataclass(frozen=True)
class Advice:
    """One finding of ``nocopy doctor``: level (error, warning, info), what is wrong, the fix."""

    level: str
    message: str
    fix: str


class Store(Protocol):
    """Where a segment's bytes live. Knows nothing of numpy or pandas: it hands out bytes."""

    @property
    def name(self) -> str:
        """The store's name, as in ``share(backend=...)`` and in URIs."""
        ...

    def available(self) -> str | None:
        """None when this store works on this platform, else why not (and the fix)."""
        ...

    def create(self, size: int, *, what: str) -> OwnedSegment:
        """A new segment of *size* bytes, pages reserved; InsufficientMemoryError if no room."""
        ...

    def seal(self, seg: OwnedSegment, token: str, *, writable: bool) -> None:
        """After the data is written: forbid writes (unless *writable*) and any resize; publish."""
        ...

    def open(self, loc: Locator, *, writable: bool, token: str) -> int:
        """A new descriptor of the segment *loc* names, checked (regular file, this user, grant)."""
        ...

    @property
    def sealed(self) -> bool:
        """Whether a published segment's size, and a share()d one's bytes, can never change
        (readers then need not freeze what they check; see `check_sealed`)."""
        ...

    def check_sealed(self, loc: Locator, fd: int, *, output: bool) -> None:
        """Refuse descriptor *fd* of *loc* unless the store guarantees what readers rely on.

        A segment that can shrink kills its readers with SIGBUS, and one whose
        bytes can change after they were checked can make them read out of
        bounds. *output*: an output of empty()/zeros(), whose data its holders
        write (only its size must be fixed).
        """
        ...

    def is_alive(self, loc: Locator) -> bool:
        """Whether the segment still exists (its owner has not closed it or exited)."""
        ...

    def find(self) -> list[Found]:
        """Every segment of this user in this store on this machine (owners alive or not)."""
        ...

    def reclaim(self, *, dry_run: bool = False) -> list[Found]:
        """Remove the segments of dead owners; what was (or would be) removed, size = bytes freed."""
        ...

    @property
    def leaves_orphans(self) -> bool:
        """Whether a dead owner's segments stay until `reclaim` (else the kernel frees them)."""
        ...

    def checkup(self) -> Checkup:
        """Probe whether this store works here and how well (``nocopy doctor``)."""
        ...

    def advice(self, report: dict[str, Any], *, in_use: bool) -> list[Advice]:
        """The problems the doctor's *report* shows for this store; *in_use*: it is the default."""
        ...


def note_fd_limit(exc: OSError, *, attaching: bool = False) -> None:
    """Add the fix to an EMFILE/ENFILE: which descriptors nocopy holds, and how to get more."""
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


def check_opened(loc: Locator, fd: int) -> os.stat_result:
    """Refuse a descriptor that is not a regular file of this user (the name was reused)."""
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
    return st


def open_checked(
    loc: Locator,
    opener: Callable[[int], int],
    write_granted: Callable[[int, os.stat_result], bool],
    *,
    writable: bool,
) -> int:
    """``opener(flags)``'s descriptor of *loc*, once it passed every store's checks.

    It must be a regular file of this user (`check_opened`), and a *writable*
    open needs ``write_granted(fd, stat)``: what the owner granted, never what
    the handle says. A refused descriptor is closed.
    """
    try:
        fd = opener(open_flags(writable))
    except OSError as exc:
        note_fd_limit(exc, attaching=True)
        raise
    try:
        st = check_opened(loc, fd)
        if writable and not write_granted(fd, st):
            raise read_only_error(loc)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_only_error(loc: Locator) -> SegmentAccessError:
    return SegmentAccessError(
        f"segment {loc.name} is read-only: its owner (pid {loc.pid}) shared it with share(), "
        "which never grants writes, but this handle asks for a writable mapping (w=1 in its "
        "URI): the URI or handle was altered. Only outputs made by nocopy.empty()/zeros() are "
        "writable. Fix: use the exact Shared.uri, or get(private=True) for a private writable copy."
    )


# O_NONBLOCK/O_NOCTTY: a hostile name or fd number pointing at a FIFO or a
# terminal must fail the checks, not block or become our tty.
def open_flags(writable: bool) -> int:
    """Flags for opening another process's segment."""
    return (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
