"""The one place that knows data families: NumPy, pandas, Arrow, Polars (and what comes next).

Everything above the codec asks this module about a data object instead of
re-detecting it: how big it is (is it worth sharing?), how many rows it has and
how to slice rows without copying (``parallel_map``), which columns ``share()``
converts and how to turn them back (the executor restores what a pickled copy
would have had), and which codec module encodes it.

A family is detected from the module its type comes from, so this module never
imports pandas, pyarrow or polars: ``import nocopy`` stays light, and an object
of a library that is not installed cannot exist.

Adding a family is one `Family` subclass plus one line in
`FAMILIES`.

Examples
--------
>>> import numpy as np
>>> family_of(np.arange(4)).name
'numpy'
>>> take_rows(np.arange(10), 2, 5)
array([2, 3, 4])
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .errors import UnsupportedTypeError

__all__ = [
    "FAMILIES",
    "Converted",
    "Family",
    "converted_columns",
    "data_nbytes",
    "family_of",
    "kind_name",
    "restore_columns",
    "row_count",
    "take_rows",
]

# (position, dtype) of a column share() converts; position -1 is a Series' own values.
Converted = tuple[tuple[int, Any], ...]


class Family:
    """What nocopy knows about one library's data objects (class-level: no instances)."""

    #: short name, also the codec module that encodes it (``nocopy._codec._<codec>``)
    name: ClassVar[str] = ""
    codec: ClassVar[str] = ""
    #: the top-level module its types come from
    module: ClassVar[str] = ""

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        """Bytes of *obj* if it is shareable data of this family, else None."""
        return None

    @classmethod
    def rows(cls, obj: Any) -> int | None:
        """Rows of *obj* if it can be split into row chunks, else None."""
        return None

    @classmethod
    def take_rows(cls, obj: Any, start: int, stop: int) -> Any:
        """Rows start:stop of *obj* without copying."""
        raise NotImplementedError

    @classmethod
    def converted(cls, obj: Any) -> Converted:
        """Columns share() stores in another type than the caller gave (restored by the pool)."""
        return ()

    @classmethod
    def restore(cls, obj: Any, columns: Converted) -> Any:
        """Turn the *columns* `converted` named back into their original dtypes."""
        return obj


class NumpyFamily(Family):
    name = codec = "numpy"
    module = "numpy"
    # share() takes exactly these; other ndarray subclasses (masked arrays...) are refused.
    _TYPES: ClassVar[tuple[type, ...]] = (np.ndarray, np.recarray, np.memmap)

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        if type(obj) not in cls._TYPES or obj.dtype.hasobject:
            return None
        return int(obj.nbytes)

    @classmethod
    def rows(cls, obj: Any) -> int | None:
        if not isinstance(obj, np.ndarray):
            return None
        if obj.ndim == 0:
            raise UnsupportedTypeError(
                "parallel_map needs rows to split, and a 0-d array has none. Fix: pass an "
                "array with at least one dimension (chunks are taken along the first)."
            )
        return int(obj.shape[0])

    @classmethod
    def take_rows(cls, obj: Any, start: int, stop: int) -> Any:
        return obj[start:stop]


class PandasFamily(Family):
    name = codec = "pandas"
    module = "pandas"

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        name = type(obj).__name__
        try:
            if name == "DataFrame":
                return int(obj.memory_usage(index=True, deep=False).sum())
            if name == "Series":
                return int(obj.memory_usage(index=True, deep=False))
            if name.endswith("Index"):
                return int(obj.memory_usage(deep=False))
        except (TypeError, ValueError, AttributeError):
            return None
        return None

    @classmethod
    def rows(cls, obj: Any) -> int | None:
        return len(obj) if type(obj).__name__ in ("DataFrame", "Series") else None

    @classmethod
    def take_rows(cls, obj: Any, start: int, stop: int) -> Any:
        return obj.iloc[start:stop]

    @classmethod
    def converted(cls, obj: Any) -> Converted:
        # get() returns these as Arrow-backed columns: object columns of str and
        # string[python] are stored once as Arrow large_string, object columns
        # of bytes as large_binary (every object column counts: share() refuses
        # the rest, or pickles them, which restores nothing).
        def changed(dt: Any) -> bool:
            if isinstance(dt, np.dtype):
                return dt.kind == "O"
            return type(dt).__name__ == "StringDtype" and dt.storage == "python"

        name = type(obj).__name__
        if name == "Series":
            return ((-1, obj.dtype),) if changed(obj.dtype) else ()
        if name == "DataFrame":
            return tuple((i, dt) for i, dt in enumerate(obj.dtypes) if changed(dt))
        return ()

    @classmethod
    def restore(cls, obj: Any, columns: Converted) -> Any:
        for position, dtype in columns:
            if position < 0:
                return cls._restored(obj, dtype)
            obj.isetitem(position, cls._restored(obj.iloc[:, position], dtype))
        return obj

    @staticmethod
    def _restored(series: Any, dtype: Any) -> Any:
        """*series* as *dtype*; Arrow bytes back to object with None for missing values."""
        arrow_type = getattr(series.dtype, "pyarrow_dtype", None)
        if isinstance(dtype, np.dtype) and dtype.kind == "O" and "binary" in str(arrow_type):
            # astype(object) would give pd.NA; a column of bytes has None (the
            # usual missing bytes, and what the stored nulls were made of).
            values = series.to_numpy(dtype=object, na_value=None)
            return type(series)(values, index=series.index, name=series.name, copy=False).__finalize__(series)
        return series.astype(dtype)


class ArrowFamily(Family):
    name = codec = "arrow"
    module = "pyarrow"

    @classmethod
    def _is_data(cls, obj: Any) -> bool:
        name = type(obj).__name__
        return name in ("Table", "RecordBatch") or name.endswith("Array")

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        if not cls._is_data(obj):
            return None
        nbytes = getattr(obj, "nbytes", None)
        return int(nbytes) if isinstance(nbytes, int) else None

    @classmethod
    def rows(cls, obj: Any) -> int | None:
        if type(obj).__name__ in ("Table", "RecordBatch"):
            return int(obj.num_rows)
        return len(obj) if cls._is_data(obj) else None

    @classmethod
    def take_rows(cls, obj: Any, start: int, stop: int) -> Any:
        return obj.slice(start, stop - start)


class PolarsFamily(Family):
    name = codec = "polars"
    module = "polars"
    # A LazyFrame is a query plan, not data: it has neither bytes nor rows here.
    _DATA = ("DataFrame", "Series")

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        if type(obj).__name__ not in cls._DATA:
            return None
        return int(obj.estimated_size())

    @classmethod
    def rows(cls, obj: Any) -> int | None:
        return len(obj) if type(obj).__name__ in cls._DATA else None

    @classmethod
    def take_rows(cls, obj: Any, start: int, stop: int) -> Any:
        return obj.slice(start, stop - start)


class ScipyFamily(Family):
    name = codec = "scipy"
    module = "scipy"
    # The sparse formats the codec shares (exact classes), by class name.
    _SPARSE = frozenset(f"{fmt}_{kind}" for fmt in ("csr", "csc", "coo", "bsr") for kind in ("matrix", "array"))

    @classmethod
    def _is_sparse(cls, obj: Any) -> bool:
        t = type(obj)
        return t.__name__ in cls._SPARSE and t.__module__.startswith("scipy.sparse")

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        if not cls._is_sparse(obj):
            return None
        arrays = [obj.data, *obj.coords] if hasattr(obj, "coords") else [obj.data, obj.indices, obj.indptr]
        return sum(int(a.nbytes) for a in arrays)

    @classmethod
    def rows(cls, obj: Any) -> int | None:
        # Rows split without a copy only where they are the compressed axis: CSR.
        return int(obj.shape[0]) if cls._is_sparse(obj) and obj.format == "csr" else None

    @classmethod
    def take_rows(cls, obj: Any, start: int, stop: int) -> Any:
        indptr = obj.indptr
        first, last = int(indptr[start]), int(indptr[stop])
        # Views of the values and indices; only the rows' indptr is new (stop - start + 1 values).
        # Assigned to an empty matrix: the constructor may copy index arrays to a narrower dtype.
        out = type(obj)((stop - start, obj.shape[1]), dtype=obj.dtype)
        out.data, out.indices = obj.data[first:last], obj.indices[first:last]
        out.indptr = indptr[start : stop + 1] - indptr.dtype.type(first)
        return out


class SequenceFamily(Family):
    """Lists and tuples, encoded by the python codec: those of str or bytes (with None) are
    data the pools share (get() gives a nocopy.SharedSequence)."""

    name = "sequence"
    codec = "python"
    module = "builtins"

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        t = type(obj)
        if (t is not list and t is not tuple) or not obj:
            return None
        kinds = set(map(type, obj))  # in C: a few ns per item
        kinds.discard(type(None))
        if len(kinds) != 1 or not kinds <= {str, bytes}:
            return None
        # Characters, not UTF-8 bytes (measuring those would encode every string): close
        # enough to decide whether it is worth sharing.
        return 8 * (len(obj) + 1) + sum(map(len, filter(None, obj)))


#: Every family nocopy knows, by the top-level module of their types.
FAMILIES: dict[str, type[Family]] = {
    f.module: f for f in (NumpyFamily, PandasFamily, ArrowFamily, PolarsFamily, ScipyFamily)
}


def family_of(obj: Any) -> type[Family] | None:
    """The family of *obj*'s type, or None for anything else (plain Python objects...)."""
    if isinstance(obj, np.ndarray):
        return NumpyFamily
    if type(obj) is list or type(obj) is tuple:
        return SequenceFamily
    top = (type(obj).__module__ or "").partition(".")[0]
    return FAMILIES.get(top)


def data_nbytes(obj: Any) -> int | None:
    """Bytes of a shareable data object, or None if *obj* is not one.

    Examples
    --------
    >>> data_nbytes(np.zeros(3)), data_nbytes("text")
    (24, None)
    """
    family = family_of(obj)
    return None if family is None else family.nbytes(obj)


def row_count(obj: Any) -> int:
    """Rows of a splittable data object; UnsupportedTypeError for anything else."""
    return _splittable(obj)[1]


def _splittable(obj: Any) -> tuple[type[Family], int]:
    """The family and rows of a splittable data object; UnsupportedTypeError for anything else."""
    family = family_of(obj)
    rows = None if family is None else family.rows(obj)
    if family is None or rows is None:
        raise UnsupportedTypeError(
            f"parallel_map cannot split data of type {type(obj).__qualname__} into row chunks. Fix: pass a "
            "NumPy array, a pandas or Polars DataFrame or Series, an Arrow table, or a nocopy.Shared of one."
        )
    return family, rows


def take_rows(obj: Any, start: int, stop: int) -> Any:
    """Rows start:stop of an ndarray, DataFrame, Series (pandas or Polars) or Arrow table/array, without copying.

    Examples
    --------
    >>> take_rows(np.arange(10), 2, 5)
    array([2, 3, 4])
    """
    family, _ = _splittable(obj)  # the clear error for anything that has no rows
    return family.take_rows(obj, start, stop)


def converted_columns(obj: Any) -> Converted:
    """(position, dtype) of the columns share() stores converted (see `Family.converted`)."""
    family = family_of(obj)
    return () if family is None else family.converted(obj)


def restore_columns(obj: Any, columns: Converted) -> Any:
    """Undo the conversions `converted_columns` named, so the object looks as it was given."""
    if not columns:
        return obj
    family = family_of(obj)
    return obj if family is None else family.restore(obj, columns)


def kind_name(obj: Any) -> str:
    """The type name a handle reports as its ``kind`` (``"ndarray"``, ``"DataFrame"``...)."""
    return type(obj).__name__
