"""How workers end: spawned ones skip only the interpreter's teardown, forked ones are untouched.

A spawned worker leaves with ``os._exit(0)`` once the stdlib's loop ends
(``_worker.run_then_exit``), after doing what anyone can observe of an exit:
its tasks' non-daemon threads are joined, atexit handlers run and the
standard streams are flushed. Forked workers never ran inherited atexit
handlers (the stdlib ends them with ``os._exit``): that must stay so.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import pytest

import nocopy
from conftest import run_python


def _touch(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


def register_atexit(path: str) -> int:
    atexit.register(_touch, path)
    return os.getpid()


def start_late_thread(path: str) -> int:
    def late() -> None:
        time.sleep(0.5)
        _touch(path)

    threading.Thread(target=late).start()  # not a daemon: the exit must wait for it
    return os.getpid()


class _Noisy:
    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        _touch(self.path)


_KEEP: list[_Noisy] = []


def keep_object_with_del(path: str) -> int:
    _KEEP.append(_Noisy(path))
    return os.getpid()


def spawn_pool() -> nocopy.ProcessPoolExecutor:
    return nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))


def test_a_spawned_worker_runs_atexit_handlers_and_joins_its_threads(tmp_path: Path) -> None:
    handler, thread = tmp_path / "atexit", tmp_path / "thread"
    ex = spawn_pool()
    pid = ex.submit(register_atexit, str(handler)).result()
    assert ex.submit(start_late_thread, str(thread)).result() == pid
    ex.shutdown(wait=True)
    assert handler.read_text() == str(pid)
    assert thread.read_text() == str(pid)


def test_a_spawned_worker_skips_the_teardown_of_module_globals(tmp_path: Path) -> None:
    # The one deliberate difference from an interpreter's exit, and where the time goes.
    marker = tmp_path / "del"
    with spawn_pool() as ex:
        ex.submit(keep_object_with_del, str(marker)).result()
    assert not marker.exists()


def test_a_spawned_workers_unflushed_output_is_not_lost() -> None:
    code = """
import multiprocessing as mp, sys, nocopy
def say(): sys.stdout.write("from the worker, no newline"); sys.stderr.write("err, no newline")
if __name__ == "__main__":
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        ex.submit(say).result()
"""
    # Buffered, as outside this test environment (PYTHONUNBUFFERED would hide a missing flush).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    out = run_python(code, env=env)
    assert out.returncode == 0, out.stderr
    assert "from the worker, no newline" in out.stdout
    assert "err, no newline" in out.stderr


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_forked_workers_do_not_run_the_parents_atexit_handlers(method: str, tmp_path: Path) -> None:
    code = f"""
import atexit, multiprocessing as mp, os, sys, nocopy
def mark(): open(os.path.join({str(tmp_path)!r}, "ran-in-%d" % os.getpid()), "w").close()
def pid(): return os.getpid()
if __name__ == "__main__":
    atexit.register(mark)
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context({method!r})) as ex:
        pids = {{f.result() for f in [ex.submit(pid) for _ in range(4)]}}
    print(sorted(pids))
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    ran = sorted(p.name for p in tmp_path.iterdir())
    assert len(ran) == 1 and ran[0] != "ran-in-0", ran  # the parent's own exit ran it, no worker did
    worker_pids = out.stdout.strip()
    assert ran[0].removeprefix("ran-in-") not in worker_pids


def test_a_worker_ended_by_max_tasks_per_child_exits_cleanly(tmp_path: Path) -> None:
    handler = tmp_path / "atexit"
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as ex:
        first = ex.submit(register_atexit, str(handler)).result()
        second = ex.submit(os.getpid).result()
    assert first != second
    assert handler.read_text() == str(first)


def test_a_spawned_pool_worker_runs_atexit_handlers_and_skips_teardown(tmp_path: Path) -> None:
    handler, marker = tmp_path / "atexit", tmp_path / "del"
    pool = nocopy.Pool(1, context=mp.get_context("spawn"))
    pid = pool.apply(register_atexit, (str(handler),))
    assert pool.apply(keep_object_with_del, (str(marker),)) == pid
    pool.close()
    pool.join()
    assert handler.read_text() == str(pid)
    assert not marker.exists()
