"""Every access the pandas codec makes to pandas' internals, each as a small named function.

pandas' public constructors copy (or validate by rebuilding) where nocopy needs
a view of the segment, so the codec uses a few private constructors and
attributes, measured not to copy (see FACTS.md "pandas 3.1.1 over shared
buffers"). They live here only, so a pandas upgrade that moves one breaks this
module and nothing else. SLF001 is silenced per line: a third party's internals.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

__all__ = [
    "arrow_chunks",
    "backing_ndarray",
    "column_array",
    "datetime_array",
    "frame_from_blocks",
    "masked_parts",
    "own_base",
    "pandas",
    "set_freq",
    "timedelta_array",
    "tz_name",
    "values_of",
]

_INSTALL = "pip install 'nocopy[pandas]'"


def pandas() -> Any:
    """The pandas module, or an ImportError that names the extra to install."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - only without pandas
        raise ImportError(f"reading shared pandas data needs pandas. Fix: {_INSTALL}") from exc
    return pd


def _mod(name: str) -> Any:
    """A pandas submodule, typed as Any (private constructors are not in the stubs)."""
    return importlib.import_module(name)


def values_of(obj: Any) -> Any:
    """The array behind an Index or Series (ndarray or ExtensionArray), never a copy."""
    return obj._values  # noqa: SLF001


def column_array(df: Any, i: int) -> Any:
    """Column *i* of *df* as its own array (not through a Series, not a copy)."""
    return df._get_column_array(i)  # noqa: SLF001


def backing_ndarray(values: Any) -> np.ndarray:
    """The int64-compatible ndarray behind a DatetimeArray or TimedeltaArray."""
    out: np.ndarray = values._ndarray  # noqa: SLF001
    return out


def masked_parts(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(data, mask) of a nullable Integer/Floating/Boolean array."""
    return values._data, values._mask  # noqa: SLF001


def arrow_chunks(values: Any) -> Any:
    """The ChunkedArray behind an Arrow-backed array, or None if it has none."""
    return getattr(values, "_pa_array", None)


def datetime_array(data: np.ndarray, dtype: Any) -> Any:
    """A DatetimeArray over *data* (datetime64), without the copy the public constructor makes."""
    return _mod("pandas.core.arrays").DatetimeArray._simple_new(data, dtype=dtype)  # noqa: SLF001


def timedelta_array(data: np.ndarray) -> Any:
    """A TimedeltaArray over *data* (timedelta64), without a copy."""
    arrays = _mod("pandas.core.arrays")
    return arrays.TimedeltaArray._simple_new(data, dtype=data.dtype)  # noqa: SLF001


def own_base(values: Any) -> Any:
    """*values* (ndarray or NDArray-backed) over the same bytes with a .base of its own.

    IntervalArray copies its right side when both sides have the same .base
    (guarding against overlapping buffers); ours are disjoint slices of one
    mapping, so a distinct base object (a memoryview) avoids that copy.
    """
    if isinstance(values, np.ndarray):
        raw: Any = values.reshape(-1).view(np.uint8)
        return np.frombuffer(memoryview(raw), dtype=values.dtype)
    if hasattr(values, "_ndarray"):
        inner = own_base(values._ndarray)  # noqa: SLF001
        return type(values)._simple_new(inner, dtype=values.dtype)  # noqa: SLF001
    return values


def set_freq(idx: Any, freq: str) -> None:
    """Set a DatetimeIndex/TimedeltaIndex's freq unchecked: checking rebuilds the range (a copy)."""
    idx._freq = _mod("pandas.tseries.frequencies").to_offset(freq)  # noqa: SLF001


def tz_name(tz: Any) -> Any:
    """pandas' own name of a tz object (a tz database key, "dateutil/<key>", ...)."""
    return _mod("pandas._libs.tslibs.timezones").get_timezone(tz)


def frame_from_blocks(blocks: list[tuple[Any, np.ndarray]], index: Any, columns: Any) -> Any:
    """A DataFrame of one block per column, without consolidation (so without a copy)."""
    try:
        from_blocks = _mod("pandas.api.internals").create_dataframe_from_blocks
    except (ImportError, AttributeError):  # pragma: no cover - pandas < 3
        arrays = {i: v[0] if isinstance(v, np.ndarray) else v for i, (v, _) in enumerate(blocks)}
        df = pandas().DataFrame(arrays, index=index, copy=False)
        df.columns = columns
        return df
    return from_blocks(blocks, index=index, columns=columns)
