"""Python 3.14's executor API on every Python: map(buffersize=), terminate_workers(), kill_workers()."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

import nocopy
from conftest import posix_dir
from nocopy.errors import WorkerCrashedError
from test_executor_lifecycle import (
    join_new_manager_threads,
    live_descendants,
    made_here,
    service_processes,
)

MiB = 1 << 20


def square(x: int) -> int:
    return x * x


def total(arr: np.ndarray, k: int) -> float:
    return float(arr.sum()) + k


def fail_on(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def signal_started_then_sleep(flag_dir: str, i: int) -> int:
    Path(flag_dir, str(os.getpid())).touch()
    time.sleep(600)
    return i


class Counted:
    """An iterable that counts how many items were taken from it."""

    def __init__(self, it: Iterator[int]) -> None:
        self.it = it
        self.taken = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> int:
        value = next(self.it)
        self.taken += 1
        return value


@pytest.fixture
def leaves_nothing() -> Iterator[None]:
    """After the test: no worker process, manager thread or segment of the test's pools is left."""
    me = psutil.Process()
    services = service_processes(me)
    descendants = live_descendants(me)
    threads = set(threading.enumerate())
    shm_dir = posix_dir()
    segments = made_here(shm_dir)
    yield
    join_new_manager_threads(threads)
    left = live_descendants(me) - descendants - service_processes(me) - services
    assert left == set(), f"worker processes still alive: {sorted(left)}"
    assert made_here(shm_dir) - segments == set()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_buffersize_must_be_an_int_of_at_least_one(bad: object) -> None:
    with nocopy.ProcessPoolExecutor(1) as ex, pytest.raises(ValueError, match="buffersize"):
        ex.map(square, range(3), buffersize=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_with_buffersize_reads_its_input_lazily_and_keeps_at_most_that_many_tasks(
    chunksize: int, leaves_nothing: None
) -> None:
    source = Counted(itertools.count())  # endless: only a lazy map can get through it
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as ex:
        results = ex.map(square, source, buffersize=2, chunksize=chunksize)
        assert source.taken == 2 * chunksize  # the first tasks go in at once
        got = [next(results) for _ in range(7)]
        assert got == [x * x for x in range(7)]
        # Every item taken is a task's: 7 yielded, the rest of at most 2 tasks in flight.
        tasks_yielded = -(-7 // chunksize)
        assert source.taken <= (tasks_yielded + 2) * chunksize
        assert source.taken >= 7
        results.close()  # cancels what is still pending


def test_map_with_buffersize_gives_all_results_in_order_and_shares_big_arguments(leaves_nothing: None) -> None:
    arr = np.ones(2 * MiB // 8)
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as ex:
        assert list(ex.map(total, [arr] * 6, range(6), buffersize=3)) == [arr.size + k for k in range(6)]
        assert list(ex.map(square, range(10), buffersize=1, chunksize=4)) == [x * x for x in range(10)]
        assert list(ex.map(square, [], buffersize=2)) == []


def test_map_with_buffersize_raises_a_tasks_error_and_cancels_the_rest(leaves_nothing: None) -> None:
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as ex:
        results = ex.map(fail_on, range(100), buffersize=2)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad item 3"):
            next(results)
        assert ex.submit(square, 4).result() == 16


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_the_one_liner_with_buffersize_finishes_with_the_executor_unreferenced(method: str, leaves_nothing: None) -> None:
    results = nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context(method)).map(square, range(12), buffersize=3)
    assert list(results) == [x * x for x in range(12)]


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_running_tasks_at_once_and_leave_nothing(
    how: str, tmp_path: Path, leaves_nothing: None
) -> None:
    arr = np.ones(2 * MiB // 8)  # a shared argument's segment must go too
    threads = set(threading.enumerate())
    ex = nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver"))
    running = [ex.submit(signal_started_then_sleep, str(tmp_path), i) for i in range(2)]
    queued = ex.submit(total, arr, 0)
    while len(list(tmp_path.iterdir())) < 2:  # both workers are inside their 600 s task
        threading.Event().wait(0.02)
    workers = {int(p.name) for p in tmp_path.iterdir()}

    getattr(ex, how)()

    signum = signal.SIGTERM if how == "terminate_workers" else signal.SIGKILL
    for fut in running:
        exc = fut.exception()
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == -signum and signum.name in str(exc)
    assert queued.cancelled() or isinstance(queued.exception(), WorkerCrashedError)
    with pytest.raises(RuntimeError):  # BrokenProcessPool is one too
        ex.submit(square, 2)
    join_new_manager_threads(threads)  # it reaps the workers
    assert not workers & live_descendants(psutil.Process())
