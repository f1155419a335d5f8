"""Node helpers shared by the column and index codecs, which import this and never each other
at module level: the index codec decodes its values as columns, and the column codec
reaches indexes (categories, interval sides) through the registry by node kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._numpy import encode_array
from . import _compat

if TYPE_CHECKING:
    from .._registry import Decoder, Encoder

__all__ = [
    "INDEX_KINDS",
    "check_codes",
    "decode_index",
    "decode_nd",
    "nd",
    "spend_materialised",
    "spend_unless_view",
]

#: The node kinds of an index (the decoders of ``_index``).
INDEX_KINDS = frozenset({"pd.range", "pd.mi", "pd.oidx", "pd.idx"})


def nd(enc: Encoder, arr: Any, path: str) -> dict[str, Any]:
    """Plan an array as an ``nd`` node, noted by its owner (not as a leaf of its own)."""
    return encode_array(enc, np.asarray(arr), path, note=False)


def decode_nd(dec: Decoder, node: Any, kinds: str = "") -> np.ndarray:
    """An ``nd`` node that must be a 1-d array (of a dtype kind in *kinds*, if given)."""
    if not isinstance(node, dict) or node.get("k") != "nd":
        raise dec.corrupt("expected an array node")
    arr = dec.decode(node)
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or (kinds and arr.dtype.kind not in kinds):
        raise dec.corrupt("column data is not a 1-d array of the right kind")
    return arr


def decode_index(dec: Decoder, node: Any) -> Any:
    """An index node (any of `INDEX_KINDS`) as a pandas Index."""
    if not isinstance(node, dict):
        raise dec.corrupt("index node is not an object")
    kind = node.get("k")
    if not isinstance(kind, str) or kind not in INDEX_KINDS:
        raise dec.corrupt(f"unknown index kind {kind!r:.30}")
    return dec.decode(node)


def check_codes(dec: Decoder, codes: np.ndarray, n: int, what: str) -> None:
    # Before pandas sees them: it narrows codes to the smallest integer type
    # for n first, so 300 for 5 labels would wrap to 44 and pass its checks.
    if len(codes) and (int(codes.min()) < -1 or int(codes.max()) >= n):
        raise dec.corrupt(f"{what} codes outside [-1, {n})")


def spend_unless_view(dec: Decoder, kept: np.ndarray, stored: np.ndarray, what: str) -> None:
    # pandas narrows codes stored wider than it keeps them (a copy); the encoder
    # stores pandas' own codes, so only a forged segment pays this, once per use.
    if not np.may_share_memory(kept, stored):
        dec.spend(kept.nbytes, what)


def spend_materialised(dec: Decoder, idx: Any, what: str) -> None:
    """Charge an index pandas is about to turn into an array (8 bytes a label), if it is not one yet.

    A RangeIndex is metadata (three ints in the header), but the interval and
    MultiIndex constructors materialise it: its length, not the segment's
    size, would set what get() allocates.
    """
    if isinstance(idx, _compat.pandas().RangeIndex):
        dec.spend(8 * len(idx), what)
