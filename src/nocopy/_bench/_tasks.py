"""What the workers run. Kept tiny and import-light: spawned workers import this module.

Every task returns ``np.nansum`` of the float field as a Python float, so
the parent can check it against the answer it computed itself.
"""

from __future__ import annotations

import importlib
import os
import time
import uuid
from typing import Any

import numpy as np

from ._data import FIELD

__all__ = [
    "arrive",
    "frame_checksum",
    "frame_get",
    "identity",
    "nansum_arrow_file",
    "nansum_fork_global",
    "nansum_ray_nocopy",
    "nansum_records",
    "nansum_shared_handle",
    "nansum_stdlib",
    "polars_sum",
    "ray_frame_get",
    "sparse_column_means",
    "time_gets",
]

RELEASE = "release"  # the file that lets polars_sum's holding tasks return

# The fork method's data: set in the parent before the pool forks, inherited
# copy-on-write by the workers.
FORK_DATA: np.ndarray | None = None


def arrive(barrier_dir: str, parties: int, preload: tuple[str, ...] = (), timeout: float = 300.0) -> int:
    """Wait until *parties* callers have arrived: proves that many workers are up.

    A file per caller in *barrier_dir* (works across processes, threads,
    joblib and Ray alike, with nothing to pickle). A worker blocked here
    cannot take a second warm-up task, so *parties* tasks reach *parties*
    different workers. *preload* modules are imported first (a worker's
    one-time imports are start-up, not work). Returns the worker's pid.
    """
    for module in preload:
        importlib.import_module(module)
    with open(os.path.join(barrier_dir, uuid.uuid4().hex), "w"):
        pass
    deadline = time.monotonic() + timeout
    while len(os.listdir(barrier_dir)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(barrier_dir))} of {parties} workers started in {timeout:.0f} s")
        time.sleep(0.002)
    return os.getpid()


def nansum_records(arr: Any) -> float:
    """The original method 2's task: the array arrives as the argument."""
    return float(np.nansum(arr[FIELD]))


def nansum_fork_global() -> float:
    """The fork method's task: the array is a global inherited at fork."""
    if FORK_DATA is None:
        raise RuntimeError("nansum_fork_global ran in a worker that was not forked from the bench")
    return float(np.nansum(FORK_DATA[FIELD]))


def nansum_stdlib(name: str, shape: tuple[int, ...], dtype: Any) -> float:
    """The original method 1's task: attach by name, rebuild with shape and dtype by hand."""
    from multiprocessing.shared_memory import SharedMemory

    shm = SharedMemory(name=name)
    try:
        arr = np.recarray(shape=shape, dtype=dtype, buf=shm.buf)
        total = float(np.nansum(arr[FIELD]))
        del arr  # close() raises BufferError while a view exists
    finally:
        shm.close()
    return total


def nansum_shared_handle(ref: Any) -> float:
    """A ``nocopy.Shared`` handle arrives; ``get()`` maps it."""
    return float(np.nansum(ref.get()[FIELD]))


def nansum_arrow_file(path: str) -> float:
    """Memory-map an Arrow IPC file (in /dev/shm) and sum its float column, zero-copy."""
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    table = pa.ipc.open_file(source).read_all()
    column = table.column(FIELD)
    total = 0.0
    for chunk in column.chunks:
        total += float(np.nansum(chunk.to_numpy(zero_copy_only=True)))
    return total


def time_gets(blob: bytes, reps: int) -> list[float]:
    """Seconds per ``get()`` of a pickled ``nocopy.Shared``, each from a fresh handle.

    The view and handle are dropped after each get, so every get maps the
    segment again (the per-process cache only holds live mappings).
    """
    import pickle

    out = []
    for _ in range(reps):
        ref = pickle.loads(blob)
        t0 = time.perf_counter()
        view = ref.get()
        out.append(time.perf_counter() - t0)
        del view, ref
    return out


def identity(x: int) -> int:
    """The tiny task of the per-task overhead test."""
    return x


def frame_checksum(df: Any) -> tuple[float, int]:
    """``nocopy bench joblib``'s task on the string frame: nansum of a numeric column, and the rows."""
    return float(np.nansum(df["n0"].to_numpy())), len(df)


def sparse_column_means(x: Any) -> tuple[float, int]:
    """``nocopy bench joblib``'s task on the sparse matrix: scikit-learn's column means of a
    CSR matrix (``mean_variance_axis``, what its scalers run), summed, and the rows."""
    from sklearn.utils.sparsefuncs import mean_variance_axis

    means, _ = mean_variance_axis(x, axis=0)
    return float(means.sum()), int(x.shape[0])


def frame_get(method: str, payload: Any) -> dict[str, float]:
    """``nocopy bench pandas``, in a fresh worker: seconds to have the DataFrame in hand, and a checksum.

    *method* says what *payload* is: a ``nocopy.Shared`` ("nocopy"), an Arrow
    IPC stream ("arrow") or a pickle ("pickle").
    """
    import pickle

    t0 = time.perf_counter()
    if method == "nocopy":
        df = payload.get()
    elif method == "arrow":
        import pyarrow as pa

        df = pa.ipc.open_stream(payload).read_all().to_pandas()
    else:
        df = pickle.loads(payload)
    got = time.perf_counter() - t0
    return {"get": got, "checksum": float(np.nansum(df["n0"].to_numpy())), "rows": len(df)}


def polars_sum(method: str, payload: Any, hold: str | None, parties: int) -> float:
    """``nocopy bench polars``, in a worker: the frame's ``n0`` summed.

    *payload* is the Polars frame itself (``"pickle"``: the pool unpickled it)
    or a ``nocopy.Shared`` of it. With a *hold* directory, the task announces
    that it has the frame and keeps it until the parent writes ``RELEASE``
    there (after sampling memory while all *parties* hold theirs).
    """
    df = payload.get() if method == "nocopy" else payload
    total = float(df["n0"].sum())
    if hold is not None:
        with open(os.path.join(hold, uuid.uuid4().hex), "w"):
            pass
        deadline = time.monotonic() + 600.0
        while not os.path.exists(os.path.join(hold, RELEASE)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the parent did not release the {parties} holding workers in 600 s")
            time.sleep(0.002)
    del df
    return total


def _uss() -> int:
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def ray_frame_get(ref: list[Any], use_nocopy: bool) -> dict[str, float]:
    """``nocopy bench ray``, in a Ray task: get the frame, read its datetime and float values.

    The ObjectRef comes inside a list so Ray does not resolve it before the
    task runs (the get is what is timed).
    """
    import pandas  # noqa: F401 - imported before the clock starts: imports are start-up, not the get
    import pyarrow
    import ray

    import nocopy.ray

    before = _uss()
    t0 = time.perf_counter()
    df = nocopy.ray.get(ref[0]) if use_nocopy else ray.get(ref[0])
    got = time.perf_counter() - t0
    checksum = int(df["t"].to_numpy().view("i8").sum()) + float(df["x"].sum())
    read = time.perf_counter() - t0 - got
    # Arrow's allocator caches freed temporaries: give them back, they are not copies.
    pyarrow.default_memory_pool().release_unused()
    grown = float(_uss() - before)  # while df is alive: what this task owns because of it
    return {"get_s": got, "read_s": read, "uss_growth": grown, "rows": len(df), "checksum": checksum}


def nansum_ray_nocopy(ref: Any) -> float:
    """The classic experiment's Ray task with ``nocopy.ray.get``."""
    import nocopy.ray

    return float(np.nansum(nocopy.ray.get(ref)[FIELD]))
