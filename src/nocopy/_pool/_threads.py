"""How many threads numerical libraries get in a spawned worker: the CPUs shared among the workers.

Every worker that imports NumPy starts OpenBLAS's thread pool, one thread per
CPU, and those threads spin for ~0.1 s before they sleep: four workers on two
cores spent 0.19 s of CPU each on ``import numpy`` instead of 0.09 s, while
they boot side by side; and tasks calling BLAS run cores x workers threads
on cores CPUs. So, as loky (joblib), dask and Ray do, each worker gets
``cpus // workers`` threads (at least one) through the variables the
libraries read when they load -- set in the worker's environment when it is
spawned, the only moment that comes before its ``import numpy``. A variable
the caller has set is left as it is. Forkserver workers (nocopy's default)
are forks of a server that loaded numpy with these variables at 1 (it starts
no BLAS threads); each worker sets its pool's share in its environment as it
starts (for libraries a task imports) and, with threadpoolctl, in the
libraries already loaded. Forked workers inherit the caller's libraries
and are left as they are.

multiprocessing has no per-process environment: the variables are in
``os.environ`` while ``Process.start()`` runs, so another thread that starts a
subprocess or reads them in those few ms sees them (documented). Passing an
environment of its own would mean replacing the stdlib's spawn ``Popen``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from .._process import usable_cpus

__all__ = ["THREAD_VARS", "check_inner_threads", "limit_loaded_libraries", "spawn_environment", "worker_thread_env"]

# What loky sets (less NUMBA_NUM_THREADS, which numba refuses to see change once loaded).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def check_inner_threads(value: object) -> None:
    """TypeError/ValueError unless *value* is None or a positive int."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"inner_max_num_threads must be an int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"inner_max_num_threads must be at least 1, got {value}")


def worker_thread_env(workers: int, inner_max_num_threads: int | None) -> dict[str, str]:
    """The variables to set in each spawned worker: *inner_max_num_threads*, else the CPUs / *workers*.

    Variables already in this process's environment are the caller's choice
    and are not in the result.

    Examples
    --------
    >>> env = worker_thread_env(2, 1)
    >>> all(v == "1" for v in env.values())
    True
    """
    n = inner_max_num_threads if inner_max_num_threads is not None else max(usable_cpus() // max(workers, 1), 1)
    return {var: str(n) for var in THREAD_VARS if var not in os.environ}


def limit_loaded_libraries(n: int) -> None:
    """Set the thread pools of the numerical libraries loaded in this process to *n* (needs threadpoolctl).

    A forkserver worker inherits libraries the server loaded with 1 thread
    each. Without threadpoolctl (``pip install threadpoolctl``; scikit-learn
    and ``nocopy[joblib]`` bring it) they keep 1; libraries loaded later read
    the variables.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=n)


_environ_lock = threading.Lock()


@contextlib.contextmanager
def spawn_environment(env: dict[str, str]) -> Iterator[None]:
    """Add *env*'s variables missing from ``os.environ`` while a worker is spawned, then take them out.

    A spawned child gets this process's environment when it is started, and
    multiprocessing has no per-process environment; the variables are in
    ``os.environ`` only while ``Process.start()`` runs (a few ms). Variables
    someone else set meanwhile are left alone.
    """
    if not env:
        yield
        return
    with _environ_lock:
        added = {k: v for k, v in env.items() if k not in os.environ}
        os.environ.update(added)
        try:
            yield
        finally:
            for key, value in added.items():
                if os.environ.get(key) == value:
                    del os.environ[key]
