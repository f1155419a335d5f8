"""joblib integration: a parallel backend named ``"nocopy"``, so ``Parallel`` and scikit-learn share big data.

Importing this module registers the backend.

Examples
--------
>>> import joblib, nocopy.joblib                       # doctest: +SKIP
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
* ``inner_max_num_threads``: threads each worker's numerical libraries may
  use (BLAS, OpenMP...); default, as with joblib's loky backend: the CPUs
  divided by the workers, unless ``OMP_NUM_THREADS`` and friends are set.
  Applied when a worker starts (environment variables, and ``threadpoolctl``
  for libraries already loaded), so that N workers do not each start a
  thread per CPU.

Workers live for one ``Parallel`` call (or one ``with Parallel(...) as p``
block), and every segment is freed when it ends. A ``Parallel`` call inside a
task runs with threads (then sequentially one level deeper), as with joblib's
default backend. ``require="sharedmem"`` calls (some scikit-learn ``predict``
methods) run with threads, as joblib decides for every process backend.
"""

from __future__ import annotations

import multiprocessing
import os
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

from ._pool import DEFAULT_SHARE_THRESHOLD, ProcessPoolExecutor, abort, fn_name, submit_labelled

__all__ = ["NocopyBackend", "register"]

BACKEND_NAME = "nocopy"
# What Parallel passes every backend for its own options (memory-mapping of arrays, verbosity).
_JOBLIB_MEMMAPPING = ("max_nbytes", "mmap_mode", "temp_folder", "verbose", "prefer", "require")


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
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._options: dict[str, Any] = {
            "mp_context": _context(mp_context), "share_threshold": share_threshold,
            "max_tasks_per_child": max_tasks_per_child,
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
        unknown = sorted(set(options) - {"mp_context", "share_threshold", "max_tasks_per_child"})
        if unknown:
            raise TypeError(
                f"the nocopy joblib backend got unknown parameters {unknown}: it takes "
                "mp_context, share_threshold and max_tasks_per_child"
            )
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
        inner = env.get("OMP_NUM_THREADS", "")
        self._executor = ProcessPoolExecutor(
            n_jobs, mp_context=options["mp_context"],
            share_threshold=options.get("share_threshold", DEFAULT_SHARE_THRESHOLD),
            max_tasks_per_child=options.get("max_tasks_per_child"),
            # Spawned workers start with joblib's choice in their environment (before
            # their numpy loads); the initializer applies it to what is loaded already.
            inner_max_num_threads=int(inner) if inner.isdigit() and int(inner) > 0 else None,
            initializer=_limit_threads, initargs=(env,),
        )

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
            executor.shutdown(wait=True, cancel_futures=True)
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
            abort(executor)
        if ensure_ready:
            self._start(self._n_jobs, self._started_with)


def register() -> None:
    """Register the backend with joblib under the name ``"nocopy"`` (``import nocopy.joblib`` does it).

    Examples
    --------
    >>> nocopy.joblib.register()   # doctest: +SKIP
    """
    joblib.register_parallel_backend(BACKEND_NAME, NocopyBackend)


register()


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
