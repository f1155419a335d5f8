"""nocopy.parallel_map: chunking, order, backends, zero-copy chunks, warm pool, failures, Ctrl-C."""

from __future__ import annotations

import functools
import io
import multiprocessing
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
from nocopy import _map
from nocopy._map import MapBackend, register_backend, take_rows
from nocopy.errors import UnsupportedTypeError, WorkerCrashedError

BACKENDS = ["processes", "threads"]


# -- functions the workers run ---------------------------------------------------
def where_and_writable(rows: np.ndarray) -> tuple[str | None, bool]:
    return segment_of(rows), bool(rows.flags.writeable)


def record_stats(rows: np.recarray) -> tuple[int, float, int]:
    return len(rows), float(np.nansum(rows.float_col)), int(np.count_nonzero(rows.character_col == b"abc"))


def frame_stats(rows: Any) -> tuple[int, float, int, list[str]]:
    # Touches a numeric, a string and the index of every chunk.
    return len(rows), float(rows["x"].sum()), int((rows["s"] == "b").sum()), [str(i) for i in rows.index[:1]]


def rows_len(rows: Any) -> int:
    return len(rows)


def pid_of(rows: Any) -> int:
    return os.getpid()


def slow_first(rows: np.ndarray) -> int:
    # The first chunk finishes last: results must still come back in chunk order.
    if rows[0] == 0:
        time.sleep(0.3)
    return int(rows[0])


def fails_on_chunk_2(rows: np.ndarray) -> int:
    if rows[0] == 20:
        raise KeyError(f"bad row {rows[0]}")
    return int(rows.sum())


def dies_on_chunk_3(rows: np.ndarray) -> int:
    if rows[0] == 30:
        os._exit(5)
    return int(rows.sum())


def square_into(out: nocopy.Shared[np.ndarray], rows: np.ndarray) -> int:
    # The pattern for big outputs: each chunk writes its own rows of a shared output.
    out.get()[rows[0] : rows[-1] + 1] = rows.astype("f8") ** 2
    return len(rows)


def try_to_write(rows: np.ndarray) -> str:
    try:
        rows[0] = 1
    except ValueError as exc:
        return str(exc)
    return "written"


# -- results --------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_ndarray_same_results_for_every_chunk_count(backend: str) -> None:
    data = np.arange(50, dtype="i8")
    for chunks in range(1, 9):
        got = nocopy.parallel_map(rows_len, data, chunks=chunks, workers=2, backend=backend)
        assert len(got) == chunks and sum(got) == 50
        sums = nocopy.parallel_map(np.sum, data, chunks=chunks, workers=2, backend=backend)
        assert int(sum(sums)) == int(data.sum())
    # more chunks than rows: one row per chunk
    assert nocopy.parallel_map(rows_len, data[:3], chunks=10, workers=2, backend=backend) == [1, 1, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_record_array_same_as_serial(backend: str) -> None:
    n = 10_000
    arr = np.rec.fromarrays(
        [np.arange(n).astype("M8[s]"), np.where(np.arange(n) % 2 == 0, 1.0, np.nan),
         np.array([b"string", b"abc"], dtype="S6")[np.arange(n) % 2]],
        names="date_col,float_col,character_col",
    )
    for chunks in (1, 3, 7):
        got = nocopy.parallel_map(record_stats, arr, chunks=chunks, workers=2, backend=backend)
        assert sum(g[0] for g in got) == n
        assert sum(g[1] for g in got) == float(np.nansum(arr.float_col))
        assert sum(g[2] for g in got) == n // 2


def test_dataframe_same_results_with_processes_and_threads_and_every_chunk_count() -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("nocopy._codec._pandas")  # the pandas codec
    n = 1000
    df = pd.DataFrame(
        {"x": np.arange(n, dtype="f8"), "s": np.array(["a", "b"], dtype=object)[np.arange(n) % 2]},
        index=pd.RangeIndex(100, 100 + n),
    )
    serial = frame_stats(df)
    for chunks in range(1, 9):
        by_backend = [
            nocopy.parallel_map(frame_stats, df, chunks=chunks, workers=2, backend=b) for b in BACKENDS
        ]
        assert by_backend[0] == by_backend[1]
        got = by_backend[0]
        assert len(got) == chunks
        assert sum(g[0] for g in got) == serial[0]
        assert sum(g[1] for g in got) == serial[1]
        assert sum(g[2] for g in got) == serial[2]
        assert got[0][3] == ["100"]


def test_series_and_arrow_table() -> None:
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    s = pd.Series(np.arange(100.0))
    assert sum(nocopy.parallel_map(rows_len, s, chunks=4, workers=2)) == 100
    table = pa.table({"x": np.arange(100)})
    assert nocopy.parallel_map(rows_len, table, chunks=4, workers=2) == [25] * 4
    assert nocopy.parallel_map(rows_len, table, chunks=4, workers=2, backend="threads") == [25] * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_in_chunk_order(backend: str) -> None:
    data = np.arange(40)
    assert nocopy.parallel_map(slow_first, data, chunks=4, workers=2, backend=backend) == [0, 10, 20, 30]


def test_default_chunks_is_four_per_worker() -> None:
    assert len(nocopy.parallel_map(rows_len, np.arange(100), workers=2)) == 8
    assert len(nocopy.parallel_map(rows_len, np.arange(100), workers=3, backend="threads")) == 12


# -- zero-copy ----------------------------------------------------------------------
def test_process_chunks_are_read_only_views_of_one_segment() -> None:
    got = nocopy.parallel_map(where_and_writable, np.arange(100_000.0), chunks=4, workers=2)
    names = {name for name, _ in got}
    assert len(names) == 1 and None not in names  # every chunk: the same shared segment
    assert not any(writable for _, writable in got)
    assert nocopy.parallel_map(try_to_write, np.arange(10.0), chunks=2, workers=2) == [
        "assignment destination is read-only"
    ] * 2


def test_shared_input_is_not_copied_again() -> None:
    with nocopy.share(np.arange(100_000.0)) as ref:
        got = nocopy.parallel_map(where_and_writable, ref, chunks=3, workers=2)
        assert {"nocopy-" + str(name) for name, _ in got} == {ref.name}


def test_thread_chunks_are_read_only_views_of_the_callers_array() -> None:
    data = np.arange(100.0)
    chunks = nocopy.parallel_map(lambda rows: rows, data, chunks=4, workers=2, backend="threads")
    assert all(np.shares_memory(c, data) and not c.flags.writeable for c in chunks)
    assert data.flags.writeable  # the caller's own array is untouched


def test_take_rows_is_zero_copy() -> None:
    arr = np.arange(10)
    assert np.shares_memory(take_rows(arr, 2, 5), arr)
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"x": np.arange(10.0)})
    assert np.shares_memory(take_rows(df, 2, 5)["x"].to_numpy(), df["x"].to_numpy())


def test_writable_output_pattern() -> None:
    n = 1000
    out = nocopy.empty((n,), "f8")
    try:
        counts = nocopy.parallel_map(functools.partial(square_into, out), np.arange(n), chunks=7, workers=2)
        assert sum(counts) == n
        np.testing.assert_array_equal(out.get(), np.arange(n, dtype="f8") ** 2)
    finally:
        out.close()


# -- pools --------------------------------------------------------------------------
def test_repeated_calls_reuse_the_warm_pool() -> None:
    first = set(nocopy.parallel_map(pid_of, np.arange(16), chunks=8, workers=2))
    # The pool's workers after the first call: one of them may have taken no chunk
    # (it booted after the other had run them all), so `first` alone may miss it.
    workers = {p.pid for p in multiprocessing.active_children()}
    assert first <= workers
    second = set(nocopy.parallel_map(pid_of, np.arange(16), chunks=8, workers=2))
    assert second <= workers  # the same worker processes, not new ones


def warm_pids() -> set[int]:
    return {p.pid for pool in _map._process_pools.values() for p in pool._procs.values()}


def test_shutdown_stops_the_warm_workers_and_the_next_call_starts_new_ones() -> None:
    nocopy.parallel_map(pid_of, np.arange(4), chunks=2, workers=1)
    nocopy.parallel_map(pid_of, np.arange(4), chunks=2, workers=1, backend="threads")
    pids = warm_pids()
    assert pids and _map._thread_pools
    nocopy.shutdown_parallel_map_workers()
    assert not _map._process_pools and not _map._thread_pools
    assert not any(alive(pid) for pid in pids)
    again = set(nocopy.parallel_map(pid_of, np.arange(4), chunks=2, workers=1))
    assert again and not again & pids
    nocopy.shutdown_parallel_map_workers()


def test_an_idle_pool_stops_after_the_timeout_but_never_while_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_map, "IDLE_TIMEOUT", 1.0)
    nocopy.shutdown_parallel_map_workers()  # whatever an earlier test left warm
    nocopy.parallel_map(pid_of, np.arange(2), chunks=1, workers=1)
    (pool,) = _map._process_pools.values()
    # Longer than the timeout: the pool is in use all along, and is not stopped under it.
    assert nocopy.parallel_map(slow_len, np.arange(2), chunks=2, workers=1) == [1, 1]
    assert list(_map._process_pools.values()) == [pool]
    pids = warm_pids()
    deadline = time.monotonic() + 30
    while _map._process_pools and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _map._process_pools  # stopped once idle for the timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def slow_len(rows: Any) -> int:
    time.sleep(0.8)
    return len(rows)


def test_a_user_executor_is_used() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with nocopy.ProcessPoolExecutor(2) as ex:
        workers = set(nocopy.parallel_map(pid_of, np.arange(8), chunks=4, executor=ex))
        assert workers <= set(ex._procs)
    with ThreadPoolExecutor(2) as tex:
        assert nocopy.parallel_map(pid_of, np.arange(8), chunks=4, executor=tex) == [os.getpid()] * 4


def test_a_custom_backend_plugs_in() -> None:
    from concurrent.futures import Future

    class Serial(MapBackend):
        name = "test-serial"

        def prepare(self, data: Any) -> Any:
            return data

        def submit(self, fn: Any, source: Any, index: int, start: int, stop: int) -> Future[Any]:
            fut: Future[Any] = Future()
            fut.set_result((index, fn(take_rows(source, start, stop))))
            return fut

    register_backend(Serial)
    assert nocopy.parallel_map(len, np.arange(10), chunks=3, backend="test-serial") == [(0, 3), (1, 3), (2, 4)]


# -- progress -------------------------------------------------------------------------
def test_progress_bar_counts_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    import tqdm.auto

    err = io.StringIO()
    real = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(real, file=err))
    assert nocopy.parallel_map(rows_len, np.arange(30), chunks=6, workers=2, progress=True) == [5] * 6
    assert "6/6" in err.getvalue()


def test_progress_without_tqdm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"pip install 'nocopy\[progress\]'"):
        nocopy.parallel_map(rows_len, np.arange(10), progress=True, backend="threads")


# -- bad input --------------------------------------------------------------------------
def test_bad_arguments_get_clear_errors() -> None:
    with pytest.raises(UnsupportedTypeError, match="cannot split data of type set"):
        nocopy.parallel_map(rows_len, {1, 2, 3})
    with pytest.raises(ValueError, match=r"chunks= .* or chunksize= .*, not both"):
        nocopy.parallel_map(rows_len, np.arange(3), chunks=2, chunksize=2)
    with pytest.raises(ValueError, match="chunksize must be a positive integer"):
        nocopy.parallel_map(rows_len, np.arange(3), chunksize=0)
    with pytest.raises(UnsupportedTypeError, match="0-d array"):
        nocopy.parallel_map(rows_len, np.array(1.0))
    with pytest.raises(ValueError, match="unknown parallel_map backend 'gpu'"):
        nocopy.parallel_map(rows_len, np.arange(3), backend="gpu")
    with pytest.raises(ValueError, match="chunks must be a positive integer"):
        nocopy.parallel_map(rows_len, np.arange(3), chunks=0)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        nocopy.parallel_map(rows_len, np.arange(3), workers=0)
    with pytest.raises(TypeError, match="callable"):
        nocopy.parallel_map(3, np.arange(3))  # type: ignore[arg-type]
    ref = nocopy.share(np.arange(3))
    ref.close()
    with pytest.raises(ValueError, match="closed"):
        nocopy.parallel_map(rows_len, ref)


# -- items, chunksize, typing (what pool users are used to) -------------------------------
def chunk_kind(chunk: Any) -> tuple[str, list[Any]]:
    return type(chunk).__name__, list(chunk)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_tuples_ranges_and_generators_are_split_into_chunks_of_items(backend: str) -> None:
    items = list(range(10))
    expect = [items[0:4], items[4:8], items[8:10]]
    for data, kind in ((items, "list"), (tuple(items), "tuple"), (range(10), "range"), (iter(items), "list"),
                       ((i for i in items), "list")):
        got = nocopy.parallel_map(chunk_kind, data, chunksize=4, workers=2, backend=backend)
        assert got == [(kind, part) for part in expect]
    assert nocopy.parallel_map(sum, items, chunks=2, workers=2, backend=backend) == [10, 35]
    assert nocopy.parallel_map(len, [], backend=backend) == [0]  # as an empty array: one empty chunk


def test_big_items_are_shared_as_pool_map_shares_them() -> None:
    big = np.ones(300_000)  # 2.4 MB: over the executor's share threshold
    got = nocopy.parallel_map(where_and_writable_items, [big, big, big], chunksize=1, workers=1)
    assert [where is not None for where, _ in got] == [True] * 3


def where_and_writable_items(chunk: list[np.ndarray]) -> tuple[str | None, bool]:
    return where_and_writable(chunk[0])


def test_chunksize_is_rows_per_chunk_for_data_too() -> None:
    assert nocopy.parallel_map(rows_len, np.arange(10), chunksize=3, backend="threads") == [3, 3, 3, 1]
    assert nocopy.parallel_map(rows_len, np.arange(10), chunksize=20, backend="threads") == [10]


def test_the_result_is_typed_by_fn() -> None:
    import typing

    hints = typing.get_type_hints(nocopy.parallel_map)
    result_type = typing.get_args(hints["fn"])[1]
    assert isinstance(result_type, typing.TypeVar)
    assert hints["return"] == list[result_type]  # type: ignore[valid-type]


@pytest.mark.slow
def test_mypy_sees_the_typed_result(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "use.py").write_text(
        "import numpy as np\nimport nocopy\n\n"
        "def f(rows: np.ndarray) -> float:\n    return float(rows.sum())\n\n"
        "reveal_type(nocopy.parallel_map(f, np.arange(3)))\n"
    )
    env = {**os.environ, "MYPYPATH": str(Path(nocopy.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", "--cache-dir", str(tmp_path / "cache"),
         str(tmp_path / "use.py")],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )
    assert 'Revealed type is "builtins.list[builtins.float]"' in out.stdout or 'Revealed type is "list[float]"' in out.stdout, out.stdout


# -- failures -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_in_fn_is_reraised_with_the_workers_traceback(backend: str) -> None:
    with pytest.raises(KeyError, match="bad row 20") as info:
        nocopy.parallel_map(fails_on_chunk_2, np.arange(40), chunks=4, workers=2, backend=backend)
    if backend == "processes":
        assert "fails_on_chunk_2" in str(info.value.__cause__)
    # the warm pool keeps working
    assert nocopy.parallel_map(rows_len, np.arange(40), chunks=4, workers=2, backend=backend) == [10] * 4


def test_dead_worker_names_the_chunk_and_the_next_call_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    before = set(own_posix_segments(os.getpid()))
    with pytest.raises(WorkerCrashedError, match=r"exited with code 5 while running chunk 3 \(rows 30:40\)") as info:
        nocopy.parallel_map(dies_on_chunk_3, np.arange(40), chunks=4, workers=2)
    assert info.value.exitcode == 5 and info.value.task == "chunk 3 (rows 30:40)"
    assert nocopy.parallel_map(rows_len, np.arange(40), chunks=4, workers=2) == [10] * 4
    # the data shared for the failed call is gone (the new pool's task table is all that is left)
    assert len(set(own_posix_segments(os.getpid())) - before) <= 1


SIGINT_SCRIPT = """
import os, sys, time
import numpy as np, nocopy

def slow(rows):
    open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
    time.sleep(60)
    return len(rows)

if __name__ == "__main__":
    try:
        nocopy.parallel_map(slow, np.arange(1 << 18, dtype="f8"), chunks=8, workers=2,
                            backend="processes")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_ctrl_c_cancels_stops_workers_and_leaves_nothing(procs: Any, tmp_path: Path, method: str) -> None:
    env = {**os.environ, "NOCOPY_BACKEND": "posix"}
    script = SIGINT_SCRIPT.replace(
        "    try:", f"    import multiprocessing\n    multiprocessing.set_start_method({method!r})\n    try:"
    )
    # A script file, not -c: spawned workers import fn from the main module.
    path = tmp_path / "interrupted.py"
    path.write_text(script)
    sync = tmp_path / "started"
    sync.mkdir()
    p = subprocess.Popen([sys.executable, str(path), str(sync)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    procs.popens.append(p)
    tmp_path = sync
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2:
        if p.poll() is not None:
            pytest.fail(p.stderr.read().decode())
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = [int(f.name) for f in tmp_path.iterdir()]
    children = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
    assert set(workers) <= set(children)
    assert own_posix_segments(p.pid)  # the data is shared while chunks run
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 20, "waited for the running chunks"
    assert b"interrupted" in out, err.decode()
    # Workers are gone at once; helpers such as multiprocessing's resource
    # tracker exit on their own when their parent's pipe closes: allow a moment.
    deadline = time.monotonic() + 10
    for pid in children:
        while _running(pid):
            assert time.monotonic() < deadline, f"process {pid} outlived the interrupted caller"
            time.sleep(0.05)
    assert own_posix_segments(p.pid) == []
    for pid in workers:
        assert own_posix_segments(pid) == []


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


LAMBDAS = """
import multiprocessing as mp, sys
import numpy as np, nocopy
mp.set_start_method(sys.argv[1])
a = np.arange(1000.0)
k = 3.0

def scaled(c):                # defined in an interactive __main__, like a notebook cell
    return float(c.sum()) * k

def make_closure(m):
    return lambda c: float(c.max()) * m

print(nocopy.parallel_map(lambda c: float(c.sum()), a, chunks=2, workers=2))
print(nocopy.parallel_map(scaled, a, chunks=2, workers=2))
print(nocopy.parallel_map(make_closure(2), a, chunks=2, workers=2))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_lambdas_closures_and_notebook_functions_under_every_start_method(method: str) -> None:
    out = subprocess.run([sys.executable, "-c", LAMBDAS, method], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    halves = [float(np.arange(500.0).sum()), float(np.arange(500.0, 1000.0).sum())]
    assert out.stdout.splitlines() == [
        str(halves), str([h * 3.0 for h in halves]), str([499.0 * 2, 999.0 * 2])
    ]


def test_spawned_workers_start_before_the_data_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    # They boot (import numpy, nocopy) during the copy, not after it.
    import multiprocessing as mp

    from nocopy import _map

    seen = workers_at_each_share(monkeypatch, _map, lambda: ex)
    with nocopy.ProcessPoolExecutor(3, mp_context=mp.get_context("spawn")) as ex:
        assert sum(nocopy.parallel_map(rows_len, np.arange(3000), chunks=3, executor=ex)) == 3000
    assert seen == [3]


def test_a_forked_child_keeps_its_parents_warm_pools_without_touching_them() -> None:
    # Dropping the child's copy of a parent's pool would run the stdlib's weakref callback,
    # which takes a lock the parent's manager thread may have held at the fork.
    import warnings

    nocopy.shutdown_parallel_map_workers()  # whatever an earlier test left warm
    nocopy.parallel_map(pid_of, np.arange(2), chunks=1, workers=1)
    (pool,) = _map._process_pools.values()
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: this process runs threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = not _map._process_pools and any(p is pool for p in _map._parents_pools)
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
        nocopy.shutdown_parallel_map_workers()
