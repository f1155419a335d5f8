"""One column's array (an ndarray or an ExtensionArray): planned from the array, rebuilt as a view.

Each column is planned from its array (never through ``to_numpy``, which may
copy), and rebuilt on get() with constructors measured not to copy (see
FACTS.md "pandas 3.1.1 over shared buffers"):

=====================================  =======================================
column dtype                           stored as / rebuilt with
=====================================  =======================================
bool, int, uint, float, complex        one ndarray; a 2-d block view
datetime64 / timedelta64 (any unit)    int64 buffer; ``DatetimeArray._simple_new``
datetime64 with tz                     same, tz as metadata
Int*/UInt*/Float*/boolean (nullable)   data + mask; ``IntegerArray(data, mask)``
category                               codes + categories (an Index, recursively);
                                       ``Categorical.from_codes`` (codes validated)
str / string[pyarrow]                  Arrow large_string buffers; ``ArrowStringArray``
object of str (None/NaN as missing)    converted once at share to Arrow
                                       large_string; comes back as pandas ``str``
string[python]                         converted once; comes back as string[pyarrow]
object of bytes (None/NaN as missing)  converted once at share to Arrow
                                       large_binary; comes back as
                                       ``pd.ArrowDtype(pa.large_binary())``
pd.ArrowDtype (any Arrow type)         Arrow IPC stream; ``ArrowExtensionArray``
period                                 int64 ordinals + freq
interval                               left/right (recursively) + closed
=====================================  =======================================

Object columns holding anything else raise UnsupportedTypeError (naming the
column), or are pickled with ``allow_pickle=True``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _arrow
from .._arrow import _objects, _raw
from . import _compat
from ._nodes import check_codes, decode_index, decode_nd, nd, spend_materialised, spend_unless_view
from ._time import TZ_KINDS, UNITS, tz_from_json, tz_to_json

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "decode_values", "encode_values"]

# The dtype strings pd.masked and pd.period nodes may name: parsed by pandas'
# extension registry, which would otherwise see any string a header holds.
_MASKED_DTYPES = frozenset(
    ["boolean", "Float32", "Float64"] + [f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)]
)
_PERIOD_DTYPE = re.compile(r"^period\[[A-Za-z0-9\-]{1,30}\]$")

ColumnEncoder = Callable[["Encoder", Any, str, str], Any]


def _str(dec: Decoder, node: dict[str, Any], key: str) -> str:
    v = node.get(key)
    if not isinstance(v, str) or len(v) > 200:
        raise dec.corrupt(f"{key} is not a short string")
    return v


def _decode_sub(dec: Decoder, node: dict[str, Any], key: str, kind: str) -> Any:
    sub = node.get(key)
    if not isinstance(sub, dict) or sub.get("k") != kind:
        raise dec.corrupt(f"expected a {kind} node")
    return dec.decode(sub)


# -- encoding ---------------------------------------------------------------


def encode_values(enc: Encoder, values: Any, path: str, label: str) -> Any:
    """Plan one column's array (ndarray or ExtensionArray); note it for explain()."""
    if isinstance(values, np.ndarray):
        return _encode_ndarray(enc, values, path, label)
    for by_dtype, cls, encode in _column_encoders():
        if isinstance(values.dtype if by_dtype else values, cls):
            return encode(enc, values, path, label)
    dname = str(values.dtype)
    return enc.unsupported(values, path, f"{label} of dtype {dname} ({type(values).__name__})", dtype=dname)


@functools.cache
def _column_encoders() -> tuple[tuple[bool, Any, ColumnEncoder], ...]:
    """(match on the dtype rather than the array, type, encoder) in the order they are tried."""
    pd = _compat.pandas()
    arrays = pd.arrays
    return (
        (False, arrays.DatetimeArray, _encode_datetimes),
        (False, arrays.TimedeltaArray, _encode_timedeltas),
        (False, arrays.IntegerArray | arrays.FloatingArray | arrays.BooleanArray, _encode_masked),
        (False, pd.Categorical, _encode_categorical),
        (True, pd.StringDtype, _encode_string_column),
        (True, pd.ArrowDtype, _encode_arrow),
        (False, arrays.PeriodArray, _encode_period),
        (False, arrays.IntervalArray, _encode_interval),
        (False, arrays.NumpyExtensionArray, _encode_numpy_extension),
    )


def _encode_ndarray(enc: Encoder, values: np.ndarray, path: str, label: str) -> Any:
    if values.dtype.hasobject:
        return _encode_object_column(enc, values, path, label)
    detail = "" if values.flags.c_contiguous else "strided (a row of a 2-d block): gathered once at share"
    enc.note(path, str(values.dtype), "zero-copy", detail)
    return nd(enc, values, path)


def _encode_datetimes(enc: Encoder, values: Any, path: str, label: str) -> Any:
    dname = str(values.dtype)
    node: dict[str, Any] = {"k": "pd.dt", "v": nd(enc, _compat.backing_ndarray(values), path)}
    if values.tz is not None:
        tz = tz_to_json(values.tz)
        if tz is None:
            return enc.unsupported(values, path, f"{label} with time zone {values.tz!r}{TZ_KINDS}", dtype=dname)
        node["tz"] = tz
    enc.note(path, dname, "zero-copy", "tz kept as metadata" if values.tz is not None else "")
    return node


def _encode_timedeltas(enc: Encoder, values: Any, path: str, label: str) -> Any:
    enc.note(path, str(values.dtype), "zero-copy")
    return {"k": "pd.td", "v": nd(enc, _compat.backing_ndarray(values), path)}


def _encode_masked(enc: Encoder, values: Any, path: str, label: str) -> Any:
    dname = str(values.dtype)
    enc.note(path, dname, "zero-copy", "data + mask")
    data, mask = _compat.masked_parts(values)
    return {"k": "pd.masked", "dt": dname, "v": nd(enc, data, path), "m": nd(enc, mask, path)}


def _encode_categorical(enc: Encoder, values: Any, path: str, label: str) -> Any:
    # Through the registry (the pandas codec's Index encoder): this module never imports ``_index``.
    cats = enc.encode(values.categories, f"{path}.categories")
    detail = f"codes ({values.codes.dtype}) + {len(values.categories)} categories"
    enc.note(path, str(values.dtype), "zero-copy", detail)
    return {"k": "pd.cat", "codes": nd(enc, values.codes, path), "cats": cats, "ordered": bool(values.ordered)}


def _encode_arrow(enc: Encoder, values: Any, path: str, label: str) -> Any:
    enc.note(path, str(values.dtype), "zero-copy", "Arrow IPC stream in the segment")
    return {"k": "pd.arrow", "v": _arrow.ipc_node(enc, _compat.arrow_chunks(values), path)}


def _encode_period(enc: Encoder, values: Any, path: str, label: str) -> Any:
    enc.note(path, str(values.dtype), "zero-copy", "int64 ordinals + freq")
    return {"k": "pd.period", "v": nd(enc, values.asi8, path), "dt": str(values.dtype)}


def _encode_interval(enc: Encoder, values: Any, path: str, label: str) -> Any:
    enc.note(path, str(values.dtype), "zero-copy", "left + right")
    return {
        "k": "pd.interval",
        "left": enc.encode(values.left, f"{path}.left"),
        "right": enc.encode(values.right, f"{path}.right"),
        "closed": values.closed,
    }


def _encode_numpy_extension(enc: Encoder, values: Any, path: str, label: str) -> Any:
    return encode_values(enc, values.to_numpy(copy=False), path, label)


def _encode_string_column(enc: Encoder, values: Any, path: str, label: str) -> Any:
    pd = _compat.pandas()
    dtype = values.dtype
    na = "nan" if dtype.na_value is not pd.NA else "NA"
    if dtype.storage not in ("pyarrow", "pyarrow_numpy"):  # pyarrow_numpy: pandas 2.x's str
        enc.note(
            path, str(dtype), "converted",
            "python-backed strings stored once as Arrow large_string; "
            "get() returns the pyarrow-backed string dtype",
        )
        values = np.asarray(values, dtype=object)
        return _strings_from_objects(enc, values, _objects.repeats(values), path, label, str(dtype), na)
    chunked = _compat.arrow_chunks(values)
    if chunked is None:
        chunked = _arrow.pyarrow().chunked_array([values.__arrow_array__()])
    if _arrow.pyarrow().types.is_large_string(chunked.type):
        enc.note(path, str(dtype), "zero-copy", "Arrow large_string buffers")
    else:
        enc.note(path, str(dtype), "converted", f"Arrow {chunked.type} widened once to large_string at share")
    return {"k": "pd.str", "na": na, "s": _raw.encode_large_strings(enc, chunked)}


def _strings_from_objects(
    enc: Encoder, values: np.ndarray, rep: _objects.Repeats | None, path: str, label: str, dname: str, na: str,
) -> Any:
    """Python str objects (and missing values) converted once to Arrow large_string."""
    if enc.explaining:
        return {"k": "py", "v": None}
    pa = _arrow.pyarrow(f"sharing the string {label}")
    try:
        strings = _objects.to_large_strings(values, rep)
    except (pa.ArrowException, UnicodeError) as exc:
        return enc.unsupported(values, path, f"{label} of dtype {dname} (strings Arrow cannot store: {exc})", dtype=dname)
    return {"k": "pd.str", "na": na, "s": _raw.encode_large_strings(enc, strings)}


def _bytes_from_objects(enc: Encoder, values: np.ndarray, rep: _objects.Repeats | None, path: str, label: str) -> Any:
    """Python bytes objects (and missing values) converted once to Arrow large_binary."""
    if enc.explaining:
        return {"k": "py", "v": None}
    pa = _arrow.pyarrow(f"sharing the bytes {label}")
    try:
        binary = _objects.to_large_binary(values, rep)
    except pa.ArrowException as exc:
        return enc.unsupported(values, path, f"{label} of dtype object (bytes Arrow cannot store: {exc})", dtype="object")
    return {"k": "pd.bin", "s": _raw.encode_large_binary(enc, binary)}


def _describe_object(values: np.ndarray) -> str:
    kinds = sorted({type(x).__name__ for x in values[:1000]})
    return ", ".join(kinds[:4]) + (", ..." if len(kinds) > 4 else "")


def _encode_object_column(enc: Encoder, values: np.ndarray, path: str, label: str) -> Any:
    rep = _objects.repeats(values)
    if values.ndim == 1 and _objects.is_string_array(values, rep):
        _arrow.pyarrow(f"sharing the object string {label}")
        enc.note(
            path, "object (str)", "converted",
            "stored once as Arrow large_string at share (never fixed-width); "
            "get() returns it zero-copy as pandas' str dtype",
        )
        return _strings_from_objects(enc, values, rep, path, label, "object", "nan")
    if values.ndim == 1 and _objects.is_bytes_array(values, rep):
        _arrow.pyarrow(f"sharing the object bytes {label}")
        enc.note(
            path, "object (bytes)", "converted",
            "stored once as Arrow large_binary at share; get() returns it zero-copy as "
            "pd.ArrowDtype(pa.large_binary()), missing values as <NA> (a pool's tasks get object back)",
        )
        return _bytes_from_objects(enc, values, rep, path, label)
    return enc.unsupported(
        values, path,
        f"{label} of dtype object holding {_describe_object(values if rep is None else rep.distinct)}",
        dtype="object",
    )


# -- decoding: one function per node kind -------------------------------------


def decode_values(dec: Decoder, node: Any) -> Any:
    """Rebuild one column's array: an ndarray or an ExtensionArray over the segment."""
    if not isinstance(node, dict):
        raise dec.corrupt("column node is not an object")
    out = dec.decode(node)
    if isinstance(out, np.ndarray) and out.ndim == 1:
        return out
    if isinstance(out, _compat.pandas().api.extensions.ExtensionArray):
        return out  # e.g. a pickled extension column (allow_pickle=True)
    raise dec.corrupt(f"column node {node.get('k')!r:.30} does not hold a 1-d array")


def _time_data(dec: Decoder, node: dict[str, Any], kind: str, what: str) -> np.ndarray:
    data = decode_nd(dec, node.get("v"), kind)
    if np.datetime_data(data.dtype)[0] not in UNITS:
        raise dec.corrupt(f"pandas has no {data.dtype} {what}")
    return data


def _dec_datetimes(dec: Decoder, node: dict[str, Any]) -> Any:
    data = _time_data(dec, node, "M", "datetimes")
    if "tz" in node:
        unit = np.datetime_data(data.dtype)[0]
        tzdtype = _compat.pandas().DatetimeTZDtype(unit=unit, tz=tz_from_json(dec, node["tz"]))
        return _compat.datetime_array(data, tzdtype)
    return _compat.datetime_array(data, data.dtype)


def _dec_timedeltas(dec: Decoder, node: dict[str, Any]) -> Any:
    return _compat.timedelta_array(_time_data(dec, node, "m", "timedeltas"))


def _dec_masked(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _compat.pandas()
    name = _str(dec, node, "dt")
    if name not in _MASKED_DTYPES:
        raise dec.corrupt(f"{name!r:.40} is not a nullable dtype")
    dtype = pd.api.types.pandas_dtype(name)
    if not isinstance(dtype, pd.core.dtypes.dtypes.BaseMaskedDtype):
        raise dec.corrupt(f"{dtype} is not a nullable dtype")
    data = decode_nd(dec, node.get("v"))
    mask = decode_nd(dec, node.get("m"))
    if data.dtype != dtype.numpy_dtype or mask.dtype != np.bool_ or data.shape != mask.shape:
        raise dec.corrupt(f"nullable {dtype} column with data {data.dtype}{data.shape}, mask {mask.dtype}{mask.shape}")
    return dtype.construct_array_type()(data, mask, copy=False)


def _dec_categorical(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _compat.pandas()
    codes = decode_nd(dec, node.get("codes"), "i")
    cats = decode_index(dec, node.get("cats"))
    ordered = node.get("ordered")
    if type(ordered) is not bool:
        raise dec.corrupt("categorical without a boolean 'ordered'")
    dtype = pd.CategoricalDtype(cats, ordered=ordered)
    check_codes(dec, codes, len(cats), "categorical")
    cat = pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    spend_unless_view(dec, cat.codes, codes, "categorical codes")
    return cat


def _dec_strings(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _compat.pandas()
    na = node.get("na")
    if na not in ("nan", "NA"):
        raise dec.corrupt(f"bad string na {na!r:.20}")
    chunked = _decode_sub(dec, node, "s", "pa.lstr")
    return pd.arrays.ArrowStringArray(chunked, dtype=_arrow_string_dtype(pd, na))


def _dec_binary(dec: Decoder, node: dict[str, Any]) -> Any:
    chunked = _decode_sub(dec, node, "s", "pa.lbin")
    return _compat.pandas().arrays.ArrowExtensionArray(chunked)


def _arrow_string_dtype(pd: Any, na: str) -> Any:
    try:
        return pd.StringDtype("pyarrow", na_value=np.nan if na == "nan" else pd.NA)
    except TypeError:  # pragma: no cover - pandas < 2.3 spells the NaN flavour as a storage
        return pd.StringDtype("pyarrow_numpy" if na == "nan" else "pyarrow")


def _dec_arrow(dec: Decoder, node: dict[str, Any]) -> Any:
    chunked = _decode_sub(dec, node, "v", "pa.ipc")
    if not isinstance(chunked, _arrow.pyarrow().ChunkedArray):
        raise dec.corrupt("Arrow column is not a chunked array")
    return _compat.pandas().arrays.ArrowExtensionArray(chunked)


def _dec_period(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _compat.pandas()
    ordinals = decode_nd(dec, node.get("v"))
    if ordinals.dtype != np.int64:
        raise dec.corrupt("period ordinals are not int64")
    name = _str(dec, node, "dt")
    if not _PERIOD_DTYPE.match(name):
        raise dec.corrupt(f"{name!r:.40} is not a period dtype")
    dtype = pd.api.types.pandas_dtype(name)
    if not isinstance(dtype, pd.PeriodDtype):
        raise dec.corrupt(f"{dtype} is not a period dtype")
    return pd.arrays.PeriodArray(ordinals, dtype=dtype, copy=False)


def _dec_interval(dec: Decoder, node: dict[str, Any]) -> Any:
    left = decode_index(dec, node.get("left"))
    right = decode_index(dec, node.get("right"))
    closed = node.get("closed")
    if closed not in ("left", "right", "both", "neither") or len(left) != len(right):
        raise dec.corrupt("bad interval column")
    spend_materialised(dec, left, "the left side of an interval column")
    spend_materialised(dec, right, "the right side of an interval column")
    right_values = _compat.own_base(_compat.values_of(right))
    return _compat.pandas().arrays.IntervalArray.from_arrays(left, right_values, closed=closed, copy=False)


DECODERS: dict[str, DecodeFn] = {
    "pd.dt": _dec_datetimes,
    "pd.td": _dec_timedeltas,
    "pd.masked": _dec_masked,
    "pd.cat": _dec_categorical,
    "pd.str": _dec_strings,
    "pd.bin": _dec_binary,
    "pd.arrow": _dec_arrow,
    "pd.period": _dec_period,
    "pd.interval": _dec_interval,
}
