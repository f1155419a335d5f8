"""Where the bytes live: the store facade (memfd: anonymous, Linux; posix: named segments).

A store knows nothing of numpy or pandas: it creates a segment of a given size
with the room checked and the pages reserved, hands out a descriptor to fill,
then seals it (read-only, or a writable output that can never shrink) and lets
other processes open it. Everything outside ``_store/`` reaches a store through
`get_store` and the `Store` protocol, and never branches on a
store's name. Nothing here uses multiprocessing's resource tracker, which
unlinks segments that other processes still use.
"""

from __future__ import annotations

import os

from ..errors import SegmentNotFoundError
from ._hugepages import collapse as huge_mapping
from ._hugepages import collapse_state as huge_pages_now
from ._hugepages import forget_cost as forget_huge_page_cost
from ._mapping import Mapping
from ._memfd import MemfdStore
from ._posix import PosixStore, shm_dir
from ._segment import Advice, Checkup, Found, Locator, OwnedSegment, Store
from ._uri import Described, format_uri, parse_uri

__all__ = [
    "BACKENDS",
    "Advice",
    "Checkup",
    "Described",
    "Found",
    "Locator",
    "Mapping",
    "OwnedSegment",
    "Store",
    "bytes_can_change",
    "check_backend",
    "check_sealed",
    "default_backend",
    "descriptor_path",
    "forget_huge_page_cost",
    "format_uri",
    "get_store",
    "huge_mapping",
    "huge_pages_now",
    "is_alive",
    "leaves_orphans",
    "open_segment",
    "parse_uri",
    "shm_dir",
    "stores",
    "stores_known",
]

_STORES: dict[str, Store] = {s.name: s for s in (MemfdStore(), PosixStore())}
BACKENDS = tuple(_STORES)



def default_backend() -> str:
    """The store used when share() is not told: $NOCOPY_BACKEND, else memfd where it works."""
    env = os.environ.get("NOCOPY_BACKEND", "").strip().lower()
    if env:
        return check_backend(env)
    return next(name for name, store in _STORES.items() if store.available() is None)


def check_backend(name: str) -> str:
    """*name* if it is a store that works here, else a ValueError saying what to use."""
    store = _STORES.get(name)
    if store is None:
        raise ValueError(f"unknown nocopy backend {name!r}: choose one of {', '.join(BACKENDS)}")
    why = store.available()
    if why is not None:
        raise ValueError(why)
    return name


def get_store(name: str) -> Store:
    """The store called *name* (as in ``share(backend=...)``); ValueError if unknown or unusable here."""
    return _STORES[check_backend(name)]


def stores() -> list[Store]:
    """Every store that works on this platform (for listing and reclaiming segments)."""
    return [s for s in _STORES.values() if s.available() is None]


def stores_known() -> list[Store]:
    """Every store nocopy has, usable here or not (``nocopy doctor`` reports on each)."""
    return list(_STORES.values())


def leaves_orphans(name: str) -> bool:
    """Whether segments of store *name* outlive a dead owner until reclaimed (``nocopy gc``)."""
    store = _STORES.get(name)
    return store is not None and store.leaves_orphans


def open_segment(loc: Locator, *, writable: bool, token: str, output: bool = False) -> int:
    """Open another (or this) process's segment; returns a new fd.

    *writable* is what the handle asks for; the segment itself says whether
    its owner granted writes (an output of empty()/zeros()), so a handle or
    URI that claims more is refused with SegmentAccessError. *output*: the
    handle is of such an output; else a memfd must also be sealed against
    writes (see `check_sealed`).
    """
    store = _locate(loc)
    fd = store.open(loc, writable=writable, token=token)
    try:
        store.check_sealed(loc, fd, output=output)
    except BaseException:
        os.close(fd)
        raise
    return fd


def bytes_can_change(loc: Locator) -> bool:
    """Whether the bytes of segment *loc* may change after a reader checked them (an unsealable store)."""
    return not _locate(loc).sealed


def check_sealed(loc: Locator, fd: int, *, output: bool) -> None:
    """SegmentAccessError unless *fd* (a descriptor of *loc* received from elsewhere) is sealed as
    its store promises: a memfd against resizing, and against writes unless *output*."""
    _locate(loc).check_sealed(loc, fd, output=output)


def descriptor_path(fd: int) -> str:
    """A path naming descriptor *fd* of this process, for libraries that open by path (Arrow)."""
    return f"/proc/self/fd/{fd}"


def is_alive(loc: Locator) -> bool:
    """Whether the segment *loc* names still exists (its owner has not closed it or exited)."""
    store = _STORES.get(loc.store)
    return store is not None and store.is_alive(loc)


def _locate(loc: Locator) -> Store:
    store = _STORES.get(loc.store)
    if store is None:
        raise SegmentNotFoundError(
            f"unknown store {loc.store!r} for segment {loc.name}. "
            "Fix: use the same nocopy version in every process."
        )
    return store
