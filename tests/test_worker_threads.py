"""Spawned and forkserver workers share the CPUs among their numerical libraries' threads, as loky's do."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest

import nocopy
from nocopy._pool import _threads

CPUS = len(os.sched_getaffinity(0))


def _threads_seen(_: object = None) -> tuple[dict[str, str | None], int | None]:
    """In the worker: the variables, and the threads OpenBLAS was started with (None without threadpoolctl)."""
    import numpy  # noqa: F401 - loads OpenBLAS, as a task would

    env = {var: os.environ.get(var) for var in _threads.THREAD_VARS}
    try:
        import threadpoolctl
    except ImportError:
        return env, None
    blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]
    return env, blas[0] if blas else None


@pytest.fixture(autouse=True)
def _no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _threads.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)


def _expect(n: int, seen: tuple[dict[str, str | None], int | None], **caller: str) -> None:
    env, blas = seen
    assert env == {var: caller.get(var, str(n)) for var in _threads.THREAD_VARS}
    if blas is not None:
        # Set before the worker imported numpy: OpenBLAS started with that many
        # threads (it never starts more than there are CPUs).
        assert blas == min(int(env["OPENBLAS_NUM_THREADS"] or 0), CPUS)


@pytest.mark.parametrize(("workers", "inner", "expected"), [
    (2, None, max(CPUS // 2, 1)),
    (1, None, CPUS),
    (2, 3, 3),
])
def test_executor_workers_get_a_share_of_the_cpus(workers: int, inner: int | None, expected: int) -> None:
    before = dict(os.environ)
    ctx = multiprocessing.get_context("spawn")
    with nocopy.ProcessPoolExecutor(workers, mp_context=ctx, inner_max_num_threads=inner) as ex:
        seen = list(ex.map(_threads_seen, range(workers * 2)))
    for one in seen:
        _expect(expected, one)
    assert dict(os.environ) == before  # the caller's environment is as it was


def test_the_callers_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    with nocopy.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        seen = ex.submit(_threads_seen).result()
    _expect(max(CPUS // 2, 1), seen, OMP_NUM_THREADS="5")
    assert os.environ["OMP_NUM_THREADS"] == "5"


def test_pool_workers_and_their_replacements_get_a_share_of_the_cpus() -> None:
    ctx = multiprocessing.get_context("spawn")
    # maxtasksperchild=1: every task runs in a replacement worker, started by the pool's handler thread.
    with nocopy.Pool(2, context=ctx, maxtasksperchild=1) as pool:
        seen = pool.map(_threads_seen, range(4), chunksize=1)
        assert len({pid for pid in pool.map(_pid, range(4), chunksize=1)}) >= 3
    for one in seen:
        _expect(max(CPUS // 2, 1), one)
    with nocopy.Pool(1, context=ctx, inner_max_num_threads=2) as pool:
        _expect(2, pool.apply(_threads_seen))


def _pid(_: object) -> int:
    return os.getpid()


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
@pytest.mark.parametrize(("workers", "inner", "expected"), [(2, None, max(CPUS // 2, 1)), (1, 2, 2)])
def test_forkserver_workers_take_their_share_of_what_the_server_loaded(
    workers: int, inner: int | None, expected: int
) -> None:
    # The server loaded numpy with 1 thread: each worker sets its variables and, with
    # threadpoolctl, the OpenBLAS already loaded (expected 2 > 1 needs the latter).
    pytest.importorskip("threadpoolctl")
    before = dict(os.environ)
    with nocopy.ProcessPoolExecutor(workers, inner_max_num_threads=inner) as ex:
        assert ex._mp_context.get_start_method() == "forkserver"
        seen = list(ex.map(_threads_seen, range(workers * 2)))
    with nocopy.Pool(workers, inner_max_num_threads=inner) as pool:
        seen += pool.map(_threads_seen, range(workers * 2))
    for one in seen:
        _expect(expected, one)
        assert one[1] is not None
    assert dict(os.environ) == before


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")
def test_forked_workers_are_left_as_they_are() -> None:
    # A forked worker has its parent's libraries loaded already: no variable would reach them.
    with nocopy.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        env, _ = ex.submit(_threads_seen).result()
    assert env == {var: None for var in _threads.THREAD_VARS}


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError), ("2", TypeError), (True, TypeError)])
def test_a_bad_thread_count_is_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="inner_max_num_threads"):
        nocopy.ProcessPoolExecutor(2, inner_max_num_threads=value)
    with pytest.raises(error, match="inner_max_num_threads"):
        nocopy.Pool(2, inner_max_num_threads=value)


def test_the_spawn_environment_is_taken_out_even_when_the_start_fails() -> None:
    with pytest.raises(OSError, match="no fork"), _threads.spawn_environment({"OMP_NUM_THREADS": "1"}):
        assert os.environ["OMP_NUM_THREADS"] == "1"
        raise OSError("no fork")
    assert "OMP_NUM_THREADS" not in os.environ
