"""joblib integration: a parallel backend named ``"nocopy"``, so ``Parallel`` and scikit-learn share big data.

Call `register` once (importing this module also registers the backend, but a
linter's autofix deletes an import that looks unused, and ``backend="nocopy"``
would then silently stop existing: the explicit call is the preferred form).

Examples
--------
>>> import joblib, nocopy.joblib                       # doctest: +SKIP
>>> nocopy.joblib.register()                            # doctest: +SKIP
>>> with joblib.parallel_config(backend="nocopy", n_jobs=4):   # doctest: +SKIP
...     sums = joblib.Parallel()(joblib.delayed(np.sum)(big) for _ in range(8))

Inside such a block, every ``Parallel`` call -- yours, and every scikit-learn estimator
or helper with ``n_jobs`` (``cross_val_score``, ``GridSearchCV``...) -- runs
its tasks on a `nocopy.ProcessPoolExecutor`: a NumPy array (record
arrays and datetimes included), pandas frame (string columns included), Arrow
table or Polars frame of at least ``share_threshold`` bytes passed to a
``delayed`` call is copied into shared memory **once** per ``Parallel`` call
and every task gets a private copy-on-write view of it, where joblib's default
backend pickles it into every task (it memory-maps only plain NumPy arrays,
and pickles the ``np.recarray`` subclass, object columns and frames). Results
come back as joblib's do (big ones through shared memory); an exception in a
task is re-raised by ``Parallel`` with its type and message, as with joblib's
backends.

Parameters (``parallel_config(backend="nocopy", n_jobs=..., **params)``):

* ``mp_context``: a start method name (``"fork"``, ``"spawn"``,
  ``"forkserver"``) or a multiprocessing context; default: every nocopy pool's
  (a forkserver preloaded with nocopy, numpy and the heavy libraries already
  imported), or joblib's ``JOBLIB_START_METHOD`` when it is set.
* ``share_threshold``: bytes (default 1 MiB), as for the executor.
* ``max_tasks_per_child``: as for the executor.
* ``initializer``, ``initargs``: run in each worker as it starts, as with
  joblib's loky backend (a change of either starts new workers).
* ``idle_worker_timeout``: seconds (default 300, as loky's) an idle pool of
  workers is kept for the next ``Parallel`` call; 0 stops it after each call.
* ``inner_max_num_threads``: threads each worker's numerical libraries may
  use (BLAS, OpenMP...); default, as with joblib's loky backend: the CPUs
  divided by the workers, unless ``OMP_NUM_THREADS`` and friends are set.
  Applied when a worker starts (environment variables, and ``threadpoolctl``
  for libraries already loaded), so that N workers do not each start a
  thread per CPU.

Workers are reused across ``Parallel`` calls, as loky's are: the pool (and
its shared arguments, cached by identity while the object lives) is kept for
``idle_worker_timeout`` seconds after a call, for the next call with the same
settings; a call with other settings (``n_jobs``, start method, initializer...)
replaces it. `shutdown` stops it at once and frees its segments. A forked
child never uses nor stops its parent's pool. A ``Parallel`` call made while
the kept pool is busy (from another thread) gets a pool of its own for the call. A ``Parallel`` call inside a
task runs with threads (then sequentially one level deeper), as with joblib's
default backend. ``require="sharedmem"`` calls (some scikit-learn ``predict``
methods) run with threads, as joblib decides for every process backend.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any

try:
    import joblib
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "nocopy.joblib needs joblib, which is not installed. Fix: pip install 'nocopy[joblib]'"
    ) from _exc

from ._pool import (
    DEFAULT_SHARE_THRESHOLD,
    ProcessPoolExecutor,
    abort,
    fn_name,
    submit_labelled,
    usable,
)

__all__ = ["NocopyBackend", "register", "shutdown"]

BACKEND_NAME = "nocopy"
# What Parallel passes every backend for its own options (memory-mapping of arrays, verbosity).
_JOBLIB_MEMMAPPING = ("max_nbytes", "mmap_mode", "temp_folder", "verbose", "prefer", "require")
_OPTIONS = (
    "mp_context", "share_threshold", "max_tasks_per_child", "initializer", "initargs", "idle_worker_timeout",
)
IDLE_WORKER_TIMEOUT = 300.0  # seconds, loky's default


def _run_batch(nested_backend: Any, n_jobs: int | None, *flat: Any) -> list[Any]:
    """Worker side of one batch: ``f(*args, **kwargs)`` for each item, as joblib's ``BatchedCalls``.

    The items come flattened (f, args, kwargs, f, args, kwargs...), so that
    big arguments sit where the executor looks for data to share.
    """
    with joblib.parallel_config(backend=nested_backend, n_jobs=n_jobs):
        return [flat[i](*flat[i + 1], **flat[i + 2]) for i in range(0, len(flat), 3)]


def _context(mp_context: str | BaseContext | None) -> BaseContext | None:
    if mp_context is None or isinstance(mp_context, BaseContext):
        return mp_context
    if isinstance(mp_context, str):
        return multiprocessing.get_context(mp_context)
    raise TypeError(
        f"mp_context must be a start method name ('fork', 'spawn', 'forkserver') or a "
        f"multiprocessing context, not {type(mp_context).__qualname__}"
    )


class NocopyBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's parallel backend ``"nocopy"``: a `nocopy.ProcessPoolExecutor` per ``Parallel`` call.

    Registered by ``import nocopy.joblib``; select it with
    ``joblib.parallel_config(backend="nocopy", n_jobs=N)`` (or
    ``Parallel(backend="nocopy")``). Keyword parameters: ``mp_context``,
    ``share_threshold``, ``max_tasks_per_child`` (see the module docstring).

    Examples
    --------
    >>> with joblib.parallel_config(backend="nocopy", n_jobs=2,
    ...                             mp_context="spawn"):  # doctest: +SKIP
    ...     joblib.Parallel()(joblib.delayed(len)(big_df) for _ in range(4))
    [1000000, 1000000, 1000000, 1000000]
    """

    supports_retrieve_callback = True
    supports_timeout = True
    supports_inner_max_num_threads = True
    uses_threads = False
    supports_sharedmem = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        mp_context: str | BaseContext | None = None,
        share_threshold: int = DEFAULT_SHARE_THRESHOLD,
        max_tasks_per_child: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        idle_worker_timeout: float = IDLE_WORKER_TIMEOUT,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._options: dict[str, Any] = {
            "mp_context": _context(mp_context), "share_threshold": share_threshold,
            "max_tasks_per_child": max_tasks_per_child, "initializer": initializer, "initargs": initargs,
            "idle_worker_timeout": idle_worker_timeout,
        }
        self._executor: ProcessPoolExecutor | None = None
        self._n_jobs = 1
        self._started_with: dict[str, Any] = {}
        self.parallel: Any = None

    # -- sizing and set-up -----------------------------------------------------------
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The number of workers for *n_jobs* (``-1``: every CPU; 1 inside a worker thread or daemon).

        Examples
        --------
        >>> n = NocopyBackend().effective_n_jobs(-1)  # doctest: +SKIP
        >>> n == joblib.cpu_count()                   # doctest: +SKIP
        True
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if multiprocessing.current_process().daemon or not (
            self.in_main_thread() or self.nesting_level == 0
        ):
            # A daemon cannot have children; forking from a worker thread is unsafe.
            if n_jobs != 1:
                warnings.warn(
                    "the nocopy joblib backend cannot start processes from here (a daemon "
                    "process or a thread below another Parallel call): setting n_jobs=1",
                    stacklevel=3,
                )
            return 1
        if n_jobs < 0:
            return max(int(joblib.cpu_count()) + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self, n_jobs: int | None = 1, parallel: Any = None, prefer: str | None = None,
        require: str | None = None, **backend_kwargs: Any,
    ) -> int:
        """Start the executor for one ``Parallel`` call; return its number of workers.

        One job runs in the caller, without any process (joblib's sequential backend).

        Examples
        --------
        >>> NocopyBackend().configure(n_jobs=2, parallel=p)   # doctest: +SKIP
        2
        """
        options = {**self._options, **backend_kwargs}
        # joblib passes multiprocessing's global default unless JOBLIB_START_METHOD chose one:
        # only that choice is the user's, the global default is not nocopy's (fork before 3.14).
        context = options.pop("context", None) if os.environ.get("JOBLIB_START_METHOD", "").strip() else None
        options.pop("context", None)
        for name in _JOBLIB_MEMMAPPING:
            options.pop(name, None)  # joblib's memmapping knobs: share_threshold plays that part
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(
                f"the nocopy joblib backend got unknown parameters {unknown}: it takes "
                f"{', '.join(_OPTIONS)}"
            )
        initializer = options.get("initializer")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {type(initializer).__qualname__}")
        n = self.effective_n_jobs(n_jobs)
        if n == 1:
            from joblib._parallel_backends import FallbackToBackend, SequentialBackend

            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        options["mp_context"] = _context(options.get("mp_context")) or _context(context)
        self._start(n, options)
        return n

    def _start(self, n_jobs: int, options: dict[str, Any]) -> None:
        if self._executor is not None:  # configured again without terminate(): no pool left behind
            self.terminate()
        self._n_jobs, self._started_with = n_jobs, options
        env = self._prepare_worker_env(n_jobs)
        self._executor = _KEPT.take(n_jobs, options, env)

    # -- running -------------------------------------------------------------------
    def submit(self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None) -> Future[Any]:
        """Run one batch of ``delayed`` calls in a worker; *callback* gets its future when done.

        A joblib batch is sent as its calls, so that their big arguments are
        shared once (cached by identity) instead of pickled into every batch.

        Examples
        --------
        >>> fut = backend.submit(batch, callback=parallel_callback)   # doctest: +SKIP
        """
        if self._executor is None:
            raise RuntimeError(
                "the nocopy joblib backend was not configured (or was terminated): joblib's "
                "Parallel calls configure() before submit()"
            )
        items = getattr(func, "items", None)
        if isinstance(items, list) and all(isinstance(i, tuple) and len(i) == 3 for i in items):
            flat = [x for item in items for x in item]
            names = ", ".join(sorted({fn_name(item[0]) for item in items}))
            # What joblib's BatchedCalls runs its calls with (Parallel built it from this call).
            nested, nested_n_jobs = self.get_nested_backend()
            future = submit_labelled(
                self._executor, f"joblib batch of {len(items)} ({names})", f"joblib({names})",
                _run_batch, nested, nested_n_jobs, *flat,
            )
        else:
            future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The batch's results (a list), or its exception raised.

        Examples
        --------
        >>> backend.retrieve_result_callback(fut)   # doctest: +SKIP
        [1, 2]
        """
        return out.result()

    def retrieve_result(self, out: Future[Any], timeout: float | None = None) -> Any:
        """Like `retrieve_result_callback`, waiting at most *timeout* seconds.

        Examples
        --------
        >>> backend.retrieve_result(fut, timeout=10)   # doctest: +SKIP
        [1, 2]
        """
        return out.result(timeout=timeout)

    # -- ending ----------------------------------------------------------------
    def terminate(self) -> None:
        """End of the ``Parallel`` call: stop the workers, free every segment.

        Examples
        --------
        >>> backend.terminate()   # doctest: +SKIP
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            # Kept for the next call (see the module docstring), or stopped.
            _KEPT.give_back(executor, float(self._started_with.get("idle_worker_timeout", IDLE_WORKER_TIMEOUT)))
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed (or the caller was interrupted): stop the workers now, free everything.

        With *ensure_ready*, start new workers for the tasks still to come
        (a ``Parallel`` used as a context manager).

        Examples
        --------
        >>> backend.abort_everything(ensure_ready=False)   # doctest: +SKIP
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            _KEPT.forget(executor)
            abort(executor)
        if ensure_ready:
            self._start(self._n_jobs, self._started_with)


def register() -> None:
    """Register the backend with joblib under the name ``"nocopy"``: the preferred way to enable it.

    ``import nocopy.joblib`` registers it too, but such an import looks unused
    (ruff's F401 autofix deletes it, and ``backend="nocopy"`` then no longer
    exists); a call cannot be mistaken for dead code. Calling it again is harmless.

    Examples
    --------
    >>> import nocopy.joblib
    >>> nocopy.joblib.register()
    >>> with joblib.parallel_config(backend="nocopy"):   # doctest: +SKIP
    ...     joblib.Parallel(2)(joblib.delayed(len)(big) for _ in range(4))
    """
    joblib.register_parallel_backend(BACKEND_NAME, NocopyBackend)


def shutdown() -> None:
    """Stop the workers the backend keeps between ``Parallel`` calls now, and free their segments.

    They stop by themselves after ``idle_worker_timeout`` seconds (default
    300) without a call; a pool in use by a running call is stopped when that
    call ends.

    Examples
    --------
    >>> nocopy.joblib.shutdown()
    """
    _KEPT.stop()


def _same(a: Any, b: Any) -> bool:
    """Whether two settings are the same (identity, else ``==``; an ``==`` that fails means no)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # an object whose == raises is not known to be the same
        return False


class _KeptPool:
    """The pool kept warm between ``Parallel`` calls (loky's reusable executor, for nocopy).

    One per process: taken by a call whose settings match, given back at its
    end, stopped after the idle timeout or when settings change. A forked
    child starts with none: its parent's executor belongs to the parent (its
    manager thread and workers are not the child's), so the child must
    neither use nor shut it down; it only keeps a reference to it, so that
    collecting it does not touch the parent's pipes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._key: tuple[Any, ...] = ()
        self._busy = False
        self._timer: threading.Timer | None = None
        self._stop_after_use = False
        self._parents: list[ProcessPoolExecutor] = []  # a forked child's: never touched

    def after_fork_in_child(self) -> None:
        parents = self._parents + ([self._executor] if self._executor is not None else [])
        self.__init__()  # type: ignore[misc]  # a fresh lock: the parent's may be held by a thread
        self._parents = parents

    def take(self, n_jobs: int, options: dict[str, Any], env: dict[str, str]) -> ProcessPoolExecutor:
        key = (n_jobs, options.get("mp_context"), options.get("share_threshold", DEFAULT_SHARE_THRESHOLD),
               options.get("max_tasks_per_child"), options.get("initializer"), tuple(options.get("initargs") or ()),
               sorted(env.items()))
        stale: ProcessPoolExecutor | None = None
        with self._lock:
            if self._executor is not None and not self._busy:
                timer = self._cancel_timer()
                if len(key) == len(self._key) and all(map(_same, key, self._key)) and usable(self._executor):
                    self._busy, self._stop_after_use = True, False
                    kept = self._executor
                else:
                    kept, stale, self._executor = None, self._executor, None  # other settings: replaced
                keep = self._executor is None
            else:
                timer, kept, keep = None, None, self._executor is None
        _join(timer)
        if kept is not None:
            return kept
        if stale is not None:
            stale.shutdown(wait=True, cancel_futures=True)
        executor = _new_executor(n_jobs, options, env)
        if keep:
            with self._lock:
                if self._executor is None:
                    self._executor, self._key, self._busy, self._stop_after_use = executor, key, True, False
        return executor

    def give_back(self, executor: ProcessPoolExecutor, idle_timeout: float) -> None:
        with self._lock:
            kept = executor is self._executor
            if kept and idle_timeout > 0 and not self._stop_after_use and usable(executor):
                self._busy = False
                self._timer = threading.Timer(idle_timeout, self._expire, args=(executor,))
                self._timer.daemon = True
                self._timer.name = "nocopy-joblib-idle"
                self._timer.start()
                return
            if kept:
                self._executor, self._busy = None, False
        executor.shutdown(wait=True, cancel_futures=True)

    def forget(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if executor is self._executor:
                self._cancel_timer()
                self._executor, self._busy = None, False

    def stop(self) -> None:
        with self._lock:
            executor = self._executor
            if executor is None:
                return
            if self._busy:
                self._stop_after_use = True
                return
            timer = self._cancel_timer()
            self._executor = None
        _join(timer)
        executor.shutdown(wait=True, cancel_futures=True)

    def _expire(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if executor is not self._executor or self._busy:
                return  # taken again (or replaced) meanwhile
            self._executor, self._timer = None, None
        executor.shutdown(wait=True, cancel_futures=True)

    def _cancel_timer(self) -> threading.Timer | None:
        """Cancel the idle timer (held with the lock); return it, to `_join` once the lock is released."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        return timer


def _join(timer: threading.Timer | None) -> None:
    # A cancelled timer's thread may still be running for a moment: gone before the pool
    # is used or stopped, so a fork right after (3.12+) does not count it as a thread.
    # Without the lock: an expiring timer may be waiting for it.
    if timer is not None and timer is not threading.current_thread():
        timer.join()


def _new_executor(n_jobs: int, options: dict[str, Any], env: dict[str, str]) -> ProcessPoolExecutor:
    inner = env.get("OMP_NUM_THREADS", "")
    return ProcessPoolExecutor(
        n_jobs, mp_context=options["mp_context"],
        share_threshold=options.get("share_threshold", DEFAULT_SHARE_THRESHOLD),
        max_tasks_per_child=options.get("max_tasks_per_child"),
        # Spawned workers start with joblib's choice in their environment (before
        # their numpy loads); the initializer applies it to what is loaded already.
        inner_max_num_threads=int(inner) if inner.isdigit() and int(inner) > 0 else None,
        initializer=_init_worker, initargs=(env, options.get("initializer"), tuple(options.get("initargs") or ())),
    )


_KEPT = _KeptPool()
os.register_at_fork(after_in_child=_KEPT.after_fork_in_child)


register()


def _init_worker(
    env: dict[str, str], initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
) -> None:
    """Worker start: the thread limits (`_limit_threads`), then the user's ``initializer``."""
    _limit_threads(env)
    if initializer is not None:
        initializer(*initargs)


def _limit_threads(env: dict[str, str]) -> None:
    """Worker start: cap the thread pools of numerical libraries, as joblib's loky backend does.

    *env* is joblib's own choice (``OMP_NUM_THREADS`` and friends: the CPUs
    divided by the workers, or ``inner_max_num_threads``, or the caller's
    own settings). Libraries loaded later read the variables; those already
    loaded (numpy's BLAS: nocopy imports numpy before any task) are limited
    through ``threadpoolctl`` when it is installed (scikit-learn brings it).

    Examples
    --------
    >>> _limit_threads({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})   # doctest: +SKIP
    """
    os.environ.update(env)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    limits: dict[str, int] = {}
    blas = env.get("OPENBLAS_NUM_THREADS") or env.get("MKL_NUM_THREADS")
    if blas and blas.isdigit():
        limits["blas"] = int(blas)
    omp = env.get("OMP_NUM_THREADS")
    if omp and omp.isdigit():
        limits["openmp"] = int(omp)
    if limits:
        threadpool_limits(limits=limits)
