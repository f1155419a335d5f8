"""One lazily created object per process, never inherited across fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["PerProcess"]


class _ClosableInChild(Protocol):
    def close_in_child(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


T = TypeVar("T", bound=_ClosableInChild)


class PerProcess(Generic[T]):
    """``get()`` makes the object on first use. A forked child starts with none.

    Servers (a listening socket and its thread) must not be inherited: the
    child has the socket but not the thread, so the object is dropped there
    after its ``close_in_child()``, and the child makes its own when needed.
    Around every fork the object's thread stops (``pause()``) and starts again
    in the parent (``resume()``): no lock of it is held across the fork, and
    Python 3.12+ sees no other thread to warn about.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._obj: T | None = None
        self._lock = threading.Lock()
        os.register_at_fork(
            before=self._before_fork, after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )

    def get(self) -> T:
        obj = self._obj
        if obj is not None:  # made already: no lock needed to read it (every task asks)
            return obj
        with self._lock:
            if self._obj is None:
                self._obj = self._factory()
            return self._obj

    def peek(self) -> T | None:
        """The object if this process has made one, without making it."""
        return self._obj

    def _before_fork(self) -> None:
        obj = self._obj
        if obj is not None:
            obj.pause()

    def _after_fork_in_parent(self) -> None:
        obj = self._obj
        if obj is not None:
            obj.resume()

    def _after_fork_in_child(self) -> None:
        # The parent may have held the lock while forking.
        self._lock = threading.Lock()
        obj, self._obj = self._obj, None
        if obj is not None:
            obj.close_in_child()
