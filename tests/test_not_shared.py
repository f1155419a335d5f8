"""Pools never pickle big data silently: a column nocopy cannot share warns once, the rest is still shared."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

import nocopy
from conftest import segment_of
from nocopy.errors import NocopyWarning, NotSharedWarning

ROWS = 20_000


def frame() -> pd.DataFrame:
    df = pd.DataFrame({"x": np.arange(ROWS, dtype="f8"), "meta": [{"k": i} for i in range(ROWS)]})
    df["s"] = pd.Series([f"s{i}" for i in range(ROWS)], dtype=object)  # converted at share, restored in the task
    df["y"] = np.ones(ROWS)
    df.attrs["source"] = "test"
    return df


def inspect_frame(df: pd.DataFrame) -> tuple[str | None, str | None, pd.DataFrame]:
    """Where the task's numeric columns live, and the frame itself (it travels back pickled)."""
    return segment_of(df["x"].to_numpy()), segment_of(df["y"].to_numpy()), df


def check_results(results: list[Any], df: pd.DataFrame) -> None:
    for x_segment, y_segment, got in results:
        assert x_segment is not None and y_segment is not None  # the other columns were shared
        pd.testing.assert_frame_equal(got, df)
        assert got.attrs == df.attrs


def test_warning_classes() -> None:
    assert issubclass(NotSharedWarning, NocopyWarning) and issubclass(NotSharedWarning, RuntimeWarning)


def test_executor_warns_once_naming_the_column_and_still_shares_the_rest() -> None:
    df = frame()
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as ex, pytest.warns(NotSharedWarning) as record:
        results = list(ex.map(inspect_frame, [df] * 3))
        results.append(ex.submit(inspect_frame, df).result())
        other = ex.submit(inspect_frame, df.copy()).result()  # another object, same column: no new warning
    check_results([*results, other], df)
    assert len(record) == 1
    message = str(record[0].message)
    assert "column 'meta' of dtype object holding dict" in message
    assert "nocopy.explain" in message and "allow_pickle=True" in message and "drop" in message
    assert "the other 3 columns are shared" in message
    assert record[0].filename == __file__  # points at the caller's map()


def test_executor_under_warnings_as_errors_raises_at_submit() -> None:
    df = frame()
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as ex:
        with warnings.catch_warnings():
            warnings.simplefilter("error", NotSharedWarning)
            for _ in range(2):  # nothing half-done is cached: it raises every time
                with pytest.raises(NotSharedWarning, match="'meta'"):
                    ex.submit(inspect_frame, df)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotSharedWarning)
            check_results([ex.submit(inspect_frame, df).result()], df)


def test_pool_map_warns_once_and_still_shares_the_rest() -> None:
    df = frame()
    with nocopy.Pool(1, share_threshold=1000) as pool, pytest.warns(NotSharedWarning, match="nocopy.Pool: .*'meta'") as record:
        results = pool.map(inspect_frame, [df] * 3, chunksize=1)
    check_results(results, df)
    assert len(record) == 1


def test_pool_map_under_warnings_as_errors_fails_the_map() -> None:
    df = frame()
    with nocopy.Pool(1, share_threshold=1000) as pool:
        with warnings.catch_warnings():
            warnings.simplefilter("error", NotSharedWarning)
            with pytest.raises(NotSharedWarning, match="'meta'"):
                pool.map(inspect_frame, [df])
        assert pool.apply(len, (np.ones(10),)) == 10  # the pool lives on


def test_data_share_refuses_whole_warns_too_and_travels_pickled() -> None:
    meta = pd.Series([{"k": i} for i in range(ROWS)])
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as ex, pytest.warns(NotSharedWarning) as record:
        assert ex.submit(len, meta).result() == ROWS
        assert ex.submit(len, meta).result() == ROWS
    assert len(record) == 1
    message = str(record[0].message)
    assert "a Series argument cannot be shared" in message and "nocopy.explain" in message


def test_a_frame_whose_every_column_is_refused_warns_and_travels_pickled() -> None:
    df = pd.DataFrame({"meta": [{"k": i} for i in range(ROWS)]})
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as ex, pytest.warns(NotSharedWarning, match="cannot be shared"):
        pd.testing.assert_frame_equal(ex.submit(inspect_frame_plain, df).result(), df)


def inspect_frame_plain(df: pd.DataFrame) -> pd.DataFrame:
    return df


def test_when_the_rest_cannot_be_shared_either_the_whole_frame_travels_pickled(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._pool import _cache

    real_share = _cache.share
    calls: list[int] = []

    def share_then_no_room(value: Any) -> Any:
        calls.append(value.shape[1])
        if len(calls) > 1:  # the frame without its refused column
            raise MemoryError("no room left")
        return real_share(value)

    monkeypatch.setattr(_cache, "share", share_then_no_room)
    df = frame()
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as ex, pytest.warns(NotSharedWarning, match="'meta'"):
        x_segment, _, got = ex.submit(inspect_frame, df).result()
    assert calls == [4, 3] and x_segment is None  # pickled whole, as the stdlib would
    pd.testing.assert_frame_equal(got, df)
