"""One lazily created object per process, never inherited across fork; its thread stopped across every fork."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["PerProcess", "restart_after_fork"]


class _ClosableInChild(Protocol):
    def close_in_child(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


T = TypeVar("T", bound=_ClosableInChild)

# Forks made inside `restart_after_fork()` on this thread: their servers restart when it ends.
_deferring = threading.local()
_instances: list[PerProcess[_ClosableInChild]] = []
# A server's thread could not start: every get() of any of them tries them all again.
# (A plain flag: a forked child may inherit it set, never a lock of it held.)
_retry = False


def _resume_all() -> None:
    global _retry
    _retry = False
    for per_process in list(_instances):
        per_process.try_resume()


@contextlib.contextmanager
def restart_after_fork() -> Iterator[None]:
    """Forks made inside leave nocopy's servers stopped; they start again, from this thread, at its end.

    Python 3.13 counts the process's threads for its fork warning after the
    at-fork hooks have run in the parent: a server restarted in such a hook
    would be counted ("This process is multi-threaded, use of fork() may lead
    to deadlocks"). So a pool forks its workers in here, and the servers start
    again once ``os.fork()`` has returned. A server that cannot start now
    (the interpreter is finalizing, or out of threads) stays stopped and is
    started again at its next use (`PerProcess.get`).
    """
    depth = getattr(_deferring, "depth", 0)
    _deferring.depth = depth + 1
    try:
        yield
    finally:
        _deferring.depth = depth
        if depth == 0:
            _resume_all()


class PerProcess(Generic[T]):
    """``get()`` makes the object on first use. A forked child starts with none.

    Servers (a listening socket and its thread) must not be inherited: the
    child has the socket but not the thread, so the object is dropped there
    after its ``close_in_child()``, and the child makes its own when needed.
    Around every fork the object's thread stops (``pause()``): no lock of it
    is held across the fork, and Python 3.12+ sees no other thread to warn
    about. It starts again (``resume()``) in the parent: at the end of
    `restart_after_fork` for a pool's forks, else in the after-fork hook (a
    fork nocopy did not make). A start that fails (``RuntimeError``: the
    interpreter is finalizing, or out of threads) leaves it stopped, never
    raises there, and is tried again by the next `get` of any of them.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._obj: T | None = None
        self._stopped = False  # paused for a fork (or failed to start) and not serving since
        self._lock = threading.Lock()
        _instances.append(self)  # type: ignore[arg-type]
        os.register_at_fork(
            before=self._before_fork, after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )

    def get(self) -> T:
        """The object, made (and its thread started) on first use; a stopped thread is started again."""
        if _retry:
            _resume_all()
        obj = self._obj
        if obj is not None and not self._stopped:  # every task asks: no lock on that path
            return obj
        with self._lock:
            if self._obj is None:
                self._obj = self._factory()
                self._stopped = True
            self._resume_locked()
            return self._obj

    def peek(self) -> T | None:
        """The object if this process has made one, without making it."""
        return self._obj

    def serving(self) -> bool:
        """Whether the object exists and its thread runs (it was not stopped, or started again)."""
        return self._obj is not None and not self._stopped

    def try_resume(self) -> bool:
        """Start the stopped thread again now; False if it cannot start (tried again at the next `get`)."""
        with self._lock:
            return self._resume_locked()

    def _resume_locked(self) -> bool:
        obj = self._obj
        if obj is None or not self._stopped:
            return obj is not None
        try:
            obj.resume()
        except RuntimeError:
            # "can't start new thread" / "can't create new thread at interpreter shutdown":
            # clients wait in the socket's backlog; the next get() tries again.
            global _retry
            _retry = True
            return False
        self._stopped = False
        return True

    def _before_fork(self) -> None:
        # Held across the fork: no get() or try_resume() of another thread starts it meanwhile.
        self._lock.acquire()
        obj = self._obj
        if obj is not None:
            obj.pause()
            self._stopped = True

    def _after_fork_in_parent(self) -> None:
        try:
            if not getattr(_deferring, "depth", 0):
                self._resume_locked()  # a fork nocopy did not make: serve again at once
        finally:
            self._lock.release()

    def _after_fork_in_child(self) -> None:
        # The parent held the lock while forking, maybe inside restart_after_fork(): this
        # child's forks restart their servers as any other process's do.
        self._lock = threading.Lock()
        _deferring.depth = 0
        self._stopped = False
        obj, self._obj = self._obj, None
        if obj is not None:
            obj.close_in_child()
