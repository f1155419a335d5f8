"""The future of one task: the stdlib's own, with results opened and crashes named as they arrive."""

from __future__ import annotations

from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import WorkerCrashedError
from ._resources import PoolResources
from ._results import Reply
from ._task import Call, unpickling_stopped

__all__ = ["TaskFuture"]

# Future states once settled (concurrent.futures._base names them so).
_SETTLED = ("CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED")


class TaskFuture(Future[Any]):
    """The future the stdlib's work item carries and the caller gets: one per task.

    The manager thread settles it as it settles any stdlib future; on the way
    in, the worker's reply is unpickled (every big leaf opened as a private
    view) and a broken pool becomes a `nocopy.errors.WorkerCrashedError`
    naming the worker and, when the table knows it, the task. ``cancel`` and
    ``running`` are the stdlib's.
    """

    def __init__(self, pool: PoolResources, call: Call, label: str | None) -> None:
        super().__init__()
        # The pool's resources, not the executor: a future outlives a collected
        # executor and must still name the worker that died under its task.
        self._pool = pool
        self._call: Call | None = call
        self._task_id = call.task_id
        self._label = label

    def label(self) -> str:
        """The task's name in errors: its label, else ``task #N (function)``."""
        if self._label is not None:
            return self._label
        call = self._call
        return f"task #{self._task_id} ({call.fn_name() if call is not None else '?'})"

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._call = None  # its arguments are not needed any more
        return True

    def set_result(self, result: Any) -> None:
        """The worker's reply: unpickled here (see `_results.Reply`); a failure becomes the task's error."""
        try:
            value = result.load() if type(result) is Reply else result
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
        self._call = None
        super().set_result(value)

    def set_exception(self, exception: BaseException | None) -> None:
        """The task's error; a broken pool's is named (see `_translate`)."""
        if exception is not None:
            exception = self._translate(exception)
        self._call = None
        with self._condition:  # an RLock: super() takes it again
            if self._state in _SETTLED:
                # Two threads may settle it: the queue's feeder thread (the task failed to
                # pickle) and the manager thread (the pool broke or was stopped meanwhile).
                # The first one wins; the stdlib would print InvalidStateError from a thread.
                return
            super().set_exception(exception)

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
