"""The exceptions nocopy raises.

Every error derives from `NocopyError` and also from the builtin a caller
would naturally catch (``except MemoryError`` catches
`InsufficientMemoryError`). All of them survive pickling, because they
cross process boundaries, and every message names the object, the cause and the
fix.

Examples
--------
>>> import nocopy
>>> try:
...     nocopy.attach("nocopy://posix/nocopy-1-1-00?token=00&size=1")
... except nocopy.errors.NocopyError as exc:
...     print(type(exc).__name__)
InvalidURIError
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from pickle import UnpicklingError
from typing import Any

__all__ = [
    "InsufficientMemoryError",
    "InvalidURIError",
    "NocopyError",
    "NocopyWarning",
    "NotSharedWarning",
    "SegmentAccessError",
    "SegmentClosedError",
    "SegmentCorruptError",
    "SegmentNotFoundError",
    "StartMethodError",
    "TaskUnpicklingError",
    "UnsupportedTypeError",
    "WorkerCrashedError",
]


class NocopyError(Exception):
    """Root of every error nocopy raises.

    Examples
    --------
    >>> issubclass(nocopy.errors.SegmentCorruptError, nocopy.errors.NocopyError)
    True
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses with keyword-only state keep it in __dict__; rebuilding
        # from args alone and restoring __dict__ keeps them picklable.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    # Every nocopy error takes its message positionally and the rest as
    # keywords with defaults; the keyword state is restored from __dict__.
    exc = cls(*args)
    exc.__dict__.update(state)
    return exc


class UnsupportedTypeError(NocopyError, TypeError):
    """The object (or one of its columns/fields) cannot be shared without copying.

    Examples
    --------
    An object column holding dicts:

    >>> nocopy.share(np.array([{}, {}], dtype=object))  # doctest: +SKIP
    UnsupportedTypeError: cannot share ndarray of dtype object (Python ...
    """


class InsufficientMemoryError(NocopyError, MemoryError):
    """Not enough shared memory (tmpfs, cgroup or RAM) for a new segment.

    Raised before any byte is written; nothing is left behind.

    Attributes: ``requested`` and ``available`` in bytes, ``limit`` names the
    limit that was hit (``"tmpfs /dev/shm"``, ``"cgroup memory.max"``, ...).

    Examples
    --------
    >>> try:
    ...     nocopy.empty((1 << 50,), "u1")
    ... except MemoryError as exc:
    ...     print(exc.limit)  # doctest: +SKIP
    MemAvailable (/proc/meminfo)
    """

    requested: int
    available: int
    limit: str

    def __init__(self, message: str, *, requested: int = 0, available: int = 0, limit: str = "") -> None:
        super().__init__(message)
        self.requested = requested
        self.available = available
        self.limit = limit


class SegmentNotFoundError(NocopyError, FileNotFoundError):
    """The segment no longer exists: its owner closed it or exited.

    Examples
    --------
    >>> ref = nocopy.share(np.arange(3)); uri = ref.uri; ref.close()
    >>> nocopy.attach(uri)  # doctest: +SKIP
    SegmentNotFoundError: ...
    """


class SegmentClosedError(SegmentNotFoundError, ValueError):
    """The handle was closed in this process, then used (get(), parallel_map, a pool task).

    A `SegmentNotFoundError` (the segment is gone for this handle) and,
    as for I/O on a closed file, a ``ValueError``.

    Examples
    --------
    >>> ref = nocopy.share(np.arange(3)); ref.close()
    >>> try:
    ...     ref.get()
    ... except nocopy.errors.SegmentClosedError as exc:
    ...     print(type(exc).__name__)
    SegmentClosedError
    """


class SegmentCorruptError(NocopyError, ValueError):
    """The segment's header or a handle is malformed, truncated or hostile.

    Examples
    --------
    After another process overwrote the start of a posix segment:

    >>> ref.get()  # doctest: +SKIP
    SegmentCorruptError: segment nocopy-... has a corrupt header: bad magic ...
    """


class InvalidURIError(NocopyError, ValueError):
    """A string given as a ``nocopy://`` URI is not one: mistyped, cut short or forged.

    Raised by `nocopy.attach` before anything is opened. The message names
    what is wrong (the scheme, the store, a missing or misspelt field, a
    field's value) and quotes the start of the string.

    Examples
    --------
    >>> try:
    ...     nocopy.attach("nocopy://shm/nocopy-1-1-00?pid=1")
    ... except ValueError as exc:
    ...     print(type(exc).__name__)
    ...     print(str(exc).split("': ")[1].split(". Fix")[0])
    InvalidURIError
    the store 'shm' is neither memfd nor posix
    """


class SegmentAccessError(NocopyError, PermissionError):
    """The segment belongs to another user, or the handle's token does not match.

    Examples
    --------
    >>> # in a process running as another user
    >>> nocopy.attach(uri_of_roots_segment)  # doctest: +SKIP
    SegmentAccessError: ...
    """


class WorkerCrashedError(NocopyError, BrokenProcessPool):
    """A worker process died (signal, ``os._exit``, OOM kill) while running a task.

    Attributes: ``exitcode`` (negative for a signal), ``task`` (a description of
    the task or chunk that was running, when known).

    Examples
    --------
    >>> with nocopy.ProcessPoolExecutor(1) as ex:  # doctest: +SKIP
    ...     ex.submit(os._exit, 3).result()
    WorkerCrashedError: worker pid ... exited with code 3 while running ...
    """

    exitcode: int | None
    task: str | None

    def __init__(self, message: str, *, exitcode: int | None = None, task: str | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.task = task


class StartMethodError(NocopyError, RuntimeError):
    """A pool cannot start its workers the way it was asked to, in this program.

    Raised instead of a hang or a crash: forking while Polars' thread pool runs
    (the forked worker would wait for ever in its first Polars call), or a main
    module that starts a pool at import time, without
    ``if __name__ == "__main__":`` (forkserver and spawn workers import the main
    module again, and it would start a pool inside each of them). The message
    names the cause and the fix.

    Examples
    --------
    >>> issubclass(nocopy.errors.StartMethodError, RuntimeError)
    True
    >>> import multiprocessing
    >>> fork = multiprocessing.get_context("fork")
    >>> nocopy.ProcessPoolExecutor(2, mp_context=fork)  # doctest: +SKIP
    StartMethodError: refusing to fork the workers of ProcessPoolExecutor:
    Polars' thread pool is running ...
    """


class TaskUnpicklingError(NocopyError, UnpicklingError):
    """Unpickling an executor task's argument (in the worker) or result (in the caller) raised
    ``SystemExit``, ``KeyboardInterrupt`` or another exception that is not an ``Exception``.

    nocopy's executor unpickles each task's data inside that task, so a failure
    fails that task only (the standard library's pool would break). An
    ordinary exception comes out of ``future.result()`` as it is, with a note
    naming the task; one that would end or interrupt the caller's program is
    reported as this error instead. The original is named in the message (and
    chained as ``__cause__`` when raised in the caller).

    Attributes: ``task`` (which task and which data, e.g. ``the arguments of
    task #3 (mod.fn)``), ``raised`` (the original exception's type name).

    Examples
    --------
    >>> import pickle
    >>> issubclass(nocopy.errors.TaskUnpicklingError, pickle.UnpicklingError)
    True
    >>> fut = ex.submit(fn, ExitsWhenUnpickled())  # doctest: +SKIP
    >>> fut.result()  # doctest: +SKIP
    TaskUnpicklingError: SystemExit(3) was raised while unpickling the ...
    """

    task: str | None
    raised: str | None

    def __init__(self, message: str, *, task: str | None = None, raised: str | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.raised = raised


class NocopyWarning(UserWarning):
    """Root of every warning nocopy issues (filter them all with this class).

    Examples
    --------
    >>> import warnings
    >>> ignored = nocopy.errors.NocopyWarning
    >>> warnings.filterwarnings("ignore", category=ignored)  # doctest: +SKIP
    """


class NotSharedWarning(NocopyWarning, RuntimeWarning):
    """A big argument of a pool task (or a part of it) is pickled for every task instead of shared.

    Issued once per pool and per cause: a DataFrame column nocopy cannot
    share (the message names it; the frame's other columns are still shared),
    data share() refuses, or no room left in shared memory. The message names
    the fix: ``nocopy.explain(obj)`` shows what cannot be shared and why;
    ``nocopy.share(obj, allow_pickle=True)`` passed as the argument pickles
    that part once (the task calls ``.get()``); or drop or convert the column.
    Under ``-W error`` the ``submit()`` or ``map()`` that met it raises it.

    Examples
    --------
    >>> n = 10**6
    >>> df = pd.DataFrame({"x": np.ones(n), "meta": [{}] * n})  # doctest: +SKIP
    >>> with nocopy.ProcessPoolExecutor(2) as ex:  # doctest: +SKIP
    ...     ex.submit(len, df).result()
    NotSharedWarning: nocopy.ProcessPoolExecutor: a DataFrame argument has
    1 column(s) nocopy cannot share (column 'meta' of dtype object ...
    """
