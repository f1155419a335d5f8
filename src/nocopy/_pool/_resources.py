"""What an executor's workers, manager thread and futures need, for as long as they need it."""

from __future__ import annotations

import contextlib
import os
import threading

from .. import _inventory
from ._cache import ShareCache
from ._crash import TaskTable
from ._results import drop_tag

__all__ = ["PoolResources"]


class PoolResources:
    """The pool's segments and names, owned by its manager thread rather than the executor object.

    The standard library lets an executor be collected with work pending (no
    ``with``, no ``shutdown()``): its manager thread holds only a weak reference
    to the executor, finishes the pending work, stops the workers and exits.
    Workers started meanwhile open the task table, and queued tasks map their
    shared arguments, so those segments cannot belong to the executor object.
    They belong here: the manager thread (and every future, to name crashes)
    holds this, and it is freed when that thread exits -- or when
    ``shutdown(wait=True)`` has waited for it, or at once if no task was ever
    submitted.
    """

    def __init__(self) -> None:
        # Names this executor's results in the process's inbox.
        self.tag = os.urandom(8).hex()
        self.cache = ShareCache()
        self.tasks = TaskTable()
        self.aborting = False
        # Once a manager thread has started, it alone frees these, on its way out.
        self.managed = False
        # The manager thread, shutdown() and an abort may all release at once.
        self._release_lock = threading.Lock()
        self._released = False

    def release(self, *, reclaim: bool) -> None:
        """Free the segments; idempotent. *reclaim*: a worker died, sweep posix orphans too."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
        if reclaim:
            self.tasks.crash_info()  # while the table and the processes are here: later reports reuse it
        self.tasks.close()
        self.cache.clear(close=True)
        drop_tag(self.tag)
        if reclaim:
            # posix segments of workers that died mid-result: dead owner, nobody holds them.
            with contextlib.suppress(OSError):
                _inventory.cleanup()
