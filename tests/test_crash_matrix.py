"""Crash matrix in loky's style: every way a task can fail gives its own exception,
the executor (or a new one) keeps working, and nothing is left behind.

Every case runs with the posix store so that a leaked segment would be a file
named after its owner (``nocopy-<pid>-...``) that the test can look for.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest

import nocopy
from conftest import own_posix_segments
from nocopy.errors import WorkerCrashedError

BIG = 300_000  # float64 elements: 2.4 MB, above the 1 MiB threshold


class CustomError(Exception):
    pass


class ArgumentUnpickleError(Exception):
    pass


def _refuse_to_unpickle() -> None:
    raise ArgumentUnpickleError("this argument cannot be rebuilt in a worker")


class UnpicklableInWorker:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_unpickle, ())


# -- the failing tasks ----------------------------------------------------------
def raises(arr: np.ndarray) -> None:
    raise CustomError(f"failed on {arr.size} values")


def exits(arr: np.ndarray) -> None:
    os._exit(7)


def sigkilled(arr: np.ndarray) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfaults(arr: np.ndarray) -> None:
    faulthandler.disable()  # pytest's handler, inherited under fork, would print a dump
    ctypes.string_at(0)


def accepts(arr: Any) -> int:
    return 1


def unpicklable_result(arr: np.ndarray) -> tuple[np.ndarray, threading.Lock]:
    # A big leaf is handed over first; then the lock fails to pickle.
    return np.array(arr), threading.Lock()


def total(arr: np.ndarray) -> float:
    return float(arr.sum())


def slow_total(arr: np.ndarray) -> float:
    time.sleep(1.0)
    return float(arr.sum())


Case = tuple[Callable[..., Any], bool, type[BaseException], str, bool]
# fn, pass an unpicklable argument?, expected exception, message pattern, pool survives?
CASES: dict[str, Case] = {
    "worker raises": (raises, False, CustomError, "failed on 300000 values", True),
    "worker exits": (exits, False, WorkerCrashedError, r"exited with code 7 while running task #\d+ \(.*exits\)", False),
    "worker SIGKILLed": (sigkilled, False, WorkerCrashedError, "killed by SIGKILL .*OOM.* while running", False),
    "worker segfaults": (segfaults, False, WorkerCrashedError, "killed by SIGSEGV .* while running", False),
    "argument fails to unpickle": (accepts, True, ArgumentUnpickleError, "cannot be rebuilt", True),
    "result fails to pickle": (unpicklable_result, False, TypeError, "pickle", True),
}
EXIT_CODES = {"worker exits": 7, "worker SIGKILLed": -signal.SIGKILL, "worker segfaults": -signal.SIGSEGV}


@pytest.fixture
def posix_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    yield


def _workers(ex: nocopy.ProcessPoolExecutor) -> list[int]:
    return list(ex._procs)


@pytest.mark.usefixtures("posix_store")
@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.parametrize("case", list(CASES))
def test_crash_matrix(case: str, method: str) -> None:
    fn, bad_arg, expected, pattern, survives = CASES[case]
    me = os.getpid()
    before = set(own_posix_segments(me))
    arr = np.arange(BIG, dtype="f8")
    expected_total = float(arr.sum())
    ctx = mp.get_context(method)
    ex = nocopy.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        # Two tasks at once: both workers start (spawn starts them on demand); arr is shared.
        assert list(ex.map(total, [arr, arr])) == [expected_total] * 2
        assert len(ex._procs) == 2
        bystander = ex.submit(slow_total, arr)  # another task in flight on the other worker
        args = (UnpicklableInWorker(),) if bad_arg else (arr,)
        failing = ex.submit(fn, *args)
        with pytest.raises(expected, match=pattern) as info:
            failing.result(timeout=60)
        exc = info.value
        workers = _workers(ex)
        if expected is WorkerCrashedError:
            assert isinstance(exc, concurrent_broken_pool())
            assert exc.exitcode == EXIT_CODES[case]
            assert exc.task is not None and fn.__name__ in exc.task
            # The task running on the surviving worker is lost with the pool and says why.
            with pytest.raises(WorkerCrashedError, match="was lost"):
                bystander.result(timeout=60)
            with pytest.raises(WorkerCrashedError, match="broken"):
                ex.submit(total, arr)
        else:
            # The worker's traceback is chained as the cause (or named in a note).
            cause = exc.__cause__
            assert cause is not None and fn.__name__ in str(cause)
            assert bystander.result(timeout=60) == expected_total
            assert ex.submit(total, arr).result(timeout=60) == expected_total  # the same pool goes on
    finally:
        ex.shutdown(wait=True)
    assert survives == (expected is not WorkerCrashedError)
    # Nothing left behind: no worker process, no segment of ours or of any worker.
    _assert_gone(workers)
    assert set(own_posix_segments(me)) - before == set()
    for pid in workers:
        assert own_posix_segments(pid) == []
    # The caller's data is intact and a new executor works.
    np.testing.assert_array_equal(arr, np.arange(BIG, dtype="f8"))
    with nocopy.ProcessPoolExecutor(1, mp_context=ctx) as again:
        assert again.submit(total, arr).result(timeout=60) == expected_total
    assert set(own_posix_segments(me)) - before == set()


def concurrent_broken_pool() -> type[BaseException]:
    from concurrent.futures.process import BrokenProcessPool

    return BrokenProcessPool


def _assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    for pid in pids:
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"worker {pid} is still running"
            time.sleep(0.05)


@pytest.mark.usefixtures("posix_store")
def test_worker_killed_from_outside_names_the_signal_and_task() -> None:
    """The OOM killer's way: SIGKILL from another process while the task runs."""
    arr = np.arange(BIG, dtype="f8")
    with nocopy.ProcessPoolExecutor(1) as ex:
        pid = ex.submit(os.getpid).result()
        fut = ex.submit(slow_total, arr)
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            fut.result(timeout=60)
    assert info.value.exitcode == -signal.SIGKILL
    assert info.value.task is not None and "slow_total" in info.value.task
    assert f"worker pid {pid} was killed by SIGKILL" in str(info.value)
    assert own_posix_segments(pid) == []


def test_remote_traceback_is_the_cause_with_the_worker_frames() -> None:
    with nocopy.ProcessPoolExecutor(1) as ex, pytest.raises(CustomError) as info:
        ex.submit(raises, np.ones(3)).result()
    cause = info.value.__cause__
    assert type(cause).__name__ == "_RemoteTraceback"
    assert 'in raises' in str(cause) and "CustomError: failed on 3 values" in str(cause)
