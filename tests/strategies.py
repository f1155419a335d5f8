"""Hypothesis strategies for pandas DataFrames and Arrow data, plus worker-side checks.

Reusable by any test: ``dataframes()`` draws frames whose columns cover the
zero-copy matrix (numeric, datetime naive/tz, timedelta, nullable, categorical,
every string flavour, Arrow-backed, period, interval), with nulls, empty
frames, unicode text, MultiIndex rows/columns and non-str column names.
``expected_after_share(df)`` is what nocopy documents get() to return for it
(object columns of str come back as pandas ``str``; ``string[python]`` as
``string[pyarrow]``). The ``worker_*`` functions run inside spawned workers.
"""

from __future__ import annotations

import datetime as dt
import traceback
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import strategies as st

__all__ = [
    "COLUMN_KINDS",
    "arrow_arrays",
    "buffer_in",
    "buffers_of",
    "columns_of",
    "dataframes",
    "expected_after_share",
    "mapping_range",
    "outside",
    "planted",
    "worker_roundtrip_many",
]

TIMEZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", dt.timezone(dt.timedelta(hours=-3, minutes=-30))]
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
MASKED = ["Int8", "Int32", "Int64", "UInt16", "UInt64", "Float32", "Float64", "boolean"]

COLUMN_KINDS = [
    "int", "float", "complex", "bool", "datetime", "datetime_tz", "timedelta", "masked",
    "category", "str", "string_pyarrow", "object_str", "string_python", "arrow", "period", "interval",
]


def _ints(draw: Any, n: int, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    vals = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n))
    return np.array(vals, dtype=dtype)


def _maybe_null(draw: Any, n: int) -> list[bool]:
    if n == 0 or not draw(st.booleans()):
        return [False] * n
    return draw(st.lists(st.booleans(), min_size=n, max_size=n))


@st.composite
def column(draw: Any, n: int, kind: str | None = None) -> Any:
    """One column of *n* rows, of a kind from COLUMN_KINDS."""
    kind = kind or draw(st.sampled_from(COLUMN_KINDS))
    nulls = _maybe_null(draw, n)
    if kind == "int":
        return _ints(draw, n, draw(st.sampled_from(INT_DTYPES)))
    if kind == "float":
        fdt = draw(st.sampled_from(["float32", "float64"]))
        vals = draw(st.lists(st.floats(width=32 if fdt == "float32" else 64), min_size=n, max_size=n))
        return np.array(vals, dtype=fdt)
    if kind == "complex":
        vals = draw(st.lists(st.complex_numbers(allow_nan=False, max_magnitude=1e6), min_size=n, max_size=n))
        return np.array(vals, dtype="complex128")
    if kind == "bool":
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    if kind in ("datetime", "datetime_tz", "timedelta"):
        unit = draw(st.sampled_from(["s", "ms", "us", "ns"]))
        ints = _ints(draw, n, "int32").astype("int64") * draw(st.sampled_from([1, 1000, 86400]))
        if kind == "timedelta":
            arr = ints.astype(f"m8[{unit}]")
            arr[np.array(nulls, dtype=bool)] = np.timedelta64("NaT", unit)
            return pd.array(arr)
        arr = ints.astype(f"M8[{unit}]")
        arr[np.array(nulls, dtype=bool)] = np.datetime64("NaT", unit)
        series = pd.Series(pd.array(arr))
        if kind == "datetime_tz":
            series = series.dt.tz_localize("UTC").dt.tz_convert(draw(st.sampled_from(TIMEZONES)))
        return series.array
    if kind == "masked":
        dtype = pd.api.types.pandas_dtype(draw(st.sampled_from(MASKED)))
        if dtype.kind == "b":
            base = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        elif dtype.kind == "f":
            base = np.array(draw(st.lists(st.floats(-1e30, 1e30), min_size=n, max_size=n)), dtype=dtype.numpy_dtype)
        else:
            base = _ints(draw, n, str(dtype.numpy_dtype))
        return dtype.construct_array_type()(base, np.array(nulls, dtype=bool))
    if kind == "category":
        cats_kind = draw(st.sampled_from(["str", "int", "object", "datetime"]))
        if cats_kind == "int":
            cats: Any = pd.Index(sorted(set(draw(st.lists(st.integers(-1000, 1000), min_size=1, max_size=6)))))
        elif cats_kind == "datetime":
            cats = pd.date_range("2000-01-01", periods=draw(st.integers(1, 5)), freq="D", tz=draw(st.sampled_from([None, "UTC"])))
        else:
            labels = sorted(set(draw(st.lists(TEXT, min_size=1, max_size=6))))
            cats = pd.Index(labels, dtype=object if cats_kind == "object" else "str")
        codes = np.array(draw(st.lists(st.integers(-1, len(cats) - 1), min_size=n, max_size=n)), dtype=np.int64)
        return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(cats, ordered=draw(st.booleans())))
    if kind in ("str", "string_pyarrow", "object_str", "string_python"):
        vals: list[Any] = draw(st.lists(TEXT, min_size=n, max_size=n))
        if kind == "object_str":
            missing = draw(st.sampled_from([None, np.nan]))
            vals = [missing if null else v for v, null in zip(vals, nulls, strict=True)]
            out = np.empty(n, dtype=object)
            out[:] = vals
            return out
        vals = [None if null else v for v, null in zip(vals, nulls, strict=True)]
        dtype = {"str": "str", "string_pyarrow": "string[pyarrow]", "string_python": "string[python]"}[kind]
        return pd.array(vals, dtype=dtype)
    if kind == "arrow":
        typ = draw(st.sampled_from([pa.int16(), pa.float64(), pa.large_string(), pa.list_(pa.int32()), pa.timestamp("ms", "UTC"), pa.bool_()]))
        vals = draw(st.lists(_arrow_value(typ), min_size=n, max_size=n))
        vals = [None if null else v for v, null in zip(vals, nulls, strict=True)]
        return pd.array(pa.array(vals, type=typ), dtype=pd.ArrowDtype(typ))
    if kind == "period":
        ordinals = _ints(draw, n, "int16").astype("int64")
        return pd.arrays.PeriodArray(ordinals, dtype=pd.PeriodDtype(draw(st.sampled_from(["D", "M", "Y", "h"]))))
    if kind == "interval":
        left = np.array(draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n)), dtype=np.int64)
        width = np.array(draw(st.lists(st.integers(0, 10), min_size=n, max_size=n)), dtype=np.int64)
        return pd.arrays.IntervalArray.from_arrays(left, left + width, closed=draw(st.sampled_from(["left", "right", "both", "neither"])))
    raise ValueError(kind)


def _arrow_value(typ: pa.DataType) -> st.SearchStrategy[Any]:
    if pa.types.is_integer(typ):
        return st.integers(-(2**15), 2**15 - 1)
    if pa.types.is_floating(typ):
        return st.floats(allow_nan=False)
    if pa.types.is_large_string(typ) or pa.types.is_string(typ):
        return TEXT
    if pa.types.is_list(typ):
        return st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3)
    if pa.types.is_timestamp(typ):
        return st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC))
    return st.booleans()


@st.composite
def indexes(draw: Any, n: int) -> pd.Index:
    """A row index of *n* entries: Range, int, str, object, tz DatetimeIndex or MultiIndex."""
    kind = draw(st.sampled_from(["range", "int", "str", "object", "datetime_tz", "multi", "category"]))
    name = draw(st.sampled_from([None, "idx", "ü", 3]))
    if kind == "range":
        step = draw(st.sampled_from([1, 2, -3]))
        start = draw(st.integers(-10, 10))
        return pd.RangeIndex(start, start + n * step, step, name=name)
    if kind == "int":
        return pd.Index(_ints(draw, n, "int64"), name=name)
    if kind == "str":
        return pd.Index(draw(st.lists(TEXT, min_size=n, max_size=n)), dtype="str", name=name)
    if kind == "object":
        return pd.Index(draw(st.lists(st.one_of(TEXT, st.integers(-5, 5)), min_size=n, max_size=n)), dtype=object, name=name)
    if kind == "datetime_tz":
        freq = draw(st.sampled_from(["D", "h", "s"]))
        return pd.date_range("2020-03-29", periods=n, freq=freq, tz=draw(st.sampled_from(TIMEZONES)), name=name)
    if kind == "category":
        return pd.CategoricalIndex(draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)), name=name)
    first = draw(st.lists(st.sampled_from(["x", "y", "ζ"]), min_size=n, max_size=n))
    second = _ints(draw, n, "int16")
    return pd.MultiIndex.from_arrays([first, second], names=[name, "second"])


@st.composite
def dataframes(draw: Any, max_rows: int = 12, max_cols: int = 6, kinds: list[str] | None = None) -> pd.DataFrame:
    """A DataFrame with random column kinds, nulls, index and column names (possibly empty)."""
    n = draw(st.integers(0, max_rows))
    k = draw(st.integers(0, max_cols))
    arrays = [draw(column(n, draw(st.sampled_from(kinds or COLUMN_KINDS)))) for _ in range(k)]
    names_kind = draw(st.sampled_from(["str", "int", "mixed", "multi"]))
    if names_kind == "str":
        names: Any = pd.Index(draw(st.lists(TEXT, min_size=k, max_size=k, unique=True)), dtype="str")
    elif names_kind == "int":
        names = pd.Index(draw(st.lists(st.integers(-50, 50), min_size=k, max_size=k, unique=True)))
    elif names_kind == "mixed":
        names = pd.Index([f"c{i}" if i % 2 else i for i in range(k)], dtype=object)
    else:
        names = pd.MultiIndex.from_arrays([[f"g{i % 2}" for i in range(k)], list(range(k))], names=["grp", None])
    df = pd.DataFrame({i: a for i, a in enumerate(arrays)}, index=draw(indexes(n)))
    df.columns = names
    if draw(st.booleans()):
        df.attrs = {"source": draw(TEXT), "version": draw(st.integers(0, 9)), "tags": ["a", "ü"]}
    return df


def expected_after_share(obj: Any) -> Any:
    """What get() documents to return for *obj*: object str columns as ``str``,
    ``string[python]`` as ``string[pyarrow]``; everything else unchanged."""
    if isinstance(obj, pd.Series):
        return expected_after_share(obj.to_frame()).iloc[:, 0].rename(obj.name)
    out = obj.copy(deep=False)
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if col.dtype == object:
            out.isetitem(i, col.astype(pd.StringDtype("pyarrow", na_value=np.nan)))
        elif isinstance(col.dtype, pd.StringDtype) and col.dtype.storage == "python":
            out.isetitem(i, col.astype(pd.StringDtype("pyarrow", na_value=col.dtype.na_value)))
    return out


@st.composite
def arrow_arrays(draw: Any, max_len: int = 8) -> pa.Array:
    """An Arrow array of a random type, nested ones included, with nulls."""
    n = draw(st.integers(0, max_len))
    typ = draw(st.sampled_from([pa.int64(), pa.large_string(), pa.list_(pa.int32()), pa.timestamp("ms", "UTC"), pa.float64()]))
    vals = draw(st.lists(st.one_of(st.none(), _arrow_value(typ)), min_size=n, max_size=n))
    return pa.array(vals, type=typ)


# -- checks that run in workers and in tests --------------------------------


def mapping_range(arr: np.ndarray) -> tuple[int, int]:
    """(address, size) of the mapping at the bottom of *arr*'s base chain."""
    import mmap

    obj: Any = arr
    while isinstance(obj.base, np.ndarray):
        obj = obj.base
    bottom = obj.base.obj if isinstance(obj.base, memoryview) else obj.base
    from nocopy._store._mapping import Mapping

    if not isinstance(bottom, (mmap.mmap, Mapping)):
        raise AssertionError(f"array is not backed by a mapping (bottom of its base chain: {type(bottom)})")
    return obj.ctypes.data, obj.nbytes


def planted(obj: Any) -> tuple[np.ndarray, Any]:
    """*obj* encoded into a plain uint8 buffer, and its parsed header: a layout to corrupt."""
    from nocopy._codec import plan
    from nocopy._codec._layout import parse_header

    p = plan(obj)
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    return mem, parse_header(mem.data, name="t", token=bytes(mem[16:32]), size=p.size)


def buffer_in(mem: np.ndarray, header: Any, index: int) -> np.ndarray:
    """The writable bytes of buffer *index* of a :func:`planted` layout."""
    off, n = header.buffers[index]
    return mem[header.data_offset + off : header.data_offset + off + n]


def buffers_of(values: Any) -> list[tuple[int, int]]:
    """(address, nbytes) of every data buffer behind a pandas column/index array or Arrow object."""
    out: list[tuple[int, int]] = []

    def nd(a: np.ndarray) -> None:
        if a.nbytes:
            out.append((a.ctypes.data, a.nbytes))

    def arrow(obj: Any) -> None:
        if isinstance(obj, pa.ChunkedArray):
            for c in obj.chunks:
                arrow(c)
            return
        if isinstance(obj, pa.Table | pa.RecordBatch):
            for c in obj.columns:
                arrow(c)
            return
        for b in obj.buffers():
            if b is not None and b.size:
                out.append((b.address, b.size))
        if isinstance(obj, pa.DictionaryArray):
            arrow(obj.dictionary)

    if isinstance(values, pa.Array | pa.ChunkedArray | pa.Table | pa.RecordBatch):
        arrow(values)
    elif isinstance(values, np.ndarray):
        nd(values)
    elif isinstance(values, pd.Categorical):
        nd(values.codes)
        out.extend(buffers_of(values.categories._values))
    elif isinstance(values, pd.arrays.IntervalArray):
        out.extend(buffers_of(values.left._values))
        out.extend(buffers_of(values.right._values))
    elif hasattr(values, "_pa_array"):
        arrow(values._pa_array)
    elif hasattr(values, "_mask"):
        nd(values._data)
        nd(values._mask)
    elif hasattr(values, "_ndarray"):
        nd(values._ndarray)
    elif isinstance(values, pd.arrays.PeriodArray):
        nd(values.asi8)
    else:
        raise AssertionError(f"do not know the buffers of {type(values)}")
    return out


def columns_of(df: pd.DataFrame) -> list[tuple[str, Any]]:
    return [(repr(df.columns[i]), df._get_column_array(i)) for i in range(df.shape[1])]


def outside(buffers: list[tuple[int, int]], lo: int, size: int) -> list[tuple[int, int]]:
    return [(a, n) for a, n in buffers if not (lo <= a and a + n <= lo + size)]


def worker_roundtrip_many(items: list[tuple[Any, bytes]]) -> list[str | None]:
    """In a worker: get() each handle and compare it with the expected object (pickled).

    Returns None per item that matched, else the assertion's text.
    """
    import pickle

    import pandas.testing as tm

    results: list[str | None] = []
    for ref, expected_bytes in items:
        try:
            expected = pickle.loads(expected_bytes)
            got = ref.get()
            if isinstance(expected, pd.DataFrame):
                tm.assert_frame_equal(got, expected)
                assert got.attrs == expected.attrs, (got.attrs, expected.attrs)
            elif isinstance(expected, pd.Series):
                tm.assert_series_equal(got, expected)
            elif isinstance(expected, pd.Index):
                tm.assert_index_equal(got, expected, exact=True)
            else:
                assert type(got) is type(expected) and got.equals(expected), (got, expected)
            results.append(None)
        except Exception:
            results.append(traceback.format_exc(limit=3)[-2000:])
    return results
