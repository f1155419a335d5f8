"""nocopy.ray with Polars (and pandas columns of bytes): zero-copy inside Ray tasks.

Same local Ray instance as test_ray.py (``ray_cluster``). "Zero-copy" is
checked as there: every Arrow buffer of a column, as Polars hands it out
(``to_arrow`` per chunk, which exports Polars' own buffers), lies in the
mapping of Ray's object store; and a task's USS does not grow by the data's
size while plain ``ray.get`` of the same frame does.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pl = pytest.importorskip("polars")
pa = pytest.importorskip("pyarrow")
psutil = pytest.importorskip("psutil")

import nocopy.ray as nray  # noqa: E402
from nocopy.errors import UnsupportedTypeError  # noqa: E402
from test_polars import CONVERTED, MAYBE_COPIED, _big, _matrix  # noqa: E402

# Ray workers cannot import tests/ by module name: ship this module's functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_cluster")


# -- helpers that run inside tasks ---------------------------------------------


def store_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of Ray's object store (the plasma file)."""
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) > 5 and "plasma" in fields[5]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out.append((lo, hi))
    return out


def arrow_buffers(arr: Any) -> list[tuple[int, int]]:
    """(address, size) of every non-empty buffer of an Arrow array, dictionaries included."""
    out = [(b.address, b.size) for b in arr.buffers() if b is not None and b.size]
    if isinstance(arr, pa.DictionaryArray):
        out += arrow_buffers(arr.dictionary)
    return out


def column_buffers(s: Any) -> list[tuple[int, int]]:
    """Every buffer of a Polars Series, chunk by chunk (to_arrow of a whole chunked Series concatenates)."""
    newest = pl.CompatLevel.newest()
    return [b for part in s.get_chunks() for b in arrow_buffers(part.to_arrow(compat_level=newest))]


def inspect(obj: Any, expected: Any) -> tuple[str | None, dict[str, list[bool]], list[int], str]:
    """In a task: *obj* compared with *expected*; per column whether each buffer lies in
    the store; the chunks per column; the type.

    The decoded object is not sent back: Polars' ``serialize()`` (its pickling) of
    a decoded frame with a multi-chunk column deadlocks (reported separately), and
    pickling would rechunk it anyway.
    """
    import traceback

    from polars.testing import assert_frame_equal, assert_series_equal

    spans = store_mappings()

    def in_store(addr: int, size: int) -> bool:
        return any(lo <= addr and addr + size <= hi for lo, hi in spans)

    columns = [obj] if isinstance(obj, pl.Series) else list(obj.iter_columns())
    report = {s.name: [in_store(a, n) for a, n in column_buffers(s)] for s in columns}
    try:
        if isinstance(expected, pl.Series):
            assert_series_equal(obj, expected)
            assert obj.name == expected.name and obj.dtype == expected.dtype
        else:
            assert_frame_equal(obj, expected)
            assert obj.schema == expected.schema
        error = None
    except AssertionError:
        error = traceback.format_exc(limit=3)[-2000:]
    return error, report, [s.n_chunks() for s in columns], type(obj).__name__


@ray.remote
def polars_in_task(ref: Any, expected: Any) -> tuple[str | None, dict[str, list[bool]], list[int], str]:
    return inspect(nray.get(ref), expected)


@ray.remote
def first_frame_in_task(ref: Any, expected: Any) -> tuple[str | None, dict[str, list[bool]], list[int], str]:
    return inspect(nray.get(ref)["frames"][0], expected)


def in_place(report: dict[str, list[bool]]) -> set[str]:
    return {name for name, inside in report.items() if inside and all(inside)}


# -- the dtype matrix of test_polars.py through a task ------------------------------


def test_polars_dtype_matrix_round_trips_zero_copy_through_a_ray_task() -> None:
    df = _matrix(4000)  # large enough to live in the shared store, not inline in the task's argument
    chunks = [s.n_chunks() for s in df.iter_columns()]
    ref = nray.put(df)
    assert ref.kind == "DataFrame" and ref.size > 100 << 10
    error, report, got_chunks, kind = ray.get(polars_in_task.remote(ref, df))
    assert kind == "DataFrame"
    assert error is None, error
    assert got_chunks == chunks  # the all-null column has one chunk either way
    assert report["null"] == []  # a Null column has no buffers
    # Exactly the columns Polars reads in place (test_polars: the rest it partly copies on import).
    assert in_place(report) - MAYBE_COPIED == set(df.columns) - CONVERTED - {"null"}, report
    for name in CONVERTED - MAYBE_COPIED:
        assert not all(report[name]), name


@pytest.mark.parametrize("name", ["str", "dt_ms_tz", "chunked_str", "struct_full", "bin"])
def test_polars_series_through_a_ray_task(name: str) -> None:
    s = _matrix(4000)[name]
    n_chunks = s.n_chunks()
    error, report, chunks, kind = ray.get(polars_in_task.remote(nray.put(s), s))
    assert kind == "Series" and chunks == [n_chunks]
    assert error is None, error
    assert report[name] and all(report[name]), report


def test_polars_inside_a_dict_through_a_ray_task() -> None:
    df = _matrix(4000).select("i64", "str", "list")
    error, report, _, kind = ray.get(first_frame_in_task.remote(nray.put({"frames": [df], "n": 3}), df))
    assert kind == "DataFrame" and error is None, error
    assert in_place(report) == set(df.columns), report


def test_a_lazyframe_is_refused_before_anything_is_put() -> None:
    with pytest.raises(UnsupportedTypeError, match="collect"):
        nray.put(pl.DataFrame({"a": [1]}).lazy())


# -- memory: views vs plain ray.get copies ----------------------------------------


def _read_all(df: Any) -> tuple[int, float]:
    """Every row of a test_polars._big frame read through Polars, a slab at a time."""
    step = 1 << 16
    lengths = 0
    for i in range(0, df.height, step):
        part = df.slice(i, step)
        lengths += int(part["s"].str.len_bytes().sum()) + int(part["tags"].list.len().sum())
        lengths += int(part["when"].dt.hour().cast(pl.Int64).sum())
    return lengths, float(df["x"].sum())


@ray.remote
def polars_uss_growth(ref: list[Any], use_nocopy: bool, warm: Any) -> dict[str, Any]:
    """Read every row of the frame in a task; how much the task's USS grew."""
    proc = psutil.Process()
    _read_all(warm)  # Polars' thread pools and allocator arenas: set up before measuring
    before = proc.memory_full_info().uss
    df = nray.get(ref[0]) if use_nocopy else ray.get(ref[0])
    sums = _read_all(df)
    grown = proc.memory_full_info().uss - before
    del df
    return {"grown": grown, "sums": sums}


@pytest.mark.slow
def test_task_reads_a_2m_row_polars_frame_without_copying_where_plain_ray_get_copies() -> None:
    df = _big(2_000_000)
    warm = _big(1 << 14)
    expected = _read_all(df)
    ref = nray.put(df)
    size = ref.nbytes
    assert size > 100e6  # the frame is as big as the test claims
    ours = ray.get(polars_uss_growth.remote([ref], True, warm))
    del ref
    plain = ray.put(df)
    theirs = ray.get(polars_uss_growth.remote([plain], False, warm))
    del plain
    for out in (ours, theirs):
        assert out["sums"][0] == expected[0] and out["sums"][1] == pytest.approx(expected[1])
    assert ours["grown"] < 0.10 * size, f"nocopy grew the task's USS by {ours['grown'] / size:.0%} of the data"
    assert theirs["grown"] > 0.50 * size, f"plain ray.get grew it by only {theirs['grown'] / size:.0%}"


# -- pandas object columns of bytes ------------------------------------------------


@ray.remote
def bytes_column_in_task(ref: Any) -> tuple[Any, list[bool]]:
    frame = nray.get(ref)
    spans = store_mappings()
    bufs = [b for chunk in frame["b"].array._pa_array.chunks for b in arrow_buffers(chunk)]
    return frame, [any(lo <= a and a + n <= hi for lo, hi in spans) for a, n in bufs]


def test_pandas_bytes_column_is_zero_copy_in_a_ray_task() -> None:
    import pandas as pd

    values = [None if i % 4 == 0 else bytes([i % 256]) * (i % 50) for i in range(20_000)]
    df = pd.DataFrame({"b": values, "x": np.arange(20_000.0)})
    got, inside = ray.get(bytes_column_in_task.remote(nray.put(df)))
    expected = df.assign(b=pd.array(pa.array(values, type=pa.large_binary()), dtype=pd.ArrowDtype(pa.large_binary())))
    pd.testing.assert_frame_equal(got, expected)
    assert len(inside) == 3 and all(inside)  # validity, offsets, data
