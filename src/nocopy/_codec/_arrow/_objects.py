"""Object ndarrays of ``str`` or ``bytes`` (``pa.objstr``, ``pa.objbin``): converted once to
Arrow large_string / large_binary at share, rebuilt as Python objects on get().

Arrays that repeat a few objects are grouped by identity first (`repeats`), so
only the distinct objects are checked and converted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._base import pyarrow
from ._raw import (
    decode_large_binary,
    decode_large_strings,
    encode_large_binary,
    encode_large_strings,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._registry import DecodeFn, Decoder, Encoder

__all__ = [
    "DECODERS",
    "Repeats",
    "encode_object_bytes",
    "encode_object_strings",
    "is_bytes_array",
    "is_string_array",
    "repeats",
    "to_large_binary",
    "to_large_strings",
]

_NA_NONE, _NA_NAN, _NA_PDNA = 0, 1, 2


def _na_kind(x: Any) -> int:
    """The kind of a missing value in an object array of strings, or -1 if *x* is not one."""
    if x is None:
        return _NA_NONE
    if isinstance(x, float | np.floating) and math.isnan(x):
        return _NA_NAN
    if type(x).__name__ == "NAType" and type(x).__module__.startswith("pandas"):
        return _NA_PDNA
    return -1


# Object columns often repeat a few objects (labels, codes, words): pickle
# writes each distinct object once and then a memo reference, so converting
# every row, each through pyarrow's per-object path, costs more than pickling
# it. Such an array is grouped by object identity instead (the pointers,
# dictionary-encoded by Arrow in C): only the distinct objects are checked and
# converted, and Arrow's take() lays out the rows.
_REPEAT_MIN = 1 << 15  # below this, the per-object path is cheap anyway
_SAMPLE = 2048  # a sample this large likely holds a repeat if there are under ~2M distinct objects
_DISTINCT_SHARE = 4  # group only if at most 1/4 of the rows are distinct objects


class Repeats(NamedTuple):
    """An object array grouped by identity: *distinct* (in order of first appearance) and,
    for each row, its position in *distinct* (*indices*, an Arrow int32 array)."""

    distinct: np.ndarray
    indices: Any


def repeats(arr: np.ndarray) -> Repeats | None:
    """*arr* (1-d, object) grouped by object identity, or None if that would not pay.

    Grouped when it is long, C-contiguous, pyarrow is installed and at most a
    quarter of its rows are distinct objects (equal but distinct objects count
    apart: the grouping never compares values, so it cannot change them).

    Examples
    --------
    >>> words = np.array(["a", "bc"], dtype=object)[np.arange(1 << 16) % 2]
    >>> rep = repeats(words)
    >>> rep.distinct.tolist(), rep.indices[:3].to_pylist()
    (['a', 'bc'], [0, 1, 0])
    """
    n = len(arr)
    if arr.dtype != object or arr.ndim != 1 or n < _REPEAT_MIN:
        return None
    try:
        ptrs = np.frombuffer(arr.data.cast("B"), dtype=np.uintp)
    except TypeError:  # not C-contiguous
        return None
    sample = ptrs[np.random.default_rng(0).choice(n, _SAMPLE, replace=False)]
    if len(np.unique(sample)) == _SAMPLE:
        return None
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        return None  # the conversion will say pyarrow is needed
    try:
        encoded = pc.dictionary_encode(pa.array(ptrs))
    except pa.ArrowException:  # e.g. more distinct objects than int32 indices can number
        return None
    k = len(encoded.dictionary)
    if k > n // _DISTINCT_SHARE:
        return None
    first = _first_appearances(encoded.indices.to_numpy())
    if len(first) != k or not np.array_equal(ptrs[first], encoded.dictionary.to_numpy()):
        return None  # pragma: no cover - an Arrow that numbered them otherwise
    return Repeats(arr[first], encoded.indices)


_BLOCK = 1 << 12


def _first_appearances(indices: np.ndarray) -> np.ndarray:
    """The rows where each index appears first, *indices* being numbered in order of first appearance.

    Such a row is one where the running maximum grows. Computed block by block,
    and only in the blocks whose maximum exceeds every earlier block's: in a
    repetitive column the distinct objects mostly appear early, so most blocks
    are skipped after one vectorised maximum.

    Examples
    --------
    >>> _first_appearances(np.array([0, 1, 0, 2, 1, 3], dtype=np.int32)).tolist()
    [0, 1, 3, 5]
    """
    if not len(indices):
        return np.empty(0, np.intp)
    peaks = np.maximum.reduceat(indices, np.arange(0, len(indices), _BLOCK))
    before = np.concatenate(([-1], np.maximum.accumulate(peaks)[:-1]))
    growing = np.flatnonzero(peaks > before)
    if len(growing) > len(peaks) // 8:  # spread out: one pass over all is cheaper
        running = np.maximum.accumulate(indices)
        return np.concatenate(([0], np.flatnonzero(running[1:] > running[:-1]) + 1))
    found = []
    for b in growing.tolist():
        block = indices[b * _BLOCK : (b + 1) * _BLOCK]
        running = np.maximum.accumulate(np.concatenate(([before[b]], block)).astype(np.int64))
        found.append(np.flatnonzero(running[1:] > running[:-1]) + b * _BLOCK)
    return np.concatenate(found) if found else np.empty(0, np.intp)


def is_string_array(arr: np.ndarray, rep: Repeats | None = None) -> bool:
    """True if *arr* (1-d, object) holds only ``str`` and missing values.

    An empty or all-missing array counts as strings. (pandas' notion of
    missing is used: None, NaN, pd.NA, NaT; the conversion to Arrow turns them
    all into nulls.) With *rep* (`repeats` of *arr*), only its distinct
    objects are looked at.

    Examples
    --------
    >>> is_string_array(np.array(["a", None, "é"], dtype=object))
    True
    """
    return _holds_only(arr, rep, str, ("string", "empty"), at_least_one=False)


def is_bytes_array(arr: np.ndarray, rep: Repeats | None = None) -> bool:
    r"""True if *arr* (1-d, object) holds ``bytes`` (at least one) and otherwise only missing values.

    ``bytearray`` and ``memoryview`` are not bytes (mutable, or a view of
    something else): such columns stay unsupported. (An all-missing array is
    a string column, see `is_string_array`.) With *rep*, only its distinct
    objects are looked at.

    Examples
    --------
    >>> is_bytes_array(np.array([b"\x00\xff", None], dtype=object))
    True
    """
    return _holds_only(arr, rep, bytes, ("bytes",), at_least_one=True)


def _holds_only(
    arr: np.ndarray, rep: Repeats | None, typ: type, kinds: tuple[str, ...], *, at_least_one: bool
) -> bool:
    """Whether 1-d object *arr* holds only *typ* and missing values (and one *typ* at least, if asked).

    pandas' ``infer_dtype`` (one of *kinds*) decides where pandas is installed.
    With *rep*, only the distinct objects are looked at.
    """
    if arr.dtype != object or arr.ndim != 1:
        return False
    values = rep.distinct if rep is not None else arr
    try:
        from pandas.api.types import infer_dtype
    except ImportError:
        if not all(isinstance(x, typ) or _na_kind(x) >= 0 for x in values):
            return False
        return not at_least_one or any(isinstance(x, typ) for x in values)
    return infer_dtype(values, skipna=True) in kinds


def _to_arrow(pa: Any, arr: np.ndarray, typ: Any, rep: Repeats | None) -> Any:
    if rep is None:
        return pa.array(arr, type=typ, from_pandas=True)
    return pa.array(rep.distinct, type=typ, from_pandas=True).take(rep.indices)


def to_large_binary(arr: np.ndarray, rep: Repeats | None = None) -> Any:
    """Convert an object array of bytes (with None/NaN/pd.NA as nulls) to an Arrow large_binary array.

    With *rep* (`repeats` of *arr*), each distinct object is converted once.
    """
    pa = pyarrow("sharing bytes")
    return _to_arrow(pa, arr, pa.large_binary(), rep)


def to_large_strings(arr: np.ndarray, rep: Repeats | None = None) -> Any:
    """Convert an object array of str (with None/NaN/pd.NA as nulls) to an Arrow large_string array.

    With *rep* (`repeats` of *arr*), each distinct object is converted once.
    """
    pa = pyarrow("sharing strings")
    return _to_arrow(pa, arr, pa.large_string(), rep)



def encode_object_strings(enc: Encoder, arr: np.ndarray, path: str, rep: Repeats | None = None) -> Any:
    """Plan a 1-d object ndarray of str: stored once as Arrow large_string.

    get() rebuilds an object ndarray (new Python str objects: a copy per
    get); missing values come back as the same None / NaN / pd.NA. *rep*:
    `repeats` of *arr*, if known.
    """
    return _encode_object_values(
        enc, arr, rep, path, "str", "pa.objstr",
        "stored once as Arrow large_string (never fixed-width); get() rebuilds Python str "
        "objects: share a pandas str column or an Arrow array for a zero-copy view",
        to_large_strings, encode_large_strings,
    )


def encode_object_bytes(enc: Encoder, arr: np.ndarray, path: str, rep: Repeats | None = None) -> Any:
    """Plan a 1-d object ndarray of bytes: stored once as Arrow large_binary.

    Like `encode_object_strings`: get() rebuilds an object ndarray
    (new Python bytes objects: a copy per get), missing values as they were.
    """
    return _encode_object_values(
        enc, arr, rep, path, "bytes", "pa.objbin",
        "stored once as Arrow large_binary; get() rebuilds Python bytes objects: share an Arrow "
        "array or a pandas column of bytes for a zero-copy view",
        to_large_binary, encode_large_binary,
    )


def _encode_object_values(
    enc: Encoder, arr: np.ndarray, rep: Repeats | None, path: str, what: str, kind: str, detail: str,
    convert: Callable[[np.ndarray, Repeats | None], Any], encode_values: Callable[[Encoder, Any], dict[str, Any]],
) -> Any:
    # One plan for object arrays of str or bytes: converted once to Arrow, rebuilt per get().
    enc.note(path, f"object ({what})", "converted", detail)
    if enc.explaining:
        return {"k": "py", "v": None}
    pa = pyarrow(f"sharing {what}")
    try:
        values = convert(arr, rep)
    except (pa.ArrowException, UnicodeError) as exc:
        return enc.unsupported(arr, path, f"object array of {what} Arrow cannot store ({exc})", dtype="object")
    node: dict[str, Any] = {"k": kind, "s": encode_values(enc, values)}
    if rep is not None:
        node["g"] = len(rep.distinct)  # few distinct values: get() builds one object per value
    return _with_null_kinds(enc, arr, path, what, node, values)


def _with_null_kinds(enc: Encoder, arr: np.ndarray, path: str, what: str, node: dict[str, Any], values: Any) -> Any:
    """*node* with the kind of each missing value of *arr* (None, NaN or pd.NA), to give them back as they were."""
    if values.null_count:
        where = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        kinds = np.fromiter((_na_kind(x) for x in arr[where]), dtype=np.int8, count=len(where))
        if (kinds < 0).any():
            return enc.unsupported(arr, path, f"object array of {what} with missing values other than None/NaN/pd.NA", dtype="object")
        if (kinds == kinds[0]).all():
            node["na"] = int(kinds[0])
        else:
            node["nak"] = enc.add(kinds, kinds.nbytes)
    return node


def _objects(dec: Decoder, node: dict[str, Any], values: Any) -> np.ndarray:
    """*values* (Arrow strings or bytes over the segment) as an object ndarray, missing values as stored."""
    out = _grouped_objects(values) if node.get("g") else None
    if out is None:
        out = values.to_numpy()
        if out.dtype != object:
            out = out.astype(object)
    nulls = values.null_count
    if nulls:
        where = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        if "nak" in node:
            kinds = dec.buffer(node.get("nak")).view(np.int8)
            if kinds.size != nulls or kinds.min() < 0 or kinds.max() > 2:
                raise dec.corrupt("null kinds do not match the nulls")
            out[where] = np.array(_missing_values(int(kinds.max())), dtype=object)[kinds]
        else:
            kind = node.get("na")
            if type(kind) is not int or not 0 <= kind <= 2:
                raise dec.corrupt("bad null kind")
            out[where] = _missing_values(kind)[kind]
    return out


def _grouped_objects(values: Any) -> np.ndarray | None:
    """*values* as an object ndarray holding one object per distinct value (as pickle
    rebuilds a column of repeated objects), or None to convert row by row.

    For a column the encoder found repetitive (its ``g``): hashing the values
    is then cheaper than making an object for each row. (A forged ``g`` on
    distinct values only makes this slower, bounded by the segment's size.)
    Null rows hold the first value: the caller puts the missing values there.
    """
    if values.num_chunks != 1:
        return None
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(values.chunk(0))
    if not len(encoded.dictionary):
        return None
    distinct: np.ndarray = encoded.dictionary.to_numpy(zero_copy_only=False)
    if distinct.dtype != object:
        distinct = distinct.astype(object)
    out: np.ndarray = distinct[encoded.indices.fill_null(0).to_numpy()]
    return out


def _sub(dec: Decoder, node: dict[str, Any], kind: str) -> dict[str, Any]:
    sub = node.get("s")
    if not isinstance(sub, dict) or sub.get("k") != kind:
        raise dec.corrupt(f"object values without their {kind} node")
    return sub


def _dec_objstr(dec: Decoder, node: dict[str, Any]) -> np.ndarray:
    return _objects(dec, node, decode_large_strings(dec, _sub(dec, node, "pa.lstr")))


def _dec_objbin(dec: Decoder, node: dict[str, Any]) -> np.ndarray:
    return _objects(dec, node, decode_large_binary(dec, _sub(dec, node, "pa.lbin")))


def _missing_values(up_to: int) -> list[Any]:
    """The missing values by kind (None, NaN, pd.NA) up to kind *up_to*.

    pandas is imported only when a pd.NA is needed (None without pandas).
    """
    values: list[Any] = [None, float("nan")]
    if up_to >= _NA_PDNA:
        try:
            import pandas as pd
        except ImportError:
            values.append(None)
        else:
            values.append(pd.NA)
    return values


DECODERS: dict[str, DecodeFn] = {"pa.objstr": _dec_objstr, "pa.objbin": _dec_objbin}
