"""nocopy.Pool: a drop-in multiprocessing.Pool with auto-shared arguments and results, and its lifetimes."""

from __future__ import annotations

import functools
import gc
import multiprocessing as mp
import multiprocessing.pool
import os
import pickle
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nocopy
from conftest import own_posix_segments, segment_of

METHODS = ["spawn", "forkserver", "fork"]
MiB = 1 << 20


# -- functions the workers run (module level: importable under spawn) --------
def describe_arg(arr: np.ndarray) -> tuple[str | None, bool, float]:
    return segment_of(arr), bool(arr.flags.writeable), float(arr.sum())


def describe_scaled(arr: np.ndarray, k: int) -> tuple[str | None, float]:
    return segment_of(arr), float(arr.sum()) * k


def describe_kw(*, arr: np.ndarray) -> tuple[str | None, float]:
    return segment_of(arr), float(arr.sum())


def describe_bound(bound: np.ndarray, x: int) -> tuple[str | None, float]:
    return segment_of(bound), float(bound.sum()) + x


def mutate_and_sum(arr: np.ndarray) -> float:
    arr[:] = -1.0  # a private copy-on-write view: this must stay in this task
    return float(arr.sum())


def total(arr: np.ndarray) -> float:
    return float(arr.sum())


def make_array(n: int, value: float) -> np.ndarray:
    return np.full(n, value)


def make_array_and_pid(n: int) -> tuple[np.ndarray, int]:
    return np.arange(n, dtype="f8"), os.getpid()


def exit_now(code: int) -> None:
    os._exit(code)


def return_lambda() -> Any:
    return lambda: 42


def wait_for(path: str) -> int:
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


class FailsToUnpickle:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def _refuse() -> None:
    raise pickle.UnpicklingError("refused on purpose")


# -- helpers ------------------------------------------------------------------
def _own_segments() -> set[str]:
    return set(own_posix_segments(os.getpid()))


def _all_stopped(pool: Any, workers: list[Any]) -> bool:
    threads = (pool._worker_handler, pool._task_handler, pool._result_handler)
    return all(not t.is_alive() for t in threads) and all(p.exitcode is not None for p in workers)


# -- drop-in ------------------------------------------------------------------
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_is_a_stdlib_pool_and_checks_its_arguments() -> None:
    assert issubclass(nocopy.Pool, multiprocessing.pool.Pool)
    with pytest.raises(ValueError, match="share_threshold"):
        nocopy.Pool(1, share_threshold=-1)
    with pytest.raises(TypeError, match="initializer"):
        nocopy.Pool(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        nocopy.Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        nocopy.Pool(1, maxtasksperchild=0)
    gc.collect()  # the refused pools' __del__ runs here, and must not raise


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gets_big_arguments_as_private_views_of_one_segment(method: str) -> None:
    arr = np.arange(MiB // 8 * 2, dtype="f8")  # 2 MiB: above the default 1 MiB threshold
    expected = float(arr.sum())
    with nocopy.Pool(2, context=mp.get_context(method)) as pool:
        got = {
            "map": pool.map(describe_arg, [arr] * 3),
            "map chunks": pool.map(describe_arg, [arr] * 4, chunksize=2),
            "map_async": pool.map_async(describe_arg, [arr] * 2).get(60),
            "imap": list(pool.imap(describe_arg, [arr] * 3)),
            "imap chunks": list(pool.imap(describe_arg, [arr] * 4, chunksize=3)),
            "imap_unordered": list(pool.imap_unordered(describe_arg, [arr] * 3)),
            "apply": [pool.apply(describe_arg, (arr,))],
            "apply_async": [pool.apply_async(describe_arg, (arr,)).get(60)],
        }
        starred = pool.starmap(describe_scaled, [(arr, 1), (arr, 2)], chunksize=1)
        starred_async = pool.starmap_async(describe_scaled, [(arr, 3)]).get(60)
        keyword = pool.apply(describe_kw, kwds={"arr": arr})
        mutated = pool.map(mutate_and_sum, [arr] * 2)
        after = pool.apply(total, (arr,))
    pool.join()
    names = {d[0] for ds in got.values() for d in ds} | {s[0] for s in starred + starred_async} | {keyword[0]}
    assert len(names) == 1 and None not in names  # every task of every method: one segment, shared once
    assert all(d[1] and d[2] == expected for ds in got.values() for d in ds), got  # writable, right data
    assert [s[1] for s in starred + starred_async] == [expected, 2 * expected, 3 * expected]
    assert mutated == [-float(arr.size)] * 2  # the task saw its own writes...
    assert after == expected  # ...later tasks did not
    np.testing.assert_array_equal(arr, np.arange(arr.size, dtype="f8"))  # nor did the caller


def test_small_arguments_are_pickled_and_threshold_is_tunable() -> None:
    small = np.arange(1000, dtype="f8")
    with nocopy.Pool(1) as pool:
        assert pool.share_threshold == MiB
        assert pool.apply(describe_arg, (small,))[0] is None
        assert pool.map(describe_arg, [small])[0][0] is None
        assert pool.map(abs, [-1, 2, -3]) == [1, 2, 3]  # plain values as ever
    with nocopy.Pool(1, share_threshold=1000) as pool:
        assert pool.apply(describe_arg, (small,))[0] is not None
        assert pool.starmap(describe_scaled, [(small, 2)])[0][0] is not None


def test_data_bound_in_a_partial_is_shared_too() -> None:
    bound = np.ones(MiB // 8 * 2)
    with nocopy.Pool(1) as pool:
        got = pool.map(functools.partial(describe_bound, bound), [1, 2])
    assert got[0][0] is not None and got[0][0] == got[1][0]
    assert [g[1] for g in got] == [bound.size + 1.0, bound.size + 2.0]


@pytest.mark.parametrize("method", METHODS)
def test_big_results_come_back_through_shared_memory(method: str) -> None:
    with nocopy.Pool(1, context=mp.get_context(method)) as pool:
        (big, worker), = pool.map(make_array_and_pid, [500_000])
        small = pool.apply(make_array, (4, 1.0))
        listed = list(pool.imap_unordered(functools.partial(make_array, 300_000), [2.0, 3.0]))
    np.testing.assert_array_equal(big, np.arange(500_000, dtype="f8"))
    where = segment_of(big)
    assert where is not None and where.startswith(f"{worker}-")  # the worker's segment
    assert segment_of(small) is None and small.tolist() == [1.0] * 4
    assert sorted(float(x[0]) for x in listed) == [2.0, 3.0] and all(segment_of(x) for x in listed)
    big[0] = 42.0  # a result is the caller's to modify, as a pickled one would be
    assert big[0] == 42.0


def test_an_unpicklable_result_is_a_maybe_encoding_error_as_with_the_stdlib() -> None:
    for cls in (multiprocessing.pool.Pool, nocopy.Pool):
        with cls(1) as pool:
            res = pool.apply_async(return_lambda)
            with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="Error sending result"):
                res.get(60)
            assert pool.apply(abs, (-3,)) == 3  # the worker was not lost


def _raises_after(n: int) -> Any:
    yield from range(n)
    raise KeyError("the input broke")


def test_an_imap_input_that_raises_reaches_the_caller_as_itself_as_with_the_stdlib() -> None:
    for cls in (multiprocessing.pool.Pool, nocopy.Pool):
        with cls(1) as pool:
            it = pool.imap(abs, _raises_after(2))
            assert [next(it), next(it)] == [0, 1]
            with pytest.raises(KeyError, match="the input broke") as info:
                next(it)
            assert info.value.__cause__ is None, cls  # not a worker's error: no RemoteTraceback


def test_an_argument_that_fails_to_unpickle_fails_its_task_only() -> None:
    # A deliberate difference: the stdlib's worker dies unpickling it and the task hangs.
    with nocopy.Pool(1) as pool:
        with pytest.raises(pickle.UnpicklingError, match="refused on purpose"):
            pool.apply(len, (FailsToUnpickle(),))
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_a_shared_argument_lives_until_its_task_ran_even_once_the_caller_dropped_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    go = str(tmp_path / "go")
    with nocopy.Pool(1) as pool:
        busy = pool.apply_async(wait_for, (go,))  # the only worker waits: the next task queues
        arr = np.ones(MiB)
        gone = weakref.ref(arr)
        res = pool.apply_async(total, (arr,))
        del arr
        # The task handler sends the task (sharing the array) and drops it: nobody holds it now.
        for _ in range(1000):
            gc.collect()
            if gone() is None:
                break
            time.sleep(0.01)
        assert gone() is None
        Path(go).touch()
        busy.get(60)
        assert res.get(60) == MiB


# -- lifetimes ----------------------------------------------------------------
def test_close_and_join_leave_no_segment_and_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    before = _own_segments()
    pool = nocopy.Pool(2)
    workers = list(pool._pool)
    arr = np.ones(MiB)
    assert pool.map(total, [arr] * 4) == [MiB] * 4
    held = _own_segments() - before
    assert len(held) == 2  # the task table and the argument
    pool.close()
    pool.join()
    assert _all_stopped(pool, workers)
    assert _own_segments() - before == set()
    assert arr.sum() == MiB  # the caller's object is its own


def test_terminate_stops_pending_work_and_frees_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    before = _own_segments()
    pool = nocopy.Pool(2)
    workers = list(pool._pool)
    pending = pool.map_async(total, [np.ones(MiB)] * 200, chunksize=1)
    pool.terminate()  # as the stdlib's, it stops and joins the workers and threads itself
    assert _all_stopped(pool, workers)
    assert _own_segments() - before == set()  # no join() needed to free them either
    pool.join()
    assert not pending.ready() or pending.successful()  # stopped or done, never a wrong value


def test_with_terminates_on_exit_as_the_stdlib_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    before = _own_segments()
    with nocopy.Pool(1) as pool:
        workers = list(pool._pool)
        assert pool.apply(total, (np.ones(MiB),)) == MiB
    assert pool._state == multiprocessing.pool.TERMINATE
    pool.join()
    assert _all_stopped(pool, workers)
    assert _own_segments() - before == set()
    with pytest.raises(ValueError, match="not running"):
        pool.apply(abs, (1,))


def test_a_pool_dropped_with_work_pending_finishes_it_then_is_collected_and_frees_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    before = _own_segments()
    pool = nocopy.Pool(2)
    workers = list(pool._pool)
    threads = [pool._worker_handler, pool._task_handler, pool._result_handler]
    assert pool.map(total, [np.ones(MiB)] * 2) == [MiB] * 2
    done: list[Any] = []
    # No close(), no join(), the result dropped at once: as with the stdlib, the
    # pending work keeps the pool alive until it is done, then the pool is collected.
    pool.map_async(total, [np.ones(MiB)] * 50, callback=done.append)
    collected = weakref.ref(pool)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool") as record:
        del pool
        for _ in range(1000):
            gc.collect()
            if collected() is None or len(record):
                break
            time.sleep(0.01)
    # The warning's record holds the pool it names (source=): once it is gone, so is the pool.
    del record
    for _ in range(100):
        gc.collect()
        if collected() is None:
            break
        time.sleep(0.01)
    assert collected() is None
    assert done == [[float(MiB)] * 50]  # the shared argument lived as long as its tasks
    # The collected pool's finalizer stopped the workers and joined them, then freed the segments.
    assert all(not t.is_alive() for t in threads) and all(p.exitcode is not None for p in workers)
    assert _own_segments() - before == set()


def test_a_dead_worker_is_replaced_and_its_task_never_completes_as_with_the_stdlib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    before = _own_segments()
    for cls in (multiprocessing.pool.Pool, nocopy.Pool):
        with cls(1) as pool:
            lost = pool.apply_async(exit_now, (3,))
            with pytest.raises(mp.TimeoutError):
                lost.get(2)
            assert not lost.ready()
            # A new worker took its place: the pool goes on.
            assert pool.apply(total, (np.ones(MiB),)) == MiB
        pool.join()
    assert _own_segments() - before == set()


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_lambda_task_runs_but_results_pickle_as_with_the_stdlib(method: str) -> None:
    # Functions travel by value (cloudpickle) when they cannot travel by name; results are
    # pickled as multiprocessing does, so CPython's test_unpickleable_result holds.
    offset = 10
    with nocopy.Pool(2, context=multiprocessing.get_context(method)) as pool:
        assert pool.map(lambda x: x + offset, range(4)) == [10, 11, 12, 13]
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            pool.apply(return_lambda)
