"""pandas DataFrames, Series and Indexes: one buffer set per column, views on get().

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
pd.ArrowDtype (any Arrow type)         Arrow IPC stream; ``ArrowExtensionArray``
period                                 int64 ordinals + freq
interval                               left/right (recursively) + closed
=====================================  =======================================

Object columns holding anything else raise UnsupportedTypeError (naming the
column), or are pickled with ``allow_pickle=True``. The frame is assembled
with ``create_dataframe_from_blocks``: one block per column, no
consolidation, so no copy. Views over a read-only mapping are read-only (a
write raises "assignment destination is read-only"); over a private mapping
(``get(private=True)``) writes land in copy-on-write pages of that process.

Object-dtype *indexes* (column names, small categories) of plain Python
scalars are kept as a JSON list, so their dtype and values come back exactly.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
import re
import zoneinfo
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _arrow
from ._numpy import encode_array

if TYPE_CHECKING:
    from ._core import Decoder, Encoder

__all__ = ["encode"]

_INSTALL = "pip install 'nocopy[pandas]'"
# Object indexes up to this length whose items are plain scalars go inline
# (JSON) and come back exactly; longer ones of strings go through Arrow.
_INLINE_INDEX_MAX = 100_000
_JSON_SCALARS = (str, int, float, bool, type(None))
_UNITS = ("s", "ms", "us", "ns")
# The dtype strings pd.masked and pd.period nodes may name: parsed by pandas'
# extension registry, which would otherwise see any string a header holds.
_MASKED_DTYPES = frozenset(
    ["boolean", "Float32", "Float64"] + [f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)]
)
_PERIOD_DTYPE = re.compile(r"^period\[[A-Za-z0-9\-]{1,30}\]$")


_TZ_KINDS = " (nocopy stores time zones by tz database name, e.g. 'Europe/Paris', or as fixed offsets)"


@functools.cache
def _tz_names() -> frozenset[str]:
    # A set, not a pattern: pandas resolves "dateutil/<name>" with
    # dateutil.tz.gettz, which opens any absolute path (a FIFO there hangs
    # get(), /proc/self/mem fails), so only tz database keys are accepted.
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def _pd() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - only without pandas
        raise ImportError(f"reading shared pandas data needs pandas. Fix: {_INSTALL}") from exc
    return pd


def _mod(name: str) -> Any:
    """A pandas submodule, typed as Any (private constructors are not in the stubs)."""
    return importlib.import_module(name)


# -- time zones and frequencies -------------------------------------------


def _tz_to_json(tz: Any) -> Any:
    """A JSON form of a tz that rebuilds an equal DatetimeTZDtype, or None if unknown.

    None too for a tz readers would refuse (e.g. a dateutil tz read from a
    file path): share() fails at once rather than every get().
    """
    if isinstance(tz, _dt.timezone):
        offset = tz.utcoffset(None)
        return {"offset": int(offset.total_seconds())}
    name = _mod("pandas._libs.tslibs.timezones").get_timezone(tz)
    return name if isinstance(name, str) and _tz_accepted(name) else None


def _tz_accepted(name: str) -> bool:
    return name.removeprefix("dateutil/") in _tz_names()


def _tz_from_json(dec: Decoder, spec: Any) -> Any:
    if isinstance(spec, str) and _tz_accepted(spec):
        return spec
    if isinstance(spec, dict) and type(spec.get("offset")) is int and abs(spec["offset"]) < 86400:
        if spec["offset"] == 0:
            return _dt.UTC
        return _dt.timezone(_dt.timedelta(seconds=spec["offset"]))
    raise dec.corrupt(f"bad time zone {spec!r:.60} (not a name from the tz database)")


# -- columns ---------------------------------------------------------------


def _nd(enc: Encoder, arr: np.ndarray, path: str) -> dict[str, Any]:
    return encode_array(enc, np.asarray(arr), path, note=False)


def _describe_object(values: np.ndarray) -> str:
    kinds = sorted({type(x).__name__ for x in values[:1000]})
    return ", ".join(kinds[:4]) + (", ..." if len(kinds) > 4 else "")


def encode_values(enc: Encoder, values: Any, path: str, label: str) -> Any:
    """Plan one column's array (ndarray or ExtensionArray); note it for explain()."""
    pd = _pd()
    dtype = values.dtype
    dname = str(dtype)

    if isinstance(values, np.ndarray):
        if values.dtype.hasobject:
            return _encode_object_column(enc, values, path, label)
        contiguous = values.flags.c_contiguous
        enc.note(path, dname, "zero-copy", "" if contiguous else "strided (a row of a 2-d block): gathered once at share")
        return _nd(enc, values, path)

    if isinstance(values, pd.arrays.DatetimeArray):
        node: dict[str, Any] = {"k": "pd.dt", "v": _nd(enc, values._ndarray, path)}
        if values.tz is not None:
            tz = _tz_to_json(values.tz)
            if tz is None:
                return enc.unsupported(values, path, f"{label} with time zone {values.tz!r}{_TZ_KINDS}", dtype=dname)
            node["tz"] = tz
        enc.note(path, dname, "zero-copy", "tz kept as metadata" if values.tz is not None else "")
        return node

    if isinstance(values, pd.arrays.TimedeltaArray):
        enc.note(path, dname, "zero-copy")
        return {"k": "pd.td", "v": _nd(enc, values._ndarray, path)}

    if isinstance(values, pd.arrays.IntegerArray | pd.arrays.FloatingArray | pd.arrays.BooleanArray):
        enc.note(path, dname, "zero-copy", "data + mask")
        return {
            "k": "pd.masked",
            "dt": dname,
            "v": _nd(enc, values._data, path),
            "m": _nd(enc, values._mask, path),
        }

    if isinstance(values, pd.Categorical):
        cats = encode_index(enc, values.categories, f"{path}.categories", f"the categories of {label}")
        enc.note(path, dname, "zero-copy", f"codes ({values.codes.dtype}) + {len(values.categories)} categories")
        return {
            "k": "pd.cat",
            "codes": _nd(enc, values.codes, path),
            "cats": cats,
            "ordered": bool(values.ordered),
        }

    if isinstance(dtype, pd.StringDtype):
        return _encode_string_column(enc, values, path, label)

    if isinstance(dtype, pd.ArrowDtype):
        enc.note(path, dname, "zero-copy", "Arrow IPC stream in the segment")
        return {"k": "pd.arrow", "v": _arrow.ipc_node(enc, values._pa_array, path)}

    if isinstance(values, pd.arrays.PeriodArray):
        enc.note(path, dname, "zero-copy", "int64 ordinals + freq")
        return {"k": "pd.period", "v": _nd(enc, values.asi8, path), "dt": dname}

    if isinstance(values, pd.arrays.IntervalArray):
        enc.note(path, dname, "zero-copy", "left + right")
        return {
            "k": "pd.interval",
            "left": encode_index(enc, values.left, f"{path}.left", label),
            "right": encode_index(enc, values.right, f"{path}.right", label),
            "closed": values.closed,
        }

    if isinstance(values, pd.arrays.NumpyExtensionArray):
        return encode_values(enc, values.to_numpy(copy=False), path, label)

    return enc.unsupported(values, path, f"{label} of dtype {dname} ({type(values).__name__})", dtype=dname)


def _encode_string_column(enc: Encoder, values: Any, path: str, label: str) -> Any:
    pd = _pd()
    dtype = values.dtype
    na = "nan" if dtype.na_value is not pd.NA else "NA"
    if dtype.storage not in ("pyarrow", "pyarrow_numpy"):  # pyarrow_numpy: pandas 2.x's str
        enc.note(
            path, str(dtype), "converted",
            "python-backed strings stored once as Arrow large_string; "
            "get() returns the pyarrow-backed string dtype",
        )
        return _strings_from_objects(enc, values, path, label, str(dtype), na)
    try:
        chunked = values._pa_array
    except AttributeError:
        chunked = _arrow.pyarrow().chunked_array([values.__arrow_array__()])
    if _arrow.pyarrow().types.is_large_string(chunked.type):
        enc.note(path, str(dtype), "zero-copy", "Arrow large_string buffers")
    else:
        enc.note(path, str(dtype), "converted", f"Arrow {chunked.type} widened once to large_string at share")
    return {"k": "pd.str", "na": na, "s": _arrow.encode_large_strings(enc, chunked)}


def _strings_from_objects(enc: Encoder, values: Any, path: str, label: str, dname: str, na: str) -> Any:
    """Python str objects (and missing values) converted once to Arrow large_string."""
    if enc.explaining:
        return {"k": "py", "v": None}
    pa = _arrow.pyarrow(f"sharing the string {label}")
    values = np.asarray(values, dtype=object)
    try:
        strings = _arrow.to_large_strings(values)
    except (pa.ArrowException, UnicodeError) as exc:
        return enc.unsupported(values, path, f"{label} of dtype {dname} (strings Arrow cannot store: {exc})", dtype=dname)
    return {"k": "pd.str", "na": na, "s": _arrow.encode_large_strings(enc, strings)}


def _encode_object_column(enc: Encoder, values: np.ndarray, path: str, label: str) -> Any:
    if values.ndim == 1 and _arrow.is_string_array(values):
        _arrow.pyarrow(f"sharing the object string {label}")
        enc.note(
            path, "object (str)", "converted",
            "stored once as Arrow large_string at share (never fixed-width); "
            "get() returns it zero-copy as pandas' str dtype",
        )
        return _strings_from_objects(enc, values, path, label, "object", "nan")
    return enc.unsupported(
        values, path,
        f"{label} of dtype object holding {_describe_object(values)}",
        dtype="object",
    )


def decode_values(dec: Decoder, node: Any) -> Any:
    """Rebuild one column's array: an ndarray or an ExtensionArray over the segment."""
    pd = _pd()
    if not isinstance(node, dict):
        raise dec.corrupt("column node is not an object")
    kind = node.get("k")
    if kind == "pd.dt":
        DatetimeArray = _mod("pandas.core.arrays").DatetimeArray
        data = _decode_nd(dec, node.get("v"), "M")
        if np.datetime_data(data.dtype)[0] not in _UNITS:
            raise dec.corrupt(f"pandas has no {data.dtype} datetimes")
        if "tz" in node:
            unit = np.datetime_data(data.dtype)[0]
            tzdtype = pd.DatetimeTZDtype(unit=unit, tz=_tz_from_json(dec, node["tz"]))
            return DatetimeArray._simple_new(data, dtype=tzdtype)
        return DatetimeArray._simple_new(data, dtype=data.dtype)
    if kind == "pd.td":
        TimedeltaArray = _mod("pandas.core.arrays").TimedeltaArray
        data = _decode_nd(dec, node.get("v"), "m")
        if np.datetime_data(data.dtype)[0] not in _UNITS:
            raise dec.corrupt(f"pandas has no {data.dtype} timedeltas")
        return TimedeltaArray._simple_new(data, dtype=data.dtype)
    if kind == "pd.masked":
        name = _str(dec, node, "dt")
        if name not in _MASKED_DTYPES:
            raise dec.corrupt(f"{name!r:.40} is not a nullable dtype")
        dtype = pd.api.types.pandas_dtype(name)
        if not isinstance(dtype, pd.core.dtypes.dtypes.BaseMaskedDtype):
            raise dec.corrupt(f"{dtype} is not a nullable dtype")
        data = _decode_nd(dec, node.get("v"))
        mask = _decode_nd(dec, node.get("m"))
        if data.dtype != dtype.numpy_dtype or mask.dtype != np.bool_ or data.shape != mask.shape:
            raise dec.corrupt(f"nullable {dtype} column with data {data.dtype}{data.shape}, mask {mask.dtype}{mask.shape}")
        return dtype.construct_array_type()(data, mask, copy=False)
    if kind == "pd.cat":
        codes = _decode_nd(dec, node.get("codes"), "i")
        cats = decode_index(dec, node.get("cats"))
        ordered = node.get("ordered")
        if type(ordered) is not bool:
            raise dec.corrupt("categorical without a boolean 'ordered'")
        dtype = pd.CategoricalDtype(cats, ordered=ordered)
        _check_codes(dec, codes, len(cats), "categorical")
        cat = pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
        _spend_unless_view(dec, cat.codes, codes, "categorical codes")
        return cat
    if kind == "pd.str":
        na = node.get("na")
        if na not in ("nan", "NA"):
            raise dec.corrupt(f"bad string na {na!r:.20}")
        chunked = _decode_sub(dec, node, "s", "pa.lstr")
        return pd.arrays.ArrowStringArray(chunked, dtype=_arrow_string_dtype(pd, na))
    if kind == "pd.arrow":
        chunked = _decode_sub(dec, node, "v", "pa.ipc")
        if not isinstance(chunked, _arrow.pyarrow().ChunkedArray):
            raise dec.corrupt("Arrow column is not a chunked array")
        return pd.arrays.ArrowExtensionArray(chunked)
    if kind == "pd.period":
        ordinals = _decode_nd(dec, node.get("v"))
        if ordinals.dtype != np.int64:
            raise dec.corrupt("period ordinals are not int64")
        name = _str(dec, node, "dt")
        if not _PERIOD_DTYPE.match(name):
            raise dec.corrupt(f"{name!r:.40} is not a period dtype")
        dtype = pd.api.types.pandas_dtype(name)
        if not isinstance(dtype, pd.PeriodDtype):
            raise dec.corrupt(f"{dtype} is not a period dtype")
        return pd.arrays.PeriodArray(ordinals, dtype=dtype, copy=False)
    if kind == "pd.interval":
        left = decode_index(dec, node.get("left"))
        right = decode_index(dec, node.get("right"))
        closed = node.get("closed")
        if closed not in ("left", "right", "both", "neither") or len(left) != len(right):
            raise dec.corrupt("bad interval column")
        return pd.arrays.IntervalArray.from_arrays(left, _own_base(right._values), closed=closed, copy=False)
    out = dec.decode(node)
    if isinstance(out, np.ndarray) and out.ndim == 1:
        return out
    if isinstance(out, pd.api.extensions.ExtensionArray):
        return out  # e.g. a pickled extension column (allow_pickle=True)
    raise dec.corrupt(f"column node {kind!r:.30} does not hold a 1-d array")


def _arrow_string_dtype(pd: Any, na: str) -> Any:
    try:
        return pd.StringDtype("pyarrow", na_value=np.nan if na == "nan" else pd.NA)
    except TypeError:  # pragma: no cover - pandas < 2.3 spells the NaN flavour as a storage
        return pd.StringDtype("pyarrow_numpy" if na == "nan" else "pyarrow")


def _own_base(values: Any) -> Any:
    """*values* (ndarray or NDArray-backed) over the same bytes with a .base of its own.

    IntervalArray copies its right side when both sides have the same .base
    (guarding against overlapping buffers); ours are disjoint slices of one
    mapping, so a distinct base object (a memoryview) avoids that copy.
    """
    if isinstance(values, np.ndarray):
        raw: Any = values.reshape(-1).view(np.uint8)
        return np.frombuffer(memoryview(raw), dtype=values.dtype)
    if hasattr(values, "_ndarray"):
        return type(values)._simple_new(_own_base(values._ndarray), dtype=values.dtype)
    return values


def _check_codes(dec: Decoder, codes: np.ndarray, n: int, what: str) -> None:
    # Before pandas sees them: it narrows codes to the smallest integer type
    # for n first, so 300 for 5 labels would wrap to 44 and pass its checks.
    if len(codes) and (int(codes.min()) < -1 or int(codes.max()) >= n):
        raise dec.corrupt(f"{what} codes outside [-1, {n})")


def _spend_unless_view(dec: Decoder, kept: np.ndarray, stored: np.ndarray, what: str) -> None:
    # pandas narrows codes stored wider than it keeps them (a copy); the encoder
    # stores pandas' own codes, so only a forged segment pays this, once per use.
    if not np.may_share_memory(kept, stored):
        dec.spend(kept.nbytes, what)


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


def _decode_nd(dec: Decoder, node: Any, kinds: str = "") -> np.ndarray:
    if not isinstance(node, dict) or node.get("k") != "nd":
        raise dec.corrupt("expected an array node")
    arr = dec.decode(node)
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or (kinds and arr.dtype.kind not in kinds):
        raise dec.corrupt("column data is not a 1-d array of the right kind")
    return arr


# -- indexes ---------------------------------------------------------------


def encode_index(enc: Encoder, idx: Any, path: str, label: str = "index") -> dict[str, Any]:
    """Plan an Index (RangeIndex as metadata, MultiIndex as levels + codes, else its values)."""
    pd = _pd()
    name = enc.encode(idx.name, f"{path}.name") if not isinstance(idx, pd.MultiIndex) else None
    if isinstance(idx, pd.RangeIndex):
        enc.note(path, "RangeIndex", "zero-copy", "metadata only")
        return {"k": "pd.range", "start": int(idx.start), "stop": int(idx.stop), "step": int(idx.step), "name": name}
    if isinstance(idx, pd.MultiIndex):
        enc.note(path, f"MultiIndex ({idx.nlevels} levels)", "zero-copy", "levels + codes")
        return {
            "k": "pd.mi",
            "levels": [encode_index(enc, lev, f"{path}.levels[{i}]", label) for i, lev in enumerate(idx.levels)],
            "codes": [_nd(enc, c, path) for c in idx.codes],
            "names": [enc.encode(n, f"{path}.names[{i}]") for i, n in enumerate(idx.names)],
        }
    values = idx._values
    python_strings = isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "python"
    if python_strings and len(values) <= _INLINE_INDEX_MAX:
        # Python-backed string labels (pandas without pyarrow): kept inline, so
        # column names never need pyarrow.
        enc.note(path, str(values.dtype), "converted", "labels kept in the header; rebuilt exactly on get()")
        items = [None if v is pd.NA or (isinstance(v, float) and v != v) else v for v in values.tolist()]
        return {"k": "pd.oidx", "v": items, "name": name, "dt": str(values.dtype), "na": values.dtype.na_value is pd.NA}
    if isinstance(values, np.ndarray) and values.dtype == object and len(values) <= _INLINE_INDEX_MAX:
        # Labels are small and exact: kept in the header, they come back
        # with their own types (and dtype object).
        enc.note(path, "object", "converted", "labels kept in the header; rebuilt exactly on get()")
        items = values.tolist()
        if all(type(v) in _JSON_SCALARS for v in items):
            return {"k": "pd.oidx", "v": items, "name": name}
        return {"k": "pd.oidx", "t": [enc.encode(v, f"{path}[{i}]") for i, v in enumerate(items)], "name": name}
    node: dict[str, Any] = {"k": "pd.idx", "v": encode_values(enc, values, path, label), "name": name}
    freq = getattr(idx, "freq", None)
    if freq is not None and isinstance(values, pd.arrays.DatetimeArray | pd.arrays.TimedeltaArray):
        node["freq"] = freq.freqstr
    return node


def decode_index(dec: Decoder, node: Any) -> Any:
    pd = _pd()
    if not isinstance(node, dict):
        raise dec.corrupt("index node is not an object")
    kind = node.get("k")
    name = dec.decode(node.get("name")) if node.get("name") is not None else None
    if kind == "pd.range":
        start, stop, step = node.get("start"), node.get("stop"), node.get("step")
        if not all(type(v) is int for v in (start, stop, step)) or step == 0:
            raise dec.corrupt("bad RangeIndex")
        return pd.RangeIndex(start, stop, step, name=name)
    if kind == "pd.mi":
        levels, codes, names = node.get("levels"), node.get("codes"), node.get("names")
        if not (isinstance(levels, list) and isinstance(codes, list) and isinstance(names, list)):
            raise dec.corrupt("bad MultiIndex")
        if not levels or len(levels) != len(codes) or len(codes) != len(names):
            raise dec.corrupt("MultiIndex levels, codes and names do not pair up")
        levs = [decode_index(dec, lev) for lev in levels]
        arrays = [_decode_nd(dec, c, "i") for c in codes]
        for lev, arr in zip(levs, arrays, strict=True):
            _check_codes(dec, arr, len(lev), "MultiIndex")
        mi = pd.MultiIndex(
            levels=levs, codes=arrays, names=[dec.decode(n) for n in names], verify_integrity=True, copy=False
        )
        for kept, arr in zip(mi.codes, arrays, strict=True):
            _spend_unless_view(dec, kept, arr, "MultiIndex codes")
        return mi
    if kind == "pd.oidx":
        if "t" in node:
            raw = node.get("t")
            items = [dec.decode(v) for v in raw] if isinstance(raw, list) else None
        else:
            items = node.get("v")
        if not isinstance(items, list) or ("t" not in node and not all(type(v) in _JSON_SCALARS for v in items)):
            raise dec.corrupt("bad object index")
        if "dt" in node:
            if not all(v is None or type(v) is str for v in items):
                raise dec.corrupt("bad string labels")
            sdtype = pd.StringDtype("python", na_value=pd.NA if node.get("na") is True else np.nan)
            return pd.Index(pd.array(items, dtype=sdtype), name=name)
        arr = np.empty(len(items), dtype=object)
        for i, v in enumerate(items):
            arr[i] = v  # item by item: tuples stay scalars
        return pd.Index(arr, dtype=object, name=name, copy=False, tupleize_cols=False)
    if kind == "pd.idx":
        values = decode_values(dec, node.get("v"))
        idx = pd.Index(values, name=name, copy=False)
        freq = node.get("freq")
        if freq is not None:
            if not isinstance(freq, str) or len(freq) > 50 or not isinstance(idx, pd.DatetimeIndex | pd.TimedeltaIndex):
                raise dec.corrupt("bad index freq")
            # Set, not validated: validating rebuilds the whole range (a copy).
            idx._freq = _mod("pandas.tseries.frequencies").to_offset(freq)
        return idx
    raise dec.corrupt(f"unknown index kind {kind!r:.30}")


# -- frames and series -----------------------------------------------------


def _label(name: Any) -> str:
    return f"column {name!r}"


def _encode_meta(enc: Encoder, obj: Any, path: str, node: dict[str, Any]) -> None:
    if obj.attrs:
        node["attrs"] = enc.encode(dict(obj.attrs), f"{path}.attrs")
    if not obj.flags.allows_duplicate_labels:
        node["nodup"] = True


def _apply_meta(dec: Decoder, obj: Any, node: dict[str, Any]) -> Any:
    if "attrs" in node:
        attrs = dec.decode(node.get("attrs"))
        if not isinstance(attrs, dict):
            raise dec.corrupt("attrs is not a dict")
        obj.attrs = attrs
    if node.get("nodup"):
        obj = obj.set_flags(allows_duplicate_labels=False)
    return obj


def _encode_frame(enc: Encoder, df: Any, path: str) -> dict[str, Any]:
    pd = _pd()
    index_path = f"{path}.index"
    node: dict[str, Any] = {
        "k": "pd.df",
        "index": encode_index(enc, df.index, index_path, "index"),
        "columns": encode_index(enc, df.columns, f"{path}.columns", "column names"),
        "cols": [],
    }
    if isinstance(df.columns, pd.MultiIndex) or df.columns.has_duplicates:
        names = [f"{path}.iloc[:, {i}]" for i in range(df.shape[1])]
    else:
        names = [f"{path}[{c!r}]" for c in df.columns]
    for i, col_name in enumerate(df.columns):
        values = df._get_column_array(i)
        node["cols"].append(encode_values(enc, values, names[i], _label(col_name)))
    _encode_meta(enc, df, path, node)
    return node


def _decode_frame(dec: Decoder, node: dict[str, Any]) -> Any:
    index = decode_index(dec, node.get("index"))
    columns = decode_index(dec, node.get("columns"))
    cols = node.get("cols")
    if not isinstance(cols, list) or len(cols) != len(columns):
        raise dec.corrupt("the frame's columns and column names do not pair up")
    blocks = []
    for i, col in enumerate(cols):
        values = decode_values(dec, col)
        if len(values) != len(index):
            raise dec.corrupt(f"column {i} has {len(values)} rows, the index {len(index)}")
        if isinstance(values, np.ndarray):
            values = values.reshape(1, -1)  # a (1, rows) view: a block of its own
        blocks.append((values, np.array([i], dtype=np.intp)))
    try:
        from_blocks = _mod("pandas.api.internals").create_dataframe_from_blocks
    except (ImportError, AttributeError):  # pragma: no cover - pandas < 3
        pd = _pd()
        arrays = {i: v[0] if isinstance(v, np.ndarray) else v for i, (v, _) in enumerate(blocks)}
        df = pd.DataFrame(arrays, index=index, copy=False)
        df.columns = columns
    else:
        df = from_blocks(blocks, index=index, columns=columns)
    return _apply_meta(dec, df, node)


def _encode_series(enc: Encoder, s: Any, path: str) -> dict[str, Any]:
    index_path = f"{path}.index"
    node: dict[str, Any] = {
        "k": "pd.series",
        "index": encode_index(enc, s.index, index_path, "index"),
        "name": enc.encode(s.name, f"{path}.name"),
        "v": encode_values(enc, s._values, path, f"Series {s.name!r}"),
    }
    _encode_meta(enc, s, path, node)
    return node


def _decode_series(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _pd()
    index = decode_index(dec, node.get("index"))
    values = decode_values(dec, node.get("v"))
    if len(values) != len(index):
        raise dec.corrupt(f"series has {len(values)} values, its index {len(index)}")
    s = pd.Series(values, index=index, name=dec.decode(node.get("name")), copy=False)
    return _apply_meta(dec, s, node)


def _encode_scalar(enc: Encoder, obj: Any, path: str) -> Any:
    pd = _pd()
    if obj is pd.NA:
        return {"k": "pd.na"}
    if obj is pd.NaT:
        return {"k": "pd.nat"}
    if isinstance(obj, pd.Timestamp):
        node: dict[str, Any] = {"k": "pd.ts", "v": int(obj.asm8.view("i8")), "unit": obj.unit}
        if obj.tz is not None:
            tz = _tz_to_json(obj.tz)
            if tz is None:
                return enc.unsupported(obj, path, f"Timestamp with time zone {obj.tz!r}{_TZ_KINDS}")
            node["tz"] = tz
        return node
    if isinstance(obj, pd.Timedelta):
        return {"k": "pd.tdelta", "v": int(obj.asm8.view("i8")), "unit": obj.unit}
    return None


def _decode_time(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _pd()
    value, unit = node.get("v"), node.get("unit")
    if type(value) is not int or unit not in _UNITS:
        raise dec.corrupt("bad timestamp")
    if node["k"] == "pd.tdelta":
        return pd.Timedelta(np.timedelta64(value, unit))
    ts = pd.Timestamp(np.datetime64(value, unit))
    if "tz" in node:
        ts = ts.tz_localize("UTC").tz_convert(_tz_from_json(dec, node["tz"]))
    return ts


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    """Plan a pandas object (the dispatch target of Encoder.encode)."""
    pd = _pd()
    if isinstance(obj, pd.DataFrame):
        return _encode_frame(enc, obj, path)
    if isinstance(obj, pd.Series):
        return _encode_series(enc, obj, path)
    if isinstance(obj, pd.Index):
        return encode_index(enc, obj, path, "Index")
    if isinstance(obj, pd.api.extensions.ExtensionArray):
        return {"k": "pd.array", "v": encode_values(enc, obj, path, type(obj).__name__)}
    node = _encode_scalar(enc, obj, path)
    if node is not None:
        return node
    return enc.unsupported(obj, path, f"pandas object of type {type(obj).__qualname__}")


def _dec_array(dec: Decoder, node: dict[str, Any]) -> Any:
    return decode_values(dec, node.get("v"))


def _register() -> None:
    from ._core import register_decoder as _register_decoder

    def register_decoder(kind: str, fn: Any) -> None:
        _register_decoder(kind, _arrow.guard(fn))

    register_decoder("pd.df", _decode_frame)
    register_decoder("pd.series", _decode_series)
    for kind in ("pd.range", "pd.mi", "pd.oidx", "pd.idx"):
        register_decoder(kind, decode_index)
    for kind in ("pd.dt", "pd.td", "pd.masked", "pd.cat", "pd.str", "pd.arrow", "pd.period", "pd.interval"):
        register_decoder(kind, decode_values)
    register_decoder("pd.array", _dec_array)
    register_decoder("pd.na", lambda dec, node: _pd().NA)
    register_decoder("pd.nat", lambda dec, node: _pd().NaT)
    register_decoder("pd.ts", _decode_time)
    register_decoder("pd.tdelta", _decode_time)


_register()
