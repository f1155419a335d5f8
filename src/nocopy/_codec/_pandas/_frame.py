"""DataFrames and Series: an index, column arrays, and their attrs and flags.

The frame is assembled from one block per column, without consolidation, so
without a copy. Views over a read-only mapping are read-only (a write raises
"assignment destination is read-only"); over a private mapping
(``get(private=True)``) writes land in copy-on-write pages of that process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _columns, _compat, _index

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "encode_frame", "encode_series"]


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


def encode_frame(enc: Encoder, df: Any, path: str) -> dict[str, Any]:
    pd = _compat.pandas()
    node: dict[str, Any] = {
        "k": "pd.df",
        "index": _index.encode_index(enc, df.index, f"{path}.index", "index"),
        "columns": _index.encode_index(enc, df.columns, f"{path}.columns", "column names"),
        "cols": [],
    }
    if isinstance(df.columns, pd.MultiIndex) or df.columns.has_duplicates:
        names = [f"{path}.iloc[:, {i}]" for i in range(df.shape[1])]
    else:
        names = [f"{path}[{c!r}]" for c in df.columns]
    for i, col_name in enumerate(df.columns):
        values = _compat.column_array(df, i)
        node["cols"].append(_columns.encode_values(enc, values, names[i], _label(col_name)))
    _encode_meta(enc, df, path, node)
    return node


def _dec_frame(dec: Decoder, node: dict[str, Any]) -> Any:
    index = _index.decode_index(dec, node.get("index"))
    columns = _index.decode_index(dec, node.get("columns"))
    cols = node.get("cols")
    if not isinstance(cols, list) or len(cols) != len(columns):
        raise dec.corrupt("the frame's columns and column names do not pair up")
    blocks = []
    for i, col in enumerate(cols):
        values = _columns.decode_values(dec, col)
        if len(values) != len(index):
            raise dec.corrupt(f"column {i} has {len(values)} rows, the index {len(index)}")
        if isinstance(values, np.ndarray):
            values = values.reshape(1, -1)  # a (1, rows) view: a block of its own
        blocks.append((values, np.array([i], dtype=np.intp)))
    df = _compat.frame_from_blocks(blocks, index, columns)
    return _apply_meta(dec, df, node)


def encode_series(enc: Encoder, s: Any, path: str) -> dict[str, Any]:
    node: dict[str, Any] = {
        "k": "pd.series",
        "index": _index.encode_index(enc, s.index, f"{path}.index", "index"),
        "name": enc.encode(s.name, f"{path}.name"),
        "v": _columns.encode_values(enc, _compat.values_of(s), path, f"Series {s.name!r}"),
    }
    _encode_meta(enc, s, path, node)
    return node


def _dec_series(dec: Decoder, node: dict[str, Any]) -> Any:
    index = _index.decode_index(dec, node.get("index"))
    values = _columns.decode_values(dec, node.get("v"))
    if len(values) != len(index):
        raise dec.corrupt(f"series has {len(values)} values, its index {len(index)}")
    s = _compat.pandas().Series(values, index=index, name=dec.hashable(dec.decode(node.get("name")), "series name"), copy=False)
    return _apply_meta(dec, s, node)


def _dec_array(dec: Decoder, node: dict[str, Any]) -> Any:
    return _columns.decode_values(dec, node.get("v"))


DECODERS: dict[str, DecodeFn] = {"pd.df": _dec_frame, "pd.series": _dec_series, "pd.array": _dec_array}
