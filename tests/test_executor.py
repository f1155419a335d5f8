"""nocopy.ProcessPoolExecutor: drop-in behaviour, auto-shared arguments, shared results, memory."""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import nocopy
from conftest import own_posix_segments, segment_of, workers_at_each_share
from nocopy.errors import WorkerCrashedError

METHODS = ["spawn", "forkserver", "fork"]
MiB = 1 << 20


# -- functions the workers run (module level: importable under spawn) --------
def describe_arg(arr: np.ndarray) -> tuple[str | None, bool, str, float]:
    return segment_of(arr), bool(arr.flags.writeable), type(arr).__name__, float(arr.sum())


def mutate_and_sum(arr: np.ndarray) -> float:
    arr[:] = -1.0  # a private copy-on-write view: this must stay in this task
    return float(arr.sum())


def total(arr: np.ndarray) -> float:
    return float(arr.sum())


def nested_sums(bundle: dict[str, Any]) -> tuple[float, float, float, bool, bool]:
    a, (b, c) = bundle["a"], bundle["pair"]
    shared = [segment_of(x) is not None for x in (a, b)]
    return float(a.sum()), float(b.sum()), float(c.sum()), shared[0] and shared[1], segment_of(c) is None


def is_shared_handle(ref: object) -> tuple[str, float]:
    assert isinstance(ref, nocopy.Shared)
    return type(ref).__name__, float(ref.get().sum())


def make_array(n: int, value: float) -> np.ndarray:
    return np.full(n, value)


def make_pair(n: int) -> tuple[np.ndarray, np.ndarray, int]:
    return np.arange(n, dtype="f8"), np.ones(4), 7


def pid_and_exit(code: int) -> None:
    os._exit(code)


def frame_roundtrip(df: Any) -> tuple[str | None, Any]:
    col = df["x"].to_numpy()
    where = segment_of(col)
    df.loc[:, "x"] = -1.0  # private to this task
    return where, df


def wait_for_go(arr: np.ndarray, sync: str, round_no: int) -> float:
    """Touch every byte of interest, then hold the views until the parent has measured."""
    # Blocks of 64K rows: nansum's temporaries stay small (and out of the
    # measurement: malloc keeps freed blocks), so USS measures the data.
    s = 0.0
    for i in range(0, len(arr), 1 << 16):
        block = arr[i : i + (1 << 16)]
        s += float(np.nansum(block.float_col)) + float(np.count_nonzero(block.character_col == b"abc"))
    s += float(arr.date_col[-1].astype("i8"))
    Path(sync, f"ready-{round_no}-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not Path(sync, f"go-{round_no}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the parent never said go")
        time.sleep(0.01)
    return s


def make_records(n: int) -> np.recarray:
    return np.rec.fromarrays(
        [
            np.arange(n, dtype="i8").astype("M8[s]"),
            np.where(np.arange(n) % 2 == 0, 1.0, np.nan),
            np.array([b"string", b"abc"], dtype="S6")[np.arange(n) % 2],
        ],
        names="date_col,float_col,character_col",
    )


# -- drop-in ------------------------------------------------------------------
def test_is_a_stdlib_process_pool_executor() -> None:
    assert issubclass(nocopy.ProcessPoolExecutor, concurrent.futures.ProcessPoolExecutor)
    with pytest.raises(ValueError, match="share_threshold"):
        nocopy.ProcessPoolExecutor(1, share_threshold=-1)
    with pytest.raises(TypeError, match="initializer"):
        nocopy.ProcessPoolExecutor(1, initializer=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_big_argument_arrives_as_private_view_of_one_segment(method: str) -> None:
    arr = np.arange(MiB // 8 * 2, dtype="f8")  # 2 MiB: above the default 1 MiB threshold
    expected = float(arr.sum())
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
        described = list(ex.map(describe_arg, [arr] * 4))
        mutated = list(ex.map(mutate_and_sum, [arr] * 3))
        after = ex.submit(total, arr).result()
    names = {d[0] for d in described}
    assert len(names) == 1 and None not in names  # every task: the same segment, shared once
    assert all(d[1] for d in described)  # writable (copy-on-write), like a pickled copy
    assert all(d[2] == "ndarray" and d[3] == expected for d in described)
    assert mutated == [-float(arr.size)] * 3  # the task saw its own writes...
    assert after == expected  # ...later tasks did not
    np.testing.assert_array_equal(arr, np.arange(arr.size, dtype="f8"))  # nor did the caller


def test_small_arguments_are_pickled_and_threshold_is_tunable() -> None:
    small = np.arange(1000, dtype="f8")
    with nocopy.ProcessPoolExecutor(1) as ex:
        assert ex.share_threshold == MiB
        assert ex.submit(describe_arg, small).result()[0] is None
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as ex:
        assert ex.submit(describe_arg, small).result()[0] is not None


def test_arguments_inside_containers_and_kwargs_are_shared() -> None:
    a, b, c = np.ones(300_000), np.full(300_000, 2.0), np.full(10, 3.0)
    with nocopy.ProcessPoolExecutor(1, share_threshold=1_000_000) as ex:
        got = ex.submit(nested_sums, bundle={"a": a, "pair": [b, c]}).result()
    assert got == (300_000.0, 600_000.0, 30.0, True, True)


def test_a_big_memmap_argument_is_shared_not_pickled(tmp_path: Path) -> None:
    mm = np.memmap(tmp_path / "data.f8", dtype="f8", mode="w+", shape=(MiB // 8 * 2,))
    mm[:] = 1.0
    with nocopy.ProcessPoolExecutor(1) as ex:
        where, writable, _, s = ex.submit(describe_arg, mm).result()
    assert where is not None and writable and s == float(mm.size)
    del mm


def test_explicit_shared_arrives_as_shared() -> None:
    with nocopy.share(np.arange(10.0)) as ref, nocopy.ProcessPoolExecutor(1) as ex:
        assert ex.submit(is_shared_handle, ref).result() == ("Shared", 45.0)


def test_a_dead_argument_frees_its_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    before = set(own_posix_segments(os.getpid()))
    with nocopy.ProcessPoolExecutor(1) as ex:
        arr = np.ones(MiB)
        assert ex.submit(total, arr).result() == MiB
        held = set(own_posix_segments(os.getpid())) - before
        assert len(held) == 2  # the task table and the argument
        del arr  # the cache holds the segment only while the object lives
        assert len(set(own_posix_segments(os.getpid())) - before) == 1
    assert set(own_posix_segments(os.getpid())) - before == set()


def test_non_shareable_data_is_pickled_as_with_the_stdlib() -> None:
    objects = np.array([{"a": 1}] * 200_000, dtype=object)  # Python objects: not shareable
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as ex:
        assert ex.submit(len, objects).result() == 200_000


def test_no_room_to_share_warns_once_at_the_callers_submit_and_pickles(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._pool import _cache

    def no_room(value: object) -> None:
        raise MemoryError("no room left")

    monkeypatch.setattr(_cache, "share", no_room)
    with nocopy.ProcessPoolExecutor(1) as ex, pytest.warns(RuntimeWarning, match="no room to share") as record:
        first = ex.submit(total, np.ones(MiB))
        second = ex.submit(total, np.ones(MiB))
        assert (first.result(), second.result()) == (MiB, MiB)  # pickled instead
    assert [w.filename for w in record] == [__file__]  # once, pointing at the caller's submit()


# -- results ------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_big_results_come_back_through_shared_memory(method: str) -> None:
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        worker = ex.submit(os.getpid).result()
        big, small, seven = ex.submit(make_pair, 500_000).result()
    assert seven == 7 and small.tolist() == [1.0] * 4
    np.testing.assert_array_equal(big, np.arange(500_000, dtype="f8"))
    where = segment_of(big)
    assert where is not None and where.startswith(f"{worker}-")  # the worker's segment
    assert segment_of(small) is None
    big[0] = 42.0  # a result is the caller's to modify, as a pickled one would be
    assert big[0] == 42.0


def test_results_survive_a_worker_that_exits_right_after_returning() -> None:
    # max_tasks_per_child=1: each worker exits as soon as its result is sent.
    with nocopy.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
        futs = [ex.submit(make_array, 300_000, float(i)) for i in range(4)]
        for i, fut in enumerate(futs):
            np.testing.assert_array_equal(fut.result(), np.full(300_000, float(i)))


def test_result_survives_the_worker_dying_in_its_next_task() -> None:
    with nocopy.ProcessPoolExecutor(1) as ex:
        first = ex.submit(make_array, 300_000, 5.0)
        second = ex.submit(pid_and_exit, 9)
        np.testing.assert_array_equal(first.result(), np.full(300_000, 5.0))
        with pytest.raises(WorkerCrashedError, match="exited with code 9"):
            second.result()


def test_dataframe_argument_and_result() -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("nocopy._codec._pandas")
    df = pd.DataFrame({"x": np.arange(200_000, dtype="f8"), "s": ["ab", "c"] * 100_000})
    with nocopy.ProcessPoolExecutor(1, share_threshold=100_000) as ex:
        where, back = ex.submit(frame_roundtrip, df).result()
    assert where is not None  # the worker's column was a view of the shared segment
    assert (back["x"] == -1.0).all() and back["s"].tolist() == df["s"].tolist()
    assert df["x"].iloc[-1] == 199_999.0  # the caller's frame never changed


def frame_dtypes_and_object_write(df: Any) -> tuple[list[str], str | None, Any]:
    where = segment_of(df["x"].to_numpy())
    dtypes = [str(t) for t in df.dtypes]
    df.loc[0, "o"] = 5  # fine in a pickled copy's object column
    return dtypes, where, df


def test_object_and_python_string_columns_keep_their_dtype_both_ways() -> None:
    # share() hands object/string[python] columns back as Arrow strings; the
    # executor must not: a pickled copy keeps them, and tasks may rely on it.
    pd = pytest.importorskip("pandas")
    pytest.importorskip("nocopy._codec._pandas")
    n = 100_000
    df = pd.DataFrame({
        "x": np.arange(n, dtype="f8"),
        "o": pd.Series(["ab", "c"] * (n // 2), dtype=object),
        "p": pd.Series(["d", None] * (n // 2), dtype="string[python]"),
    })
    with nocopy.ProcessPoolExecutor(1, share_threshold=100_000) as ex:
        dtypes, where, back = ex.submit(frame_dtypes_and_object_write, df).result()
        series = ex.submit(frame_roundtrip_series, df["o"]).result()
    assert where is not None  # the numeric column is still a view of the shared segment
    assert dtypes == ["float64", "object", "string"]
    assert [str(t) for t in back.dtypes] == ["float64", "object", "string"]  # the result too
    assert back["p"].dtype.storage == "python"
    assert back.loc[0, "o"] == 5 and back["o"].iloc[1:].tolist() == df["o"].iloc[1:].tolist()
    assert series.dtype == object and series.tolist() == df["o"].tolist()
    assert df.loc[0, "o"] == "ab"  # the caller's frame never changed


def frame_roundtrip_series(s: Any) -> Any:
    assert s.dtype == object
    return s


# -- Ctrl-C inside "with" ----------------------------------------------------
SIGINT_SCRIPT = """
import os, sys, time
import numpy as np, nocopy

def slow(arr):
    open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
    time.sleep(60)
    return float(arr.sum())

if __name__ == "__main__":
    arr = np.ones(1 << 18)
    try:
        with nocopy.ProcessPoolExecutor(2) as ex:
            futs = [ex.submit(slow, arr) for _ in range(6)]
            [f.result() for f in futs]
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


def test_ctrl_c_inside_with_stops_workers_and_frees_everything(procs: Any, tmp_path: Path) -> None:
    env = {**os.environ, "NOCOPY_BACKEND": "posix"}
    p = procs.python(SIGINT_SCRIPT.replace("__main__", "__main__"), str(tmp_path), env=env)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2:
        assert time.monotonic() < deadline, p.stderr.read().decode() if p.poll() is not None else "no start"
        time.sleep(0.05)
    workers = [int(f.name) for f in tmp_path.iterdir()]
    assert own_posix_segments(p.pid)  # the argument is shared while the tasks run
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 20  # did not wait for the 60 s tasks
    assert b"interrupted" in out, err.decode()
    for pid in workers:
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"worker {pid} still runs"
        except psutil.NoSuchProcess:
            pass
    assert own_posix_segments(p.pid) == []
    for pid in workers:
        assert own_posix_segments(pid) == []


# -- memory ---------------------------------------------------------------------
def _sum_uss_growth(ex: concurrent.futures.ProcessPoolExecutor, arr: np.recarray, sync: Path,
                    workers: int, rounds: int) -> tuple[int, list[float]]:
    """Run *rounds* x *workers* tasks; while each round's tasks all hold their views,
    sample the workers' USS. Returns the largest sum of growth over the baselines."""
    pids = set()
    # Warm-up round: every worker started, numpy imported, a task run.
    warm = [ex.submit(wait_for_go, arr[:10].copy(), str(sync), 0) for _ in range(workers)]
    _wait_ready(sync, 0, workers)
    pids = {int(f.name.split("-")[2]) for f in sync.glob("ready-0-*")}
    baseline = {pid: psutil.Process(pid).memory_full_info().uss for pid in pids}
    (sync / "go-0").touch()
    for f in warm:
        f.result()
    worst = 0
    sums: list[float] = []
    for r in range(1, rounds + 1):
        futs = [ex.submit(wait_for_go, arr, str(sync), r) for _ in range(workers)]
        _wait_ready(sync, r, workers)
        growth = sum(psutil.Process(pid).memory_full_info().uss - baseline[pid] for pid in pids)
        worst = max(worst, growth)
        (sync / f"go-{r}").touch()
        sums += [f.result() for f in futs]
    return worst, sums


def _wait_ready(sync: Path, r: int, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(list(sync.glob(f"ready-{r}-*"))) < n:
        assert time.monotonic() < deadline, "workers did not all start their task"
        time.sleep(0.01)


@pytest.mark.slow
def test_four_workers_eight_tasks_200mb_records_uss_growth_below_a_quarter_copy(tmp_path: Path) -> None:
    arr = make_records(200_000_000 // 22)
    expected = wait_for_go(arr, str(tmp_path), -1) if (tmp_path / "go--1").touch() is None else 0.0
    ctx = mp.get_context("spawn")
    (tmp_path / "nocopy").mkdir()
    with nocopy.ProcessPoolExecutor(4, mp_context=ctx) as ex:
        growth, sums = _sum_uss_growth(ex, arr, tmp_path / "nocopy", workers=4, rounds=2)
    assert sums == [expected] * 8
    print(f"nocopy: sum of 4 workers' USS growth {growth / 1e6:.1f} MB for a {arr.nbytes / 1e6:.0f} MB array")
    assert growth < 0.25 * arr.nbytes
    # The same measurement sees the copies the stdlib makes (so it can fail).
    (tmp_path / "stdlib").mkdir()
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as std:
        std_growth, std_sums = _sum_uss_growth(std, arr, tmp_path / "stdlib", workers=4, rounds=1)
    assert std_sums == [expected] * 4
    assert std_growth > 3 * arr.nbytes


def test_submit_after_shutdown_raises_like_the_stdlib() -> None:
    ex = nocopy.ProcessPoolExecutor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(total, np.ones(3))


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("nocopy's executor tests read /proc", allow_module_level=True)


def sleep_then(x: float) -> float:
    time.sleep(x)
    return x


def test_futures_cancel_wait_and_as_completed_like_the_stdlib() -> None:
    with nocopy.ProcessPoolExecutor(1) as ex:
        running = ex.submit(sleep_then, 0.5)
        queued = [ex.submit(sleep_then, 0.0) for _ in range(4)]
        assert queued[-1].cancel() and queued[-1].cancelled()
        done, not_done = concurrent.futures.wait([running, *queued], timeout=30)
        assert len(done) == 5 and not not_done
        assert [f.result() for f in concurrent.futures.as_completed(queued[:-1])] == [0.0] * 3
        assert running.result() == 0.5 and not running.running()
        with pytest.raises(concurrent.futures.CancelledError):
            queued[-1].result()
        assert list(ex.map(sleep_then, [0.0] * 5, chunksize=2)) == [0.0] * 5


def test_a_task_has_one_future_the_one_the_stdlibs_manager_settles(monkeypatch: pytest.MonkeyPatch) -> None:
    # No second future following the stdlib's through a done callback: the
    # future submit() returns is the one on the stdlib's work item.
    created: list[concurrent.futures.Future[Any]] = []
    init = concurrent.futures.Future.__init__

    def counted(self: concurrent.futures.Future[Any]) -> None:
        created.append(self)
        init(self)

    monkeypatch.setattr(concurrent.futures.Future, "__init__", counted)
    with nocopy.ProcessPoolExecutor(1) as ex:
        future = ex.submit(pow, 2, 5)
        assert future.result() == 32
        assert created == [future] and not future._done_callbacks
        created.clear()
        assert list(ex.map(pow, [2, 3], [2, 2])) == [4, 9]
        assert len(created) == 2


def test_submit_does_what_the_stdlibs_submit_of_this_python_does() -> None:
    # The executor re-does the stdlib's submit() with its own future (_enqueue_locked):
    # a Python whose submit() touches anything else must be looked at again.
    known = {
        "_shutdown_lock", "_broken", "BrokenProcessPool", "_shutdown_thread", "RuntimeError",
        "_global_shutdown", "_base", "Future", "_WorkItem", "_pending_work_items", "_queue_count",
        "_work_ids", "put", "_executor_manager_thread_wakeup", "wakeup",
        "_safe_to_dynamically_spawn_children", "_adjust_process_count", "_start_executor_manager_thread",
        "_idle_worker_lock", "_idle_worker_number",  # 3.14
    }
    assert set(concurrent.futures.ProcessPoolExecutor.submit.__code__.co_names) <= known


def touch_shared(ref: nocopy.Shared[np.ndarray]) -> float:
    return float(ref.get().sum())


def mapped_in_this_worker(name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(name in line for line in f)


def test_explicit_shared_stays_mapped_between_tasks_until_its_owner_closes_it() -> None:
    with nocopy.ProcessPoolExecutor(1) as ex:
        ref = nocopy.share(np.ones(1000))
        assert ex.submit(touch_shared, ref).result() == 1000.0
        # The next task does not even receive it: the mapping was kept warm.
        assert ex.submit(mapped_in_this_worker, ref.name).result()
        ref.close()
        deadline = time.monotonic() + 10
        while ex.submit(mapped_in_this_worker, ref.name).result():
            assert time.monotonic() < deadline, "the worker kept a closed segment mapped"
            time.sleep(0.2)


def scaled_sum(arr: np.ndarray, factor: float) -> tuple[float, str | None]:
    return float(arr.sum()) * factor, segment_of(arr)


def test_data_bound_in_a_partial_is_shared_too() -> None:
    import functools

    arr = np.ones(MiB // 4)  # 2 MiB
    with nocopy.ProcessPoolExecutor(2) as ex:
        got = list(ex.map(functools.partial(scaled_sum, arr), [1.0, 2.0, 3.0], chunksize=2))
    assert [g[0] for g in got] == [arr.size * 1.0, arr.size * 2.0, arr.size * 3.0]
    assert len({g[1] for g in got}) == 1 and got[0][1] is not None


def make_bound(n: int) -> Any:
    import functools

    return functools.partial(np.add, np.arange(n, dtype="f8"))


def test_data_bound_in_a_returned_partial_comes_back_shared_too() -> None:
    # One walk for arguments and results: a result holds big data in the same places an argument may.
    with nocopy.ProcessPoolExecutor(1) as ex:
        bound = ex.submit(make_bound, 500_000).result()
    assert segment_of(bound.args[0]) is not None
    np.testing.assert_array_equal(bound(1.0), np.arange(500_000, dtype="f8") + 1.0)


def test_forkserver_preloads_numpy_and_nocopy_keeping_the_users_list_but_never_main() -> None:
    # __main__'s top-level code would run in the server (a Polars call there hangs every worker).
    code = """
import multiprocessing as mp, numpy as np
from multiprocessing import forkserver
import nocopy
ctx = mp.get_context("forkserver")
mp.set_forkserver_preload(["__main__", "json"])
with nocopy.ProcessPoolExecutor(2, mp_context=ctx) as ex:
    print(sorted(forkserver._forkserver._preload_modules))
    print(list(ex.map(np.sum, [np.ones(10)] * 2)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["['json', 'nocopy', 'numpy']", "[np.float64(10.0), np.float64(10.0)]"]


# -- functions as people write them: lambdas, closures, notebook functions (issue 13) ------------
def make_closure(k: float) -> Any:
    def scaled_sum(arr: np.ndarray) -> float:
        return float(arr.sum()) * k

    return scaled_sum



@pytest.mark.parametrize("method", METHODS)
def test_lambdas_and_closures_run_under_every_start_method(method: str) -> None:
    big = np.arange(300_000, dtype="f8")  # shared as usual, beside a function sent by value
    k = 2.0
    with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
        by_lambda = ex.submit(lambda a: (float(a.sum()) * k, segment_of(a) is not None), big)
        by_closure = ex.submit(make_closure(3.0), big)
        mapped = list(ex.map(lambda x: x * k, range(5)))
        returned = ex.submit(make_closure, 4.0)  # a closure as a result travels back too
        assert returned.result()(np.ones(3)) == 12.0
        assert by_lambda.result() == (float(big.sum()) * 2.0, True)
        assert by_closure.result() == float(big.sum()) * 3.0
        assert mapped == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_a_function_capturing_a_lock_fails_naming_the_function_and_the_lock() -> None:
    import pickle
    import threading

    lock = threading.Lock()

    def locked_sum(arr: np.ndarray) -> float:
        with lock:
            return float(arr.sum())

    with nocopy.ProcessPoolExecutor(1) as ex:
        fut = ex.submit(locked_sum, np.ones(3))
        with pytest.raises(pickle.PicklingError) as err:
            fut.result()
        msg = str(err.value)
        assert "locked_sum" in msg and "closure variable 'lock'" in msg and "lock" in msg
        assert "Fix:" in msg
        assert ex.submit(total, np.ones(3)).result() == 3.0  # the pool is fine


def test_module_level_functions_are_still_pickled_by_reference() -> None:
    # By value only where by reference cannot work: a module-level function keeps the stdlib's way.
    import pickle

    from nocopy._pool import _functions

    payload = _functions.dumps((total, (1,), {}))
    assert b"cloudpickle" not in payload
    assert pickle.loads(payload)[0] is total
    assert b"cloudpickle" in _functions.dumps((lambda: 1, (), {}))


INTERACTIVE = """
import multiprocessing as mp, sys
import numpy as np, nocopy
method = sys.argv[1]

def double_sum(a):            # defined in an interactive __main__ (python -c, a notebook cell)
    return 2 * float(a.sum())

class Scale:                  # a class from the same __main__
    def __init__(self, k):
        self.k = k
    def __call__(self, a):
        return self.k * float(a.sum())

with nocopy.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
    print(ex.submit(double_sum, np.arange(400_000.0)).result())
    print(ex.submit(Scale(3), np.ones(10)).result())
"""


@pytest.mark.parametrize("method", METHODS)
def test_functions_defined_in_an_interactive_main_run_under_every_start_method(method: str) -> None:
    out = subprocess.run([sys.executable, "-c", INTERACTIVE, method], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(2 * float(np.arange(400_000.0).sum())), "30.0"]


@pytest.mark.parametrize("method", METHODS)
def test_functions_defined_in_the_main_script_run_under_every_start_method(method: str, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(INTERACTIVE.replace("with nocopy", "if __name__ == '__main__':\n  with nocopy").replace("\n    print", "\n      print"))
    out = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(2 * float(np.arange(400_000.0).sum())), "30.0"]


def test_workers_start_before_a_big_argument_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    # They boot (import numpy, nocopy) while the copy runs, not after it.
    from nocopy._pool import _cache

    seen = workers_at_each_share(monkeypatch, _cache, lambda: ex)
    with nocopy.ProcessPoolExecutor(3, mp_context=mp.get_context("spawn")) as ex:
        assert ex.submit(total, make_array(1 << 18, 1.0)).result() == float(1 << 18)
        assert seen == [3]


def test_small_tasks_start_workers_as_the_stdlib_does() -> None:
    # Nothing to share: one worker per submit while none is idle, as the stdlib (spawn) does.
    with nocopy.ProcessPoolExecutor(3, mp_context=mp.get_context("spawn")) as ex:
        assert ex.submit(abs, -1).result() == 1
        assert len(ex._processes) == 1
