"""One task as it travels: `Call` in the caller, `WorkerCall` in the worker.

The callable and the (marked) arguments are pickled as one payload inside the
``Call``, in the queue's feeder thread. The worker unpickles that payload
inside the task, so an argument that fails to unpickle fails that task only
(the stdlib would lose the worker and break the pool), turns every marker into
a private view, runs the task, and shares big results before replying.
"""

from __future__ import annotations

import functools
import os
import pickle
from multiprocessing.reduction import ForkingPickler
from typing import Any

from .._text import with_article
from ..errors import TaskUnpicklingError
from . import _crash, _functions, _results, _walk, _worker
from ._cache import ShareCache

__all__ = ["Call", "WorkerCall", "fn_name", "prepare", "unpickling_stopped"]


def fn_name(fn: Any) -> str:
    """How a task's callable is named in errors: ``module.qualname``, ``partial(...)``, ``map(...)``."""
    if isinstance(fn, functools.partial):
        inner = fn.func
        if getattr(inner, "__name__", "") == "_process_chunk" and fn.args:
            return f"map({fn_name(fn.args[0])})"
        return f"partial({fn_name(inner)})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in ("builtins", "__main__") else str(name)


def unpickling_stopped(exc: BaseException, what: str, where: str) -> TaskUnpicklingError:
    """The error standing for a BaseException (SystemExit...) that unpickling *what* raised."""
    return TaskUnpicklingError(
        f"{exc!r} was raised while unpickling {what} in {where}; it fails that task only and is "
        f"reported as this error, so that it cannot stop the caller's program. Fix: find why "
        f"unpickling that object raises {type(exc).__name__} (its __reduce__ or __setstate__), "
        "or pass it in a form that unpickles.",
        task=what,
        raised=type(exc).__name__,
    )


# A result list or tuple longer than this is not checked item by item: it goes in a Reply.
_PLAIN_ITEMS = 64


def _plain(result: Any) -> bool:
    """Whether *result* is an atomic value, or a short list or tuple of them (ex.map's chunk results)."""
    t = type(result)
    if t in _walk.ATOMIC:
        return True
    if t is list or t is tuple:
        return len(result) <= _PLAIN_ITEMS and all(type(v) in _walk.ATOMIC for v in result)
    return False


class WorkerCall:
    """The callable the stdlib worker runs: unpickle, unwrap, call, send big results back."""

    __slots__ = ("address", "has_handles", "name", "payload", "results_by_value", "tag", "task_id", "threshold")

    def __init__(
        self, payload: bytes, task_id: int, name: str, threshold: int, address: str, tag: str,
        has_handles: bool, results_by_value: bool = True,
    ) -> None:
        self.results_by_value = results_by_value
        self.payload = payload
        self.task_id = task_id
        self.name = name
        self.threshold = threshold
        self.address = address
        self.tag = tag
        self.has_handles = has_handles

    def __call__(self) -> Any:
        """The task's `_results.Reply`, or its plain result itself (see `_plain`)."""
        table = _worker.task_table()
        row = self.task_id % _crash.RING
        if table is not None:
            table[row] = (self.task_id, os.getpid(), _crash.STARTED)
        try:
            fn, args, kwargs = self._load()
            if self.has_handles:
                if type(fn) is functools.partial:
                    fn = _walk.unwrap(fn, _worker.keep_warm)
                args = _walk.unwrap(args, _worker.keep_warm)
                kwargs = _walk.unwrap(kwargs, _worker.keep_warm)
            result = fn(*args, **kwargs)
            del args, kwargs
            if _plain(result):
                # Nothing in it to share, no function to send by value, nothing that can
                # fail to unpickle: the stdlib's result queue pickles it once, as it is.
                return result
            sender = _results.Sender(self.address, self.tag)
            try:
                result = _walk.walk(result, _walk.ResultSharer(self.threshold, sender))
                data = self._dump(result)
            except BaseException:
                sender.withdraw()  # no reply will claim what was handed over: the caller closes it now
                raise
            return _results.Reply(data, tuple(sender.keys))
        finally:
            if table is not None:
                table[row, 2] = _crash.FINISHED

    def _dump(self, result: Any) -> bytes:
        try:
            # The executor lets a returned lambda or closure travel too; nocopy.Pool
            # pickles results as multiprocessing does (its own tests expect that).
            return (
                _functions.dumps(result)
                if self.results_by_value
                else bytes(ForkingPickler.dumps(result, pickle.HIGHEST_PROTOCOL))
            )
        except BaseException as exc:
            exc.add_note(
                f"nocopy: while pickling the result of task #{self.task_id} ({self.name}), "
                f"{with_article(type(result).__qualname__)}, to send it back to the caller"
            )
            raise

    def _load(self) -> tuple[Any, Any, Any]:
        try:
            fn, args, kwargs = pickle.loads(self.payload)
        except Exception as exc:
            exc.add_note(
                f"nocopy: while unpickling the arguments of task #{self.task_id} "
                f"({self.name}) in worker pid {os.getpid()}"
            )
            raise
        except BaseException as exc:
            # Sent back as it is, a SystemExit would end the caller's program.
            raise unpickling_stopped(
                exc, f"the arguments of task #{self.task_id} ({self.name})", f"worker pid {os.getpid()}"
            ) from None
        return fn, args, kwargs


def _rebuild_worker_call(*args: Any) -> WorkerCall:
    return WorkerCall(*args)


class Call:
    """Caller side of one task; pickles (in the queue feeder thread) into a `WorkerCall`."""

    __slots__ = (
        "address", "args", "fn", "has_handles", "kwargs", "name", "results_by_value", "tag", "task_id",
        "threshold",
    )

    def __init__(
        self, fn: Any, args: Any, kwargs: Any, task_id: int, threshold: int, address: str, tag: str,
        has_handles: bool, name: str | None = None, *, results_by_value: bool = True,
    ) -> None:
        self.results_by_value = results_by_value
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.task_id = task_id
        self.threshold = threshold
        self.address = address
        self.tag = tag
        self.has_handles = has_handles

    def fn_name(self) -> str:
        """The task's name in errors (its given name, else its callable's)."""
        return self.name if self.name is not None else fn_name(self.fn)

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            # Lambdas, closures and notebook functions go by value (see _functions).
            payload = _functions.dumps((self.fn, self.args, self.kwargs))
        except BaseException as exc:
            exc.add_note(
                f"nocopy: while pickling task #{self.task_id} ({self.fn_name()}) to send it to "
                "a worker: every argument must be picklable or shareable."
            )
            raise
        return (
            _rebuild_worker_call,
            (payload, self.task_id, self.fn_name(), self.threshold, self.address,
             self.tag, self.has_handles, self.results_by_value),
        )


def prepare(
    fn: Any, args: Any, kwargs: Any, *, cache: ShareCache, threshold: int, task_id: int, tag: str,
    name: str | None = None, results_by_value: bool = True,
) -> Call:
    """The `Call` for ``fn(*args, **kwargs)``, its big data arguments shared through *cache* (see ``_walk``).

    Results come back to the inbox under *tag*; *name* names the task in errors
    (default: its callable's name); *results_by_value*: results may hold functions sent by
    value (the executor), or are pickled as multiprocessing does (``nocopy.Pool``).
    """
    sharer = _walk.ArgumentSharer(cache, threshold)
    args = _walk.walk(args, sharer) if args else args
    kwargs = _walk.walk(kwargs, sharer) if kwargs else kwargs
    # Data bound into a partial (ex.map(partial(f, big), items)) is shared too.
    fn = _walk.walk(fn, sharer) if type(fn) is functools.partial else fn
    return Call(
        fn, args, kwargs, task_id, threshold, _results.get_inbox().open_tag(tag), tag, sharer.found, name,
        results_by_value=results_by_value,
    )
