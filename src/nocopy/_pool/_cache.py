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

from .. import _kinds
from .._codec import unsupported_columns
from .._shared import Shared, share
from .._text import with_article
from ..errors import NotSharedWarning, UnsupportedTypeError

__all__ = ["PartShared", "ShareCache"]


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


class PartShared:
    """A DataFrame shared but for some columns: those travel pickled with each task (``_walk``)."""

    __slots__ = ("converted", "positions", "shared")

    def __init__(self, shared: Shared[Any], positions: tuple[int, ...], converted: _kinds.Converted) -> None:
        self.shared = shared
        self.positions = positions
        self.converted = converted

    def close(self) -> None:
        self.shared.close()


Entry = Shared[Any] | PartShared | None


def _fingerprint(value: Any) -> object:
    """What tells a list changed in place since it was shared (None for anything else).

    Arguments are taken as they are at their first submit (documented). A list of str,
    though, is often appended to between submits, and its items are immutable: hashing them
    (str hashes are cached: milliseconds per million items) notices a change, and the list
    is shared again.
    """
    if type(value) is not list:
        return None
    try:
        return hash(tuple(value))
    except TypeError:  # an unhashable item appended since: it changed (and is no list of str now)
        return object()  # equal to no other fingerprint


#: Arguments that cannot be weak-referenced (lists, tuples) are held by the cache itself:
#: only the most recent few, so a loop submitting new big lists does not keep them all
#: (and their segments) alive. Dropping an entry frees nothing in-flight tasks hold.
STRONG_MAX = 8


class ShareCache:
    """Per-executor: data object (by identity, while it lives) -> its Shared, or None if unshareable."""

    def __init__(self, owner: str = "nocopy.ProcessPoolExecutor") -> None:
        self._entries: dict[int, tuple[Any, Entry, object]] = {}
        # Keys of the entries held strongly, oldest first (at most STRONG_MAX).
        self._strong: dict[int, None] = {}
        # Reentrant: a garbage collection during share() may run _forget here.
        self._lock = threading.RLock()
        self._warned = False
        # Who warns (the executor or nocopy.Pool), and about what already: once per cause.
        self.owner = owner
        self._warned_about: set[tuple[str, ...]] = set()
        # Called (without the lock) before every big argument is looked up, so
        # before any is copied: the executor starts its workers then, so that
        # they boot while the copy runs. It must be cheap once they all run.
        self.before_share: Callable[[], object] | None = None

    def cached(self, value: Any) -> tuple[bool, Entry]:
        """(known?, its Shared or None): a repeat argument skips even measuring its size."""
        with self._lock:
            entry = self._entries.get(id(value))
        if entry is not None:
            ref, shared, fingerprint = entry
            held = ref() if isinstance(ref, weakref.ref) else ref
            if held is value and fingerprint == _fingerprint(value):
                return True, shared
        return False, None

    def lookup(self, value: Any) -> Entry:
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
                ref = value  # not weak-referenceable: kept (and its id reserved) while recent
                self._strong.pop(key, None)
                self._strong[key] = None
                while len(self._strong) > STRONG_MAX:
                    oldest = next(iter(self._strong))
                    del self._strong[oldest]
                    self._entries.pop(oldest, None)
            self._entries[key] = (ref, shared, _fingerprint(value))
            return shared

    def _share(self, value: Any) -> Entry:
        try:
            return share(value)
        except ImportError:
            return None  # not zero-copy shareable: it travels pickled, as with the stdlib
        except UnsupportedTypeError as exc:
            return self._share_part(value, exc)
        except MemoryError as exc:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"{self.owner}: no room to share {with_article(type(value).__name__)} "
                    f"argument, it is pickled instead ({exc})",
                    NotSharedWarning,
                    stacklevel=_callers_level(),
                )
            return None

    def _share_part(self, value: Any, exc: UnsupportedTypeError) -> Entry:
        """A big argument share() refuses: say so once, and share what can be (a DataFrame's other columns).

        Silently pickling it for every task would make the pool as slow as the
        stdlib's without a word. The warning comes before anything is shared:
        under ``-W error`` the submit raises it and nothing is left behind.
        """
        kind = type(value).__name__
        refused = unsupported_columns(value) if _kinds.is_dataframe(value) else {}
        positions = tuple(refused)
        if positions and len(positions) < value.shape[1]:
            key = (kind, *(repr(value.columns[i]) for i in positions))
            message = (
                f"{self.owner}: {with_article(kind)} argument has {len(positions)} column(s) nocopy cannot share "
                f"({'; '.join(refused.values())}): {'they are' if len(positions) > 1 else 'it is'} pickled "
                f"for every task, the other {value.shape[1] - len(positions)} columns are shared. Fix: "
            )
        else:
            why = str(exc).partition(" Fix:")[0]
            key = (kind, why)
            message = f"{self.owner}: {with_article(kind)} argument cannot be shared ({why}); it is pickled for every task. Fix: "
        if key not in self._warned_about:
            warnings.warn(
                message + "nocopy.explain(obj) shows what cannot be shared and why; drop or convert "
                "what it names, or share it yourself with nocopy.share(obj, allow_pickle=True) and "
                "pass the handle (the task calls .get(), which unpickles that part).",
                NotSharedWarning,
                stacklevel=_callers_level(),
            )
            self._warned_about.add(key)  # only once it was issued (not raised: -W error)
        if not positions or len(positions) == value.shape[1]:
            return None
        split = _kinds.split_columns(value, positions)
        assert split is not None  # a pandas DataFrame, checked above
        rest = split[0]
        try:
            shared = share(rest)
        except (UnsupportedTypeError, ImportError, MemoryError):
            return None  # e.g. an index share() refuses: the whole frame travels pickled
        return PartShared(shared, positions, _kinds.converted_columns(rest))

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
            self._strong.clear()
        if close:
            for _, shared, _ in entries:
                if shared is not None:
                    shared.close()
