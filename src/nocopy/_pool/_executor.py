"""The executor: the standard library's ``ProcessPoolExecutor`` with nocopy's task path.

It keeps the stdlib's queues, workers and manager thread, and changes what a
task is (``_task``: arguments pickled in the task, big data shared by
``_walk``), what its future is (``_future``: replies opened, crashes named by
``_crash``) and who owns the pool's segments (``_resources``, held by the
manager thread).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import multiprocessing
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import Future
from concurrent.futures import ProcessPoolExecutor as _StdProcessPoolExecutor
from concurrent.futures import process as _stdlib_process
from concurrent.futures.process import (
    _ExecutorManagerThread,
    _process_chunk,
    _threads_wakeups,
    _WorkItem,
)
from multiprocessing.context import BaseContext
from typing import Any, Literal, ParamSpec, TypeVar, cast

from ..errors import ThreadStartError
from ._future import TaskFuture
from ._resources import PoolResources
from ._results import restart_after_fork
from ._start import pool_context
from ._task import prepare
from ._threads import check_inner_threads, worker_thread_env
from ._worker import caller, quick_exit_process, worker_init

__all__ = ["DEFAULT_SHARE_THRESHOLD", "ProcessPoolExecutor", "abort", "start_workers", "submit_labelled", "usable"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_SHARE_THRESHOLD = 1 << 20
# Python 3.14 added map(buffersize=) and terminate_workers()/kill_workers(): used where they exist.
_STDLIB_HAS_BUFFERSIZE = "buffersize" in _StdProcessPoolExecutor.map.__code__.co_varnames
_STDLIB_HAS_TERMINATE_WORKERS = hasattr(_StdProcessPoolExecutor, "terminate_workers")
# Python 3.12+ (gh-109047) break the pool when the manager thread cannot put a task (no feeder thread).
_STDLIB_BREAKS_ON_FEEDER_ERROR = "format_exception" in _ExecutorManagerThread.run.__code__.co_names
# Python 3.14's submit() also counts idle workers down (_adjust_process_count counts them up).
_STDLIB_COUNTS_IDLE_WORKERS = "_idle_worker_number" in _StdProcessPoolExecutor.submit.__code__.co_names


def check_share_threshold(value: object) -> None:
    """ValueError unless *value* is a number of bytes (an int >= 0, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"share_threshold must be a number of bytes >= 0, not {value!r}")


class _ManagerThread(_ExecutorManagerThread):
    """The stdlib's executor manager thread, also keeping the pool's resources until it exits.

    It holds the executor only weakly and outlives it while work is pending,
    exactly as the stdlib's does; the segments that work needs live as long as
    this thread, not as long as the executor object.
    """

    def __init__(self, executor: ProcessPoolExecutor, resources: PoolResources) -> None:
        super().__init__(executor)
        self.resources = resources
        self.broke = False

    def terminate_broken(self, cause: Any) -> None:
        self.broke = True
        super().terminate_broken(cause)

    def run(self) -> None:
        try:
            try:
                super().run()
            except BaseException as exc:
                if _STDLIB_BREAKS_ON_FEEDER_ERROR or self.broke:
                    raise
                # Python 3.11 lacks gh-109047 (3.12+): a queue feeder thread that cannot start
                # (the interpreter finalizing) ended this thread and every future waited for ever.
                # Break the pool as 3.12+ do.
                self.terminate_broken(traceback.format_exception(exc))
        finally:
            # Every future is settled by now (results are claimed in its done
            # callbacks, which run in this thread) and every worker is joined.
            self.resources.release(reclaim=self.broke)


def _start_workers_hook(executor: ProcessPoolExecutor) -> Callable[[], None]:
    """The share cache's ``before_share``: it holds the executor weakly, as the manager thread does."""
    ref = weakref.ref(executor)

    def hook() -> None:
        ex = ref()
        if ex is not None:
            start_workers(ex)

    return hook


class _QuickExitContext:
    """The executor's multiprocessing context, but its workers are made by `quick_exit_process`.

    The stdlib makes each worker with ``ctx.Process(target=_process_worker,
    args=...)``; wrapping the context keeps the stdlib's own code for
    everything else, on every Python version.
    """

    def __init__(self, ctx: Any, child_env: dict[str, str]) -> None:
        self._ctx = ctx
        self._child_env = child_env

    def Process(self, *args: Any, **kwds: Any) -> Any:
        return quick_exit_process(self._ctx, *args, child_env=self._child_env, what="ProcessPoolExecutor", **kwds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


class ProcessPoolExecutor(_StdProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` that hands big data over shared memory.

    Same constructor and behaviour as the standard library's, plus
    ``share_threshold`` (bytes, default 1 MiB): NumPy arrays, pandas, Arrow and
    Polars objects at least that big -- passed directly or inside a list,
    tuple, dict or ``functools.partial`` -- are copied into shared memory once per executor (cached by
    identity while the object lives) and every task gets a private
    copy-on-write view: it may read and even modify its argument exactly as
    if it had been pickled, and the caller's object never changes. Results
    that big come back through shared memory too. ``nocopy.Shared`` arguments
    arrive as they are (call ``.get()`` in the task).

    An argument is taken as it is at its first ``submit``: modifying the same
    object in place afterwards is not seen by later tasks (pass a new object,
    or share it yourself and pass the ``Shared``).

    A worker that dies raises `nocopy.errors.WorkerCrashedError` (a
    ``BrokenProcessPool``) naming the exit code or signal and the task.
    Ctrl-C inside ``with`` stops the workers at once and frees every segment.
    Workers ignore SIGINT: the caller handles it.

    Workers start from a forkserver preloaded with nocopy, numpy and the heavy
    libraries the caller has imported, on every Python (3.14's default on
    Linux), unless ``mp_context`` says otherwise (or ``max_tasks_per_child``
    is set without one: spawn, as the stdlib's). A fork is refused while
    Polars' thread pool runs; a main module that starts a pool at import time
    gets `nocopy.errors.StartMethodError`.

    Spawned and forkserver workers share the CPUs among their numerical libraries, as
    joblib's loky does: each starts with ``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and friends set to
    ``inner_max_num_threads``, by default the usable CPUs divided by
    ``max_workers`` (at least 1). A variable set in the caller's environment
    wins. (The standard library leaves them unset: every worker's BLAS
    starts a thread per CPU, and its ``import numpy`` burns ~0.1 s of CPU on
    spinning threads.)

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> big = np.ones(1_000_000)              # 8 MB: shared, not pickled
    >>> with nocopy.ProcessPoolExecutor(2) as ex:  # doctest: +SKIP
    ...     [float(s) for s in ex.map(np.sum, [big] * 4)]
    [1000000.0, 1000000.0, 1000000.0, 1000000.0]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        share_threshold: int = DEFAULT_SHARE_THRESHOLD,
        inner_max_num_threads: int | None = None,
    ) -> None:
        check_share_threshold(share_threshold)
        check_inner_threads(inner_max_num_threads)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._share_threshold = share_threshold
        self._task_ids = itertools.count(1)
        self._start_error: ThreadStartError | None = None
        if mp_context is None and max_tasks_per_child is not None:
            # The stdlib's rule, kept on every version (3.14's too): such a pool spawns.
            mp_context = multiprocessing.get_context("spawn")
        mp_context = pool_context(mp_context, "ProcessPoolExecutor")
        # Filled below, once the stdlib has counted the workers: pickled as each worker starts.
        forked_env: dict[str, str] = {}
        self._resources = PoolResources()
        try:
            super().__init__(
                max_workers,
                mp_context,
                worker_init,
                (self._resources.tasks.shared, initializer, tuple(initargs), caller(), forked_env),
                max_tasks_per_child=max_tasks_per_child,
            )
        except BaseException:
            self._resources.release(reclaim=False)
            raise
        self._resources.tasks.procs = self._processes
        self._procs: MutableMapping[int, Any] = self._processes
        env = worker_thread_env(self._max_workers, inner_max_num_threads)  # type: ignore[attr-defined]
        if mp_context.get_start_method() == "forkserver":
            forked_env.update(env)
        self._mp_context = _QuickExitContext(self._mp_context, env)  # type: ignore[assignment]
        self._resources.cache.before_share = _start_workers_hook(self)

    @property
    def share_threshold(self) -> int:
        """Arguments and results of at least this many bytes go through shared memory."""
        return self._share_threshold

    # -- submitting -----------------------------------------------------
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Like the stdlib's ``submit``; big data arguments are shared once, not pickled.

        Examples
        --------
        >>> big = np.ones(1_000_000)
        >>> with nocopy.ProcessPoolExecutor(2) as ex:  # doctest: +SKIP
        ...     fut = ex.submit(np.sum, big)           # big: shared once
        ...     float(fut.result())
        1000000.0
        """
        return self._submit(None, fn, args, kwargs)

    def _submit(
        self, label: str | None, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
        name: str | None = None,
    ) -> Future[Any]:
        if self._broken:
            raise self._broken_error()
        resources = self._resources
        call = prepare(
            fn, args, kwargs, cache=resources.cache, threshold=self._share_threshold,
            task_id=next(self._task_ids), tag=resources.tag, name=name,
        )
        future = TaskFuture(resources, call, label)
        self._enqueue(_WorkItem(future, cast(Callable[[], Any], call), (), {}))
        return future

    def _enqueue(self, item: Any) -> None:
        # The stdlib's submit() with our work item, whose future is the one the
        # caller gets: the manager thread settles it directly (no second
        # future following the first). Same checks, same order, same lock.
        with self._shutdown_lock:
            if not self._broken:
                self._enqueue_locked(item)
                return
        # Outside the lock: naming the crash may wait a moment for a dying worker.
        raise self._broken_error()

    def _broken_error(self) -> Exception:
        start_error = self._start_error
        return start_error if start_error is not None else self._resources.tasks.crash_error(None, None)

    def _enqueue_locked(self, item: Any) -> None:
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _stdlib_process._global_shutdown:  # noqa: SLF001 - the stdlib's submit checks it
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        work_id = self._queue_count
        self._pending_work_items[work_id] = item
        self._work_ids.put(work_id)
        self._queue_count = work_id + 1
        self._executor_manager_thread_wakeup.wakeup()
        if getattr(self, "_safe_to_dynamically_spawn_children", True):
            self._adjust_process_count()
            if _STDLIB_COUNTS_IDLE_WORKERS:
                # 3.14: submit() takes the idle worker _adjust_process_count() counted.
                with self._idle_worker_lock:  # type: ignore[attr-defined]
                    self._idle_worker_number -= 1  # type: ignore[attr-defined]
        self._start_executor_manager_thread()

    def _start_workers_early(self) -> None:
        # A big argument is about to be copied into shared memory (~0.1 s per
        # 220 MB here): start every worker first, so that they boot while it is
        # copied rather than after. The stdlib starts spawned workers one per
        # submit as they are needed; work that shares big data needs them all.
        if not getattr(self, "_safe_to_dynamically_spawn_children", True):
            return  # fork: all of them start with the manager thread already
        if len(self._processes) >= self._max_workers:  # type: ignore[attr-defined]
            return  # every big argument asks: once all run, no lock on that path
        with self._shutdown_lock:
            if self._broken or self._shutdown_thread:
                return
            while len(self._processes) < self._max_workers:  # type: ignore[attr-defined]
                self._spawn_process()  # type: ignore[attr-defined]

    # -- Python 3.14's API on every Python ----------------------------------
    def map(
        self, fn: Callable[..., R], *iterables: Any, timeout: float | None = None, chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        """Like the stdlib's ``map``, with Python 3.14's ``buffersize`` on every Python.

        ``buffersize=N`` (an int >= 1) reads the iterables lazily and keeps at
        most N tasks (chunks of ``chunksize`` items) submitted and not yet
        yielded, so an endless or huge input never piles up as pending tasks.

        Examples
        --------
        >>> it = ex.map(np.sum, frames_from_disk(), buffersize=4)   # doctest: +SKIP
        >>> next(it)                                                 # doctest: +SKIP
        """
        if buffersize is not None and (
            isinstance(buffersize, bool) or not isinstance(buffersize, int) or buffersize < 1
        ):
            raise ValueError(f"buffersize must be None or an int >= 1, not {buffersize!r}")
        if buffersize is None:
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        if _STDLIB_HAS_BUFFERSIZE:
            std: Any = super()
            return cast(Iterator[R], std.map(fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize))
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        items = zip(*iterables, strict=False)
        chunks = iter(lambda: tuple(itertools.islice(items, chunksize)), ())
        call = functools.partial(_process_chunk, fn)
        deadline = None if timeout is None else time.monotonic() + timeout
        # The first tasks go in now, as with the stdlib's map: before the first next().
        in_flight = collections.deque(self.submit(call, chunk) for chunk in itertools.islice(chunks, buffersize))
        return self._buffered(in_flight, chunks, call, deadline)

    def _buffered(
        self, in_flight: collections.deque[Future[Any]], chunks: Iterator[tuple[Any, ...]],
        call: Callable[..., Any], deadline: float | None,
    ) -> Iterator[Any]:
        # Holds the executor (self), unlike 3.14's map: an executor collected
        # mid-way would otherwise end the results early without a word.
        try:
            while in_flight:
                oldest = in_flight.popleft()
                try:
                    results = oldest.result(None if deadline is None else deadline - time.monotonic())
                finally:
                    del oldest
                # Only now the next task: at most buffersize are ever in flight.
                chunk = next(chunks, None)
                if chunk is not None:
                    in_flight.append(self.submit(call, chunk))
                yield from results
                del results
        finally:
            for future in in_flight:
                future.cancel()

    if not _STDLIB_HAS_TERMINATE_WORKERS:

        def terminate_workers(self) -> None:
            """Python 3.14's: shut down without waiting and send SIGTERM to every worker still alive.

            Pending tasks are cancelled; running ones fail with
            `nocopy.errors.WorkerCrashedError` naming the signal. The pool
            is broken afterwards; its segments are freed once its manager thread
            has reaped the workers.

            Examples
            --------
            >>> ex.terminate_workers()   # doctest: +SKIP
            """
            self._signal_workers(kill=False)

        def kill_workers(self) -> None:
            """Python 3.14's: like `terminate_workers`, with SIGKILL.

            Examples
            --------
            >>> ex.kill_workers()   # doctest: +SKIP
            """
            self._signal_workers(kill=True)

    def _signal_workers(self, *, kill: bool) -> None:
        # shutdown() drops the executor's process dict: take it first. Not
        # waiting: a worker that ignores the signal must not hang the caller.
        processes = list((self._processes or {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            with contextlib.suppress(ProcessLookupError, ValueError):  # it ended meanwhile
                if p.is_alive():
                    if kill:
                        p.kill()
                    else:
                        p.terminate()

    # -- the manager thread ---------------------------------------------
    def _start_executor_manager_thread(self) -> None:
        # The stdlib's, starting a manager thread that also owns this pool's
        # resources (see PoolResources). typeshed types the attribute as a
        # _ThreadWakeup; it holds the thread.
        if cast(object, self._executor_manager_thread) is None:
            # nocopy's servers start again after the forks and the manager thread (as the stdlib's
            # pool, this one needs that thread first; Python 3.13 counts threads after a fork).
            with restart_after_fork():
                # fork: all workers before any thread (3.11.2+; before, workers came with each submit)
                if not getattr(self, "_safe_to_dynamically_spawn_children", True):
                    self._launch_processes()  # type: ignore[attr-defined]
                thread = _ManagerThread(self, self._resources)
                try:
                    thread.start()
                except RuntimeError as exc:
                    raise self._break_unmanaged(exc) from exc
                self._resources.managed = True
                self._executor_manager_thread = thread  # type: ignore[assignment]
                _threads_wakeups[thread] = self._executor_manager_thread_wakeup

    def _break_unmanaged(self, exc: RuntimeError) -> ThreadStartError:
        # The manager thread could not start (the interpreter is finalizing, or out of threads):
        # nobody will feed, watch or reap the workers. Break the pool now, as that thread would
        # (the stdlib raises the bare RuntimeError and leaves its workers running). Holds
        # _shutdown_lock (submit's caller).
        error = ThreadStartError(
            f"ProcessPoolExecutor cannot run: its manager thread could not start ({exc}). Python "
            "starts no thread while the interpreter is finalizing, and this process may be out of "
            "threads. The pool is broken and its workers are stopped. Fix: start pools before the "
            "interpreter exits (not from atexit or a finalizer), or give the process room for more threads."
        )
        self._start_error = error
        self._broken = str(error)  # type: ignore[assignment] # the stdlib stores its reason there too
        _stop_processes(list((self._processes or {}).values()))
        items = list(self._pending_work_items.values())
        self._pending_work_items.clear()
        for item in items:
            with contextlib.suppress(Exception):
                item.future.set_exception(error)
        return error

    # -- shutting down --------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Like the stdlib's; also frees the segments of the shared arguments.

        Examples
        --------
        >>> ex.shutdown()       # doctest: +SKIP
        """
        broken = bool(self._broken)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if not self._resources.managed:
            self._resources.release(reclaim=broken)  # no task ever: nobody else will
        elif not wait:
            # The manager thread frees the segments when it exits, after the
            # tasks still queued (with wait=True it has exited by now, unless
            # an earlier shutdown(wait=False) let it go on: then it still
            # frees them, and this does not wait, as the stdlib does not).
            # Meanwhile each shared argument goes with the last task using it.
            self._resources.cache.clear(close=False)

    def _usable(self) -> bool:
        return not self._broken and not self._shutdown_thread

    def _abort(self) -> None:
        """Stop at once (Ctrl-C): cancel pending tasks, stop the workers, free everything."""
        self._resources.aborting = True
        procs = list(self._procs.values())
        manager: Any = getattr(self, "_executor_manager_thread", None)
        result_queue: Any = getattr(self, "_result_queue", None)  # shutdown() drops it
        with contextlib.suppress(Exception):
            super().shutdown(wait=False, cancel_futures=True)
        _stop_processes(procs)
        # A worker stopped while writing a result leaves half a message in the result
        # pipe: the manager thread then waits in recv() for bytes that never come (the
        # pipe's write end is also held here). Closing that end gives it EOF: it sees a
        # broken pool and exits, instead of living on (and keeping the program alive).
        writer = getattr(result_queue, "_writer", None)
        if writer is not None and all(not p.is_alive() for p in procs):
            with contextlib.suppress(OSError):
                writer.close()
        if manager is not None:
            manager.join(10)
        self._resources.release(reclaim=True)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._abort()
            return False
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            self._abort()
            raise
        return False


def _stop_processes(procs: list[Any]) -> None:
    """SIGTERM every worker of *procs*, then reap each (SIGKILL one that is still alive after 5 s)."""
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


# -- the pool's layer API: what parallel_map needs beyond the stdlib's methods ----------------
def submit_labelled(
    executor: ProcessPoolExecutor, label: str, name: str, fn: Callable[..., Any], *args: Any
) -> Future[Any]:
    """``executor.submit(fn, *args)``, the task named *label* in errors and *name* in pickling notes.

    Examples
    --------
    >>> submit_labelled(ex, "chunk 3 (rows 30:40)", "parallel_map(f)", f, rows)  # doctest: +SKIP
    """
    return executor._submit(label, fn, args, {}, name=name)  # noqa: SLF001 - same module


def start_workers(executor: ProcessPoolExecutor) -> None:
    """Start every worker *executor* may have, now: call it before copying big data, so they boot meanwhile.

    Examples
    --------
    >>> start_workers(ex); ref = nocopy.share(big)   # doctest: +SKIP
    """
    executor._start_workers_early()  # noqa: SLF001 - same module


def abort(executor: ProcessPoolExecutor) -> None:
    """Stop *executor* at once (the caller was interrupted): cancel, stop the workers, free everything."""
    executor._abort()  # noqa: SLF001 - same module


def usable(executor: ProcessPoolExecutor) -> bool:
    """Whether *executor* still takes tasks (not broken by a dead worker, not shut down)."""
    return executor._usable()  # noqa: SLF001 - same module
