"""The Shared handle: share(), attach(), empty()/zeros() and the per-process mappings."""

from __future__ import annotations

import contextlib
import mmap
import operator
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from ._codec import Header, Plan, decode, fill_threads, plan, plan_output, read_header
from ._kinds import describe, describe_array, kind_name
from ._store import (
    Described,
    Locator,
    Mapping,
    OwnedSegment,
    bytes_can_change,
    check_sealed,
    default_backend,
    descriptor_path,
    format_uri,
    get_store,
    open_segment,
    parse_uri,
)
from ._store import is_alive as _segment_exists
from ._text import format_bytes, format_handle, with_article
from .errors import SegmentClosedError, SegmentCorruptError, SegmentNotFoundError

__all__ = ["Shared", "attach", "empty", "share", "zeros"]

T = TypeVar("T")


class _Attached:
    """One mapping of a segment and its decode plan: the header, copied out and checked once.

    Bytes in shared memory are hostile also after they were checked (a posix
    file or a writable output can be rewritten at any moment), so the header
    is never read again from the mapping: every get() decodes from this plan.
    """

    __slots__ = ("__weakref__", "base", "cow", "header")

    def __init__(self, base: np.ndarray, header: Header) -> None:
        self.base = base
        self.header = header
        # A copy-on-write mapping of the same segment, made on first need where its
        # bytes can change (posix): the decoder freezes there what it checks, once
        # for every get() of this mapping (see Decoder.frozen_buffer).
        self.cow: np.ndarray | None = None


# One read-only (or, for outputs, writable) mapping per segment per process,
# with its plan, alive while any handle still uses it. Keyed by access too: a
# writable mapping must never be handed to a read-only handle. Private
# (copy-on-write) mappings are never cached: each get(private=True) is its own copy.
_mappings: weakref.WeakValueDictionary[tuple[str, bytes, bool], _Attached] = weakref.WeakValueDictionary()
_mappings_lock = threading.Lock()
# Handles that keep a mapping (for the fork hook below), by identity: handles
# to one segment compare equal, and a WeakSet would keep only one of them.
_mapped_handles: weakref.WeakValueDictionary[int, Shared[Any]] = weakref.WeakValueDictionary()


def _after_fork_in_child() -> None:
    # A forked child inherits every mapping of the parent. The views it holds
    # stay valid (each keeps its own mapping), but the handles' cached
    # mappings would pin each segment's memory for the child's life after
    # the parent closed it: the child drops them and maps anew on its next
    # get(), like any process. Locks a parent thread held at the fork would
    # never be released here: made anew.
    global _mappings_lock
    _mappings_lock = threading.Lock()
    _mappings.clear()
    for handle in list(_mapped_handles.values()):
        handle._lock = threading.Lock()  # noqa: SLF001 - same module
        handle._attached = None  # noqa: SLF001 - same module
    _mapped_handles.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Shared(Generic[T]):
    """A handle to data in shared memory; cheap to pickle, zero-copy to read.

    Made by `share` (the owner), by unpickling (any process) or by
    `attach` from a URI. Only the owner's `close` frees the
    segment; views already taken stay valid until they are dropped.

    Its repr says what it holds (kind, dtype and shape, or rows x columns of a
    frame, or the length of a sequence), the data's size and the segment. A
    handle made by `attach` learns the shape at its first `get`. Handles
    compare equal (and hash alike) when they name the same segment with the
    same permissions: the owner's handle, its unpickled copies in other
    processes and `attach(ref.uri)` are all equal.

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> with nocopy.share(np.arange(5)) as ref:
    ...     view = ref.get()          # zero-copy, read-only
    ...     int(view.sum())
    10
    >>> ref = nocopy.share(np.zeros((1000, 1000)))
    >>> ref                                               # doctest: +ELLIPSIS
    <nocopy.Shared ndarray float64 (1000, 1000) 7.6 MiB at ...>
    >>> nocopy.attach(ref.uri) == ref
    True
    """

    def __init__(
        self,
        locator: Locator,
        *,
        token: bytes,
        size: int,
        nbytes: int,
        kind: str,
        writable: bool = False,
        pickled: bool = False,
        trusted: bool = True,
        owner: OwnedSegment | None = None,
        head: bytes | None = None,
        about: str = "",
    ) -> None:
        self._locator = locator
        self._token = token
        self._size = size
        self._nbytes = nbytes
        self._kind = kind
        self._writable = writable
        # Whether the segment may hold pickled parts: set only by share(...,
        # allow_pickle=True), travelling with the handle (its pickle and URI).
        self._pickled = pickled
        self._trusted = trusted
        self._owner = owner
        # The prefix and header as the owner wrote them, when this handle has them
        # privately (the owner's own handle; any handle of a writable output,
        # whose pickle carries them): then the segment's header bytes are never read.
        self._head = head
        # What the repr says of the data's shape (kinds.describe): from the
        # object at share(), from the pickle, or from the first get().
        self._about = about
        # The decode plan, decided once per handle (from _head or the first mapping).
        self._header: Header | None = None
        # The mapping this handle keeps (None until the first get()); dropped by close().
        self._attached: _Attached | None = None
        self._closed = False  # for good once close() ran (in any thread)
        self._lock = threading.Lock()
        if owner is not None:
            self._finalizer = weakref.finalize(self, owner.release)

    # -- description -------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of data (the buffers), not counting the header."""
        return self._nbytes

    @property
    def size(self) -> int:
        """Bytes of the whole segment (header and padding included)."""
        return self._size

    @property
    def kind(self) -> str:
        """Type name of the shared object, e.g. ``"ndarray"`` or ``"DataFrame"``."""
        return self._kind

    @property
    def backend(self) -> Literal["memfd", "posix"]:
        """The store: ``"memfd"`` or ``"posix"``."""
        return self._locator.store  # type: ignore[return-value]  # a Locator's store is one of them

    @property
    def name(self) -> str:
        """The segment's name (``nocopy-<pid>-<start>-<random>``)."""
        return self._locator.name

    @property
    def owner_pid(self) -> int:
        """The pid of the process that created the segment (and frees it on close)."""
        return self._locator.pid

    @property
    def is_owner(self) -> bool:
        """Whether this handle created the segment (in this process)."""
        return self._owner is not None and self._owner.owner_pid == os.getpid()

    @property
    def closed(self) -> bool:
        """Whether `close` was called on this handle."""
        return self._closed

    @property
    def writable(self) -> bool:
        """True for outputs made by `empty`/`zeros`."""
        return self._writable

    @property
    def uri(self) -> str:
        """A ``nocopy://`` string for `attach` in an unrelated process of the same user."""
        return format_uri(
            Described(
                self._locator, token=self._token, size=self._size, nbytes=self._nbytes,
                kind=self._kind, writable=self._writable, pickled=self._pickled,
            )
        )

    def __repr__(self) -> str:
        states = ["writable"] if self._writable else []
        states += ["closed"] if self._closed else []
        where = f"{self._locator.store}:{self._locator.name}"
        return format_handle("nocopy.Shared", self._kind, self._about, self._nbytes, where, *states)

    def _identity(self) -> tuple[str, str, bytes, bool, bool]:
        """The segment (store, name, token) and what the handle may do with it."""
        loc = self._locator
        return (loc.store, loc.name, self._token, self._writable, self._pickled)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Shared):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    # -- use ---------------------------------------------------------
    def get(self, *, private: bool = False, populate: bool = False) -> T:
        """Rebuild the object over the shared pages, without copying.

        Views are read-only (writes raise numpy's "assignment destination is
        read-only"), except for outputs from `empty`/`zeros`.
        With ``private=True`` the view is writable copy-on-write: writes stay
        in this process, reads still come from the shared pages.

        ``populate=True`` maps every page of the segment before returning, in
        one system call: a task about to read all of the data saves the page
        faults of its first pass (about 15 ms per 220 MB here, against 40-60 ms
        of faults). It costs time in proportion to the segment's size, so
        leave it off when only part of the data will be read. The drop-in
        pools populate the arguments they deliver.

        Examples
        --------
        >>> ref = nocopy.share(np.zeros(3))
        >>> v = ref.get(private=True); v[0] = 1.0
        >>> float(ref.get()[0])
        0.0
        >>> float(ref.get(populate=True).sum())   # every page mapped up front
        0.0
        """
        if private:
            # Under the lock: a close() in another thread must not free the
            # owner's descriptor between the check and the mapping.
            with self._lock:
                self._check_open()
                base = self._map(mmap.ACCESS_COPY)
                header = self._plan(base)
        else:
            base, header = self._shared_mapping()
        if populate:
            _populate(base)
        result: T = self._decode(base, header, private=private)
        if not self._about:
            self._about = describe(result)
        return result

    def close(self) -> None:
        """Let go of the segment. Idempotent; never raises.

        In the owner this frees the segment (memfd: once every process that
        mapped it has dropped its views; posix: the name is removed at once).
        Views already taken stay valid until dropped.

        Examples
        --------
        >>> ref = nocopy.share(np.arange(4))
        >>> view = ref.get()
        >>> ref.close(); ref.close()          # idempotent
        >>> int(view.sum())                   # the view is still valid
        6
        """
        try:
            with self._lock:
                self._closed = True
                self._attached = None
                if self._owner is not None:
                    # New handles in this process must fail like anywhere else.
                    with _mappings_lock:
                        for writable in (False, True):
                            _mappings.pop((self._locator.name, self._token, writable), None)
                    self._finalizer()
        except Exception:  # pragma: no cover - close must never raise
            pass

    def __enter__(self) -> Shared[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # The handle travels, never the data; the receiver is not the owner.
        # Trust travels too: a handle attach()ed untrusted must not unpickle
        # (or skip validation) in the process it is sent to. So does the permission
        # to unpickle (_pickled), and an output's header: whoever can write an
        # output's pages must not decide what the receiver's get() builds.
        loc = self._locator
        head = self._head if self._writable else None
        return (
            _rebuild,
            (loc.store, loc.name, loc.pid, loc.fd, loc.sock, self._token, self._size,
             self._nbytes, self._kind, self._writable, self._pickled, self._trusted, head, self._about),
        )

    # -- internals ---------------------------------------------------
    def _check_open(self) -> None:
        """The one use-after-close error (callers hold the lock)."""
        if self._closed:
            raise SegmentClosedError(
                f"{self!r} is closed. Fix: call get() before close(), or keep the handle open."
            )

    def _shared_base(self) -> np.ndarray:
        """The shared mapping this handle keeps (uint8, the whole segment)."""
        return self._shared_mapping()[0]

    def _shared_mapping(self) -> tuple[np.ndarray, Header]:
        """The shared mapping this handle keeps and its decode plan."""
        with self._lock:
            self._check_open()
            attached = self._attached
            if attached is None:
                key = (self._locator.name, self._token, self._writable)
                with _mappings_lock:
                    attached = _mappings.get(key)
                if attached is None:
                    base = self._map(mmap.ACCESS_WRITE if self._writable else mmap.ACCESS_READ)
                    attached = _Attached(base, self._plan(base))
                    with _mappings_lock:
                        _mappings[key] = attached
                elif self._header is None and self._head is None:
                    self._header = attached.header  # decided once, by whoever mapped it first here
                self._attached = attached
                _mapped_handles[id(self)] = self
            return attached.base, self._plan(attached.base)

    def _plan(self, base: np.ndarray) -> Header:
        """The decode plan, decided once per handle (callers hold the lock).

        From the header the owner wrote, when this handle holds it privately,
        else copied out of the first mapping (*base*) and checked there, once.
        """
        if self._header is None:
            name, token, size = self._locator.name, self._token, self._size
            if self._head is not None:
                self._header = read_header(self._head, name=name, token=token, size=size, detached=True)
            else:
                self._header = read_header(base.data, name=name, token=token, size=size, output=self._writable)
        return self._header

    def _open(self, *, writable: bool = False) -> int:
        """A new descriptor of the segment file (the caller closes it)."""
        owner = self._owner
        if owner is not None and owner.held():
            return os.dup(owner.fd)
        return open_segment(self._locator, writable=writable, token=self._token.hex(), output=self._writable)

    @contextlib.contextmanager
    def _reopen(self) -> Iterator[str]:
        """A path to the segment file, valid inside the block (a descriptor held meanwhile)."""
        # Under the lock, as in get(private=True): a close() must not free the
        # owner's descriptor (its number then reused) before it is duplicated.
        with self._lock:
            self._check_open()
            fd = self._open()
        try:
            yield descriptor_path(fd)
        finally:
            os.close(fd)

    def _map(self, access: int) -> np.ndarray:
        fd = self._open(writable=access == mmap.ACCESS_WRITE)
        try:
            actual = os.fstat(fd).st_size
            if actual < self._size:
                raise SegmentCorruptError(
                    f"segment {self._locator.name} is {actual} bytes, its handle says "
                    f"{self._size}: it was truncated. Fix: share the data again."
                )
            # Not mmap.mmap, which keeps a duplicate descriptor per live mapping.
            mapping = Mapping(fd, self._size, access)
        finally:
            os.close(fd)
        return np.asarray(mapping)

    def _decode(self, base: np.ndarray, header: Header, *, private: bool) -> Any:
        # Pickled nodes are refused by the decoder itself unless this handle allows
        # them (share(..., allow_pickle=True)) and is trusted.
        remap = None
        if bytes_can_change(self._locator):
            # What the decoder must check and then use (Arrow stream metadata) is
            # frozen in a copy-on-write mapping first: *base* itself when it is one.
            remap = (lambda: base) if private else self._cow_mapping
        return decode(
            base, header, name=self._locator.name, trusted=self._trusted,
            allow_pickle=self._pickled, reopen=self._reopen, remap=remap,
        )

    def _cow_mapping(self) -> np.ndarray:
        """A copy-on-write mapping of the segment (uint8, writable, private to this process),
        one per shared mapping: what was frozen in it stays frozen for later get() calls."""
        with self._lock:  # as in get(private=True): the owner's descriptor stays open meanwhile
            self._check_open()
            attached = self._attached
            if attached is None:
                return self._map(mmap.ACCESS_COPY)
            if attached.cow is None:
                attached.cow = self._map(mmap.ACCESS_COPY)
            return attached.cow


def _populate(base: np.ndarray) -> None:
    # Both the cached and the private bases are numpy views of a Mapping.
    mapping: object = base.base
    if isinstance(mapping, Mapping):
        mapping.populate()


def _rebuild(
    store: str, name: str, pid: int, fd: int, sock: str, token: bytes, size: int,
    nbytes: int, kind: str, writable: bool, pickled: bool, trusted: bool = True,
    head: bytes | None = None, about: str = "",
) -> Shared[Any]:
    return Shared(
        Locator(store, name, pid, fd, sock), token=token, size=size, nbytes=nbytes,
        kind=kind, writable=writable, pickled=pickled, trusted=trusted, head=head, about=str(about)[:64],
    )


def _new_segment(plan: Plan, *, kind: str, about: str, backend: str | None, writable: bool) -> Shared[Any]:
    store = get_store(backend or default_backend())
    fill_threads(plan.nbytes)  # a bad $NOCOPY_FILL_THREADS is an error for every share, before any allocation
    seg = store.create(plan.size, what=f"{with_article(kind)} of {format_bytes(plan.nbytes)}")
    try:
        if seg.mapping is not None:
            plan.write_into(np.asarray(seg.mapping))
        else:
            plan.write_to_fd(seg.fd)
        store.seal(seg, plan.token.hex(), writable=writable)
    except BaseException:
        seg.release()
        raise
    return Shared(
        seg.locator, token=plan.token, size=plan.size, nbytes=plan.nbytes, kind=kind,
        writable=writable, pickled=plan.pickled, trusted=True, owner=seg, head=plan.head, about=about,
    )


def share(obj: T, *, backend: Literal["memfd", "posix"] | None = None, allow_pickle: bool = False) -> Shared[T]:
    """Copy *obj* into shared memory once and return a handle to it.

    *obj* may be a NumPy array (any fixed-width dtype, record arrays
    included), a pandas or Arrow object, or dicts/lists/tuples of those.
    *backend* is ``"memfd"`` (Linux default) or ``"posix"``;
    ``$NOCOPY_BACKEND`` sets the default. ``allow_pickle=True`` stores
    unsupported parts pickled instead of raising UnsupportedTypeError, and
    gives the handle (its pickle and its URI) the permission to unpickle
    them: only such a handle ever unpickles anything, and one made by
    `attach` only with ``trusted=True``.

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> ref = nocopy.share(np.arange(1_000_000))
    >>> ref.get()[-1]
    np.int64(999999)
    >>> ref.close()
    """
    if isinstance(obj, Shared):
        return obj
    return _new_segment(
        plan(obj, allow_pickle=allow_pickle), kind=kind_name(obj), about=describe(obj), backend=backend, writable=False
    )


def empty(
    shape: int | tuple[int, ...], dtype: Any = float, *, order: str = "C", backend: Literal["memfd", "posix"] | None = None
) -> Shared[np.ndarray]:
    """A writable shared array for outputs: workers fill disjoint slices, the owner sees them.

    Its contents start unspecified (today: zero). Use `zeros` when that matters.

    Examples
    --------
    >>> out = nocopy.empty((4,), "f8")
    >>> out.get()[:] = 1.5          # in any process holding the handle
    >>> float(out.get().sum())
    6.0
    """
    return _writable_array(shape, dtype, order=order, backend=backend)


def zeros(
    shape: int | tuple[int, ...], dtype: Any = float, *, order: str = "C", backend: Literal["memfd", "posix"] | None = None
) -> Shared[np.ndarray]:
    """Like `empty`, guaranteed zero-filled (fresh shared pages are zero).

    Examples
    --------
    >>> out = nocopy.zeros((2, 3), "i4")
    >>> out.get().tolist()
    [[0, 0, 0], [0, 0, 0]]
    """
    return _writable_array(shape, dtype, order=order, backend=backend)


def _writable_array(shape: Any, dtype: Any, *, order: str, backend: str | None) -> Shared[np.ndarray]:
    # operator.index, not int(): a float shape is an error (as in numpy), never truncated.
    try:
        shape_t = (operator.index(shape),) if np.ndim(shape) == 0 else tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, not {shape!r:.60}") from None
    if any(s < 0 for s in shape_t):
        raise ValueError(f"negative dimensions are not allowed: {shape_t}")
    # The codec checks the dtype and order and plans the node (nobody else builds nodes).
    planned = plan_output(shape_t, dtype, order=order)
    about = describe_array(np.dtype(dtype), shape_t)
    return _new_segment(planned, kind="ndarray", about=about, backend=backend, writable=True)


def _from_uri(uri: str, *, trusted: bool) -> Shared[Any]:
    d = parse_uri(uri)
    return Shared(
        d.locator, token=d.token, size=d.size, nbytes=d.nbytes, kind=d.kind,
        writable=d.writable, pickled=d.pickled, trusted=trusted,
    )


def attach(uri: str, *, trusted: bool = False) -> Shared[Any]:
    """Open a segment by its URI, from any process of the same user.

    The segment is opened and its header checked at once, so a closed or
    foreign segment fails here (SegmentNotFoundError, SegmentAccessError);
    a string that is not a URI (mistyped, cut short) is InvalidURIError,
    a ``ValueError`` naming what is wrong with it.
    Data stored pickled is only unpickled when both the URI says it was made
    by ``share(..., allow_pickle=True)`` and the caller passes
    ``trusted=True`` (unpickling runs code: trust whoever gave you the URI).
    Without ``trusted=True`` nothing is ever unpickled.

    Examples
    --------
    >>> ref = nocopy.share(np.arange(3))
    >>> nocopy.attach(ref.uri).get().tolist()   # from any process of this user
    [0, 1, 2]
    """
    handle = _from_uri(uri, trusted=trusted)
    handle._shared_mapping()  # noqa: SLF001 - same module; fail here, not at the first get()
    return handle


# -- the handle layer's surface for the pool (not public API: not in nocopy.__all__) ----------
# The pool hands result segments between processes as a descriptor plus the handle's URI;
# these are the only operations it needs on a handle beyond the public ones.


def owner_fd(handle: Shared[Any]) -> int:
    """The descriptor of a segment this process owns (to pass to another process by SCM_RIGHTS)."""
    owner = handle._owner  # noqa: SLF001 - same module
    if owner is None or not owner.held():
        raise SegmentNotFoundError(
            f"{handle!r} is not an open segment owned by this process. "
            "Fix: keep the Shared open until the result is handed over."
        )
    return owner.fd


def adopt(fd: int, uri: str) -> Shared[Any]:
    """A handle that owns *fd*, a descriptor of the segment *uri* describes (sent by its owner).

    Closing the handle closes *fd*; a posix segment's name stays its creator's to remove.
    """
    d = parse_uri(uri)
    loc = d.locator
    seg = OwnedSegment(Locator(loc.store, loc.name, os.getpid(), fd, ""), fd, d.size, None)
    try:
        # Sent by another process: sealed like any segment this process attaches.
        check_sealed(loc, fd, output=d.writable)
    except BaseException:
        seg.release()
        raise
    return Shared(
        seg.locator, token=d.token, size=d.size, nbytes=d.nbytes,
        kind=d.kind, writable=d.writable, pickled=d.pickled, trusted=True, owner=seg,
    )


def is_alive(handle: Shared[Any]) -> bool:
    """Whether the segment still exists (its owner has not closed it or exited)."""
    return _segment_exists(handle._locator)  # noqa: SLF001 - same module


def map_now(handle: Shared[Any]) -> None:
    """Map the segment read-only in this process now and keep the mapping with the handle.

    Later get() calls reuse it (no remapping, pages already faulted in).
    """
    handle._shared_mapping()  # noqa: SLF001 - same module
