"""``nocopy.Pool``: the standard library's ``multiprocessing.pool.Pool`` on the executor's task path.

It keeps the stdlib's queues, workers and handler threads, and changes two
doors of the pool only:

* ``put`` (the task handler thread's send to the workers): each task becomes
  a ``_task.Call`` whose arguments went through ``_walk`` (big data shared
  once per pool, ``_cache``), at the moment the stdlib would have pickled it.
  A map chunk's items are its arguments, so each item is walked.
* ``get`` (the result handler thread's receive): a task's ``_results.Reply``
  is unpickled there, claiming its shared results as private views, before
  the stdlib hands it to the ``AsyncResult``.

The pool's segments and inbox tag (``_resources``) are released once its
workers and handlers are done: ``join()`` after ``close()``, ``terminate()``
(also ``__exit__``), or the stdlib's finalizer when a pool is collected
unjoined. The handler threads never hold the pool object (as in the stdlib,
so that it can be collected): what they need lives in `_PoolState`.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing.pool
import os
import threading
from collections.abc import Callable
from multiprocessing import util
from multiprocessing.context import BaseContext
from multiprocessing.pool import Pool as _StdPool
from typing import Any

from ..errors import StartMethodError
from ._executor import DEFAULT_SHARE_THRESHOLD, check_share_threshold
from ._resources import PoolResources
from ._results import Reply
from ._start import pool_context, unguarded_main_error
from ._task import Call, fn_name, prepare, unpickling_stopped
from ._threads import check_inner_threads, worker_thread_env
from ._worker import caller, quick_exit_process, worker_init

__all__ = ["Pool"]

# Not in typeshed's stub of multiprocessing.pool: what the stdlib's tasks run.
_std_pool: Any = multiprocessing.pool
_helper_reraises_exception = _std_pool._helper_reraises_exception  # noqa: SLF001
mapstar, starmapstar = _std_pool.mapstar, _std_pool.starmapstar
MaybeEncodingError: type[Exception] = _std_pool.MaybeEncodingError

# The note _task.WorkerCall adds to an exception raised while pickling a
# result: the stdlib's Pool reports that case as a MaybeEncodingError.
_RESULT_PICKLING_NOTE = "nocopy: while pickling the result of task"


def _map_items(fn: Callable[..., Any], *items: Any) -> list[Any]:
    """A map chunk in the worker (the stdlib's ``mapstar``), its items as the task's arguments."""
    return list(map(fn, items))


def _starmap_items(fn: Callable[..., Any], *items: Any) -> list[Any]:
    """A starmap chunk in the worker (the stdlib's ``starmapstar``)."""
    return list(itertools.starmap(fn, items))


class _PoolState:
    """What the pool's handler threads and finalizer need; never the pool object itself."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.resources = PoolResources()
        self.task_ids = itertools.count(1)
        # (job, index) -> the Call sent for it: its shared arguments stay open
        # until the worker has replied (the cache forgets a dead object's).
        self.in_flight: dict[tuple[int, int], Call] = {}
        self.lock = threading.Lock()
        # The stdlib's cache of pending results (job -> result) and every worker started.
        self.cache: dict[int, Any] | None = None
        self.workers: list[Any] = []
        # Set when a worker found the main module starting a pool: every task fails with it.
        self.unguarded: StartMethodError | None = None

    def new_worker(self, ctx: Any, env: dict[str, str], *args: Any, **kwds: Any) -> Any:
        """``Pool.Process``: a worker (or a replacement), after checking how the earlier ones ended.

        The stdlib's pool replaces a dead worker for ever; workers that die
        because the main module starts a pool at import time (no
        ``if __name__ == "__main__":``) would leave every task pending for
        ever: those tasks fail with `nocopy.errors.StartMethodError` instead.
        """
        if self.unguarded is None:
            dead = [(p.pid, p.exitcode) for p in self.workers if p.exitcode is not None]
            pid = self.resources.tasks.unguarded_main(dead)
            if pid is not None:
                self.unguarded = unguarded_main_error(pid)
                self.fail_pending(self.unguarded)
        self.workers = [p for p in self.workers if p.exitcode is None]
        worker = quick_exit_process(ctx, *args, child_env=env, what="Pool", **kwds)
        self.workers.append(worker)
        return worker

    def fail_pending(self, err: BaseException) -> None:
        """Fail every result still pending (the stdlib's own ``_set`` of a failed task)."""
        pending: list[tuple[int, Any]] = list((self.cache or {}).items())
        for job, result in pending:
            if isinstance(result, multiprocessing.pool.IMapIterator):
                imap: Any = result
                imap._set(imap._index, (False, err))  # noqa: SLF001 - the stdlib's own path
                continue
            for _ in range(max(getattr(result, "_number_left", 1), 1)):
                if self.cache is None or job not in self.cache:
                    break
                result._set(0, (False, err))  # noqa: SLF001 - the stdlib's own path

    def to_call(self, task: tuple[Any, ...]) -> tuple[Any, ...]:
        """The stdlib's task ``(job, i, func, args, kwds)`` as nocopy's: ``(job, i, Call, (), {})``."""
        job, i, func, args, kwds = task
        if func is _helper_reraises_exception:
            return task  # the input iterable raised: the stdlib re-raises it in a worker as it is
        name = None
        if func is mapstar or func is starmapstar:
            ((fn, items),) = args
            runner = _map_items if func is mapstar else _starmap_items
            name = f"{'map' if func is mapstar else 'starmap'}({fn_name(fn)})"
            func, args, kwds = functools.partial(runner, fn), tuple(items), {}
        call = prepare(
            func, args, kwds, cache=self.resources.cache, threshold=self.threshold,
            task_id=next(self.task_ids), tag=self.resources.tag, name=name, results_by_value=False,
        )
        if call.has_handles:
            with self.lock:
                self.in_flight[(job, i)] = call
        return (job, i, call, (), {})

    def wrap_put(self, put: Callable[[Any], None]) -> Callable[[Any], None]:
        def put_call(task: Any) -> None:
            if task is None:  # a worker's stop sentinel
                put(task)
                return
            unguarded, cache = self.unguarded, self.cache
            if unguarded is not None and cache is not None and task[0] in cache:
                cache[task[0]]._set(task[1], (False, unguarded))  # noqa: SLF001 - no worker would ever run it
                return
            task = self.to_call(task)
            try:
                put(task)
            except BaseException:
                with self.lock:
                    self.in_flight.pop((task[0], task[1]), None)
                raise

        return put_call

    def wrap_get(self, get: Callable[[], Any]) -> Callable[[], Any]:
        def get_result() -> Any:
            item = get()
            if item is None:
                return item
            job, i, (ok, value) = item
            with self.lock:
                call = self.in_flight.pop((job, i), None)
            label = f"task #{call.task_id} ({call.fn_name()})" if call is not None else "a task"
            del call
            if ok and type(value) is Reply:
                return job, i, self._open(value, label)
            if not ok and any(str(n).startswith(_RESULT_PICKLING_NOTE) for n in getattr(value, "__notes__", ())):
                return job, i, (False, MaybeEncodingError(value, _describe_unpicklable(value)))
            return item

        return get_result

    @staticmethod
    def _open(reply: Reply, label: str) -> tuple[bool, Any]:
        try:
            return True, reply.load()
        except Exception as err:
            err.add_note(f"nocopy: while unpickling the result of {label} in the caller")
            return False, err
        except BaseException as err:
            # get() would raise it in the caller: a SystemExit would end its program.
            wrapped = unpickling_stopped(err, f"the result of {label}", "the caller")
            wrapped.__cause__ = err
            return False, wrapped

    def release(self, *, reclaim: bool) -> None:
        with self.lock:
            self.in_flight.clear()
        self.resources.release(reclaim=reclaim)


def _describe_unpicklable(exc: BaseException) -> str:
    notes = [str(n) for n in getattr(exc, "__notes__", ()) if str(n).startswith(_RESULT_PICKLING_NOTE)]
    return notes[0].removeprefix("nocopy: while pickling ") if notes else "a result"


def _terminate_and_release(terminate: Callable[..., None], args: tuple[Any, ...], state: _PoolState) -> None:
    """The stdlib's finalizer (stop the handlers and workers, join them), then free the segments."""
    try:
        terminate(*args)
    finally:
        # Workers were terminated, maybe mid-result: sweep posix orphans too.
        state.release(reclaim=True)


class Pool(_StdPool):
    """``multiprocessing.Pool`` that hands big data over shared memory.

    Same constructor, methods and behaviour as the standard library's
    ``multiprocessing.pool.Pool`` (``apply``, ``apply_async``, ``map``,
    ``map_async``, ``imap``, ``imap_unordered``, ``starmap``,
    ``starmap_async``, ``close``, ``join``, ``terminate``, ``with``), plus
    ``share_threshold`` (bytes, default 1 MiB): NumPy arrays, pandas, Arrow and
    Polars objects at least that big -- an argument of ``apply``, an item of
    ``map``/``imap``, an element of a ``starmap`` tuple, directly or inside a
    list, tuple, dict or ``functools.partial`` -- are copied into shared memory
    once per pool (cached by identity while the object lives) and each task
    gets a private copy-on-write view: it may read and even modify it as if it
    had been pickled, and the caller's object never changes. Results that big
    come back through shared memory too.

    Arguments are taken when the stdlib would pickle them (as the pool's task
    handler sends the task): modifying an object that was shared already is
    not seen by later tasks (pass a new object).

    Workers start from a forkserver preloaded with nocopy, numpy and the heavy
    libraries the caller has imported unless ``context`` says otherwise (see
    ``docs/how-to/executor.md``, start methods).

    Deliberate differences from the stdlib (see ``docs/how-to/executor.md``):
    workers ignore SIGINT (the caller handles Ctrl-C; ``with`` or
    ``terminate()`` stops them), exit when the caller dies, and an argument
    that fails to unpickle in the worker fails its task only. A worker that
    dies (``os._exit``, a signal) is replaced and its task never completes,
    exactly as with the stdlib: use ``get(timeout)``.

    Parameters
    ----------
    processes, initializer, initargs, maxtasksperchild, context
        As ``multiprocessing.pool.Pool``'s.
    share_threshold
        Arguments and results of at least this many bytes travel through
        shared memory (keyword only).
    inner_max_num_threads
        Threads each spawned or forkserver worker's numerical libraries get
        (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ... in its
        environment; keyword only); by default the usable CPUs divided by
        ``processes``, as joblib's loky does. A variable set in the caller's
        environment wins. (The stdlib leaves them unset: oversubscribed BLAS,
        and ~0.1 s of CPU per worker spent spinning at ``import numpy``.)

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> big = np.ones(1_000_000)        # 8 MB: shared once, not pickled per task
    >>> with nocopy.Pool(2) as pool:    # doctest: +SKIP
    ...     [float(s) for s in pool.map(np.sum, [big] * 4)]
    [1000000.0, 1000000.0, 1000000.0, 1000000.0]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
        context: BaseContext | None = None,
        *,
        share_threshold: int = DEFAULT_SHARE_THRESHOLD,
        inner_max_num_threads: int | None = None,
    ) -> None:
        # As the stdlib's, before anything can fail: __del__ reads it.
        self._state = _std_pool.INIT
        check_share_threshold(share_threshold)
        check_inner_threads(inner_max_num_threads)
        # The stdlib's checks, in its order: the initializer must be checked
        # before it is wrapped into nocopy's worker start.
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        # Before the stdlib's __init__: its _setup_queues (ours) wraps the queues with it.
        self._nocopy = _PoolState(share_threshold)
        self._nocopy.resources.cache.owner = "nocopy.Pool"  # names it in its warnings
        # The stdlib makes every worker (and every replacement) with self.Process.
        env = worker_thread_env(processes or os.cpu_count() or 1, inner_max_num_threads)  # the stdlib's default count
        self.Process = functools.partial(self._nocopy.new_worker, env=env)  # type: ignore[method-assign]
        context = pool_context(context, "Pool")
        forked_env = env if context.get_start_method() == "forkserver" else None
        try:
            super().__init__(
                processes, worker_init,
                (self._nocopy.resources.tasks.shared, initializer, tuple(initargs), caller(), forked_env),
                maxtasksperchild, context,
            )
        except BaseException:
            self._nocopy.release(reclaim=False)
            raise
        self._nocopy.cache = getattr(self, "_cache", None)  # the stdlib's (absent from typeshed's stub)
        # The stdlib's finalizer (terminate(), collection, exit) frees the segments too, after it.
        # The stdlib's own attributes (absent from typeshed's stub), kept as the stdlib uses them.
        this: Any = self
        std = this._terminate  # noqa: SLF001
        callback, args = std._callback, std._args  # noqa: SLF001
        std.cancel()
        this._terminate = util.Finalize(  # noqa: SLF001
            self, _terminate_and_release, args=(callback, args, self._nocopy), exitpriority=15
        )

    @property
    def share_threshold(self) -> int:
        """Arguments and results of at least this many bytes go through shared memory."""
        return self._nocopy.threshold

    @staticmethod
    def Process(ctx: Any, *args: Any, **kwds: Any) -> Any:
        """The stdlib's, except that a spawned worker ends through ``run_then_exit`` (as the executor's)."""
        return quick_exit_process(ctx, *args, **kwds)

    def _setup_queues(self) -> None:
        super()._setup_queues()  # type: ignore[misc]
        # The handler threads get these two: the stdlib's own (absent from typeshed's stub).
        this: Any = self
        this._quick_put = self._nocopy.wrap_put(this._quick_put)  # noqa: SLF001
        this._quick_get = self._nocopy.wrap_get(this._quick_get)  # noqa: SLF001

    def join(self) -> None:
        """Like the stdlib's; once the workers are joined, also frees the pool's segments.

        Examples
        --------
        >>> pool.close(); pool.join()   # doctest: +SKIP
        """
        super().join()
        # Every task has replied (close) or was stopped (terminate): nothing needs them now.
        self._nocopy.release(reclaim=False)
