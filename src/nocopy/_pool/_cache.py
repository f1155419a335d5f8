"""The share cache: one segment per argument object per executor, while the object lives."""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import os
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from .._shared import Shared, share
from ..errors import UnsupportedTypeError

__all__ = ["ShareCache"]


# Frames a warning about an argument skips: nocopy's own and the stdlib executor's
# (its map() calls our submit()), so it points at the caller's submit() or map().
_INTERNAL = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)) + os.sep,
)


def _callers_level() -> int:
    """The ``stacklevel``, for a ``warnings.warn`` in our caller, of the first frame outside nocopy."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None  # CPython keeps frames
    level, frame = 1, frame.f_back
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        level, frame = level + 1, frame.f_back
    return level


def _fingerprint(value: Any) -> int | None:
    """What tells a list changed in place since it was shared (None for anything else).

    Arguments are taken as they are at their first submit (documented). A list of str,
    though, is often appended to between submits, and its items are immutable: hashing them
    (str hashes are cached: milliseconds per million items) notices a change, and the list
    is shared again.
    """
    return hash(tuple(value)) if type(value) is list else None


class ShareCache:
    """Per-executor: data object (by identity, while it lives) -> its Shared, or None if unshareable."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, Shared[Any] | None, int | None]] = {}
        # Reentrant: a garbage collection during share() may run _forget here.
        self._lock = threading.RLock()
        self._warned = False
        # Called (without the lock) before every big argument is looked up, so
        # before any is copied: the executor starts its workers then, so that
        # they boot while the copy runs. It must be cheap once they all run.
        self.before_share: Callable[[], object] | None = None

    def cached(self, value: Any) -> tuple[bool, Shared[Any] | None]:
        """(known?, its Shared or None): a repeat argument skips even measuring its size."""
        with self._lock:
            entry = self._entries.get(id(value))
        if entry is not None:
            ref, shared, fingerprint = entry
            held = ref() if isinstance(ref, weakref.ref) else ref
            if held is value and fingerprint == _fingerprint(value):
                return True, shared
        return False, None

    def lookup(self, value: Any) -> Shared[Any] | None:
        """The Shared of *value*, sharing it on first sight (None: it travels pickled)."""
        key = id(value)
        if self.before_share is not None:
            self.before_share()  # idempotent: a second caller racing for the same object is harmless
        with self._lock:
            known, shared = self.cached(value)
            if known:
                return shared
            shared = self._share(value)
            try:
                ref = weakref.ref(value, functools.partial(self._forget, key))
            except TypeError:
                ref = value  # not weak-referenceable: keep it (and its id) until shutdown
            self._entries[key] = (ref, shared, _fingerprint(value))
            return shared

    def _share(self, value: Any) -> Shared[Any] | None:
        try:
            return share(value)
        except (UnsupportedTypeError, ImportError):
            return None  # not zero-copy shareable: it travels pickled, as with the stdlib
        except MemoryError as exc:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"nocopy.ProcessPoolExecutor: no room to share a {type(value).__name__} "
                    f"argument, it is pickled instead ({exc})",
                    RuntimeWarning,
                    stacklevel=_callers_level(),
                )
            return None

    def _forget(self, key: int, ref: Any) -> None:
        # The object died: drop the cache's hold. Tasks still in flight keep
        # their own reference to the Shared, so its segment lives until they end.
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

    def clear(self, *, close: bool) -> None:
        """Forget every entry; *close*: free their segments too (else the tasks using them do)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        if close:
            for _, shared, _ in entries:
                if shared is not None:
                    shared.close()
