"""The future the caller gets: mirrors the stdlib's, with results opened and crashes named."""

from __future__ import annotations

import pickle
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import WorkerCrashedError
from ._resources import PoolResources
from ._results import Reply
from ._task import Call, unpickling_stopped

__all__ = ["TaskFuture"]


class TaskFuture(Future[Any]):
    """Follows the stdlib's future of one task (``attach``); unpickles its reply, names its crash.

    Its result is the task's value with every big leaf opened as a private
    view; a broken pool becomes a `nocopy.errors.WorkerCrashedError`
    naming the worker and, when the table knows it, the task.
    """

    def __init__(self, pool: PoolResources, call: Call, label: str | None) -> None:
        super().__init__()
        # The pool's resources, not the executor: a future outlives a collected
        # executor and must still name the worker that died under its task.
        self._pool = pool
        self._call: Call | None = call
        self._task_id = call.task_id
        self._label = label
        self._inner: Future[Any] | None = None

    def attach(self, inner: Future[Any]) -> None:
        """Follow *inner*, the stdlib's future of this task."""
        self._inner = inner
        inner.add_done_callback(self._inner_done)

    def label(self) -> str:
        """The task's name in errors: its label, else ``task #N (function)``."""
        if self._label is not None:
            return self._label
        call = self._call
        return f"task #{self._task_id} ({call.fn_name() if call is not None else '?'})"

    def cancel(self) -> bool:
        inner = self._inner
        if inner is not None and inner.cancel():
            return True
        return self.cancelled()

    def running(self) -> bool:
        inner = self._inner
        return bool(inner is not None and inner.running() and not self.done())

    def _inner_done(self, inner: Future[Any]) -> None:
        if self.done():
            return
        try:
            if inner.cancelled():
                if Future.cancel(self):
                    self.set_running_or_notify_cancel()
                return
            exc = inner.exception()
            if exc is not None:
                self.set_exception(self._translate(exc))
                return
            self._set_reply(inner.result())
        except BaseException as err:  # pragma: no cover - a callback must never leave it pending
            if not self.done():
                self.set_exception(err)
        finally:
            self._call = None

    def _set_reply(self, reply: Any) -> None:
        try:
            value = pickle.loads(reply.data) if type(reply) is Reply else reply
        except Exception as err:
            err.add_note(f"nocopy: while unpickling the result of {self.label()} in the caller")
            self.set_exception(err)
            return
        except BaseException as err:
            # result() would raise it in the caller: a SystemExit would end its program.
            wrapped = unpickling_stopped(err, f"the result of {self.label()}", "the caller")
            wrapped.__cause__ = err
            self.set_exception(wrapped)
            return
        self.set_result(value)

    def _translate(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, BrokenProcessPool) or isinstance(exc, WorkerCrashedError):
            return exc
        if self._pool.aborting:
            err: BaseException = CancelledError(
                f"{self.label()} was stopped: the caller was interrupted and stopped the workers"
            )
        else:
            err = self._pool.tasks.crash_error(self._task_id, self.label())
        err.__cause__ = exc.__cause__ or exc
        return err
