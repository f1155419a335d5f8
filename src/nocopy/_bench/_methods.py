"""Every way of getting the experiment's array to N workers, each timed in three phases.

Each method is a function ``run(ctx) -> list[float]`` that returns the
workers' sums and times its phases with ``ctx.phase(...)``:

- ``startup``: everything before the data moves: pools, managers,
  ``ray.init``, and a warm-up task per worker that proves every worker is up
  (imports done), so worker start-up never hides in the work phase;
- ``work``: getting the data to the workers and their sums back (sharing,
  copying, pickling, converting included);
- ``teardown``: shutting pools down, freeing segments and files.

``available()`` says why a method cannot run here (a package or a nocopy
feature missing), or None.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import importlib.util
import logging
import mmap
import multiprocessing
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The codec's own copiers and the store's huge-page mapping, so the floor copies
# the way share() does. The bench's one reach-in to other layers' internals:
# switch to public functions when they exist.
from .._codec import copy_bytes, write_at
from .._store import huge_mapping
from . import _tasks
from ._data import FIELD

__all__ = ["FLOOR", "METHODS", "Method", "RunContext", "by_name", "joblib_memmap_globs"]


@dataclass
class RunContext:
    """One run of one method: the data, the settings and the phase clock."""

    data: np.ndarray
    workers: int
    start_method: str
    scratch: str  # a private temporary directory (barriers live here)
    phases: dict[str, float] = field(default_factory=lambda: {"startup": 0.0, "work": 0.0, "teardown": 0.0})
    extra: dict[str, float] = field(default_factory=dict)
    # Memory runs: asks the sampler for a sample at the end of the work phase.
    on_checkpoint: Callable[[], None] | None = None
    # False: no warm-up task before the work, as a script runs it; the workers
    # then boot inside the work phase (start-up is only the pool's construction).
    warm_up: bool = True

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] += time.perf_counter() - t0

    def checkpoint(self) -> None:
        """The data is with every worker: a memory run samples this moment for sure."""
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    @property
    def mp(self) -> Any:
        return multiprocessing.get_context(self.start_method)

    def barrier(self) -> str:
        return tempfile.mkdtemp(prefix="barrier-", dir=self.scratch)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    run: Callable[[RunContext], list[float]]
    available: Callable[[], str | None] = lambda: None
    # True: every task sums the whole column (the experiment). False: tasks
    # sum disjoint chunks whose total is the column's sum (parallel_map).
    whole_column: bool = True
    # Shared-memory files the method may create and leave unmapped for a
    # while; the memory monitor counts them (see _monitor).
    shm_globs: Callable[[], list[str]] = lambda: []


def _missing(module: str, extra: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'nocopy[{extra}]')"
        return None

    return check


def _nocopy_feature(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        import nocopy

        if not hasattr(nocopy, name):
            return f"nocopy.{name} is not in this version of nocopy"
        return None

    return check


def _warm(submit: Callable[..., Any], ctx: RunContext, preload: tuple[str, ...] = ()) -> None:
    """One warm-up task per worker; each waits for all, so each lands on its own worker (unless ``ctx.warm_up`` is off)."""
    if not ctx.warm_up:
        return
    where = ctx.barrier()
    futures = [submit(_tasks.arrive, where, ctx.workers, preload) for _ in range(ctx.workers)]
    pids = {f.result() for f in futures}
    if len(pids) != ctx.workers and ctx.workers > 0 and pids != {os.getpid()}:
        raise RuntimeError(f"warm-up reached {len(pids)} workers, expected {ctx.workers}")


@contextlib.contextmanager
def _warm_pool(ctx: RunContext, make: Callable[[], cf.Executor]) -> Iterator[cf.Executor]:
    """Start-up: make the pool and run a task on every worker; teardown: shut it down."""
    with ctx.phase("startup"):
        ex = make()
    try:
        with ctx.phase("startup"):
            _warm(ex.submit, ctx)
        yield ex
    finally:
        with ctx.phase("teardown"):
            ex.shutdown(wait=True)


def _submit_all(ctx: RunContext, ex: cf.Executor, fn: Callable[..., float], *args: Any) -> list[float]:
    futures = [ex.submit(fn, *args) for _ in range(ctx.workers)]
    sums = [f.result() for f in futures]
    ctx.checkpoint()
    return sums


# -- the methods ------------------------------------------------------


def run_floor(ctx: RunContext) -> list[float]:
    """The least any method must do: copy the data once into fresh shared memory, sum once.

    The copy is the fastest known into fresh shared memory, the one share()
    makes: where the kernel can collapse the new memfd into 2 MiB pages, a
    copy through an aligned mapping of them (by several threads when large);
    else ``pwrite`` (the kernel allocates 4 KiB pages as it copies: no page
    faults, about twice as fast as a memcpy through a fresh mapping). The sum is one
    ``np.nansum`` of the field, in this process, over the data already in
    memory. Two reference copies are timed outside the phases: through a fresh
    shared mapping (page faults), and into fresh private memory (which no other
    process could read).
    """
    data = np.ascontiguousarray(ctx.data)
    raw = data.reshape(-1).view(np.uint8)
    n = raw.nbytes
    fd = os.memfd_create("nocopy-bench-floor", os.MFD_CLOEXEC)
    try:
        with ctx.phase("work"):
            t0 = time.perf_counter()
            _copy_like_share(fd, raw)
            t1 = time.perf_counter()
            total = float(np.nansum(data[FIELD]))
            ctx.extra["memcpy_shm_s"] = t1 - t0
            ctx.extra["nansum_s"] = time.perf_counter() - t1
            ctx.checkpoint()
    finally:
        with ctx.phase("teardown"):
            os.close(fd)
    if ctx.on_checkpoint is not None:
        return [total]  # a memory run: the reference copies would raise the floor's peak
    ctx.extra["memcpy_shm_mapped_s"] = time_mapped_copy(raw)
    t0 = time.perf_counter()
    private = np.empty(n, np.uint8)
    private[:] = raw
    ctx.extra["memcpy_private_s"] = time.perf_counter() - t0
    del private
    return [total]


def _copy_like_share(fd: int, raw: np.ndarray) -> None:
    os.ftruncate(fd, raw.nbytes)
    mapping = huge_mapping(fd, raw.nbytes)
    if mapping is None:
        write_at(fd, raw.data, 0)
        return
    copy_bytes(np.asarray(mapping), raw)
    mapping.close()


def time_pwrite_copy(raw: np.ndarray) -> float:
    """Seconds to copy *raw* (uint8) into a fresh memfd with pwrite, as share() does."""
    t0 = time.perf_counter()
    fd = os.memfd_create("nocopy-bench-pwrite", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, raw.nbytes)
        write_at(fd, raw.data, 0)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def time_mapped_copy(raw: np.ndarray) -> float:
    """Seconds to copy *raw* (uint8) into a fresh memfd through a mapping (a fault per page)."""
    n = max(raw.nbytes, 1)
    fd = os.memfd_create("nocopy-bench-floor-mapped", os.MFD_CLOEXEC)
    try:
        t0 = time.perf_counter()
        os.ftruncate(fd, n)
        mm = mmap.mmap(fd, n)
        dst = np.frombuffer(mm, np.uint8, count=raw.nbytes)
        dst[:] = raw
        elapsed = time.perf_counter() - t0
        del dst
        mm.close()
    finally:
        os.close(fd)
    return elapsed


def run_pickle(ctx: RunContext) -> list[float]:
    """The original method 2: ProcessPoolExecutor, the array as the argument (pickled per task)."""
    with _warm_pool(ctx, lambda: cf.ProcessPoolExecutor(ctx.workers, mp_context=ctx.mp)) as ex, ctx.phase("work"):
        return _submit_all(ctx, ex, _tasks.nansum_records, ctx.data)


def run_stdlib(ctx: RunContext) -> list[float]:
    """The original method 1: SharedMemoryManager, np.recarray(buf=...) by name, shape, dtype."""
    data = ctx.data
    with ctx.phase("startup"):
        from multiprocessing.managers import SharedMemoryManager

        smm = SharedMemoryManager(ctx=ctx.mp)
        smm.start()
    ex = None
    shm = None
    try:
        with ctx.phase("startup"):
            ex = cf.ProcessPoolExecutor(ctx.workers, mp_context=ctx.mp)
            _warm(ex.submit, ctx)
        with ctx.phase("work"):
            shm = smm.SharedMemory(size=max(data.nbytes, 1))
            dst = np.recarray(shape=data.shape, dtype=data.dtype, buf=shm.buf)
            np.copyto(dst, data)  # the recipe's copy: numpy copies records field by field
            del dst
            return _submit_all(ctx, ex, _tasks.nansum_stdlib, shm.name, data.shape, data.dtype)
    finally:
        with ctx.phase("teardown"):
            if ex is not None:
                ex.shutdown(wait=True)
            if shm is not None:
                shm.close()
            smm.shutdown()


def run_nocopy_executor(ctx: RunContext) -> list[float]:
    """Method 2's code with only the executor changed to nocopy.ProcessPoolExecutor."""
    import nocopy

    make = functools.partial(nocopy.ProcessPoolExecutor, max_workers=ctx.workers, mp_context=ctx.mp)
    with _warm_pool(ctx, make) as ex, ctx.phase("work"):
        return _submit_all(ctx, ex, _tasks.nansum_records, ctx.data)


def run_nocopy_map(ctx: RunContext) -> list[float]:
    """nocopy.parallel_map over the array: one zero-copy row chunk per worker."""
    import nocopy

    make = functools.partial(nocopy.ProcessPoolExecutor, max_workers=ctx.workers, mp_context=ctx.mp)
    with _warm_pool(ctx, make) as ex, ctx.phase("work"):
        sums = nocopy.parallel_map(
            _tasks.nansum_records, ctx.data, chunks=ctx.workers, workers=ctx.workers, executor=ex
        )
        ctx.checkpoint()
        return [float(s) for s in sums]


def run_threads(ctx: RunContext) -> list[float]:
    """ThreadPoolExecutor in this process: no copy at all (the zero-copy limit; GIL permitting)."""
    with _warm_pool(ctx, lambda: cf.ThreadPoolExecutor(ctx.workers)) as ex, ctx.phase("work"):
        return _submit_all(ctx, ex, _tasks.nansum_records, ctx.data)


def run_fork(ctx: RunContext) -> list[float]:
    """A global inherited copy-on-write by a fork pool (Linux; unsafe with threads in the parent)."""
    _tasks.FORK_DATA = ctx.data  # inherited by the workers forked below
    fork = multiprocessing.get_context("fork")
    try:
        with _warm_pool(ctx, lambda: cf.ProcessPoolExecutor(ctx.workers, mp_context=fork)) as ex, ctx.phase("work"):
            return _submit_all(ctx, ex, _tasks.nansum_fork_global)
    finally:
        _tasks.FORK_DATA = None


def _fork_available() -> str | None:
    if "fork" not in multiprocessing.get_all_start_methods():
        return "the fork start method does not exist on this platform"
    return None


def run_joblib(ctx: RunContext) -> list[float]:
    """joblib.Parallel with the loky backend (its default)."""
    with ctx.phase("startup"):
        from joblib import Parallel, delayed

        par = Parallel(n_jobs=ctx.workers, backend="loky")
    try:
        with ctx.phase("startup"):
            where = ctx.barrier()
            par(delayed(_tasks.arrive)(where, ctx.workers) for _ in range(ctx.workers))
        with ctx.phase("work"):
            out: list[float] = par(delayed(_tasks.nansum_records)(ctx.data) for _ in range(ctx.workers))
            ctx.checkpoint()
            return out
    finally:
        with ctx.phase("teardown"):
            # loky keeps its workers for reuse; stop them so the next method
            # starts from the same state and their memory is not counted again.
            from joblib.externals.loky import reusable_executor

            executor = getattr(reusable_executor, "_executor", None)
            if executor is not None:
                executor.shutdown(wait=True)


def joblib_memmap_globs() -> list[str]:
    # joblib memory-maps large plain ndarrays into a folder in /dev/shm.
    return [f"/dev/shm/joblib_memmapping_folder_{os.getpid()}_*/*"]


def run_ray(ctx: RunContext) -> list[float]:
    """ray.put once, then one task per worker (ray.init timed apart, inside start-up)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with ctx.phase("startup"):
        import ray

        t0 = time.perf_counter()
        ray.init(
            num_cpus=ctx.workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        ctx.extra["ray_init_s"] = time.perf_counter() - t0
    try:
        with ctx.phase("startup"):
            arrive = ray.remote(num_cpus=1)(_tasks.arrive)
            nansum = ray.remote(num_cpus=1)(_tasks.nansum_records)
            where = ctx.barrier()
            ray.get([arrive.remote(where, ctx.workers) for _ in range(ctx.workers)])
        with ctx.phase("work"):
            ref = ray.put(ctx.data)
            out: list[float] = ray.get([nansum.remote(ref) for _ in range(ctx.workers)])
            ctx.checkpoint()
            del ref
            return out
    finally:
        with ctx.phase("teardown"):
            ray.shutdown()


def run_arrow(ctx: RunContext) -> list[float]:
    """An Arrow IPC file in /dev/shm, memory-mapped by every worker (columns converted once)."""
    data = ctx.data
    path = os.path.join("/dev/shm", f"nocopybench-{os.getpid()}-{secrets.token_hex(8)}.arrow")
    with ctx.phase("startup"):
        import pyarrow as pa

        ex = cf.ProcessPoolExecutor(ctx.workers, mp_context=ctx.mp)
    try:
        with ctx.phase("startup"):
            # pyarrow imports pandas (its pandas shim) on a worker's first table
            # read: a one-time, per-process import, so start-up, not work.
            _warm(ex.submit, ctx, preload=("pyarrow", "pyarrow.ipc", "pandas"))
        with ctx.phase("work"):
            table = _records_to_arrow(data, pa)
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            del table
            return _submit_all(ctx, ex, _tasks.nansum_arrow_file, path)
    finally:
        with ctx.phase("teardown"):
            ex.shutdown(wait=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _records_to_arrow(data: np.ndarray, pa: Any) -> Any:
    """Record array -> Arrow table, one contiguous copy per field (Arrow is columnar)."""
    arrays = []
    names = list(data.dtype.names or ())
    for name in names:
        col = np.ascontiguousarray(np.asarray(data)[name])
        if col.dtype.kind == "S":
            width = col.dtype.itemsize
            arrays.append(
                pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(col), [None, pa.py_buffer(col)])
            )
        else:
            arrays.append(pa.array(col))
    return pa.table(arrays, names=names)


def _arrow_available() -> str | None:
    if not os.path.isdir("/dev/shm"):
        return "there is no /dev/shm to put the Arrow file in"
    return _missing("pyarrow", "pandas")()


def remove_stale_arrow_files() -> list[str]:
    """Delete Arrow files left in /dev/shm by benchmark processes that died (e.g. Ctrl-C, kill)."""
    import glob
    import re

    removed = []
    for path in glob.glob("/dev/shm/nocopybench-*-*.arrow"):
        m = re.match(r"^nocopybench-([0-9]+)-[0-9a-f]+\.arrow$", os.path.basename(path))
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its process is alive (maybe another bench): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
    return removed


def _arrow_globs() -> list[str]:
    return [f"/dev/shm/nocopybench-{os.getpid()}-*.arrow"]


FLOOR = Method("floor", "one copy into fresh shared memory (as share() copies) + one nansum, in this process", run_floor)

METHODS: tuple[Method, ...] = (
    Method("pickle", "ProcessPoolExecutor, array as argument (pickled per task)", run_pickle),
    Method("stdlib", "SharedMemoryManager + np.recarray(buf=) by name/shape/dtype", run_stdlib),
    Method(
        "nocopy-executor",
        "method 2's code with nocopy.ProcessPoolExecutor",
        run_nocopy_executor,
        _nocopy_feature("ProcessPoolExecutor"),
    ),
    Method(
        "nocopy-map",
        "nocopy.parallel_map, one zero-copy chunk per worker",
        run_nocopy_map,
        _nocopy_feature("parallel_map"),
        whole_column=False,
    ),
    Method("threads", "ThreadPoolExecutor in one process", run_threads),
    Method("fork", "copy-on-write global, fork pool", run_fork, _fork_available),
    Method("joblib", "joblib.Parallel, loky backend", run_joblib, _missing("joblib", "bench"), shm_globs=joblib_memmap_globs),
    Method("arrow", "Arrow IPC file in /dev/shm, memory-mapped", run_arrow, _arrow_available, shm_globs=_arrow_globs),
    Method("ray", "ray.put once + one task per worker", run_ray, _missing("ray", "ray")),
)


def by_name(name: str) -> Method:
    for m in (FLOOR, *METHODS):
        if m.name == name:
            return m
    raise KeyError(name)
