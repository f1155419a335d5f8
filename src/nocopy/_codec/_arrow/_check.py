"""The Arrow allow-lists, and the full validation of Arrow data read from a segment at a
cost charged to the decoder's budget before it is paid.

Arrow's own ``validate(full=True)`` checks the UTF-8 of every ``string_view``
view, and many views may name the same bytes (Polars' ``gather`` makes such
columns, honestly): its cost grows with views x length, not with the segment.
It also checks a dictionary again for every chunk and field that uses it. So
the data is validated here in three parts, each bounded by the bytes the
segment holds:

* the array with every dictionary replaced by its indices and every
  ``string_view`` by ``binary_view`` (the same buffers: offsets, view bounds
  and prefixes are checked, no UTF-8), by Arrow;
* each dictionary once (by its buffers), and its indices against its length;
* the UTF-8 of ``string_view`` data: each data buffer once, then each
  out-of-line view only at its two ends (a substring of valid UTF-8 that
  starts and ends on a character boundary is valid UTF-8); inline views (at
  most 12 bytes each) by Arrow.

The bytes of every buffer met are charged to `Decoder.spend` first, so
buffers referenced many times (an IPC body's buffers may overlap) are refused
before they are scanned. Types outside that plan (unions, run-end encoded,
list views, extensions holding dictionaries or views) are validated by Arrow
as a whole, at the cost Arrow will pay charged first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .._registry import Decoder

__all__ = ["polars_refusal", "validate"]

_INLINE = 12  # a string_view of at most this many bytes holds them in its view
_VIEW_BLOCK = 1 << 16  # views checked at a time (1 MiB of them)


# -- allow-list: what Polars' Arrow export writes ------------------------------


def _polars_leaf(pa: Any, t: Any) -> bool:
    ty = pa.types
    return bool(
        ty.is_integer(t) or ty.is_floating(t) or ty.is_boolean(t) or ty.is_null(t) or ty.is_date32(t)
        or ty.is_timestamp(t) or ty.is_duration(t) or ty.is_time64(t) or ty.is_decimal128(t)
        or ty.is_string_view(t) or ty.is_binary_view(t)
    )


def polars_refusal(pa: Any, typ: Any) -> str:
    """What in Arrow type *typ* Polars' export (``to_arrow(compat_level=newest)``) never writes, or "".

    Dictionaries only as Categorical/Enum export them: string_view values,
    uint8/16/32 indices (a dictionary of lists made every row a copy of a list).
    """
    ty = pa.types
    if ty.is_dictionary(typ):
        if typ.index_type not in (pa.uint8(), pa.uint16(), pa.uint32()) or typ.value_type != pa.string_view():
            return f"{typ} (Polars writes dictionaries only of string_view values, as Categorical/Enum)"
        return ""
    if ty.is_map(typ):
        return polars_refusal(pa, typ.key_type) or polars_refusal(pa, typ.item_type)
    if ty.is_large_list(typ) or ty.is_fixed_size_list(typ):
        return polars_refusal(pa, typ.value_type)
    if ty.is_struct(typ):
        for i in range(typ.num_fields):
            why = polars_refusal(pa, typ.field(i).type)
            if why:
                return why
        return ""
    return "" if _polars_leaf(pa, typ) else str(typ)


# -- validation ---------------------------------------------------------------


def _arrays(pa: Any, data: Any) -> Iterator[Any]:
    if isinstance(data, pa.Table):
        for column in data.columns:
            yield from column.chunks
    elif isinstance(data, pa.RecordBatch):
        yield from data.columns


def validate(dec: Decoder, pa: Any, data: Any) -> None:
    """Check Arrow *data* (a Table or RecordBatch over the segment) fully; ArrowInvalid if it is not.

    SegmentCorruptError before the work if it would cost more than the budget.
    """
    seen: set[tuple[tuple[int, int], ...]] = set()
    for arr in _arrays(pa, data):
        _check(dec, pa, arr, seen)


def _buffer_bytes(arr: Any) -> int:
    # The array's buffers and its children's (not its dictionaries').
    return sum(b.size for b in arr.buffers() if b is not None)


def _check(dec: Decoder, pa: Any, arr: Any, seen: set[tuple[tuple[int, int], ...]]) -> None:
    dec.spend(_buffer_bytes(arr), "validating its Arrow data")
    stripped = _stripped(pa, arr.type)
    if stripped is None:  # a type outside the plan: Arrow checks it all, at its own cost
        dec.spend(_whole_cost(pa, arr), "validating its Arrow data")
        arr.validate(full=True)
        return
    (arr if stripped == arr.type else arr.view(stripped)).validate(full=True)
    for part in _parts(pa, arr):
        if pa.types.is_dictionary(part.type):
            _check_dictionary(dec, pa, part, seen)
        else:
            _check_views(dec, pa, part)


def _check_dictionary(dec: Decoder, pa: Any, arr: Any, seen: set[tuple[tuple[int, int], ...]]) -> None:
    values = arr.dictionary
    key = tuple((b.address, b.size) for b in values.buffers() if b is not None)
    if key not in seen:  # a dictionary shared by chunks (as IPC reads one) is checked once
        seen.add(key)
        _check(dec, pa, values, seen)
    indices = arr.indices
    if indices.null_count < len(indices):
        import pyarrow.compute as pc

        bounds = pc.min_max(indices)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if low < 0 or high >= len(values):
            raise pa.ArrowInvalid(f"dictionary indices outside [0, {len(values)})")


def _check_views(dec: Decoder, pa: Any, arr: Any) -> None:
    """The UTF-8 of a string_view array whose views Arrow checked as binary_view.

    Block by block: the temporaries stay at about a MiB however long the
    column (a worker's memory must not grow with the frames it reads).
    """
    n = len(arr)
    if not n:
        return
    bufs = arr.buffers()
    views = np.frombuffer(bufs[1], dtype=np.int32).reshape(-1, 4)[arr.offset : arr.offset + n]
    data = [np.frombuffer(b, dtype=np.uint8) if b is not None else np.empty(0, np.uint8) for b in bufs[2:]]
    utf8: dict[int, bool] = {}
    for start in range(0, n, _VIEW_BLOCK):
        block = views[start : start + _VIEW_BLOCK]
        long = block[:, 0] > _INLINE
        short = block.copy()
        if arr.null_count:
            valid = np.asarray(arr.slice(start, len(block)).is_valid())
            long &= valid
            short[~valid] = 0
        # Inline strings checked by Arrow over a copy of the views where the others are empty.
        short[long] = 0
        pa.Array.from_buffers(pa.string_view(), len(block), [None, pa.py_buffer(short)]).validate(full=True)
        out = block[long]
        if len(out):
            # Grouped by data buffer with one sort (a stream may declare many buffers).
            out = out[np.argsort(out[:, 2], kind="stable")]
            for mine in np.split(out, np.flatnonzero(np.diff(out[:, 2])) + 1):
                index = int(mine[0, 2])
                if index not in utf8:
                    utf8[index] = _valid_utf8(pa, data[index])
                _check_ends(dec, pa, data[index], utf8[index], mine[:, 3].astype(np.int64), mine[:, 0].astype(np.int64))


def _check_ends(dec: Decoder, pa: Any, data: np.ndarray, whole: bool, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Out-of-line views (bounds checked by Arrow) into *data*, which is valid UTF-8 if *whole*."""
    if whole:
        ends = starts + lengths
        ends = ends[ends < len(data)]
        # A character boundary: not a continuation byte (0b10xxxxxx), or the buffer's end.
        if ((data[starts] & 0xC0) == 0x80).any() or ((data[ends] & 0xC0) == 0x80).any():
            raise pa.ArrowInvalid("a string view starts or ends inside a UTF-8 character")
        return
    # Bytes that are not UTF-8 between the strings (no encoder writes them): each view
    # on its own, at a cost charged first.
    dec.spend(int(lengths.sum()), "validating the UTF-8 of its string views")
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    gathered = np.concatenate([data[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)])
    pa.Array.from_buffers(
        pa.large_string(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(gathered)]
    ).validate(full=True)


def _valid_utf8(pa: Any, data: np.ndarray) -> bool:
    # Its bytes were charged with the array's buffers.
    whole = pa.Array.from_buffers(
        pa.large_string(), 1, [None, pa.py_buffer(np.array([0, data.nbytes], np.int64)), pa.py_buffer(data)]
    )
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _needs_parts(pa: Any, t: Any) -> bool:
    """Whether type *t* holds a dictionary or a string_view anywhere."""
    ty = pa.types
    if ty.is_dictionary(t) or ty.is_string_view(t):
        return True
    if ty.is_map(t):
        return _needs_parts(pa, t.key_type) or _needs_parts(pa, t.item_type)
    if isinstance(t, pa.ExtensionType):
        return _needs_parts(pa, t.storage_type)
    if ty.is_run_end_encoded(t):
        return _needs_parts(pa, t.value_type)
    return any(_needs_parts(pa, t.field(i).type) for i in range(t.num_fields))


def _stripped(pa: Any, t: Any) -> Any:
    """*t* with dictionaries as their index type and string_view as binary_view;
    None if *t* nests them in a type this module does not rebuild."""
    ty = pa.types
    if not _needs_parts(pa, t):
        return t
    if ty.is_dictionary(t):
        return t.index_type
    if ty.is_string_view(t):
        return pa.binary_view()
    if ty.is_map(t):
        key, item = _stripped(pa, t.key_type), _stripped(pa, t.item_type)
        if key is None or item is None:
            return None
        return pa.map_(t.key_field.with_type(key), t.item_field.with_type(item), t.keys_sorted)
    if ty.is_struct(t) or ty.is_large_list(t) or ty.is_list(t) or ty.is_fixed_size_list(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        inner = [_stripped(pa, f.type) for f in fields]
        if any(x is None for x in inner):
            return None
        new = [f.with_type(x) for f, x in zip(fields, inner, strict=True)]
        if ty.is_struct(t):
            return pa.struct(new)
        if ty.is_fixed_size_list(t):
            return pa.list_(new[0], t.list_size)
        return pa.large_list(new[0]) if ty.is_large_list(t) else pa.list_(new[0])
    return None


def _parts(pa: Any, arr: Any) -> Iterator[Any]:
    """The dictionary and string_view arrays inside *arr* (not inside its dictionaries)."""
    t = arr.type
    ty = pa.types
    if not _needs_parts(pa, t):
        return
    if ty.is_dictionary(t) or ty.is_string_view(t):
        yield arr
    elif ty.is_struct(t):
        for i in range(t.num_fields):
            yield from _parts(pa, arr.field(i))
    else:  # list, large_list, fixed_size_list, map (its entries)
        yield from _parts(pa, arr.values)


def _whole_cost(pa: Any, arr: Any) -> int:
    """What Arrow's full validation of *arr* reads beyond its own buffers: its
    dictionaries and the bytes its string views name, wherever they are."""
    cost = 0
    for part in _all_parts(pa, arr):
        if pa.types.is_dictionary(part.type):
            cost += _buffer_bytes(part.dictionary) + _whole_cost(pa, part.dictionary)
        elif len(part):
            views = np.frombuffer(part.buffers()[1], dtype=np.int32).reshape(-1, 4)
            cost += int(views[part.offset : part.offset + len(part), 0].astype(np.int64).clip(0).sum())
    return cost


def _all_parts(pa: Any, arr: Any) -> Iterator[Any]:
    t = arr.type
    ty = pa.types
    if ty.is_dictionary(t) or ty.is_string_view(t):
        yield arr
        return
    if isinstance(t, pa.ExtensionType):
        yield from _all_parts(pa, arr.storage)
    elif ty.is_run_end_encoded(t) or (t.num_fields and hasattr(arr, "values")):
        yield from _all_parts(pa, arr.values)
    else:
        for i in range(t.num_fields):
            yield from _all_parts(pa, arr.field(i))
