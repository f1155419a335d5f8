"""Object columns and arrays of Python ``bytes``: stored once as Arrow large_binary.

pandas columns come back zero-copy as ``pd.ArrowDtype(pa.large_binary())``
(missing values as <NA>); the executor gives its tasks object columns of
bytes back. 1-d NumPy object arrays of bytes come back as object arrays
(rebuilt per get, like object arrays of str).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pandas as pd
import pandas.testing as tm
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nocopy
from nocopy import _kinds
from nocopy._codec import decode_buffer
from nocopy.errors import SegmentAccessError, SegmentCorruptError, UnsupportedTypeError
from strategies import buffer_in, buffers_of, mapping_range, outside, planted

BINARY = pd.ArrowDtype(pa.large_binary())


def _blobs(n: int) -> list[Any]:
    """bytes of every length 0..n-1 with NUL and non-UTF-8 bytes, None every third row."""
    return [None if i % 3 == 1 else bytes([0, 255, i % 256]) * (i % 7) for i in range(n)]


def _expected(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """What get() documents for *df*: its bytes columns as Arrow large_binary, missing as <NA>."""
    out = df.copy()
    for c in columns:
        out[c] = pd.array(pa.array(df[c].to_numpy(), type=pa.large_binary(), from_pandas=True), dtype=BINARY)
    return out


def test_frame_and_series_round_trip_as_arrow_binary() -> None:
    df = pd.DataFrame({"b": _blobs(50), "x": np.arange(50.0)})
    with nocopy.share(df) as ref:
        got = ref.get()
        assert got["b"].dtype == BINARY
        tm.assert_frame_equal(got, _expected(df, "b"))
        assert got["b"].isna().tolist() == [v is None for v in df["b"]]
    with nocopy.share(df["b"]) as ref:
        tm.assert_series_equal(ref.get(), _expected(df, "b")["b"])


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA], ids=["None", "nan", "NA"])
def test_missing_values_of_every_kind_become_nulls(missing: Any) -> None:
    values = np.array([b"a", missing, b"", missing, b"\x00"], dtype=object)
    with nocopy.share(pd.DataFrame({"b": values})) as ref:
        got = ref.get()["b"]
        assert got.dtype == BINARY
        assert got.isna().tolist() == [False, True, False, True, False]
        assert got.iloc[[0, 2, 4]].tolist() == [b"a", b"", b"\x00"]


def test_all_bytes_sliced_and_empty_columns_round_trip() -> None:
    df = pd.DataFrame({"b": [bytes([i % 256]) * (i % 5) for i in range(100)]})
    for part in (df, df.iloc[13:77], df.iloc[::-3], df.iloc[3:4]):
        with nocopy.share(part) as ref:
            got = ref.get()
            tm.assert_frame_equal(got, _expected(part, "b"))
    # An empty object column holds nothing to tell bytes from str: a str column, as before.
    with nocopy.share(df.iloc[0:0]) as ref:
        assert str(ref.get()["b"].dtype) == "str"


def test_the_column_buffers_lie_in_the_segment() -> None:
    df = pd.DataFrame({"b": _blobs(1000), "x": np.arange(1000)})
    with nocopy.share(df) as ref:
        got = ref.get()
        lo, size = mapping_range(got["x"].to_numpy())
        bufs = buffers_of(got["b"].array)
        assert len(bufs) == 3  # validity, offsets, data
        assert outside(bufs, lo, size) == []


def worker_bytes_zero_copy(ref: nocopy.Shared[pd.DataFrame], expected: bytes) -> dict[str, Any]:
    """In a spawned worker: get(), where the bytes column's Arrow buffers are, and whether it is equal."""
    df = ref.get()
    base = ref._shared_base()
    bufs = buffers_of(df["b"].array)
    return {
        "dtype": str(df["b"].dtype),
        "buffers": len(bufs),
        "outside": outside(bufs, base.ctypes.data, base.nbytes),
        "equal": df["b"].equals(pickle.loads(expected)),
    }


def test_through_a_spawned_worker_zero_copy(spawn_pool: Any) -> None:
    df = pd.DataFrame({"b": _blobs(100_000)})
    with nocopy.share(df) as ref:
        report = spawn_pool.apply(worker_bytes_zero_copy, (ref, pickle.dumps(_expected(df, "b")["b"])))
    assert report["dtype"] == "large_binary[pyarrow]"
    assert report["buffers"] == 3 and report["outside"] == []
    assert report["equal"]


def test_views_are_read_only() -> None:
    with nocopy.share(pd.DataFrame({"b": [b"abc", b"de"]})) as ref:
        data = ref.get()["b"].array._pa_array.chunk(0).buffers()[2]
        assert not data.is_mutable
        with pytest.raises(ValueError, match="read-only"):
            np.frombuffer(data, dtype=np.uint8)[0] = 1
        assert ref.get()["b"].tolist() == [b"abc", b"de"]


@pytest.mark.parametrize(
    ("values", "holding"),
    [([b"a", "a"], "bytes, str"), ([b"a", bytearray(b"b")], "bytearray, bytes"), ([b"a", 1], "bytes, int")],
    ids=["str", "bytearray", "int"],
)
def test_bytes_mixed_with_other_objects_are_refused_naming_the_column(values: list[Any], holding: str) -> None:
    df = pd.DataFrame({"ok": [1, 2], "payload": pd.Series(values, dtype=object)})
    with pytest.raises(UnsupportedTypeError) as info:
        nocopy.share(df)
    msg = str(info.value)
    assert "column 'payload'" in msg and f"holding {holding}" in msg and "allow_pickle=True" in msg
    with nocopy.share(df, allow_pickle=True) as ref:
        got = ref.get()
        tm.assert_frame_equal(got, df)  # pickled: exactly the objects given
        assert nocopy.explain(df, allow_pickle=True)["['payload']"].status == "pickled"
        with pytest.raises(SegmentAccessError, match="trusted=True"):
            nocopy.attach(ref.uri).get()


def test_explain_says_converted_to_large_binary() -> None:
    df = pd.DataFrame({"b": [b"x", None], "n": [1, 2]})
    report = nocopy.explain(df)
    note = report["['b']"]
    assert note.status == "converted" and note.dtype == "object (bytes)"
    assert "large_binary" in note.detail and "zero-copy" in note.detail
    assert report.supported and not report.zero_copy
    arr_note = nocopy.explain(np.array([b"x"], dtype=object))[0]
    assert arr_note.status == "converted" and "large_binary" in arr_note.detail


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    values=st.lists(st.one_of(st.binary(max_size=12), st.none(), st.just(np.nan)), max_size=20),
    rows=st.sampled_from([slice(None), slice(None, None, 2), slice(1, -1), slice(None, None, -1)]),
)
def test_hypothesis_round_trip(values: list[Any], rows: slice) -> None:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    arr = arr[rows]
    df = pd.DataFrame({"b": arr})
    is_bytes = any(isinstance(v, bytes) for v in arr)
    with nocopy.share(df) as ref:
        got = ref.get()
        if is_bytes:
            tm.assert_frame_equal(got, _expected(df, "b"))
        else:  # empty or all missing: a string column, as before
            assert str(got["b"].dtype) == "str" and bool(got["b"].isna().all())
    with nocopy.share(arr) as ref:
        got_arr = ref.get()
        assert got_arr.dtype == object and len(got_arr) == len(arr)
        for a, b in zip(got_arr, arr, strict=True):
            assert type(a) is type(b) and (a == b or (a != a and b != b)), (a, b)


# -- 1-d NumPy object arrays of bytes -----------------------------------------------


def test_numpy_object_arrays_of_bytes_round_trip_with_their_missing_values() -> None:
    arr = np.array([b"\x00\xff", None, b"", np.nan, pd.NA, b"z" * 1000], dtype=object)
    with nocopy.share(arr) as ref:
        got = ref.get()
        assert got.dtype == object
        assert got[[0, 2, 5]].tolist() == [b"\x00\xff", b"", b"z" * 1000]
        assert got[1] is None and got[3] != got[3] and got[4] is pd.NA
    two_d = np.array([[b"a"], [b"b"]], dtype=object)
    with pytest.raises(UnsupportedTypeError, match="object"):
        nocopy.share(two_d)


# -- the executor's restore of object columns ----------------------------------------


def test_converted_columns_name_bytes_and_restore_gives_object_with_none() -> None:
    df = pd.DataFrame({"n": [1, 2, 3], "b": [b"x", None, b""]}, index=[7, 7, 8])
    df.attrs = {"src": "t"}
    columns = _kinds.converted_columns(df)
    assert columns == ((1, np.dtype(object)),)
    with nocopy.share(df) as ref:
        restored = _kinds.restore_columns(ref.get(private=True), columns)
        tm.assert_frame_equal(restored, df)
        assert restored["b"].tolist()[1] is None and restored.attrs == df.attrs
        s = df["b"]
    with nocopy.share(s) as ref:
        back = _kinds.restore_columns(ref.get(), _kinds.converted_columns(s))
        tm.assert_series_equal(back, s)
        assert back.tolist()[1] is None


def _column_types(df: pd.DataFrame) -> tuple[str, list[str]]:
    return str(df["b"].dtype), sorted({type(v).__name__ for v in df["b"]})


def test_a_pool_task_gets_an_object_column_of_bytes() -> None:
    df = pd.DataFrame({"b": [bytes([i % 256]) * 64 for i in range(40_000)]})
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as pool:
        assert pool.submit(_column_types, df).result() == ("object", ["bytes"])


# -- corrupt segments -------------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize("obj", ["frame", "array"])
def test_corrupt_binary_offsets_are_refused(trusted: bool, obj: str) -> None:
    values = np.array([b"abc", b"de", None, b"f"] * 10, dtype=object)
    mem, header = planted(pd.DataFrame({"b": values}) if obj == "frame" else values)
    node = header.tree["cols"][0] if obj == "frame" else header.tree
    chunk = node["s"]["chunks"][0]
    assert node["s"]["k"] == "pa.lbin"
    offsets = buffer_in(mem, header, chunk["o"]).view(np.int64)
    offsets[5] = offsets[-1] + 100  # past the data buffer
    with pytest.raises(SegmentCorruptError, match="offsets"):
        decode_buffer(mem, trusted=trusted)


@pytest.mark.parametrize("obj", ["frame", "array"])
def test_a_string_node_is_not_taken_for_a_binary_one(obj: str) -> None:
    values = np.array([b"x", b"\xff"], dtype=object)
    mem, _ = planted(pd.DataFrame({"b": values}) if obj == "frame" else values)
    raw = mem.tobytes()
    assert raw.count(b'"pa.lbin"') == 1
    at = raw.index(b'"pa.lbin"')  # same length as "pa.lstr": the header keeps its size
    mem[at : at + 9] = np.frombuffer(b'"pa.lstr"', np.uint8)
    with pytest.raises(SegmentCorruptError, match=r"pa\.lbin"):
        decode_buffer(mem, trusted=True)


def test_a_pool_task_gets_an_object_column_of_bytes_and_none() -> None:
    df = pd.DataFrame({"b": [None if i % 5 == 0 else bytes([i % 256]) * 64 for i in range(40_000)]})
    with nocopy.ProcessPoolExecutor(1, share_threshold=1000) as pool:
        assert pool.submit(_column_types, df).result() == ("object", ["NoneType", "bytes"])
