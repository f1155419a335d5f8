"""nocopy.explain(): a per-column report of what share() would do, without doing it."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import nocopy


def _df() -> pd.DataFrame:
    return pd.DataFrame({
        "price": np.arange(3.0),
        "when": pd.date_range("2020", periods=3, tz="UTC"),
        "qty": pd.array([1, None, 3], dtype="Int64"),
        "kind": pd.Categorical(["a", "b", "a"]),
        "name": pd.array(["x", None, "z"], dtype="str"),
        "legacy": pd.Series(["p", None, "r"], dtype=object),
        "payload": [{"a": 1}, {}, None],
    })


def test_reports_each_column_with_its_status() -> None:
    report = nocopy.explain(_df())
    by_path = {n.path: n for n in report}
    assert by_path[".index"].status == "zero-copy" and by_path[".index"].dtype == "RangeIndex"
    for col in ("price", "when", "qty", "kind", "name"):
        assert by_path[f"[{col!r}]"].status == "zero-copy", col
    assert by_path["['when']"].dtype == "datetime64[ns, UTC]" or "UTC" in by_path["['when']"].dtype
    assert by_path["['qty']"].detail == "data + mask"
    legacy = by_path["['legacy']"]
    assert legacy.status == "converted" and "large_string" in legacy.detail
    payload = by_path["['payload']"]
    assert payload.status == "unsupported" and "dict" in payload.detail and "'payload'" in payload.detail
    assert not report.supported and not report.zero_copy
    assert report.summary() == {"zero-copy": sum(1 for n in report if n.status == "zero-copy"), "converted": 1, "unsupported": 1}


def test_prints_as_a_table_and_indexes_by_position_and_path() -> None:
    report = nocopy.explain(_df())
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "dtype", "status", "detail"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert any(line.startswith("['payload']") and "unsupported" in line for line in lines)
    assert lines[-1].startswith(f"({len(report)} parts;")  # more than one: the plural
    assert repr(report) == text
    assert "<table>" in report._repr_html_()
    assert report[0] is next(iter(report)) and report[-1] is list(report)[-1]
    assert report["['price']"].dtype == "float64"
    with pytest.raises(KeyError):
        report["['nope']"]


def test_allow_pickle_reports_pickled_and_supported() -> None:
    report = nocopy.explain(_df(), allow_pickle=True)
    assert report["['payload']"].status == "pickled"
    assert not report.supported and not report.zero_copy  # supported: without allow_pickle


class _CountsPickling:
    pickled = 0

    def __reduce__(self) -> tuple[type, tuple[()]]:
        type(self).pickled += 1
        return (_CountsPickling, ())


def test_allow_pickle_describes_without_pickling() -> None:
    report = nocopy.explain({"obj": _CountsPickling()}, allow_pickle=True)
    assert report["['obj']"].status == "pickled"
    assert _CountsPickling.pickled == 0
    with nocopy.share({"obj": _CountsPickling()}, allow_pickle=True):
        assert _CountsPickling.pickled == 1  # share() does pickle it


def test_nested_and_arrow_paths() -> None:
    table = pa.table({"a": [1, 2], "s": ["x", "y"]})
    report = nocopy.explain({"t": table, "arrs": [np.arange(3), pd.Series([1.5], name="v")]})
    paths = [n.path for n in report]
    assert "['t']['a']" in paths and "['t']['s']" in paths
    assert "['arrs'][0]" in paths
    assert all(n.status == "zero-copy" for n in report)
    assert report.zero_copy


def test_explaining_copies_nothing_and_creates_no_segment() -> None:
    big = pd.DataFrame({"a": np.zeros(5_000_000), "b": np.ones(5_000_000, dtype="i8")})  # 80 MB
    mine = f"nocopy-{os.getpid()}-"
    before = {s.name for s in nocopy.segments() if s.name.startswith(mine)}
    tracemalloc.start()
    try:
        report = nocopy.explain(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
    assert report.zero_copy
    assert {s.name for s in nocopy.segments() if s.name.startswith(mine)} == before


def test_explain_matches_what_share_does() -> None:
    df = _df().drop(columns=["payload"])
    report = nocopy.explain(df)
    assert report.supported
    with nocopy.share(df) as ref:
        got = ref.get()
        base = ref._shared_base()
        for col in ("price", "when", "qty"):
            assert report[f"[{col!r}]"].status == "zero-copy"
            values = got[col].array
            data = getattr(values, "_ndarray", getattr(values, "_data", None))
            assert np.shares_memory(data, base), col
        assert str(got["legacy"].dtype) == "str"  # "converted": Arrow-backed now


def test_a_shared_handle_is_reported_as_already_shared() -> None:
    # share(ref) returns ref itself, so explain must not call it unsupported.
    with nocopy.share(np.arange(3)) as ref:
        report = nocopy.explain(ref)
        assert report.supported and report.zero_copy
        assert report[0].status == "zero-copy"
        assert "already in shared memory" in report[0].detail
