"""nocopy.ProcessPoolExecutor's lifetime: an executor collected with work pending finishes it.

The standard library's manager thread holds its executor only weakly: a pool
used without ``with`` or ``shutdown()`` (``list(Executor(2).map(f, xs))``) is
collected at once, and the thread still finishes the work, stops the workers
and exits. nocopy's segments (the task table every worker opens at start-up,
the shared arguments) must live exactly that long: not die with the executor
object, not outlive the thread.
"""

from __future__ import annotations

import concurrent.futures.process
import gc
import multiprocessing as mp
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

import nocopy
from conftest import posix_dir

METHODS = ["spawn", "forkserver", "fork"]
BACKENDS = ["memfd", "posix"]
MiB = 1 << 20


# -- functions the workers run (module level: importable under spawn) --------
def square(x: int) -> int:
    return x * x


def total_after_gate(arr: np.ndarray, gate: str) -> tuple[float, int]:
    while not os.path.exists(gate):
        threading.Event().wait(0.01)
    return float(arr.sum()), os.getpid()


# -- what the test process can see of its own pools ---------------------------
def made_here(shm_dir: Path) -> set[str]:
    """Names of nocopy segments made by this process that anyone still holds, maps or keeps as a file."""
    mark = f"nocopy-{os.getpid()}-"
    names: set[str] = set()

    def scan(text: str) -> None:
        at = text.find(mark)
        while at >= 0:
            names.add(text[at:].split()[0].split("/")[0])
            at = text.find(mark, at + 1)

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    scan(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    continue
            with open(f"/proc/{pid}/maps") as f:
                scan(f.read())
        except OSError:
            continue
    for name in os.listdir(shm_dir) if shm_dir.exists() else ():
        scan(name)
    return names


def service_processes(me: psutil.Process) -> set[int]:
    """This process's multiprocessing helpers that outlive any pool (forkserver, resource tracker)."""
    found = set()
    for child in me.children():
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing.forkserver" in cmdline or "multiprocessing.resource_tracker" in cmdline:
            found.add(child.pid)
    return found


def live_descendants(me: psutil.Process) -> set[int]:
    alive = set()
    for p in me.children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.add(p.pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def join_new_manager_threads(before: set[threading.Thread]) -> None:
    """Wait for the pools' manager threads this test started: they finish the work and exit on their own."""
    for t in set(threading.enumerate()) - before:
        if isinstance(t, concurrent.futures.process._ExecutorManagerThread):
            t.join(120)  # a guard against a hang only; a healthy pool ends in well under a second
            assert not t.is_alive(), "the manager thread of a collected executor never exited"


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Selects the store of this process's segments; yields the directory of posix segments.

    Not a private shm directory (the ``shm`` fixture): a forkserver keeps the
    environment it was started with, so its workers would look for the
    segments in another test's directory. Names made here carry this pid.
    """
    monkeypatch.setenv("NOCOPY_BACKEND", request.param)
    yield posix_dir()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("method", METHODS)
def test_the_map_one_liner_without_with_or_shutdown_finishes_and_leaves_nothing(method: str, backend: Path) -> None:
    me = psutil.Process()
    services = service_processes(me)
    descendants = live_descendants(me)
    threads = set(threading.enumerate())
    segments = made_here(backend)

    # The executor is unreferenced as soon as map() returns: every task is still pending.
    results = list(nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context(method)).map(square, range(8)))

    assert results == [x * x for x in range(8)]
    join_new_manager_threads(threads)
    left = live_descendants(me) - descendants - service_processes(me) - services
    assert left == set(), f"worker processes still alive: {sorted(left)}"
    assert made_here(backend) - segments == set()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("method", METHODS)
def test_tasks_in_flight_keep_their_shared_argument_after_the_executor_is_collected(
    method: str, backend: Path, tmp_path: Path
) -> None:
    me = psutil.Process()
    services = service_processes(me)
    descendants = live_descendants(me)
    threads = set(threading.enumerate())
    segments = made_here(backend)
    arr = np.arange(2 * MiB // 8, dtype="f8")  # above the share threshold: shared, not pickled
    gate = tmp_path / "go"

    ex = nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context(method))
    futures = [ex.submit(total_after_gate, arr, str(gate)) for _ in range(5)]
    collected = weakref.ref(ex)
    del ex
    gc.collect()
    assert collected() is None
    assert made_here(backend) - segments  # the task table and the argument live on for the tasks
    gate.touch()

    results = [f.result() for f in futures]
    assert [r[0] for r in results] == [float(arr.sum())] * 5
    join_new_manager_threads(threads)
    workers = {r[1] for r in results}
    left = live_descendants(me) - descendants - service_processes(me) - services
    assert left == set() and not workers & live_descendants(me)
    # Freed when the work was done, though the argument itself is still alive here.
    assert made_here(backend) - segments == set()
    np.testing.assert_array_equal(arr, np.arange(arr.size, dtype="f8"))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_shutdown_without_wait_frees_the_segments_once_the_work_is_done(backend: Path, tmp_path: Path) -> None:
    threads = set(threading.enumerate())
    segments = made_here(backend)
    arr = np.arange(2 * MiB // 8, dtype="f8")
    gate = tmp_path / "go"

    ex = nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver"))
    futures = [ex.submit(total_after_gate, arr, str(gate)) for _ in range(3)]
    ex.shutdown(wait=False)
    assert made_here(backend) - segments  # the queued tasks still need them
    gate.touch()

    assert [f.result()[0] for f in futures] == [float(arr.sum())] * 3
    join_new_manager_threads(threads)
    # Freed by the manager thread on its way out: the executor object and the
    # argument are both still alive here, and nobody calls shutdown() again.
    assert made_here(backend) - segments == set()


def test_shutdown_after_shutdown_without_wait_does_not_free_what_starting_workers_need() -> None:
    # The stdlib's second shutdown() has no thread left to wait for: it returns
    # while spawned workers are still starting; they must still find the task table.
    threads = set(threading.enumerate())
    shm_dir = posix_dir()
    segments = made_here(shm_dir)
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        futures = [ex.submit(square, x) for x in range(4)]
        ex.shutdown(wait=False)
    assert [f.result() for f in futures] == [0, 1, 4, 9]
    join_new_manager_threads(threads)
    assert made_here(shm_dir) - segments == set()


# -- a manager thread that cannot start ------------------------------------------
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork here")
def test_a_manager_thread_that_cannot_start_breaks_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    # While the interpreter finalizes no thread starts: the stdlib raises the bare RuntimeError from
    # submit and leaves its workers running; nocopy's pool breaks, its workers stopped.
    from nocopy._pool import _executor

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(_executor._ManagerThread, "start", refuse)
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
        with pytest.raises(nocopy.errors.ThreadStartError, match="manager thread could not start") as info:
            ex.submit(square, 3)
        assert isinstance(info.value, concurrent.futures.process.BrokenProcessPool)
        procs = list(ex._processes.values())
        assert len(procs) == 2 and not any(p.is_alive() for p in procs)
        with pytest.raises(nocopy.errors.ThreadStartError):
            ex.submit(square, 4)
