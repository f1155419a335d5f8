"""parallel_map: split data into row chunks, run fn on each chunk in parallel, in order.

Backend interface (for the "processes", "threads" and "ray" backends)
=====================================================================

A backend is a small class that runs chunk tasks; `parallel_map` does
everything else (validation, chunking, ordering, progress bar, re-raising the
first failure, cancelling on error or Ctrl-C). A backend subclasses
`MapBackend` and implements three methods::

    class MyBackend(MapBackend):
        name = "mine"

        def prepare(self, data):          # once per call, in the caller
            # Make *data* reachable by the workers without copying per chunk
            # (share it, put it in an object store...). Return a "source".
            ...

        def submit(self, fn, source, index, start, stop):
            # Start fn(rows start:stop of the data) somewhere; return a
            # concurrent.futures.Future (Ray: ObjectRef.future()).
            # Worker side, rebuild the data from the source, then call
            # fn(take_rows(data, start, stop)).
            ...

        def release(self, source):        # once per call, always (finally)
            # Free what prepare() allocated. Never raises.
            ...

        def abort(self):                  # optional: Ctrl-C / caller interrupted
            # Stop the workers so no process is left running the chunks.
            ...

Backends are constructed as ``cls(workers=int, executor=Executor | None)``
(``self.workers``, ``self.executor``). Register with
`register_backend` ("name" -> class), or lazily by module path in
``_LAZY_BACKENDS`` (``"ray": ("nocopy.ray", "RayMapBackend")``): the module is
imported the first time the backend is asked for, and must define that class.
`take_rows` (rows start:stop of an ndarray, a pandas or Polars DataFrame
or Series, or an Arrow table, zero-copy; from ``nocopy._kinds``) is the helper
every backend's worker side uses.

Examples
--------
>>> import numpy as np, nocopy
>>> nocopy.parallel_map(lambda rows: int(rows.sum()), np.arange(100),
...                     chunks=4, backend="threads")
[300, 925, 1550, 2175]
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from multiprocessing.context import BaseContext
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from ._codec import PICKLE_FIX, SharedSequence
from ._kinds import is_items, row_count, take_rows
from ._pool import (
    ProcessPoolExecutor,
    default_context,
    fn_name,
    start_workers,
    submit_labelled,
    usable,
)
from ._pool import abort as abort_pool
from ._process import usable_cpus
from ._shared import Shared, share
from .errors import SegmentClosedError

__all__ = [
    "IDLE_TIMEOUT", "MapBackend", "chunk_label", "parallel_map", "register_backend", "shutdown_parallel_map_workers",
    "take_rows",
]

R = TypeVar("R")


class MapBackend:
    """Runs the chunk tasks of one `parallel_map` call (see the module docstring).

    Examples
    --------
    A backend that runs chunks one after the other, in the caller:

    >>> class Serial(MapBackend):
    ...     name = "serial"
    ...     def prepare(self, data):
    ...         return data
    ...     def submit(self, fn, source, index, start, stop):
    ...         fut = Future()
    ...         fut.set_result(fn(take_rows(source, start, stop)))
    ...         return fut
    >>> _ = register_backend(Serial)
    >>> nocopy.parallel_map(len, np.arange(10), chunks=3, backend="serial")
    [3, 3, 4]
    """

    name: ClassVar[str] = ""

    def __init__(self, *, workers: int, executor: Executor | None = None) -> None:
        self.workers = workers
        self.executor = executor

    def prepare(self, data: Any) -> Any:
        """Make *data* reachable by the workers (once per call); return the source for submit()."""
        raise NotImplementedError

    def submit(self, fn: Any, source: Any, index: int, start: int, stop: int) -> Future[Any]:
        """Start ``fn(rows start:stop)`` of chunk *index*; return its future."""
        raise NotImplementedError

    def release(self, source: Any) -> None:
        """Free what `prepare` allocated; never raises."""

    def abort(self) -> None:
        """Stop running chunks (the caller was interrupted); never raises."""

    def done(self) -> None:
        """The call is over (after `release`, also when it failed); never raises."""


_BACKENDS: dict[str, type[MapBackend]] = {}
_LAZY_BACKENDS: dict[str, tuple[str, str]] = {"ray": ("nocopy.ray", "RayMapBackend")}


def register_backend(cls: type[MapBackend]) -> type[MapBackend]:
    """Make *cls* available as ``parallel_map(..., backend=cls.name)``; usable as a decorator.

    Examples
    --------
    >>> @register_backend
    ... class Mine(MapBackend):
    ...     name = "mine"
    """
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty class attribute 'name'")
    _BACKENDS[cls.name] = cls
    return cls


def _backend_class(name: str) -> type[MapBackend]:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, not {type(name).__name__}")
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name in _LAZY_BACKENDS:
        module, attr = _LAZY_BACKENDS[name]
        mod = importlib.import_module(module)  # ImportError names the extra to install
        cls = getattr(mod, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, MapBackend)):
            raise ValueError(
                f"backend={name!r} is not available in this version of nocopy ({module} has no "
                f"{attr}). Fix: use backend='processes' or 'threads', or upgrade nocopy."
            )
        _BACKENDS[name] = cls
        return cls
    known = sorted({*_BACKENDS, *_LAZY_BACKENDS})
    raise ValueError(f"unknown parallel_map backend {name!r}: choose one of {', '.join(known)}")


# ---------------------------------------------------------------------------
# rows (row_count and take_rows come from _kinds: every family that has rows splits)
# ---------------------------------------------------------------------------
def _spans(n: int, chunks: int) -> list[tuple[int, int]]:
    k = max(1, min(chunks, n))
    bounds = [i * n // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def _sized_spans(n: int, chunksize: int) -> list[tuple[int, int]]:
    """Chunks of *chunksize* rows (the last one shorter), as Pool.map's chunksize makes them."""
    return [(start, min(start + chunksize, n)) for start in range(0, n, chunksize)] or [(0, 0)]


def _run_chunk(fn: Callable[[Any], Any], source: Any, start: int, stop: int) -> Any:
    """Worker side of the processes and threads backends: zero-copy rows, then fn."""
    data = source.get() if isinstance(source, Shared) else source
    if isinstance(data, SharedSequence):
        # A chunk of str/bytes items big enough that the pool shared it on the way (as it
        # shares such arguments): fn was promised a plain slice, built here once.
        data = list(data)
    return fn(take_rows(data, start, stop))


def chunk_label(index: int, source: Any, start: int, stop: int) -> str:
    """How a chunk is named in errors: its rows, or (a chunk of items, sent alone) its size."""
    if is_items(source):
        return f"chunk {index} ({stop - start} items)"
    return f"chunk {index} (rows {start}:{stop})"


# ---------------------------------------------------------------------------
# warm pools: repeated calls reuse workers instead of starting new ones
# ---------------------------------------------------------------------------
#: Seconds a cached pool of parallel_map may stay unused before its workers are stopped.
IDLE_TIMEOUT = 300.0

_pools_lock = threading.Lock()
_process_pools: dict[tuple[int, str], ProcessPoolExecutor] = {}
_thread_pools: dict[int, ThreadPoolExecutor] = {}
# id(pool) -> calls using it now / when the last one ended (time.monotonic()).
_users: dict[int, int] = {}
_idle_since: dict[int, float] = {}
_reaper: threading.Timer | None = None


def _lease(pool: Executor) -> None:
    """A call starts using *pool* (held with _pools_lock): it is not idle until `_unlease`."""
    _users[id(pool)] = _users.get(id(pool), 0) + 1
    _idle_since.pop(id(pool), None)


def _unlease(pool: Executor) -> None:
    """A call is done with *pool*: once no call uses it, it stops after IDLE_TIMEOUT seconds unused."""
    with _pools_lock:
        left = _users.get(id(pool), 1) - 1
        if left > 0:
            _users[id(pool)] = left
            return
        _users.pop(id(pool), None)
        if not any(p is pool for p in (*_process_pools.values(), *_thread_pools.values())):
            return  # forgotten meanwhile (aborted, shut down)
        _idle_since[id(pool)] = time.monotonic()
        _arm_reaper(IDLE_TIMEOUT)


def _arm_reaper(delay: float) -> None:
    """(Re)start the one timer that stops idle pools (held with _pools_lock)."""
    global _reaper
    if _reaper is not None:
        _reaper.cancel()
    # A daemon: an idle pool must never keep the program from exiting (atexit shuts it down).
    _reaper = threading.Timer(max(delay, 0.0), _reap_idle_pools)
    _reaper.daemon = True
    _reaper.name = "nocopy-map-idle"
    _reaper.start()


def _reap_idle_pools() -> None:
    """Shut down every cached pool unused for IDLE_TIMEOUT seconds; come back for the others."""
    global _reaper
    now = time.monotonic()
    stale: list[Executor] = []
    with _pools_lock:
        if _reaper is not threading.current_thread():
            return  # re-armed meanwhile: the newer timer decides
        _reaper = None
        cached: tuple[dict[Any, Any], ...] = (_process_pools, _thread_pools)
        for pools in cached:
            for key, pool in list(pools.items()):
                since = _idle_since.get(id(pool))
                if since is not None and now - since >= IDLE_TIMEOUT:
                    del pools[key]
                    del _idle_since[id(pool)]
                    stale.append(pool)
        if _idle_since:
            _arm_reaper(min(_idle_since.values()) + IDLE_TIMEOUT - now)
    for pool in stale:
        _stop(pool)


def _stop(pool: Executor) -> None:
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except Exception:  # an idle pool's shutdown has nobody to report to
        pass


def _warm_process_pool(workers: int, mp_context: BaseContext | None) -> ProcessPoolExecutor:
    ctx = mp_context if mp_context is not None else default_context()
    key = (workers, ctx.get_start_method())
    with _pools_lock:
        pool = _process_pools.get(key)
        if pool is None or not usable(pool):
            broken = pool
            if broken is not None:
                _idle_since.pop(id(broken), None)
            pool = ProcessPoolExecutor(workers, mp_context=ctx)
            _process_pools[key] = pool
        else:
            broken = None
        _lease(pool)
    if broken is not None:
        # Its workers are dead or stopping: waiting is short, and frees its segments now;
        # outside the lock, which every other call (and exit) needs meanwhile.
        broken.shutdown(wait=True)
    return pool


def _forget_process_pool(pool: ProcessPoolExecutor) -> None:
    with _pools_lock:
        for key, value in list(_process_pools.items()):
            if value is pool:
                del _process_pools[key]
        _idle_since.pop(id(pool), None)


def _warm_thread_pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _thread_pools.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="nocopy-map")
            _thread_pools[workers] = pool
        _lease(pool)
        return pool


def _shutdown_pools() -> None:
    global _reaper
    with _pools_lock:
        pools: list[Executor] = [*_process_pools.values(), *_thread_pools.values()]
        _process_pools.clear()
        _thread_pools.clear()
        _idle_since.clear()
        reaper, _reaper = _reaper, None
        if reaper is not None:
            reaper.cancel()
    if reaper is not None and reaper is not threading.current_thread():
        # Gone before we return: a fork right after (3.12+) must not count it as a thread.
        reaper.join()
    for pool in pools:
        _stop(pool)


def shutdown_parallel_map_workers() -> None:
    """Stop the worker processes (and threads) `parallel_map` keeps warm between calls, now.

    `parallel_map` keeps one pool per (workers, start method) so that repeated
    calls do not start new workers; a pool unused for ``IDLE_TIMEOUT`` seconds
    (300) stops by itself, and all stop when the program exits. Call this to
    free their memory sooner. Chunks of a call still running are cancelled; the
    next call starts new workers. Pools you passed as ``executor=`` are yours
    and are left alone.

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> nocopy.parallel_map(np.sum, np.arange(10), chunks=2, backend="threads")
    [np.int64(10), np.int64(35)]
    >>> nocopy.shutdown_parallel_map_workers()
    """
    _shutdown_pools()


# A forked child's copies of its parent's pools: never used, never shut down, and never
# collected either (dropping the last reference runs the stdlib's weakref callback, which
# takes a lock the parent's manager thread may have held at the fork: a deadlock).
_parents_pools: list[Executor] = []


def _pools_after_fork() -> None:
    # A forked child must not use (or shut down) its parent's workers; the timer did not come along.
    global _pools_lock, _reaper
    _pools_lock = threading.Lock()
    _parents_pools.extend([*_process_pools.values(), *_thread_pools.values()])
    _process_pools.clear()
    _thread_pools.clear()
    _users.clear()
    _idle_since.clear()
    _reaper = None


atexit.register(_shutdown_pools)
os.register_at_fork(after_in_child=_pools_after_fork)


# ---------------------------------------------------------------------------
# the built-in backends
# ---------------------------------------------------------------------------
@register_backend
class ProcessBackend(MapBackend):
    """Worker processes (a warm nocopy.ProcessPoolExecutor); the data is shared once per call."""

    name = "processes"

    def __init__(
        self, *, workers: int, executor: Executor | None = None, mp_context: BaseContext | None = None
    ) -> None:
        super().__init__(workers=workers, executor=executor)
        self._own_pool = executor is None
        self._pool: Executor = executor if executor is not None else _warm_process_pool(workers, mp_context)
        self._owned: Shared[Any] | None = None

    def done(self) -> None:
        if self._own_pool:
            _unlease(self._pool)

    def prepare(self, data: Any) -> Shared[Any]:
        if isinstance(data, Shared):
            return data
        if isinstance(self._pool, ProcessPoolExecutor):
            start_workers(self._pool)  # they boot while the data is copied
        self._owned = share(data)
        return self._owned

    def submit(self, fn: Any, source: Any, index: int, start: int, stop: int) -> Future[Any]:
        pool = self._pool
        if isinstance(pool, ProcessPoolExecutor):
            return submit_labelled(
                pool, chunk_label(index, source, start, stop), f"parallel_map({fn_name(fn)})",
                _run_chunk, fn, source, start, stop,
            )
        return pool.submit(_run_chunk, fn, source, start, stop)

    def release(self, source: Any) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def abort(self) -> None:
        pool = self._pool
        if self._own_pool and isinstance(pool, ProcessPoolExecutor):
            _forget_process_pool(pool)
            abort_pool(pool)


@register_backend
class ThreadBackend(MapBackend):
    """Threads of this process (a warm ThreadPoolExecutor); nothing is copied or shared.

    NumPy chunks are read-only views of the caller's array; pandas chunks are
    copy-on-write slices (a write copies, never reaching the caller's frame);
    Arrow data is immutable, and a write to a Polars chunk copies (Polars is copy-on-write).
    """

    name = "threads"

    def __init__(self, *, workers: int, executor: Executor | None = None) -> None:
        super().__init__(workers=workers, executor=executor)
        self._own_pool = executor is None
        self._pool: Executor = executor if executor is not None else _warm_thread_pool(workers)

    def done(self) -> None:
        if self._own_pool:
            _unlease(self._pool)

    def prepare(self, data: Any) -> Any:
        if isinstance(data, Shared):
            return data.get()
        if isinstance(data, np.ndarray):
            view = data.view()
            view.flags.writeable = False
            return view
        return data

    def submit(self, fn: Any, source: Any, index: int, start: int, stop: int) -> Future[Any]:
        return self._pool.submit(_run_chunk, fn, source, start, stop)


# ---------------------------------------------------------------------------
# parallel_map
# ---------------------------------------------------------------------------
def _default_workers() -> int:
    return usable_cpus()


def _progress_bar(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "parallel_map(progress=True) needs tqdm, which is not installed. "
            "Fix: pip install 'nocopy[progress]' (or pip install tqdm)"
        ) from None
    return tqdm(total=total, unit="chunk", desc="parallel_map")


def parallel_map(
    fn: Callable[[Any], R],
    data: Any,
    *,
    chunks: int | None = None,
    chunksize: int | None = None,
    workers: int | None = None,
    backend: Literal["processes", "threads", "ray"] | type[MapBackend] = "processes",
    progress: bool = False,
    executor: Executor | None = None,
    mp_context: BaseContext | str | None = None,
) -> list[R]:
    """Run ``fn`` on row chunks of *data* in parallel; return the results in chunk order.

    *data* is a NumPy array (chunks along the first axis), a pandas or Polars
    DataFrame or Series, an Arrow table, or a `nocopy.Shared` of one. ``fn``
    gets zero-copy, read-only row chunks: with ``backend="processes"`` (the
    default) the data is shared once per call (not at all if it is already a
    ``Shared``) and every worker reads the same pages; ``"threads"`` slices
    the caller's object directly; ``"ray"`` puts it once in Ray's object store
    (needs ``pip install 'nocopy[ray]'``).

    *data* may also be plain items, as a pool's ``map`` takes them: a
    ``list``, ``tuple``, ``range`` or a generator (read to its end first).
    ``fn`` then gets a chunk of items (a slice of the same type; a list for a
    generator), sent to its worker pickled as ``Pool.map`` sends them (big
    NumPy, pandas, Arrow or Polars items shared, as every nocopy pool does).

    ``chunks`` (how many chunks) defaults to 4 x ``workers`` (at most one per
    row); or give ``chunksize`` (rows or items per chunk, as ``Pool.map``'s;
    the last chunk may be shorter), not both. ``workers`` defaults to the CPUs
    this process may use. Calls reuse a warm pool per (workers, start method)
    instead of starting new workers; a pool unused for 300 s stops by itself
    and `nocopy.shutdown_parallel_map_workers` stops them all now. Pass
    ``executor=`` to use your own (a ``nocopy.ProcessPoolExecutor`` or a
    ``ThreadPoolExecutor``). Workers start from a forkserver with nocopy,
    numpy and the heavy libraries already imported preloaded, as every nocopy
    pool's do; ``mp_context=`` (a multiprocessing context or a start method
    name: ``"forkserver"``, ``"spawn"``, ``"fork"``) chooses another start
    method for ``backend="processes"``. ``progress=True`` shows a tqdm bar (also in
    notebooks).

    An exception in ``fn`` is re-raised here with the worker's traceback as
    its ``__cause__``; a worker that dies raises
    `nocopy.errors.WorkerCrashedError` naming the chunk. Ctrl-C
    cancels the pending chunks, stops the workers and frees the data.

    For a large output, do not return big chunks: pass a shared output made by
    `nocopy.empty` and let every chunk write its own rows of it
    (``out.get()[start:stop] = ...``): the writes land in the caller's array
    without any copy.

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> nocopy.parallel_map(np.sum, np.arange(10), chunks=2, backend="threads")
    [np.int64(10), np.int64(35)]
    >>> nocopy.parallel_map(sum, range(10), chunksize=4, backend="threads")
    [6, 22, 17]
    """
    if not callable(fn):
        raise TypeError(f"parallel_map needs a callable fn, not {type(fn).__name__}")
    cls = _chosen_backend(backend, executor)
    if workers is None:
        # The stdlib's executors keep their size only there (no public accessor).
        workers = getattr(executor, "_max_workers", None) or _default_workers()
    _check_positive("workers", workers)
    if chunks is not None and chunksize is not None:
        raise ValueError(
            f"parallel_map takes chunks= (how many chunks) or chunksize= (rows per chunk), not both: "
            f"got chunks={chunks!r} and chunksize={chunksize!r}"
        )
    if isinstance(data, Iterator):
        data = list(data)  # a generator's items, as Pool.map reads them
    if chunksize is not None:
        _check_positive("chunksize", chunksize)
        spans = _sized_spans(_rows_of(data), chunksize)
    else:
        if chunks is None:
            chunks = 4 * workers
        _check_positive("chunks", chunks)
        spans = _spans(_rows_of(data), chunks)
    ctx = _context(mp_context, cls, executor)
    runner = cls(workers=workers, executor=executor) if ctx is None else ProcessBackend(workers=workers, mp_context=ctx)
    try:
        bar = _progress_bar(len(spans)) if progress else None
        try:
            return _run(runner, fn, data, spans, bar)
        finally:
            if bar is not None:
                bar.close()
    finally:
        runner.done()


def _chosen_backend(backend: str | type[MapBackend], executor: Executor | None) -> type[MapBackend]:
    if isinstance(backend, type) and issubclass(backend, MapBackend):
        cls: type[MapBackend] = backend
    else:
        cls = _backend_class(backend)
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor, not {type(executor).__name__}")
    if executor is not None and cls is ProcessBackend and isinstance(executor, ThreadPoolExecutor):
        cls = ThreadBackend
    return cls


def _context(mp_context: BaseContext | str | None, cls: type[MapBackend], executor: Executor | None) -> BaseContext | None:
    if mp_context is None:
        return None
    if cls is not ProcessBackend or executor is not None:
        raise ValueError(
            "parallel_map(mp_context=...) chooses how backend='processes' starts its own workers: "
            "it cannot apply to another backend or to an executor you pass (give that executor the context)"
        )
    if isinstance(mp_context, str):
        return multiprocessing.get_context(mp_context)  # ValueError names the methods there are
    if isinstance(mp_context, BaseContext):
        return mp_context
    raise TypeError(
        f"mp_context must be a start method name ('forkserver', 'spawn', 'fork') or a "
        f"multiprocessing context, not {type(mp_context).__name__}"
    )


def _check_positive(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")


def _rows_of(data: Any) -> int:
    if isinstance(data, Shared):
        if data.closed:
            raise SegmentClosedError(f"{data!r} is closed. Fix: pass an open Shared (or the data itself).")
        return row_count(data.get())
    return row_count(data)


def _run(runner: MapBackend, fn: Callable[[Any], R], data: Any, spans: list[tuple[int, int]], bar: Any) -> list[R]:
    """Prepare, submit every chunk, collect in order; cancel (and abort on Ctrl-C) on failure.

    Plain items (a list, tuple or range) are not prepared: nothing to share,
    each chunk's items travel to its task alone, as Pool.map sends them.
    """
    items = is_items(data)
    futures: list[Future[Any]] = []
    source: Any = None
    prepared = False
    # parallel_map takes no allow_pickle: an unsupported column's fix is to share first.
    fix = PICKLE_FIX.set("store it pickled with nocopy.share(data, allow_pickle=True) and pass "
                         "parallel_map the handle (the pickled part is copied on every get)")
    try:
        try:
            source = None if items else runner.prepare(data)
        finally:
            PICKLE_FIX.reset(fix)
        prepared = True
        for i, (start, stop) in enumerate(spans):
            if items:
                # Backends read rows start:stop of their source: here rows 0:n of the chunk itself.
                futures.append(runner.submit(fn, data[start:stop], i, 0, stop - start))
            else:
                futures.append(runner.submit(fn, source, i, start, stop))
        return _collect(futures, bar)
    except BaseException as exc:
        for fut in futures:
            fut.cancel()
        if isinstance(exc, KeyboardInterrupt):
            runner.abort()
        raise
    finally:
        if prepared:
            runner.release(source)


def _collect(futures: Sequence[Future[Any]], bar: Any) -> list[Any]:
    results: list[Any] = [None] * len(futures)
    position = {id(f): i for i, f in enumerate(futures)}
    for fut in as_completed(futures):
        results[position[id(fut)]] = fut.result()  # the first failure propagates
        if bar is not None:
            bar.update(1)
    return results
