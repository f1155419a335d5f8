"""Codec: objects to (header, buffers) and back, knowing nothing of stores or processes.

This facade is the only part of the codec other layers import. The codec
modules behind it are wired here, and only here: each exports
``encode(enc, obj, path)`` and ``DECODERS`` (node kind -> decoder) and is
registered under its family's ``codec`` name (see ``_kinds``). pandas,
Arrow, Polars and PyTorch are registered lazily: ``import nocopy`` imports none of them.

Examples
--------
>>> import numpy as np
>>> p = plan(np.arange(3))
>>> mem = np.zeros(p.size, dtype=np.uint8)
>>> p.write_into(mem)
>>> decode_buffer(mem, trusted=True, allow_pickle=False)
array([0, 1, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from ..errors import SegmentCorruptError
from . import _numpy, _python, _registry
from ._layout import MAGIC, PREFIX, Header, parse_header
from ._numpy import is_output_node
from ._plan import Plan, copy_bytes, fill_threads, plan, plan_output, write_at
from ._registry import PICKLE_FIX, Decoder, Encoder, Note
from ._sequence import SharedSequence

__all__ = [
    "MAGIC",
    "PICKLE_FIX",
    "Header",
    "Note",
    "Plan",
    "SharedSequence",
    "copy_bytes",
    "decode",
    "decode_buffer",
    "decode_parts",
    "explain_notes",
    "fill_threads",
    "plan",
    "plan_output",
    "read_header",
    "unsupported_columns",
    "write_at",
]

_registry.register(_registry.PYTHON, _python)
_registry.register("numpy", _numpy)
_registry.register_lazy("pandas", "nocopy._codec._pandas", prefix="pd.")
_registry.register_lazy("arrow", "nocopy._codec._arrow", prefix="pa.")
_registry.register_lazy("polars", "nocopy._codec._polars", prefix="pl.")
_registry.register_lazy("torch", "nocopy._codec._torch", prefix="torch.")
_registry.register_lazy("scipy", "nocopy._codec._scipy", prefix="sp.")


def read_header(
    mem: memoryview | bytes, *, name: str, token: bytes, size: int, output: bool = False, detached: bool = False
) -> Header:
    """Validate and parse the header at the start of a mapping of *size* bytes.

    The prefix and header are copied out of *mem* once and parsed from that
    copy: the returned Header is the decode plan, kept by the caller, so
    nothing decided from it is read again from shared memory.
    SegmentCorruptError if anything in it is inconsistent, SegmentAccessError
    if *token* is not the segment's. *output*: the segment is a writable
    output of empty()/zeros(), which holds one plain array and nothing else
    (any other tree was written by someone else). *detached*: *mem* holds only
    the prefix and header (the owner's private copy of what it wrote).
    """
    header = parse_header(memoryview(mem), name=name, token=token, size=size, detached=detached)
    if output and not is_output_node(header.tree, len(header.buffers)):
        raise SegmentCorruptError(
            f"segment {name} is a writable output of nocopy.empty()/zeros(), but its header "
            "describes something else: another process holding it rewrote the header. "
            "Fix: use the Shared the owner pickled (it carries the header), or make the output again."
        )
    return header


def decode(
    base: np.ndarray,
    header: Header,
    *,
    name: str,
    trusted: bool,
    allow_pickle: bool,
    reopen: Callable[[], AbstractContextManager[str]] | None = None,
    remap: Callable[[], np.ndarray] | None = None,
    private_map: Callable[[], np.ndarray] | None = None,
) -> Any:
    """Rebuild the object *header* describes as views of *base* (the whole mapping, uint8).

    Pickled parts are refused: SegmentCorruptError unless *allow_pickle* (the
    handle was made by ``share(..., allow_pickle=True)``), SegmentAccessError
    unless *trusted*. *reopen*, if given, opens the segment file again (a new
    read-only descriptor): Arrow data is then read from a mapping Arrow owns
    (see `Decoder.arrow_buffer`). *remap*, given when the segment's bytes may
    change after they are checked, maps it copy-on-write (uint8, writable; see
    `Decoder.frozen_buffer`). *private_map* maps it copy-on-write anew, for data that
    cannot be read-only (see `Decoder.private_buffer`).
    """
    dec = Decoder(
        base, header, name=name, trusted=trusted, allow_pickle=allow_pickle, reopen=reopen, remap=remap,
        private_map=private_map,
    )
    try:
        return dec.decode(header.tree)
    finally:
        dec.close()


def decode_buffer(mem: np.ndarray, *, trusted: bool, allow_pickle: bool = False, name: str = "<buffer>") -> Any:
    """Rebuild the object from *mem* (uint8, holding a whole layout) without copying.

    Every returned array is a view of *mem* (so keeps it alive). *mem* must not
    change while it is decoded (an immutable store's buffer, or private memory).
    Pickled parts need *allow_pickle* (the holder knows they were put with
    ``allow_pickle=True``) and *trusted*, as in `decode`.
    """
    if mem.dtype != np.uint8 or mem.ndim != 1:
        raise ValueError("decode_buffer needs a 1-d uint8 array")
    if mem.nbytes < PREFIX.size:
        raise SegmentCorruptError(
            f"{name}: {mem.nbytes} bytes is too small for a nocopy layout. "
            "Fix: pass the whole buffer the layout was written into."
        )
    # The buffer carries its own token: here it checks consistency, not access.
    token, size = PREFIX.unpack_from(mem.data, 0)[4:6]
    header = parse_header(mem.data, name=name, token=token, size=min(size, mem.nbytes))
    return decode(mem[: header.payload_size], header, name=name, trusted=trusted, allow_pickle=allow_pickle)


def decode_parts(
    head: bytes, parts: Sequence[np.ndarray], *, trusted: bool, name: str, allow_pickle: bool = False
) -> Any:
    """Rebuild the object from its prefix and header (*head*) and its buffers held apart.

    *parts* are 1-d uint8 arrays, one per buffer of the header's table and in
    its order (what ``Plan.parts()`` gave, e.g. after they travelled as
    pickle out-of-band buffers). Every returned array is a view of a part.
    """
    if len(head) < PREFIX.size:
        raise SegmentCorruptError(
            f"{name}: {len(head)} bytes is too small for a nocopy header. Fix: put the data again."
        )
    token, size = PREFIX.unpack_from(head, 0)[4:6]
    header = parse_header(memoryview(head), name=name, token=token, size=size, detached=True)
    if len(parts) != len(header.buffers):
        raise SegmentCorruptError(
            f"{name} holds {len(parts)} buffers where its header lists {len(header.buffers)}. "
            "Fix: put the data again."
        )
    for i, (part, (_, n)) in enumerate(zip(parts, header.buffers, strict=True)):
        if part.dtype != np.uint8 or part.ndim != 1 or part.nbytes != n:
            raise SegmentCorruptError(
                f"{name}: buffer {i} holds {part.nbytes} bytes where its header says {n}. "
                "Fix: put the data again."
            )
    empty = np.empty(0, dtype=np.uint8)
    dec = Decoder(empty, header, name=name, trusted=trusted, allow_pickle=allow_pickle, parts=parts)
    return dec.decode(header.tree)


def explain_notes(obj: Any, *, allow_pickle: bool = False) -> list[Note]:
    """What share() would do with each part of *obj* (nothing is copied or pickled)."""
    enc = Encoder(explain=True, allow_pickle=allow_pickle)
    enc.encode(obj)
    return enc.notes


def unsupported_columns(frame: Any) -> dict[int, str]:
    """Position -> why, for the columns of a DataFrame that share() refuses (nothing is copied or pickled).

    Each column is explained alone, as a one-column frame (a view): an unsupported index or column
    name makes every column count.
    """
    out: dict[int, str] = {}
    for i in range(frame.shape[1]):
        notes = explain_notes(frame.iloc[:, i : i + 1])
        refused = [note.detail for note in notes if note.status == "unsupported"]
        if refused:
            out[i] = refused[0]
    return out
