"""pandas DataFrames, Series and Indexes through shared memory: round trips, zero-copy, safety."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
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
from conftest import run_python
from nocopy._codec import decode_buffer
from nocopy.errors import SegmentAccessError, SegmentCorruptError, UnsupportedTypeError
from strategies import (
    buffer_in,
    buffers_of,
    columns_of,
    dataframes,
    expected_after_share,
    mapping_range,
    outside,
    planted,
    worker_roundtrip_many,
)


def _frame(n: int = 5) -> pd.DataFrame:
    """A frame with one column of every kind in the matrix, nulls included."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "f": rng.random(n),
        "nan": np.where(np.arange(n) % 3 == 0, np.nan, 1.5),
        "i": np.arange(n, dtype="i4"),
        "u": np.arange(n, dtype="u8"),
        "c": np.arange(n) * (1 + 2j),
        "b": np.arange(n) % 2 == 0,
        "dt": pd.date_range("2020-01-01", periods=n, freq="h"),
        "dt_s": pd.date_range("1700-01-01", periods=n, freq="D", unit="s"),
        "tz": pd.date_range("2020-03-29", periods=n, freq="h", tz="Europe/Paris"),
        "td": pd.to_timedelta(np.arange(n), unit="ms"),
        "Int64": pd.array([None if i % 2 else i for i in range(n)], dtype="Int64"),
        "UInt8": pd.array([None if i % 3 else i % 250 for i in range(n)], dtype="UInt8"),
        "Float64": pd.array([None if i % 2 else i / 3 for i in range(n)], dtype="Float64"),
        "boolean": pd.array([None if i % 2 else bool(i % 4) for i in range(n)], dtype="boolean"),
        "cat": pd.Categorical([["lo", "mid", "hi"][i % 3] for i in range(n)], categories=["lo", "mid", "hi"], ordered=True),
        "cat_int": pd.Categorical([i % 2 * 10 for i in range(n)]),
        "str": pd.array([None if i == 1 else f"s{i}é" for i in range(n)], dtype="str"),
        "string": pd.array([None if i == 2 else "ü" * i for i in range(n)], dtype="string[pyarrow]"),
        "arrow": pd.array(pa.array([[i] * (i % 3) for i in range(n)]), dtype=pd.ArrowDtype(pa.list_(pa.int64()))),
        "period": pd.period_range("2020-01", periods=n, freq="M"),
        "interval": pd.interval_range(0, n),
    })


# -- round trips -----------------------------------------------------------


def test_every_dtype_round_trips_in_process() -> None:
    df = _frame()
    df.attrs = {"source": "test", "n": [1, 2]}
    with nocopy.share(df) as ref:
        got = ref.get()
        tm.assert_frame_equal(got, df)
        assert got.attrs == df.attrs
        assert ref.kind == "DataFrame"


def test_object_strings_come_back_as_str_and_other_strings_as_arrow() -> None:
    df = pd.DataFrame({
        "obj": pd.Series(["a", None, "ü" * 50, np.nan, ""], dtype=object),
        "py": pd.array(["a", None, "b", "c", "d"], dtype="string[python]"),
    })
    with nocopy.share(df) as ref:
        got = ref.get()
        assert got["obj"].dtype == pd.StringDtype("pyarrow", na_value=np.nan)
        assert got["py"].dtype == pd.StringDtype("pyarrow", na_value=pd.NA)
        tm.assert_frame_equal(got, expected_after_share(df))
        assert got["obj"].tolist()[2] == "ü" * 50  # never truncated
        assert got["obj"].isna().tolist() == [False, True, False, True, False]


def test_sliced_and_chunked_strings_round_trip() -> None:
    s = pd.Series(pd.array([f"v{i}" if i % 5 else None for i in range(100)], dtype="str"))
    chunked = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([pa.array(["a", None]), pa.array(["b"] * 3)])))
    for obj in (s.iloc[13:77], s.iloc[3:4], s.iloc[0:0], chunked):
        with nocopy.share(obj) as ref:
            tm.assert_series_equal(ref.get(), obj)


@pytest.mark.parametrize(
    "index",
    [
        pd.RangeIndex(5, 15, 2, name="r"),
        pd.Index([3, 1, 2, 9, 0], name=("tuple", "name")),
        pd.Index(["a", "ü", None, "c", "d"], dtype="str", name="s"),
        pd.Index(["a", 1, 2.5, None, ("t", 1)], dtype=object),
        pd.date_range("2021-03-28", periods=5, freq="h", tz="Europe/Paris", name="when"),
        pd.timedelta_range(0, periods=5, freq="s"),
        pd.MultiIndex.from_product([["x", "y"], [1, 2, 3]], names=["l0", None])[:5],
        pd.CategoricalIndex(list("abcab")),
        pd.period_range("2020", periods=5, freq="Y"),
        pd.interval_range(0, 5),
    ],
    ids=lambda i: type(i).__name__ + str(i.dtype),
)
def test_index_kinds_round_trip_as_row_index_columns_and_alone(index: pd.Index) -> None:
    df = pd.DataFrame({"v": np.arange(len(index))}, index=index)
    cols = pd.DataFrame([list(range(len(index)))], columns=index)
    for obj in (df, cols):
        with nocopy.share(obj) as ref:
            tm.assert_frame_equal(ref.get(), obj)
    with nocopy.share(index) as ref:
        tm.assert_index_equal(ref.get(), index, exact=True)
        if isinstance(index, pd.DatetimeIndex):
            assert ref.get().freq == index.freq


def test_series_names_and_non_str_column_names() -> None:
    s = pd.Series([1.5, None, 3.0], name=("a", 1), index=pd.Index(["x", "y", "z"], dtype=object))
    df = pd.DataFrame([[1, 2, 3]], columns=pd.Index([1, "a", 2.5], dtype=object))
    dup = pd.DataFrame([[1, 2.0]], columns=["a", "a"])
    empty = pd.DataFrame()
    empty_rows = _frame().iloc[:0]
    for obj in (s, df, dup, empty, empty_rows):
        with nocopy.share(obj) as ref:
            got = ref.get()
            if isinstance(obj, pd.Series):
                tm.assert_series_equal(got, obj)
            else:
                tm.assert_frame_equal(got, obj)


def test_nesting_in_dict_list_tuple() -> None:
    df = _frame()
    obj = {"frames": [df, df[["f", "str"]]], "pair": (df["tz"], df.index), "n": 3}
    with nocopy.share(obj) as ref:
        got = ref.get()
        tm.assert_frame_equal(got["frames"][0], df)
        tm.assert_frame_equal(got["frames"][1], df[["f", "str"]])
        tm.assert_series_equal(got["pair"][0], df["tz"])
        tm.assert_index_equal(got["pair"][1], df.index)
        assert got["n"] == 3


def test_pandas_scalars_round_trip() -> None:
    obj = [pd.Timestamp("2020-01-01 12:00", tz="Asia/Kolkata"), pd.Timestamp("1999-12-31"), pd.Timedelta("3 days 2 ms"), pd.NA, pd.NaT]
    with nocopy.share(obj) as ref:
        got = ref.get()
    assert got[:3] == obj[:3] and got[0].tz == obj[0].tz
    assert got[3] is pd.NA and got[4] is pd.NaT


@pytest.mark.slow
def test_hypothesis_round_trip_300_frames_through_a_spawned_worker(spawn_pool: Any) -> None:
    seen = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(df=dataframes(), rows=st.sampled_from([slice(None), slice(None, None, 2), slice(1, -1), slice(None, None, -1)]))
    def check(df: pd.DataFrame, rows: slice) -> None:
        seen.append(1)
        # Row slices make strided NumPy columns and offset Arrow arrays.
        df = df.iloc[rows]
        objs = [df] + ([df.iloc[:, 0]] if df.shape[1] else [])
        refs = [nocopy.share(o) for o in objs]
        try:
            batch = [(r, pickle.dumps(expected_after_share(o))) for r, o in zip(refs, objs, strict=True)]
            errors = spawn_pool.apply(worker_roundtrip_many, (batch,))
        finally:
            for r in refs:
                r.close()
        assert errors == [None] * len(objs), f"{errors}\nframe:\n{df!r}\ndtypes:\n{df.dtypes}"

    check()
    assert len(seen) >= 300


# -- zero-copy -------------------------------------------------------------


def _zero_copy_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    labels = np.array(["alpha", "beta", "gamma", "δέλτα", None], dtype=object)
    return pd.DataFrame({
        "f": rng.random(n),
        "i": np.arange(n),
        "b": np.arange(n) % 3 == 0,
        "tz": pd.date_range("2020-01-01", periods=n, freq="s", tz="America/New_York"),
        "cat": pd.Categorical.from_codes(rng.integers(0, 4, n), categories=["a", "b", "c", "d"]),
        "Int64": pd.arrays.IntegerArray(np.arange(n), np.arange(n) % 7 == 0),
        "str": pd.Series(labels[np.arange(n) % 5], dtype="str"),
        "obj_str": pd.Series(labels[np.arange(n) % 4], dtype=object),
    })


def worker_zero_copy(ref: nocopy.Shared[pd.DataFrame]) -> dict[str, Any]:
    """In a worker: get(), check every buffer lies in the mapping, touch it all, report USS."""
    import psutil

    proc = psutil.Process()
    uss0 = proc.memory_full_info().uss
    df = ref.get()
    base = ref._shared_base()  # the one read-only mapping of this segment in this process
    lo, size = base.ctypes.data, base.nbytes
    report: dict[str, Any] = {"outside": {}, "shares": {}}
    assert isinstance(df.index, pd.RangeIndex)  # metadata only (its _values would materialize it)
    for name, values in columns_of(df):
        bufs = buffers_of(values)
        report["outside"][name] = outside(bufs, lo, size)
        report["shares"][name] = bool(bufs)
        if isinstance(values, np.ndarray):
            report["shares"][name] = np.shares_memory(values, base)
        elif hasattr(values, "_ndarray"):
            report["shares"][name] = np.shares_memory(values._ndarray, base)
        elif hasattr(values, "_mask"):
            report["shares"][name] = np.shares_memory(values._data, base) and np.shares_memory(values._mask, base)
        elif hasattr(values, "codes"):
            report["shares"][name] = np.shares_memory(values.codes, base)
    # Read every byte (the parent mapped and read them too, so they are shared pages).
    report["checksum"] = int(base.sum(dtype=np.uint64))
    report["rows"] = len(df)
    report["float_sum"] = float(df["f"].to_numpy().sum())
    report["uss_growth"] = proc.memory_full_info().uss - uss0
    report["readonly"] = not df["f"].to_numpy().flags.writeable
    return report


def test_zero_copy_2m_rows_every_column_in_the_segment_and_uss_flat(spawn_pool: Any) -> None:
    df = _zero_copy_frame(2_000_000)
    with nocopy.share(df) as ref:
        mine = ref._shared_base()
        checksum = int(mine.sum(dtype=np.uint64))  # map and touch every page here first
        report = spawn_pool.apply(worker_zero_copy, (ref,))
        assert report["rows"] == len(df)
        assert report["checksum"] == checksum
        assert report["float_sum"] == pytest.approx(df["f"].sum())
        assert set(report["outside"]) == {repr(c) for c in df.columns}
        for name, bad in report["outside"].items():
            assert bad == [], f"column {name}: buffers outside the segment {bad}"
        assert all(report["shares"].values()), report["shares"]
        assert report["readonly"]
        assert report["uss_growth"] < 0.10 * ref.nbytes, (report["uss_growth"], ref.nbytes)
        assert ref.nbytes > 100e6  # the frame is as big as the test claims


def test_in_process_views_lie_in_the_mapping_for_every_kind() -> None:
    df = _frame(50)
    df.index = pd.date_range("2000", periods=50, tz="UTC")
    with nocopy.share(df) as ref:
        got = ref.get()
        lo, size = mapping_range(got["f"].to_numpy())
        for name, values in [*columns_of(got), ("index", got.index._values)]:
            bufs = buffers_of(values)
            assert bufs, name
            assert outside(bufs, lo, size) == [], name


@pytest.mark.slow
def test_classic_10m_rows_strings_never_fixed_width(spawn_pool: Any) -> None:
    df = _classic(10_000_000)
    with nocopy.share(df) as ref:
        out = spawn_pool.apply(worker_classic, (ref, 10_000_000))
    assert out["dtype"] == "str" and out["arrow_type"] == "large_string"
    assert out["no_fixed_width"]
    assert out["equal"], out
    assert out["longest"] == 300


def _classic(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    value = rng.random(n)
    value[::10] = np.nan
    words = np.array([f"w{i}" for i in range(1000)] + ["x" * 300], dtype=object)
    return pd.DataFrame({
        "when": np.datetime64("2020-01-01", "s") + np.arange(n).astype("m8[s]"),
        "value": value,
        "label": pd.Series(words[rng.integers(0, len(words), n)], dtype=object),
    })


def worker_classic(ref: nocopy.Shared[pd.DataFrame], n: int) -> dict[str, Any]:
    got = ref.get()
    expected = _classic(n)
    arrow = got["label"].array._pa_array
    strings = pa.array(expected["label"].to_numpy(), type=pa.large_string())
    return {
        "dtype": str(got["label"].dtype),
        "arrow_type": str(arrow.type),
        "no_fixed_width": all(dt.kind not in "US" for dt in got.dtypes if isinstance(dt, np.dtype)),
        "equal": arrow.combine_chunks().equals(strings)
        and got["value"].equals(expected["value"])
        and got["when"].equals(expected["when"]),
        "longest": int(pa.compute.max(pa.compute.utf8_length(arrow)).as_py()),
    }


# -- read-only and private views -----------------------------------------------


def test_views_are_read_only_and_shared_data_never_changes() -> None:
    df = _frame()
    with nocopy.share(df) as ref:
        got = ref.get()
        for col in ("f", "i", "Int64", "cat", "dt"):
            with pytest.raises(Exception) as info:
                got.loc[0, col] = got[col].iloc[1]
            chain = [info.value, info.value.__context__, info.value.__cause__]
            assert any("read-only" in str(e) for e in chain if e is not None), (col, info.value)
        with pytest.raises(ValueError, match="read-only"):
            got["f"].to_numpy()[0] = 42.0
        with pytest.raises(ValueError, match="read-only"):
            got.iloc[0, 0] = 42.0
        # Arrow-backed strings are immutable: pandas replaces the column array.
        got.loc[0, "str"] = "changed"
        tm.assert_frame_equal(ref.get(), df)


def test_private_view_accepts_writes_copying_only_the_touched_column() -> None:
    df = _frame(1000)
    with nocopy.share(df) as ref:
        private = ref.get(private=True)
        lo, size = mapping_range(private["i"].to_numpy())
        before = {name: buffers_of(v) for name, v in columns_of(private)}
        private.loc[:, "f"] = 7.0
        private.loc[3, "i"] = -1
        private.loc[0, "str"] = "new"
        assert (private["f"] == 7.0).all() and private.loc[3, "i"] == -1 and private.loc[0, "str"] == "new"
        # The shared data (and every other view) is unchanged.
        tm.assert_frame_equal(ref.get(), df)
        # Untouched columns are still the same views of the private mapping.
        for name, values in columns_of(private):
            if name in ("'f'", "'i'", "'str'"):
                continue
            assert buffers_of(values) == before[name], name
            assert outside(buffers_of(values), lo, size) == [], name


# -- unsupported data and pickling --------------------------------------------


def test_object_column_of_dicts_raises_naming_the_column() -> None:
    df = pd.DataFrame({"ok": [1, 2], "payload": [{"a": 1}, {"b": 2}]})
    with pytest.raises(UnsupportedTypeError) as info:
        nocopy.share(df)
    msg = str(info.value)
    assert "'payload'" in msg and "object" in msg and "dict" in msg
    assert "allow_pickle=True" in msg and "Fix" in msg


@pytest.mark.parametrize("values", [[1, "a", 2.5], ["a", b"bytes"], [pd.Timestamp("2020"), "x"]], ids=["mixed", "bytes", "ts"])
def test_mixed_object_columns_raise(values: list[Any]) -> None:
    with pytest.raises(UnsupportedTypeError, match="'m'"):
        nocopy.share(pd.DataFrame({"m": pd.Series(values, dtype=object)}))


def test_allow_pickle_pickles_just_that_column_and_uri_attach_refuses_it(procs: Any) -> None:
    df = pd.DataFrame({"x": np.arange(3.0), "payload": [{"a": 1}, None, {"b": [2]}]})
    with nocopy.share(df, allow_pickle=True) as ref:
        got = ref.get()
        tm.assert_frame_equal(got, df)
        assert np.shares_memory(got["x"].to_numpy(), ref._shared_base())
        report = nocopy.explain(df, allow_pickle=True)
        assert report["['payload']"].status == "pickled" and report["['x']"].status == "zero-copy"
        with pytest.raises(SegmentAccessError, match="trusted=True"):
            nocopy.attach(ref.uri).get()
        tm.assert_frame_equal(nocopy.attach(ref.uri, trusted=True).get(), df)


# -- corrupt segments ---------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize(("rows", "where"), [(40, 5), (1_500_000, 1_300_000)], ids=["small", "second-block"])
def test_corrupt_string_offsets_are_refused(trusted: bool, rows: int, where: int) -> None:
    df = pd.DataFrame({"s": pd.array(["abc", "de", None, "f"] * (rows // 4), dtype="str")})
    mem, header = planted(df)
    chunk = header.tree["cols"][0]["s"]["chunks"][0]
    offsets = buffer_in(mem, header, chunk["o"]).view(np.int64)
    offsets[where] = offsets[-1] - 1  # in bounds, but out of order
    with pytest.raises(SegmentCorruptError, match="offsets"):
        decode_buffer(mem, trusted=trusted)


def test_corrupt_category_codes_and_multiindex_codes_are_refused() -> None:
    df = pd.DataFrame({"c": pd.Categorical(list("abab"))}, index=pd.MultiIndex.from_product([[1, 2], ["x", "y"]]))
    mem, header = planted(df)
    buffer_in(mem, header, header.tree["cols"][0]["codes"]["b"])[:] = 77
    with pytest.raises(SegmentCorruptError):
        decode_buffer(mem, trusted=True)
    mem, header = planted(df)
    buffer_in(mem, header, header.tree["index"]["codes"][0]["b"])[:] = 9
    with pytest.raises(SegmentCorruptError):
        decode_buffer(mem, trusted=True)


def test_corrupt_arrow_column_is_refused() -> None:
    df = pd.DataFrame({"a": pd.array(pa.array([["x"], ["yy", "z"]]), dtype=pd.ArrowDtype(pa.list_(pa.string())))})
    mem, header = planted(df)
    raw = buffer_in(mem, header, header.tree["cols"][0]["v"]["b"])
    raw[len(raw) // 2 :] = 0xFF
    with pytest.raises(SegmentCorruptError):
        decode_buffer(mem, trusted=True)


def test_column_length_mismatch_is_refused() -> None:
    mem, header = planted(pd.DataFrame({"a": np.arange(4.0)}))
    import json

    from nocopy._codec._layout import PREFIX

    tree = header.tree
    tree["index"]["stop"] = 9  # one digit, like the real 4: the header keeps its length
    body = json.dumps({"tree": tree, "buffers": header.buffers}, separators=(",", ":")).encode()
    hlen = int(np.frombuffer(mem[12:16].tobytes(), "<u4")[0])
    assert len(body) == hlen
    mem[PREFIX.size : PREFIX.size + hlen] = np.frombuffer(body, np.uint8)
    with pytest.raises(SegmentCorruptError, match="rows"):
        decode_buffer(mem, trusted=True)


# -- optional dependencies ------------------------------------------------------


def test_import_nocopy_imports_neither_pandas_nor_pyarrow() -> None:
    out = run_python("""
        import sys, nocopy, numpy as np
        nocopy.share(np.arange(3)).get()
        print(sorted(m for m in ("pandas", "pyarrow") if m in sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_pyarrow_numeric_frames_work_and_strings_name_the_extra() -> None:
    out = run_python("""
        import sys
        sys.modules["pyarrow"] = None   # as if pyarrow were not installed
        import numpy as np, pandas as pd, nocopy
        import pandas.testing as tm
        df = pd.DataFrame({"a": np.arange(3.0), "b": [1, 2, 3]})
        tm.assert_frame_equal(nocopy.share(df).get(), df)
        try:
            nocopy.share(pd.DataFrame({"s": ["x", "y"]}))
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    assert out.returncode == 0, out.stderr
    assert "pip install 'nocopy[pandas]'" in out.stdout and "'s'" in out.stdout


def test_attach_from_an_unrelated_process_gives_an_equal_frame() -> None:
    df = _frame()
    with nocopy.share(df) as ref:
        out = run_python(f"""
            import sys
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            import nocopy, pandas.testing as tm
            from test_pandas import _frame
            tm.assert_frame_equal(nocopy.attach({ref.uri!r}).get(), _frame())
            print("equal")
        """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "equal"


def test_reading_a_frame_without_pandas_names_the_extra() -> None:
    df = pd.DataFrame({"a": np.arange(3.0)})
    with nocopy.share(df) as ref:
        out = run_python(f"""
            import sys
            sys.modules["pandas"] = None   # as if pandas were not installed
            import nocopy
            try:
                nocopy.attach({ref.uri!r}).get()
            except ImportError as exc:
                print("ImportError:", exc)
        """)
    assert out.returncode == 0, out.stderr
    assert "ImportError:" in out.stdout and "pip install 'nocopy[pandas]'" in out.stdout


@pytest.mark.parametrize("trusted", [True, False])
def test_random_corruption_never_crashes(trusted: bool) -> None:
    """Flip bytes in the header and in the data of a frame with every offset-bearing
    column kind; each decode must succeed or raise SegmentCorruptError, never crash.
    Runs in a fresh interpreter so that a segfault fails the test instead of pytest."""
    out = run_python(f"""
        import json, random, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, pandas as pd, pyarrow as pa
        from strategies import planted
        from nocopy._codec import decode_buffer
        from nocopy._codec._layout import PREFIX
        from nocopy.errors import SegmentCorruptError
        df = pd.DataFrame({{
            "s": pd.array(["abc", None, "dé", ""] * 8, dtype="str"),
            "o": pd.Series(["x", "yy", None, "z"] * 8, dtype=object),
            "c": pd.Categorical(list("abcd") * 8),
            "l": pd.array(pa.array([[1], None, [2, 3], []] * 8), dtype=pd.ArrowDtype(pa.list_(pa.int64()))),
            "m": pd.array([1, None, 3, 4] * 8, dtype="Int64"),
            "t": pd.date_range("2020", periods=32, tz="Europe/Paris"),
        }}, index=pd.MultiIndex.from_product([list("ab"), range(16)]))
        clean, header = planted(df)
        rng = random.Random(1)
        outcomes = {{"ok": 0, "refused": 0}}
        for i in range(600):
            mem = clean.copy()
            if i % 2:   # data area: offsets, codes, IPC metadata...
                for _ in range(rng.randint(1, 4)):
                    mem[rng.randrange(header.data_offset, clean.nbytes)] = rng.randrange(256)
            else:       # header JSON: change one digit (lengths, indices, counts)
                start, end = PREFIX.size, header.data_offset
                digits = [j for j in range(start, end) if 48 <= mem[j] <= 57]
                mem[rng.choice(digits)] = rng.randrange(48, 58)
            try:
                got = decode_buffer(mem, trusted={trusted!r})
            except SegmentCorruptError:
                outcomes["refused"] += 1
                continue
            outcomes["ok"] += 1
            try:
                got.to_string()   # read everything: garbage values may not format, but must not crash
            except (ValueError, OverflowError, NotImplementedError, pa.ArrowException):
                outcomes["garbage"] = outcomes.get("garbage", 0) + 1
        print(json.dumps(outcomes))
    """, timeout=240)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    outcomes = json.loads(out.stdout.strip().splitlines()[-1])
    assert outcomes["ok"] + outcomes["refused"] == 600 and outcomes["refused"] > 50, outcomes


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_every_dtype_round_trips_under_each_start_method(method: str) -> None:
    df = _frame(20)
    df.attrs = {"m": method}
    objs = [df, df["tz"], df.index, {"nested": [df[["str", "cat"]]]}]
    expected = [df, df["tz"], df.index, None]
    refs = [nocopy.share(o) for o in objs[:3]]
    try:
        with mp.get_context(method).Pool(1) as pool:
            errors = pool.apply(worker_roundtrip_many, ([(r, pickle.dumps(e)) for r, e in zip(refs, expected, strict=False)],))
            with nocopy.share(objs[3]) as nested:
                got = pool.apply(_get_and_pickle, (nested,))
    finally:
        for r in refs:
            r.close()
    assert errors == [None, None, None]
    tm.assert_frame_equal(pickle.loads(got)["nested"][0], df[["str", "cat"]])


def _get_and_pickle(ref: nocopy.Shared[Any]) -> bytes:
    return pickle.dumps(ref.get())


@pytest.mark.parametrize("dtype", ["object", "string[python]"])
def test_strings_arrow_cannot_store_are_refused_or_pickled_as_objects(dtype: str) -> None:
    # A lone surrogate is a valid Python str but not UTF-8: Arrow refuses it.
    df = pd.DataFrame({"s": pd.Series(["a", "\ud800"], dtype=dtype)})
    with pytest.raises(UnsupportedTypeError, match=r"column 's'.*strings Arrow cannot store"):
        nocopy.share(df)
    with nocopy.share(df, allow_pickle=True) as ref:
        got = ref.get()["s"]
        assert got.dtype == object and got.tolist() == ["a", "\ud800"]
