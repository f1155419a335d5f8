"""pandas DataFrames, Series, Indexes, extension arrays and scalars: one buffer set per
column, views on get().

By concept: ``_columns`` (one column's array, every dtype), ``_index``
(indexes), ``_frame`` (frames and series), ``_time`` (time zones and scalars),
``_nodes`` (node helpers the column and index codecs share: neither imports
the other's module: columns reach the index codec through the registry), and
``_compat``, the only module that touches pandas' internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._arrow import guard
from .._python import labels
from . import _columns, _compat, _frame, _index, _time

if TYPE_CHECKING:
    from .._registry import DecodeFn, Encoder

__all__ = ["DECODERS", "encode"]


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    """Plan a pandas object (what the codec registry calls for the pandas family)."""
    # Lists and tuples met inside a pandas object are its labels, names and attrs: they come
    # back as they were (a tuple name stays a hashable tuple), never as a SharedSequence.
    with labels():
        return _encode(enc, obj, path)


def _encode(enc: Encoder, obj: Any, path: str) -> Any:
    pd = _compat.pandas()
    if isinstance(obj, pd.DataFrame):
        return _frame.encode_frame(enc, obj, path)
    if isinstance(obj, pd.Series):
        return _frame.encode_series(enc, obj, path)
    if isinstance(obj, pd.Index):
        return _index.encode_index(enc, obj, path, "Index")
    if isinstance(obj, pd.api.extensions.ExtensionArray):
        return {"k": "pd.array", "v": _columns.encode_values(enc, obj, path, type(obj).__name__)}
    node = _time.encode_scalar(enc, obj, path)
    if node is not None:
        return node
    return enc.unsupported(obj, path, f"pandas object of type {type(obj).__qualname__}")


# Arrow's own errors (e.g. invalid UTF-8 met while pandas checks categories)
# are reported as a corrupt segment, like every other decoding error.
DECODERS: dict[str, DecodeFn] = {
    kind: guard(fn)
    for table in (_frame.DECODERS, _index.DECODERS, _columns.DECODERS, _time.DECODERS)
    for kind, fn in table.items()
}
