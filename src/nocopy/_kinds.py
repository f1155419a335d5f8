"""The one place that knows data families: NumPy, pandas, Arrow, Polars, PyTorch (and what comes next).

Everything above the codec asks this module about a data object instead of
re-detecting it: how big it is (is it worth sharing?), how many rows it has and
how to slice rows without copying (``parallel_map``), which columns ``share()``
converts and how to turn them back (the executor restores what a pickled copy
would have had), and which codec module encodes it.

A family is detected from the module its type comes from, so this module never
imports pandas, pyarrow, polars or torch: ``import nocopy`` stays light, and an object
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
    "TorchFamily",
    "column_arrays",
    "converted_columns",
    "data_nbytes",
    "describe",
    "describe_array",
    "family_of",
    "is_dataframe",
    "is_items",
    "join_columns",
    "kind_name",
    "restore_columns",
    "row_count",
    "split_columns",
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


class TorchFamily(Family):
    name = codec = "torch"
    module = "torch"

    @classmethod
    def problem(cls, obj: Any) -> str | None:
        """Why share() refuses *obj*, a torch object (None: a plain CPU tensor it stores)."""
        t = type(obj)
        if t.__name__ != "Tensor" or t.__module__ != "torch":
            if any(k.__name__ == "Tensor" and k.__module__ == "torch" for k in t.__mro__):
                return (f"tensor subclass {t.__qualname__} (pass a plain tensor: "
                        "tensor.detach() or torch.Tensor(tensor))")
            return f"objects of type {t.__module__}.{t.__qualname__}"
        if obj.device.type != "cpu":
            return f"a tensor on device {obj.device} (only CPU tensors: tensor.cpu() first)"
        if str(obj.layout) != "torch.strided" or obj.is_nested:
            what = "nested" if obj.is_nested else str(obj.layout).removeprefix("torch.")
            return f"a {what} tensor (only dense tensors: tensor.to_dense() first)"
        if obj.is_quantized:
            return "a quantized tensor (tensor.dequantize() or tensor.int_repr() first)"
        if obj.requires_grad and not obj.is_leaf:
            return ("a tensor that requires grad and is not a leaf (its graph cannot travel: "
                    "tensor.detach() first)")
        if any(n is not None for n in getattr(obj, "names", ())):  # torch < 2.13
            return "a named tensor (tensor.rename(None) first)"
        return None

    @classmethod
    def nbytes(cls, obj: Any) -> int | None:
        if cls.problem(obj) is not None:
            return None
        return int(obj.numel() * obj.element_size())


class _ItemsFamily(Family):
    """Plain sequences (list, tuple, range): their items are the rows (``parallel_map`` only).

    Not in `FAMILIES`: they are no data to share, only something to split.
    """

    name = "items"
    _TYPES: ClassVar[tuple[type, ...]] = (list, tuple, range)

    @classmethod
    def rows(cls, obj: Any) -> int | None:
        return len(obj) if type(obj) in cls._TYPES else None

    @classmethod
    def take_rows(cls, obj: Any, start: int, stop: int) -> Any:
        return obj[start:stop]


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


class SequenceFamily(_ItemsFamily):
    """Lists and tuples, encoded by the python codec: those of str or bytes (with None) are
    data the pools share (get() gives a nocopy.SharedSequence); their items are rows, as
    for every plain sequence."""

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
    f.module: f for f in (NumpyFamily, PandasFamily, ArrowFamily, PolarsFamily, TorchFamily, ScipyFamily)
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
    family = family_of(obj) or _ItemsFamily
    rows = family.rows(obj)
    if rows is None:
        raise UnsupportedTypeError(
            f"parallel_map cannot split data of type {type(obj).__qualname__} into row chunks. Fix: pass a "
            "NumPy array, a pandas or Polars DataFrame or Series, an Arrow table, a nocopy.Shared of one, "
            "or the items as a list, tuple, range or generator."
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


def is_items(obj: Any) -> bool:
    """Whether *obj* is a plain list, tuple or range, whose items `take_rows` splits.

    Examples
    --------
    >>> is_items([1, 2]), is_items(np.arange(2))
    (True, False)
    """
    return type(obj) in _ItemsFamily._TYPES  # noqa: SLF001 - same module


def is_dataframe(obj: Any) -> bool:
    """Whether *obj* is a pandas DataFrame (whose columns `split_columns` splits).

    Examples
    --------
    >>> is_dataframe(np.arange(2))
    False
    """
    return family_of(obj) is PandasFamily and type(obj).__name__ == "DataFrame"


def split_columns(obj: Any, positions: tuple[int, ...]) -> tuple[Any, tuple[Any, ...]] | None:
    """A pandas DataFrame without the columns at *positions* (no copy), and those columns' arrays.

    None for anything else. `join_columns` puts them back.

    Examples
    --------
    >>> import pandas as pd
    >>> rest, taken = split_columns(pd.DataFrame({"a": [1], "b": [2]}), (0,))
    >>> list(rest.columns), [v.to_numpy().tolist() for v in taken]
    ([0], [[1]])
    """
    if not is_dataframe(obj):
        return None
    drop = set(positions)
    rest = _concat_columns([obj.iloc[:, i] for i in range(obj.shape[1]) if i not in drop], obj)
    return rest, column_arrays(obj, positions)


def column_arrays(frame: Any, positions: tuple[int, ...]) -> tuple[Any, ...]:
    """The arrays of a pandas DataFrame's columns at *positions* (views, not copies)."""
    return tuple(frame.iloc[:, i].array for i in positions)


def join_columns(rest: Any, taken: tuple[tuple[int, Any], ...], columns: Any) -> Any:
    """The frame `split_columns` split: *rest*'s columns (kept as views) and *taken* at their positions.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"a": [1], "b": [2]})
    >>> rest, taken = split_columns(df, (0,))
    >>> join_columns(rest, ((0, taken[0]),), df.columns).equals(df)
    True
    """
    series = _pandas().Series
    extra = dict(taken)
    kept = iter(range(rest.shape[1]))
    parts = []
    for i in range(rest.shape[1] + len(extra)):
        if i in extra:
            values = extra[i]
            # The dtype given: pandas would otherwise infer str for an object column of strings.
            dtype = getattr(values.dtype, "numpy_dtype", values.dtype)
            parts.append(series(values, index=rest.index, dtype=dtype, copy=False))
        else:
            parts.append(rest.iloc[:, next(kept)])
    frame = _concat_columns(parts, rest)
    frame.columns = columns
    return frame


def _pandas() -> Any:
    import pandas  # only ever called with a pandas object at hand: already imported

    return pandas


def _concat_columns(parts: list[Any], like: Any) -> Any:
    """One frame of *parts* (Series), each column kept as it is (dtype and memory), *like*'s attrs and flags."""
    pd = _pandas()
    # pandas 2 copies here unless told not to (copy-on-write, default from 3.0, made it a
    # view and deprecated the keyword).
    kwargs: dict[str, Any] = {"copy": False} if int(pd.__version__.partition(".")[0]) < 3 else {}
    frame = pd.concat(parts, axis=1, ignore_index=True, **kwargs) if parts else pd.DataFrame(index=like.index)
    frame.attrs = dict(like.attrs)
    if not like.flags.allows_duplicate_labels:
        frame = frame.set_flags(allows_duplicate_labels=False)
    return frame


def kind_name(obj: Any) -> str:
    """The type name a handle reports as its ``kind`` (``"ndarray"``, ``"DataFrame"``...)."""
    return type(obj).__name__


# A handle's repr stays one short line whatever it holds.
_DESCRIBE_MAX = 48
# Types whose shape is (rows, columns): said as rows x columns.
_FRAMES = ("DataFrame", "Table", "RecordBatch")


def describe(obj: Any) -> str:
    """What *obj* holds in a few words, for a handle's repr; ``""`` when there is nothing to say.

    Arrays (and anything with a ``shape`` and ``dtype``: Series, tensors, sparse
    matrices) by dtype and shape, frames and tables by rows x columns, Arrow
    arrays by type and length, dicts by keys, other sequences by length.

    Examples
    --------
    >>> describe(np.zeros((1000, 1000))), describe([1, 2, 3]), describe({"a": 1})
    ('float64 (1000, 1000)', 'len 3', '1 key')
    """
    try:
        text = _describe(obj)
    except Exception:  # a repr must never fail because of what the object does on access
        return ""
    return text if len(text) <= _DESCRIBE_MAX else text[: _DESCRIBE_MAX - 1] + "…"


def describe_array(dtype: Any, shape: tuple[int, ...]) -> str:
    """An array's dtype and shape as `describe` says them: ``float64 (3, 4)``.

    Examples
    --------
    >>> describe_array(np.dtype([("a", "i8"), ("b", "f8")]), (10,))
    'record[2 fields] (10,)'
    """
    names = getattr(dtype, "names", None)
    text = f"record[{len(names)} field{'' if len(names) == 1 else 's'}]" if names else str(dtype)
    return f"{text} {tuple(int(n) for n in shape)}"


def _describe(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    if type(obj).__name__ in _FRAMES and isinstance(shape, tuple) and len(shape) == 2:
        return f"{shape[0]}x{shape[1]}"
    if isinstance(obj, dict):
        return f"{len(obj)} key{'' if len(obj) == 1 else 's'}"
    dtype = getattr(obj, "dtype", None)
    if dtype is not None and isinstance(shape, tuple):  # torch.Size is a tuple too
        return describe_array(dtype, shape)
    arrow_type = getattr(obj, "type", None)
    if family_of(obj) is ArrowFamily and arrow_type is not None:
        return f"{arrow_type} len {len(obj)}"
    if hasattr(obj, "__len__"):
        return f"len {len(obj)}"
    return ""
