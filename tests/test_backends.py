"""One suite every parallel_map backend passes: processes, threads and ray.

Each test runs once per backend and compares against an answer computed
serially in the test, so "the same results with every backend" is checked
against ground truth, not only backend against backend. The ray backend runs
on the session's local Ray instance (2 CPUs, the ``ray_cluster`` fixture).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import numpy as np
import pytest

import nocopy
from nocopy.errors import UnsupportedTypeError, WorkerCrashedError

BACKENDS = ["processes", "threads", "ray"]
PROCESS_BACKENDS = ["processes", "ray"]  # where a worker can die without killing the test


def _ready(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "ray":
        ray = request.getfixturevalue("ray_cluster")
        # Ray workers cannot import tests/ by name: ship this module by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return name


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return _ready(request)


@pytest.fixture(params=PROCESS_BACKENDS)
def process_backend(request: pytest.FixtureRequest) -> str:
    return _ready(request)


def spans(n: int, chunks: int) -> list[tuple[int, int]]:
    """The documented chunking: at most one chunk per row, sizes differing by at most one."""
    k = max(1, min(chunks, n))
    return [(i * n // k, (i + 1) * n // k) for i in range(k)]


# -- what the workers run ---------------------------------------------------------
def rows_len(rows: Any) -> int:
    return len(rows)


def first_and_sum(rows: np.ndarray) -> tuple[int, int]:
    return int(rows[0]), int(rows.sum())


def record_stats(rows: np.ndarray) -> tuple[int, float, int, int]:
    return (
        len(rows),
        float(np.nansum(rows["x"])),
        int(rows["t"].view("i8").sum()),
        int(np.count_nonzero(rows["s"] == b"abc")),
    )


def copy_rows(rows: Any) -> Any:
    return np.array(rows, copy=True)


def try_to_write(rows: np.ndarray) -> str:
    try:
        rows[0] = -1
    except ValueError as exc:
        return str(exc)
    return "written"


def frame_stats(rows: Any) -> tuple[int, float, int, int, list[int]]:
    return (
        len(rows),
        float(rows["x"].sum()),
        int(rows["t"].to_numpy().view("i8").sum()),
        int((rows["s"] == "b").sum()),
        [int(i) for i in rows.index[:1]],
    )


def explode_on_row_20(rows: np.ndarray) -> int:
    if rows[0] == 20:
        raise KeyError(f"bad row {rows[0]}")
    return int(rows.sum())


def die_on_row_30(rows: np.ndarray) -> int:
    if rows[0] == 30:
        os._exit(5)
    return int(rows.sum())


# -- data --------------------------------------------------------------------------
def records(n: int) -> np.recarray:
    out = np.recarray(n, dtype=[("t", "M8[us]"), ("x", "f8"), ("s", "S6")])
    out["t"] = np.arange(n).astype("M8[s]")
    out["x"] = np.where(np.arange(n) % 2 == 0, 1.0, np.nan)
    out["s"] = np.where(np.arange(n) % 3 == 0, b"abc", b"string")
    return out


# -- the suite -----------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [1, 3, 7, 50, 100])
def test_ndarray_chunks_match_serial(backend: str, chunks: int) -> None:
    data = np.arange(50, dtype="i8") * 3
    want = [(int(data[a]), int(data[a:b].sum())) for a, b in spans(len(data), chunks)]
    got = nocopy.parallel_map(first_and_sum, data, chunks=chunks, workers=2, backend=backend)
    assert got == want


def test_rows_come_back_whole_and_in_order(backend: str) -> None:
    data = np.random.default_rng(1).random((1001, 3))
    parts = nocopy.parallel_map(copy_rows, data, chunks=6, workers=2, backend=backend)
    assert [len(p) for p in parts] == [b - a for a, b in spans(1001, 6)]
    np.testing.assert_array_equal(np.concatenate(parts), data)


def test_record_array_with_datetimes_and_strings(backend: str) -> None:
    data = records(100_000)
    got = nocopy.parallel_map(record_stats, data, chunks=5, workers=2, backend=backend)
    want = [record_stats(data[a:b]) for a, b in spans(len(data), 5)]
    assert got == want


def test_chunks_are_read_only(backend: str) -> None:
    got = nocopy.parallel_map(try_to_write, np.arange(10.0), chunks=2, workers=2, backend=backend)
    assert got == ["assignment destination is read-only"] * 2


def where_rows_live(rows: np.ndarray) -> tuple[int, str]:
    """The address of the chunk's first byte and the mapping that holds it."""
    addr = rows.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                return addr, fields[5].strip() if len(fields) > 5 else ""
    return addr, ""


def test_chunks_are_views_not_copies(backend: str) -> None:
    data = np.arange(400_000, dtype="f8")
    got = nocopy.parallel_map(where_rows_live, data, chunks=4, workers=2, backend=backend)
    if backend == "threads":  # views of the caller's own array, at the right offsets
        base = data.__array_interface__["data"][0]
        assert [addr - base for addr, _ in got] == [a * 8 for a, _ in spans(len(data), 4)]
    else:  # views of the shared segment (processes) or of Ray's object store
        marker = "nocopy-" if backend == "processes" else "plasma"
        assert all(marker in path for _, path in got), got


def test_a_shared_input_works(backend: str) -> None:
    data = np.arange(1000)
    with nocopy.share(data) as ref:
        got = nocopy.parallel_map(first_and_sum, ref, chunks=4, workers=2, backend=backend)
    assert got == [(int(data[a]), int(data[a:b].sum())) for a, b in spans(1000, 4)]


def test_empty_input_is_one_empty_chunk(backend: str) -> None:
    assert nocopy.parallel_map(rows_len, np.arange(0), chunks=4, workers=2, backend=backend) == [0]


def test_dataframe_chunks_match_serial(backend: str) -> None:
    import pandas as pd

    n = 10_000
    df = pd.DataFrame(
        {
            "t": pd.date_range("2024-01-01", periods=n, freq="min"),
            "x": np.arange(n) / 4,
            "s": pd.Series(np.where(np.arange(n) % 4 == 0, "b", "a"), dtype=object),
        },
        index=pd.RangeIndex(100, 100 + n),
    )
    got = nocopy.parallel_map(frame_stats, df, chunks=3, workers=2, backend=backend)
    assert got == [frame_stats(df.iloc[a:b]) for a, b in spans(n, 3)]


def test_arrow_table_chunks(backend: str) -> None:
    import pyarrow as pa

    table = pa.table({"a": np.arange(100), "s": [f"v{i}" for i in range(100)]})
    assert nocopy.parallel_map(rows_len, table, chunks=4, workers=2, backend=backend) == [25] * 4


def test_unsplittable_input_is_a_clear_error(backend: str) -> None:
    with pytest.raises(UnsupportedTypeError, match="cannot split"):
        nocopy.parallel_map(rows_len, {"a": 1}, workers=2, backend=backend)


def test_exception_in_fn_carries_the_workers_traceback(backend: str) -> None:
    with pytest.raises(KeyError, match="bad row 20") as info:
        nocopy.parallel_map(explode_on_row_20, np.arange(40), chunks=4, workers=2, backend=backend)
    # The traceback the user sees names the function and the failing line,
    # whether fn ran here (threads) or in another process (processes, ray).
    text = "".join(traceback.format_exception(info.value))
    assert "explode_on_row_20" in text
    assert 'raise KeyError(f"bad row {rows[0]}")' in text
    if backend != "threads":
        assert "explode_on_row_20" in str(info.value.__cause__)
    # and the backend keeps working
    assert nocopy.parallel_map(rows_len, np.arange(40), chunks=4, workers=2, backend=backend) == [10] * 4


@pytest.mark.slow
def test_a_dead_worker_names_the_chunk_and_the_next_call_works(process_backend: str) -> None:
    with pytest.raises(WorkerCrashedError, match=r"while running chunk 3 \(rows 30:40\)") as info:
        nocopy.parallel_map(die_on_row_30, np.arange(40), chunks=4, workers=2, backend=process_backend)
    assert info.value.task == "chunk 3 (rows 30:40)"
    got = nocopy.parallel_map(rows_len, np.arange(40), chunks=4, workers=2, backend=process_backend)
    assert got == [10] * 4
