"""Indexes: RangeIndex as metadata, MultiIndex as levels + codes, small object indexes
inline in the header, anything else as its column array.

Object-dtype indexes (column names, small categories) of plain Python scalars
are kept as a JSON list, so their dtype and values come back exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _columns, _compat
from ._nodes import (
    INDEX_KINDS,
    check_codes,
    decode_index,
    decode_nd,
    nd,
    spend_materialised,
    spend_unless_view,
)

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "decode_index", "encode_index"]

# Object indexes up to this length whose items are plain scalars go inline
# (JSON) and come back exactly; longer ones of strings go through Arrow.
_INLINE_INDEX_MAX = 100_000
_JSON_SCALARS = (str, int, float, bool, type(None))


def encode_index(enc: Encoder, idx: Any, path: str, label: str = "index") -> dict[str, Any]:
    """Plan an Index (RangeIndex as metadata, MultiIndex as levels + codes, else its values)."""
    pd = _compat.pandas()
    if isinstance(idx, pd.MultiIndex):
        return _encode_multi(enc, idx, path, label)
    name = enc.encode(idx.name, f"{path}.name")
    if isinstance(idx, pd.RangeIndex):
        enc.note(path, "RangeIndex", "zero-copy", "metadata only")
        return {"k": "pd.range", "start": int(idx.start), "stop": int(idx.stop), "step": int(idx.step), "name": name}
    values = _compat.values_of(idx)
    inline = _encode_inline(enc, values, path, name)
    if inline is not None:
        return inline
    node: dict[str, Any] = {"k": "pd.idx", "v": _columns.encode_values(enc, values, path, label), "name": name}
    freq = getattr(idx, "freq", None)
    if freq is not None and isinstance(values, pd.arrays.DatetimeArray | pd.arrays.TimedeltaArray):
        node["freq"] = freq.freqstr
    return node


def _encode_multi(enc: Encoder, idx: Any, path: str, label: str) -> dict[str, Any]:
    enc.note(path, f"MultiIndex ({idx.nlevels} levels)", "zero-copy", "levels + codes")
    return {
        "k": "pd.mi",
        "levels": [encode_index(enc, lev, f"{path}.levels[{i}]", label) for i, lev in enumerate(idx.levels)],
        "codes": [nd(enc, c, path) for c in idx.codes],
        "names": [enc.encode(n, f"{path}.names[{i}]") for i, n in enumerate(idx.names)],
    }


def _encode_inline(enc: Encoder, values: Any, path: str, name: Any) -> dict[str, Any] | None:
    """The ``pd.oidx`` node of small object or python-string labels, else None."""
    pd = _compat.pandas()
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
    return None


def _name(dec: Decoder, node: dict[str, Any]) -> Any:
    return dec.hashable(dec.decode(node.get("name")), "index name") if node.get("name") is not None else None


def _dec_range(dec: Decoder, node: dict[str, Any]) -> Any:
    name = _name(dec, node)
    start, stop, step = node.get("start"), node.get("stop"), node.get("step")
    if not all(type(v) is int for v in (start, stop, step)) or step == 0:
        raise dec.corrupt("bad RangeIndex")
    return _compat.pandas().RangeIndex(start, stop, step, name=name)


def _dec_multi(dec: Decoder, node: dict[str, Any]) -> Any:
    levels, codes, names = node.get("levels"), node.get("codes"), node.get("names")
    if not (isinstance(levels, list) and isinstance(codes, list) and isinstance(names, list)):
        raise dec.corrupt("bad MultiIndex")
    if not levels or len(levels) != len(codes) or len(codes) != len(names):
        raise dec.corrupt("MultiIndex levels, codes and names do not pair up")
    levs = [decode_index(dec, lev) for lev in levels]
    for lev in levs:
        spend_materialised(dec, lev, "a MultiIndex level")
    arrays = [decode_nd(dec, c, "i") for c in codes]
    for lev, arr in zip(levs, arrays, strict=True):
        check_codes(dec, arr, len(lev), "MultiIndex")
    mi = _compat.pandas().MultiIndex(
        levels=levs, codes=arrays, names=[dec.hashable(dec.decode(n), "level name") for n in names], verify_integrity=True, copy=False
    )
    for kept, arr in zip(mi.codes, arrays, strict=True):
        spend_unless_view(dec, kept, arr, "MultiIndex codes")
    return mi


def _inline_items(dec: Decoder, node: dict[str, Any]) -> list[Any]:
    if "t" in node:
        raw = node.get("t")
        items = [dec.decode(v) for v in raw] if isinstance(raw, list) else None
    else:
        items = node.get("v")
    if not isinstance(items, list) or ("t" not in node and not all(type(v) in _JSON_SCALARS for v in items)):
        raise dec.corrupt("bad object index")
    return items


def _dec_inline(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _compat.pandas()
    name = _name(dec, node)
    items = _inline_items(dec, node)
    if "dt" in node:
        if not all(v is None or type(v) is str for v in items):
            raise dec.corrupt("bad string labels")
        sdtype = pd.StringDtype("python", na_value=pd.NA if node.get("na") is True else np.nan)
        return pd.Index(pd.array(items, dtype=sdtype), name=name)
    # pandas hashes object labels (uniqueness of categories and column names):
    # colliding ones are charged first, as dict keys are.
    dec.keys(items, "label", unhashable_ok=True)
    arr = np.empty(len(items), dtype=object)
    for i, v in enumerate(items):
        arr[i] = v  # item by item: tuples stay scalars
    return pd.Index(arr, dtype=object, name=name, copy=False, tupleize_cols=False)


def _dec_values(dec: Decoder, node: dict[str, Any]) -> Any:
    pd = _compat.pandas()
    name = _name(dec, node)
    values = _columns.decode_values(dec, node.get("v"))
    idx = pd.Index(values, name=name, copy=False)
    freq = node.get("freq")
    if freq is not None:
        if not isinstance(freq, str) or len(freq) > 50 or not isinstance(idx, pd.DatetimeIndex | pd.TimedeltaIndex):
            raise dec.corrupt("bad index freq")
        _compat.set_freq(idx, freq)
    return idx


DECODERS: dict[str, DecodeFn] = {
    "pd.range": _dec_range,
    "pd.mi": _dec_multi,
    "pd.oidx": _dec_inline,
    "pd.idx": _dec_values,
}
if set(DECODERS) != INDEX_KINDS:  # pragma: no cover - the two lists are kept together
    raise ImportError("_nodes.INDEX_KINDS and the index decoders differ")
