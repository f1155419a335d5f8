"""_kinds: the one place that knows data families (size, rows, row slices, converted columns)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import nocopy
from nocopy import _kinds
from nocopy.errors import UnsupportedTypeError


@pytest.mark.parametrize(
    ("obj", "family"),
    [
        (np.arange(3), "numpy"),
        (np.zeros(2, dtype=[("a", "f8")]).view(np.recarray), "numpy"),
        (pd.DataFrame({"a": [1]}), "pandas"),
        (pd.Series([1.0]), "pandas"),
        (pd.Index([1, 2]), "pandas"),
        (pa.table({"a": [1]}), "arrow"),
        (pa.chunked_array([[1], [2]]), "arrow"),
        ("text", None),
        ({"a": 1}, None),
        (["a", None], "sequence"),
        ((1, 2), "sequence"),  # a list or tuple of anything: its size says whether it is data
        (pytest.importorskip("scipy.sparse").csr_matrix((2, 2)), "scipy"),
    ],
)
def test_family_of_names_the_family(obj: object, family: str | None) -> None:
    found = _kinds.family_of(obj)
    assert (found.name if found is not None else None) == family


def test_data_nbytes_counts_data_and_refuses_the_rest() -> None:
    assert _kinds.data_nbytes(np.zeros(10)) == 80
    assert _kinds.data_nbytes(np.array(["a"], dtype=object)) is None  # objects are not data
    assert _kinds.data_nbytes(np.ma.masked_array([1, 2])) is None  # share() refuses subclasses
    frame = pd.DataFrame({"a": np.zeros(100)})
    assert _kinds.data_nbytes(frame) == frame.memory_usage(index=True, deep=False).sum()
    assert _kinds.data_nbytes(pa.array([1, 2, 3], pa.int64())) == 24
    assert _kinds.data_nbytes(pa.int64()) is None  # a type is not data
    assert _kinds.data_nbytes([1, 2]) is None


@pytest.mark.parametrize(
    "data",
    [
        np.arange(10),
        pd.DataFrame({"a": np.arange(10), "s": [str(i) for i in range(10)]}),
        pd.Series(np.arange(10.0)),
        pa.table({"a": np.arange(10)}),
        pa.record_batch({"a": np.arange(10)}),
        pa.array(np.arange(10)),
        pa.chunked_array([np.arange(4), np.arange(4, 10)]),
    ],
    ids=lambda d: type(d).__name__,
)
def test_rows_are_counted_and_sliced_without_copying(data: object) -> None:
    assert _kinds.row_count(data) == 10
    part = _kinds.take_rows(data, 2, 5)
    assert _kinds.row_count(part) == 3
    if isinstance(data, np.ndarray):
        assert np.shares_memory(part, data)
    elif isinstance(data, pd.DataFrame):
        assert np.shares_memory(part["a"].to_numpy(), data["a"].to_numpy())
    elif isinstance(data, pa.Table):
        assert part.column(0).chunk(0).buffers()[1].address == data.column(0).chunk(0).buffers()[1].address


@pytest.mark.parametrize("bad", [np.float64(1.0) * np.ones(()), "text", {"a": 1}, pa.int64()])
def test_objects_without_rows_get_a_clear_error(bad: object) -> None:
    with pytest.raises(UnsupportedTypeError, match=r"row chunks|0-d"):
        _kinds.row_count(bad)
    with pytest.raises(UnsupportedTypeError):
        _kinds.take_rows(bad, 0, 1)


def test_converted_string_columns_are_named_and_restored() -> None:
    frame = pd.DataFrame(
        {"n": [1, 2], "o": pd.Series(["x", "y"], dtype=object), "p": pd.array(["a", "b"], dtype="string[python]")}
    )
    columns = _kinds.converted_columns(frame)
    assert [pos for pos, _ in columns] == [1, 2]
    # What get() really gives back for those columns: Arrow-backed strings.
    with nocopy.share(frame) as ref:
        arrowed = ref.get()
        assert not arrowed.dtypes.equals(frame.dtypes)  # converted, so there is something to restore
        restored = _kinds.restore_columns(arrowed.copy(deep=False), columns)
    pd.testing.assert_frame_equal(restored, frame)
    series = pd.Series(["x"], dtype=object)
    assert _kinds.converted_columns(series) == ((-1, np.dtype(object)),)
    with nocopy.share(series) as ref:
        pd.testing.assert_series_equal(_kinds.restore_columns(ref.get(), _kinds.converted_columns(series)), series)
    assert _kinds.converted_columns(np.arange(3)) == ()


def test_kinds_imports_no_optional_library() -> None:
    code = "import sys, nocopy._kinds; print(sorted(m for m in ('pandas', 'pyarrow', 'polars') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
