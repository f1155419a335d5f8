"""The benchmarks' data. The classic experiment's: a record array of (datetime, float with NaN, 6-byte string).

The original builds a DataFrame from the Python list
``[(datetime.today(), 1, 'string'), (datetime.today(), NaN, 'abc')] * (rows // 2)``
and converts it with ``to_records(index=False, column_dtypes={'character_col': 'S6'})``.
`make_records` builds the same DataFrame column by column (five times
faster, identical result; a test compares the two) and converts it the same way.

``nocopy bench pandas`` and ``nocopy bench ray`` share DataFrames:
`mixed_frame` and `dated_frame`; ``nocopy bench polars`` a Polars
one, `polars_frame`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

__all__ = [
    "COLUMNS",
    "FIELD",
    "MIXED_NUMERIC",
    "dated_frame",
    "expected_sum",
    "make_records",
    "make_records_literally",
    "mixed_frame",
    "polars_frame",
]

COLUMNS = ("date_col", "float_col", "character_col")
FIELD = "float_col"  # the field every worker sums


def _stamps(stamps: tuple[datetime, datetime] | None) -> tuple[datetime, datetime]:
    # The original calls datetime.today() twice: two (nearly) equal stamps.
    return stamps if stamps is not None else (datetime.today(), datetime.today())


def make_records(rows: int, *, stamps: tuple[datetime, datetime] | None = None) -> np.recarray:
    """The experiment's record array of *rows* rows (even rows are the first pair member).

    Needs pandas (``pip install 'nocopy[pandas]'``): the conversion is pandas'
    own ``DataFrame.to_records``, as in the original.

    Examples
    --------
    >>> arr = make_records(4)
    >>> arr.dtype.names, arr.float_col.tolist()[:2]
    (('date_col', 'float_col', 'character_col'), [1.0, nan])
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, not {rows}")
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - the bench extra brings pandas
        raise ImportError("the benchmark's data needs pandas: pip install 'nocopy[pandas]'") from exc
    first, second = _stamps(stamps)
    pair = np.array([first, second], dtype="datetime64[us]")
    frame = pd.DataFrame(
        {
            "date_col": np.resize(pair, rows),
            "float_col": np.resize(np.array([1.0, np.nan]), rows),
            "character_col": np.resize(np.array(["string", "abc"], dtype=object), rows),
        }
    )
    return _to_records(frame)


def make_records_literally(rows: int, *, stamps: tuple[datetime, datetime] | None = None) -> np.recarray:
    """The original construction, from a Python list of tuples (slow; for tests)."""
    import pandas as pd

    first, second = _stamps(stamps)
    pairs: list[tuple[Any, ...]] = [(first, 1, "string"), (second, np.nan, "abc")] * (rows // 2 + 1)
    frame = pd.DataFrame(pairs[:rows], columns=list(COLUMNS))
    return _to_records(frame)


def _to_records(frame: Any) -> np.recarray:
    records: np.recarray = frame.to_records(index=False, column_dtypes={"character_col": "S6"})
    return records


def expected_sum(arr: np.ndarray) -> float:
    """The reference answer, computed once in the parent."""
    return float(np.nansum(arr[FIELD]))


MIXED_NUMERIC = 10  # numeric columns of mixed_frame()


SPARSE_COLUMNS = 1000  # columns of sparse_features()
SPARSE_DENSITY = 0.01


def sparse_features(rows: int) -> Any:
    """A CSR matrix of *rows* x 1,000 float64 features, 1 % stored (text features, one-hot
    encodings); ~120 MB at 1M rows. Needs scipy.

    Examples
    --------
    >>> x = sparse_features(100)
    >>> x.format, x.shape, x.nnz
    ('csr', (100, 1000), 1000)
    """
    import scipy.sparse as sp

    return sp.random(rows, SPARSE_COLUMNS, density=SPARSE_DENSITY, format="csr", random_state=0, dtype=np.float64)


def mixed_frame(rows: int) -> Any:
    """10 numeric columns (float64 with NaN, int64) and 2 string columns (``str``, object); ~1 GB at 8.5M rows.

    Examples
    --------
    >>> df = mixed_frame(3)
    >>> list(df.columns)[-3:], len(df)
    (['n9', 'label', 'legacy'], 3)
    """
    import pandas as pd

    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {}
    for i in range(MIXED_NUMERIC):
        if i % 2:
            cols[f"n{i}"] = rng.integers(0, 1 << 40, rows)
        else:
            v = rng.random(rows)
            v[:: 7 + i] = np.nan
            cols[f"n{i}"] = v
    words = np.array([f"word{i}" for i in range(5000)], dtype=object)
    cols["label"] = pd.Series(words[rng.integers(0, len(words), rows)], dtype="str")
    cols["legacy"] = pd.Series(words[rng.integers(0, len(words), rows)], dtype=object)
    return pd.DataFrame(cols)


def polars_frame(rows: int) -> Any:
    """A Polars frame like `mixed_frame`: 10 numeric columns (float64 with nulls, int64),
    a ``String`` column and a ``Datetime`` column; ~1 GB at 8.5M rows.

    Examples
    --------
    >>> df = polars_frame(3)
    >>> df.columns[-3:], df.height
    (['n9', 'label', 'when'], 3)
    """
    try:
        import polars as pl
    except ImportError as exc:  # pragma: no cover - the CLI checks first
        raise ImportError("nocopy bench polars needs polars: pip install 'nocopy[polars]'") from exc
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {}
    for i in range(MIXED_NUMERIC):
        if i % 2:
            cols[f"n{i}"] = pl.Series(rng.integers(0, 1 << 40, rows))
        else:
            v = rng.random(rows)
            v[:: 7 + i] = np.nan
            cols[f"n{i}"] = pl.Series(v, nan_to_null=True)
    words = pl.Series([f"word{i}" for i in range(5000)])
    cols["label"] = words.gather(pl.Series(rng.integers(0, len(words), rows)))
    start = np.datetime64("2020-01-01T00:00:00", "us")
    cols["when"] = pl.Series(start + np.arange(rows).astype("m8[s]").astype("m8[us]"))
    return pl.DataFrame(cols)


def dated_frame(nbytes: int) -> Any:
    """datetime64 ``t``, float ``x`` and 8-character object strings ``s``: 32 bytes a row in Arrow.

    Examples
    --------
    >>> df = dated_frame(96)
    >>> list(df.columns), len(df)
    (['t', 'x', 's'], 3)
    """
    import pandas as pd

    n = max(1, nbytes // 32)
    words = np.array([f"w{i:07d}" for i in range(1000)], dtype=object)
    return pd.DataFrame(
        {
            "t": pd.date_range("2000-01-01", periods=n, freq="s"),
            "x": np.linspace(0.0, 1.0, n),
            "s": pd.Series(words[np.arange(n) % 1000], dtype=object),
        }
    )
