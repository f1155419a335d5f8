"""Sharing with worker processes: every start method, unrelated processes, outputs."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys

import numpy as np
import psutil
import pytest

import nocopy
from conftest import posix_dir, run_python

ROWS = 200_000_000 // 22  # 200 MB of 22-byte records


def make_records(n: int) -> np.recarray:
    return np.rec.fromarrays(
        [
            np.arange(n, dtype="i8").astype("M8[s]"),
            np.where(np.arange(n) % 2 == 0, 1.0, np.nan),
            np.array([b"string", b"abc"], dtype="S6")[np.arange(n) % 2],
        ],
        names="date_col,float_col,character_col",
    )


def _sum_in_worker(ref: nocopy.Shared[np.recarray]) -> tuple[float, int, int, bool, int]:
    me = psutil.Process()
    before = me.memory_full_info().uss
    arr = ref.get()
    # Every row is read, a slab at a time: whole-column temporaries (nansum
    # copies its input) could stay in the allocator's heap after they are
    # freed — an inherited malloc state under fork did keep 82 MB of them —
    # and would pass for a copy of the data.
    step = 1 << 20
    total = sum(float(np.nansum(arr.float_col[i : i + step])) for i in range(0, len(arr), step))
    n_strings = sum(int((arr.character_col[i : i + step] == b"abc").sum()) for i in range(0, len(arr), step))
    dates_ok = bool(arr.date_col[-1] == np.datetime64(len(arr) - 1, "s"))
    after = me.memory_full_info().uss
    return total, n_strings, after - before, dates_ok and isinstance(arr, np.recarray), len(arr)


@pytest.fixture(scope="module")
def big_records() -> np.recarray:
    return make_records(ROWS)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_worker_reads_200mb_record_array_without_copying(
    big_records: np.recarray, method: str, backend: str
) -> None:
    arr = big_records
    with nocopy.share(arr, backend=backend) as ref:
        # The owner maps and touches the pages too, so they are shared pages
        # (USS counts a page mapped by a single process as private).
        mine = ref.get()
        expected = float(np.nansum(mine.float_col))
        ctx = mp.get_context(method)
        with ctx.Pool(1) as pool:
            total, n_abc, uss_growth, ok, n = pool.apply(_sum_in_worker, (ref,))
    assert total == expected == ROWS // 2 + ROWS % 2
    assert n_abc == ROWS // 2 and ok and n == ROWS
    assert uss_growth < 0.10 * arr.nbytes, f"worker USS grew by {uss_growth / 1e6:.1f} MB"


def test_copy_detector_sees_a_copy() -> None:
    """The USS measure used above would catch a worker that copies."""
    arr = make_records(2_000_000)
    with nocopy.share(arr) as ref, mp.get_context("spawn").Pool(1) as pool:
        growth = pool.apply(_copy_in_worker, (ref,))
    assert growth > 0.9 * arr.nbytes


def _copy_in_worker(ref: nocopy.Shared[np.recarray]) -> int:
    me = psutil.Process()
    before = me.memory_full_info().uss
    copy = np.array(ref.get())
    after = me.memory_full_info().uss
    del copy
    return after - before


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_unrelated_process_attaches_by_uri(backend: str) -> None:
    arr = make_records(100_000)
    with nocopy.share(arr, backend=backend) as ref:
        proc = run_python(
            """
            import sys, numpy as np, nocopy
            ref = nocopy.attach(sys.argv[1])
            view = ref.get()
            print(type(view).__name__, float(np.nansum(view.float_col)), bytes(view.character_col[1]).decode())
            """,
            ref.uri,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["recarray", str(float(np.nansum(arr.float_col))), "abc"]
        assert "leaked" not in proc.stderr  # no resource-tracker involvement
        # The owner's segment is intact: a second unrelated process still attaches.
        again = run_python("import sys, nocopy; print(nocopy.attach(sys.argv[1]).get().shape)", ref.uri)
        assert again.stdout.strip() == f"({len(arr)},)", again.stderr
        np.testing.assert_array_equal(ref.get().float_col, arr.float_col)
        if backend == "posix":
            assert (posix_dir() / ref.name).exists()


def _write_private(ref: nocopy.Shared[np.ndarray]) -> float:
    view = ref.get(private=True)
    view[:] = -1.0
    return float(view.sum())


def _write_output(out: nocopy.Shared[np.ndarray], start: int, stop: int) -> None:
    out.get()[start:stop] = np.arange(start, stop)


def _write_readonly(ref: nocopy.Shared[np.ndarray]) -> str:
    try:
        ref.get()[0] = 1.0
    except ValueError as exc:
        return str(exc)
    return "no error"


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_writes_from_workers(method: str) -> None:
    ctx = mp.get_context(method)
    arr = np.zeros(1000)
    with nocopy.share(arr) as ref, nocopy.empty(1000, "f8") as out, ctx.Pool(2) as pool:
        assert pool.apply(_write_private, (ref,)) == -1000.0
        assert "read-only" in pool.apply(_write_readonly, (ref,))
        pool.starmap(_write_output, [(out, 0, 500), (out, 500, 1000)])
        assert (ref.get() == 0).all()
        np.testing.assert_array_equal(out.get(), np.arange(1000))


def test_handle_pickles_below_1kb_and_never_carries_data() -> None:
    arr = np.random.default_rng(1).random(1_000_000)
    with nocopy.share(arr) as ref:
        blob = pickle.dumps(ref)
        assert len(blob) < 1024
        assert arr[:4].tobytes() not in blob


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _map_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_5000_cycles_leave_fds_and_mappings_flat(backend: str) -> None:
    arr = np.arange(1000.0)
    # Warm-up: the fd server thread and lazily imported modules.
    for _ in range(20):
        with nocopy.share(arr, backend=backend) as ref:
            ref.get()
    fds, maps = _fd_count(), _map_count()
    names = set()
    for _ in range(5000):
        ref = nocopy.share(arr, backend=backend)
        names.add(ref.name)
        view = ref.get()
        assert view[-1] == 999.0
        clone = pickle.loads(pickle.dumps(ref))
        clone.get()
        ref.close()
        del view, clone, ref
    assert _fd_count() == fds
    assert _map_count() <= maps + 2, "mappings leaked"
    assert len(names) == 5000
    assert not posix_dir().exists() or not names & set(os.listdir(posix_dir()))


def test_shared_handles_survive_fork_without_unlinking() -> None:
    """A forked child that inherited the owner's handle never frees the parent's segment."""
    ref = nocopy.share(np.arange(10), backend="posix")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            ref.close()  # must not unlink the parent's segment
            del ref
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (posix_dir() / ref.name).exists()
    assert nocopy.attach(ref.uri).get().sum() == 45
    ref.close()
    assert not (posix_dir() / ref.name).exists()


_ = sys
