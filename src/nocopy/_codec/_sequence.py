"""Lists and tuples of ``str`` or ``bytes`` (with ``None``): stored once in Arrow's
large_string / large_binary layout (int64 offsets, data bytes, validity bitmap), read back
as a `SharedSequence` that builds each item on access.

A plain list rebuilt in every process is a full copy per worker, and merely reading its
items writes their reference counts, so fork's copy-on-write copies them too (PyTorch's
DataLoader issue #13246). A `SharedSequence` holds no Python object per item: the offsets
and bytes stay in the shared pages, and each item is a new object made when it is read.

NumPy only (no pyarrow): a list of str is plain Python data, and sharing it must work
where pyarrow is not installed. The layout is Arrow's, so Arrow could read it as is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, overload

import numpy as np

from ..errors import SegmentCorruptError
from ._arrow._base import checked_offsets

if TYPE_CHECKING:
    from ._registry import Decoder, Encoder

__all__ = ["SharedSequence", "decode_sequence", "encode_sequence", "sequence_kind"]

_BLOCK = 1 << 12  # items iterated per block of offsets copied out
_REPR_ITEMS = 6


def sequence_kind(obj: Any) -> type | None:
    """``str`` or ``bytes`` if *obj* is a list or tuple of them (``None`` allowed, one of
    them at least), else None.

    Examples
    --------
    >>> sequence_kind(["a", None]), sequence_kind([b"x"]), sequence_kind(["a", b"x"]), sequence_kind([])
    (<class 'str'>, <class 'bytes'>, None, None)
    """
    t = type(obj)
    if (t is not list and t is not tuple) or not obj:
        return None
    kinds = set(map(type, obj))  # in C: a few ns per item
    kinds.discard(type(None))
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    return kind if kind is str or kind is bytes else None


class SharedSequence(Sequence[Any]):
    """A read-only sequence of ``str`` or ``bytes`` (and ``None``) over shared memory:
    what ``get()`` returns for a shared list or tuple of them.

    Each item is built when it is read, from bytes that stay in the shared segment: no
    process holds a copy of the list, and reading touches no reference count in shared
    pages. It supports ``len()``, indexing (negative too), iteration, ``in``, ``index()``
    and ``count()``. A slice is a `SharedSequence` too (zero-copy, any step). It equals a
    list, tuple or `SharedSequence` of the same items. Pickling it (``pickle``,
    ``copy.deepcopy``, passing it to another process by value) gives a plain ``list`` of
    its items; ``list(seq)`` makes one, for code that needs to change it.

    Examples
    --------
    >>> import nocopy
    >>> with nocopy.share(["alpha", None, "é"]) as ref:
    ...     seq = ref.get()
    ...     seq[0], seq[-1], len(seq), seq == ["alpha", None, "é"], list(seq[::2])
    ('alpha', 'é', 3, True, ['alpha', 'é'])
    """

    __slots__ = ("_data", "_items", "_kind", "_name", "_offsets", "_valid")
    _kind: type
    _offsets: np.ndarray
    _data: np.ndarray
    _valid: np.ndarray | None
    _items: range
    _name: str

    def __init__(self) -> None:
        raise TypeError(
            "nocopy.SharedSequence is made by nocopy, not by hand. Fix: nocopy.share(a_list).get()."
        )

    @classmethod
    def _make(
        cls, kind: type, offsets: np.ndarray, data: np.ndarray, valid: np.ndarray | None, items: range, name: str
    ) -> SharedSequence:
        self = object.__new__(cls)
        self._kind = kind
        self._offsets = offsets
        self._data = data
        self._valid = valid
        self._items = items
        self._name = name
        return self

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> SharedSequence: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return SharedSequence._make(
                self._kind, self._offsets, self._data, self._valid, self._items[index], self._name
            )
        try:
            i = self._items[index]
        except IndexError:
            raise IndexError("SharedSequence index out of range") from None
        start, stop = self._offsets[i : i + 2].tolist()  # copied out once, then used
        return self._build(i, start, stop)

    def _build(self, i: int, start: int, stop: int) -> Any:
        valid = self._valid
        if valid is not None and not (int(valid[i >> 3]) >> (i & 7)) & 1:
            return None
        raw = self._data[start:stop].tobytes()  # private copy first: the check and the value agree
        if self._kind is bytes:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._corrupt(f"item {i} is not valid UTF-8")

    def _corrupt(self, why: str) -> NoReturn:
        raise SegmentCorruptError(
            f"segment {self._name} holds a corrupt sequence of str: {why} (another process "
            "rewrote it after it was shared). Fix: share the data again."
        )

    def __iter__(self) -> Iterator[Any]:
        items = self._items
        if items.step != 1:
            for i in items:
                start, stop = self._offsets[i : i + 2].tolist()
                yield self._build(i, start, stop)
            return
        # Offsets a block at a time: one small private copy instead of two NumPy scalars per item.
        for first in range(items.start, items.stop, _BLOCK):
            last = min(first + _BLOCK, items.stop)
            bounds = self._offsets[first : last + 1].tolist()
            for i, start, stop in zip(range(first, last), bounds, itertools.islice(bounds, 1, None), strict=False):
                yield self._build(i, start, stop)

    def __reversed__(self) -> Iterator[Any]:
        return iter(self[::-1])

    def __contains__(self, value: object) -> bool:
        if value is not None and type(value) is not self._kind:
            return False
        return any(v == value for v in self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, list | tuple | SharedSequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    # Equal to lists, which are unhashable: so is this.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{v!r:.60}" for v in itertools.islice(iter(self), _REPR_ITEMS))
        more = ", ..." if len(self) > _REPR_ITEMS else ""
        return f"nocopy.SharedSequence([{shown}{more}], len={len(self)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # By value, as the plain list it stands for: a copy in the receiver, never a handle.
        return (list, (list(self),))

    def __copy__(self) -> SharedSequence:
        return self  # read-only: a copy would be the same thing


def encode_sequence(enc: Encoder, obj: Any, kind: type, path: str) -> dict[str, Any] | None:
    """Plan a list or tuple of *kind* (``str`` or ``bytes``, with ``None``) as offsets + data (+ validity),
    or None if a str cannot be encoded as UTF-8 (a lone surrogate): the caller keeps it as it is."""
    what = "str" if kind is str else "bytes"
    n = len(obj)
    if kind is str:
        try:
            raw = [b"" if s is None else s.encode("utf-8") for s in obj]
        except UnicodeEncodeError:
            return None
    else:
        raw = [b"" if b is None else b for b in obj]
    enc.note(
        path, f"{type(obj).__name__} of {what}", "zero-copy",
        f"stored once as Arrow large_{'string' if kind is str else 'binary'} buffers; get() gives "
        f"a read-only nocopy.SharedSequence that builds each item on access",
    )
    if enc.explaining:
        return {"k": "py", "v": None}
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, raw), dtype=np.int64, count=n), out=offsets[1:])
    data = b"".join(raw)
    del raw
    node: dict[str, Any] = {
        "k": "seq",
        "t": what,
        "c": type(obj).__name__,
        "n": n,
        "o": enc.add(offsets, offsets.nbytes),
        "d": enc.add(data, len(data)),
    }
    if None in obj:
        valid = np.fromiter((x is not None for x in obj), dtype=np.bool_, count=n)
        bitmap = np.packbits(valid, bitorder="little")  # Arrow's validity bitmap
        node["v"] = enc.add(bitmap, bitmap.nbytes)
    return node


def decode_sequence(dec: Decoder, node: dict[str, Any]) -> SharedSequence:
    """A ``seq`` node as a `SharedSequence` over the segment, its offsets checked once."""
    what, n = node.get("t"), node.get("n")
    if what not in ("str", "bytes") or node.get("c") not in ("list", "tuple"):
        raise dec.corrupt("sequence of an unknown kind")
    if type(n) is not int or not 0 < n < 1 << 62:
        raise dec.corrupt(f"sequence length {n!r:.40} is not valid")
    data = dec.buffer(node.get("d"))
    # Frozen where the segment can still change (posix), as for Arrow strings: a rewrite of
    # the data afterwards changes values, never where they are read (and bad UTF-8 is
    # refused when an item is built).
    offsets = checked_offsets(dec, node.get("o"), n, data.nbytes, "sequence")
    valid = None
    if node.get("v") is not None:
        valid = dec.buffer(node.get("v"))
        if valid.nbytes != (n + 7) // 8:
            raise dec.corrupt(f"validity bitmap of {valid.nbytes} bytes does not fit {n} items")
    return SharedSequence._make(str if what == "str" else bytes, offsets, data, valid, range(n), dec.name)
