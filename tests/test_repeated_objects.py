"""Long object columns that repeat a few objects: grouped by identity, each distinct object converted once.

Pickle writes a repeated object once and then a memo reference; the codec
gets the same saving by converting only the distinct objects and letting
Arrow lay out the rows (`nocopy._codec._arrow._objects.repeats`). These tests check
that it does, and that nothing else changes: values, missing-value kinds,
refusals naming the column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pandas.testing as tm
import pyarrow as pa
import pytest

import nocopy
from nocopy._codec._arrow import _objects as _arrow
from nocopy.errors import UnsupportedTypeError

ROWS = 1 << 16  # long enough to be grouped (_arrow._REPEAT_MIN)
WORDS = np.array(["alpha", "ü" * 40, "", "x"], dtype=object)


def _repeating(extra: list[Any] | None = None) -> np.ndarray:
    """ROWS rows drawn from WORDS, with *extra* objects planted at spread-out rows."""
    arr = WORDS[np.random.default_rng(1).integers(0, len(WORDS), ROWS)]
    for i, obj in enumerate(extra or []):
        arr[(i * 7919 + 3) % ROWS] = obj
    return arr


@pytest.fixture
def pa_array_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every object array handed to ``pyarrow.array`` while the test runs."""
    sizes: list[int] = []
    real = pa.array

    def spy(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.dtype == object:
            sizes.append(len(obj))
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(pa, "array", spy)
    return sizes


def test_repeats_groups_by_identity_in_order_of_first_appearance() -> None:
    arr = _repeating()
    rep = _arrow.repeats(arr)
    assert rep is not None
    assert len(rep.distinct) == len(WORDS) and {id(x) for x in rep.distinct} == {id(x) for x in WORDS}
    firsts = [next(i for i in range(ROWS) if arr[i] is obj) for obj in rep.distinct]
    assert firsts == sorted(firsts) and firsts[0] == 0
    idx = rep.indices.to_numpy()
    assert all(rep.distinct[idx[i]] is arr[i] for i in range(0, ROWS, 97))


@pytest.mark.parametrize(
    ("distinct", "rows"),
    [(1, 1), (3, 10), (1000, 1 << 20), (1 << 18, 1 << 20), (50, 3 * _arrow._BLOCK + 7)],
)
def test_first_appearances_match_a_running_maximum(distinct: int, rows: int) -> None:
    # Indices numbered in order of first appearance, as Arrow's dictionary_encode gives them.
    raw = np.random.default_rng(distinct).integers(0, distinct, rows)
    _, at, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(at), np.int32)
    rank[np.argsort(at)] = np.arange(len(at))
    indices = rank[inverse]
    assert _arrow._first_appearances(indices).tolist() == sorted(at.tolist())
    assert _arrow._first_appearances(indices[:0]).tolist() == []


def test_repeats_leaves_short_unique_and_strided_arrays_alone() -> None:
    assert _arrow.repeats(_repeating()[: _arrow._REPEAT_MIN - 1]) is None
    assert _arrow.repeats(np.array([f"w{i}" for i in range(ROWS)], dtype=object)) is None
    assert _arrow.repeats(_repeating()[::2]) is None  # not C-contiguous
    # Equal strings that are distinct objects stay apart: no value is compared.
    fresh = np.array(["".join(["a", "b"]) for _ in range(ROWS)], dtype=object)
    assert _arrow.repeats(fresh) is None


def test_a_repetitive_object_column_converts_each_distinct_object_once(pa_array_sizes: list[int]) -> None:
    arr = _repeating([None, np.nan])
    df = pd.DataFrame({"s": pd.Series(arr, dtype=object), "n": np.arange(ROWS)})
    with nocopy.share(df) as ref:
        got = ref.get()
    assert max(pa_array_sizes) <= len(WORDS) + 2, pa_array_sizes
    want = df.astype({"s": "str"})
    tm.assert_frame_equal(got, want)
    pa_array_sizes.clear()
    with nocopy.share(arr) as ref:
        back = ref.get()
    assert max(pa_array_sizes) <= len(WORDS) + 2, pa_array_sizes
    assert back.dtype == object and back[3] is None and isinstance(back[7922], float) and np.isnan(back[7922])
    keep = np.ones(ROWS, bool)
    keep[[3, 7922]] = False
    assert back[keep].tolist() == arr[keep].tolist()


def test_grouped_arrays_keep_each_kind_of_missing_value_where_it_was() -> None:
    missing = [None, np.nan, pd.NA, None, pd.NA, np.nan]
    arr = _repeating(missing)
    assert _arrow.repeats(arr) is not None
    with nocopy.share(arr) as ref:
        got = ref.get()
    for i, want in enumerate(missing):
        have = got[(i * 7919 + 3) % ROWS]
        if isinstance(want, float):
            assert isinstance(have, float) and np.isnan(have), (i, have)
        else:
            assert have is want, (i, have)
    assert sum(isinstance(x, str) for x in got) == ROWS - len(missing)


def test_grouped_bytes_round_trip() -> None:
    arr = np.array([b"\x00\xff", b"", b"abc"], dtype=object)[np.arange(ROWS) % 3]
    arr[5] = None
    assert _arrow.repeats(arr) is not None
    with nocopy.share(arr) as ref:
        got = ref.get()
    assert got[5] is None and got[:5].tolist() == arr[:5].tolist() and got[6:].tolist() == arr[6:].tolist()
    df = pd.DataFrame({"b": pd.Series(arr, dtype=object)})
    with nocopy.share(df) as ref:
        col = ref.get()["b"]
    assert col.dtype == pd.ArrowDtype(pa.large_binary()) and col.isna().sum() == 1 and col[7] == arr[7]


@pytest.mark.parametrize(
    ("odd", "holding"),
    [(b"a", "bytes, str"), (bytearray(b"b"), "bytearray, str"), (1, "int, str"), ({"a": 1}, "dict, str")],
    ids=["bytes", "bytearray", "int", "dict"],
)
def test_one_odd_object_in_a_grouped_column_is_refused_naming_the_column(odd: Any, holding: str) -> None:
    arr = _repeating([odd])
    assert _arrow.repeats(arr) is not None
    df = pd.DataFrame({"ok": np.arange(ROWS), "payload": pd.Series(arr, dtype=object)})
    with pytest.raises(UnsupportedTypeError) as info:
        nocopy.share(df)
    msg = str(info.value)
    assert "column 'payload'" in msg and f"holding {holding}" in msg and "allow_pickle=True" in msg
    with pytest.raises(UnsupportedTypeError, match="object"):
        nocopy.share(arr)


def test_strings_arrow_cannot_store_are_refused_when_grouped() -> None:
    arr = _repeating(["\ud800"])
    with pytest.raises(UnsupportedTypeError, match=r"column 's'.*strings Arrow cannot store"):
        nocopy.share(pd.DataFrame({"s": pd.Series(arr, dtype=object)}))
    with pytest.raises(UnsupportedTypeError, match="str Arrow cannot store"):
        nocopy.share(arr)


def test_python_backed_string_columns_are_grouped_too(pa_array_sizes: list[int]) -> None:
    s = pd.Series(_repeating([None]), dtype="string[python]")
    with nocopy.share(pd.DataFrame({"s": s})) as ref:
        got = ref.get()["s"]
    assert max(pa_array_sizes) <= len(WORDS) + 1, pa_array_sizes
    assert got.dtype == pd.StringDtype("pyarrow", na_value=pd.NA)
    tm.assert_series_equal(got, s.astype(got.dtype).rename("s"))


def test_get_rebuilds_a_grouped_array_with_one_object_per_distinct_value() -> None:
    # As pickle does: a column of repeated objects comes back as repeated objects,
    # not as one new str per row.
    arr = _repeating([None, pd.NA])
    with nocopy.share(arr) as ref:
        got = ref.get()
    assert got.tolist() == arr.tolist()
    assert len({id(x) for x in got}) == len(WORDS) + 2
    arr_b = np.array([b"ab", b""], dtype=object)[np.arange(ROWS) % 2]
    with nocopy.share(arr_b) as ref:
        got_b = ref.get()
    assert got_b.tolist() == arr_b.tolist() and len({id(x) for x in got_b}) == 2

