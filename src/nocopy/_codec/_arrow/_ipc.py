"""Any Arrow object as one Arrow IPC stream in the segment (``pa.ipc``).

The stream is written straight into its slot (its size measured first by
writing to a ``MockOutputStream``, which moves no data) and read over the
mapped bytes, so every buffer of the result lies in the segment. The layout
allow-list, read from the messages' metadata before Arrow builds anything: no
compressed bodies, no dictionary deltas (the encoder writes neither); a
caller may add a type allow-list (Polars does). The data is then validated
at a cost charged to the decoder's budget (`._check`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._base import IPC_WHAT, pyarrow
from ._base import freeze as freeze_pages
from ._check import validate

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "classify", "decode_ipc", "ipc_node", "read_ipc"]


def classify(pa: Any, obj: Any) -> str:
    if isinstance(obj, pa.Table):
        return "table"
    if isinstance(obj, pa.RecordBatch):
        return "batch"
    if isinstance(obj, pa.ChunkedArray):
        return "chunked"
    if isinstance(obj, pa.Array):
        return "array"
    if isinstance(obj, pa.Schema):
        return "schema"
    return ""


def _write_stream(pa: Any, sink: Any, what: str, obj: Any) -> None:
    # Arrays and batches travel as exactly one record batch, chunked arrays
    # as one batch per chunk (empty chunks too), tables as their batches, a
    # schema as a stream without batches.
    if what == "array":
        obj = pa.RecordBatch.from_arrays([obj], names=["v"])
    if what == "chunked":
        schema = pa.schema([pa.field("v", obj.type)])
    else:
        schema = obj if what == "schema" else obj.schema
    with pa.ipc.new_stream(sink, schema) as writer:
        if what in ("array", "batch"):
            writer.write_batch(obj)
        elif what == "chunked":
            for chunk in obj.chunks:
                writer.write_batch(pa.RecordBatch.from_arrays([chunk], schema=schema))
        elif what == "table":
            writer.write_table(obj)


def ipc_node(enc: Encoder, obj: Any, path: str) -> dict[str, Any]:
    """Plan any Arrow Table/RecordBatch/ChunkedArray/Array/Schema as one IPC stream."""
    pa = pyarrow()
    what = classify(pa, obj)
    if not what:
        raise TypeError(f"not an Arrow table or array: {type(obj).__qualname__}")
    if enc.explaining:
        return {"k": "pa.ipc", "what": what}
    mock = pa.MockOutputStream()
    _write_stream(pa, mock, what, obj)
    size = int(mock.size())

    def write(dst: np.ndarray) -> None:
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(dst))
        _write_stream(pa, sink, what, obj)
        if sink.tell() != size:  # pragma: no cover - Arrow's writer is deterministic
            raise RuntimeError(f"Arrow IPC stream wrote {sink.tell()} bytes, measured {size}")

    return {"k": "pa.ipc", "what": what, "b": enc.add(write, size)}


# Flatbuffer union tags of Arrow's Message.header (format/Message.fbs).
_FB_DICTIONARY, _FB_RECORD_BATCH = 2, 3


def _fb_int(buf: bytes, pos: int, size: int, *, signed: bool = False) -> int:
    if not 0 <= pos <= len(buf) - size:
        raise ValueError("flatbuffer offset out of range")
    return int.from_bytes(buf[pos : pos + size], "little", signed=signed)


def _fb_field(buf: bytes, table: int, field: int) -> int | None:
    """The position of *field* of the flatbuffer table at *table*, or None if absent."""
    vtable = table - _fb_int(buf, table, 4, signed=True)
    if 4 + 2 * field + 2 > _fb_int(buf, vtable, 2):
        return None
    rel = _fb_int(buf, vtable + 4 + 2 * field, 2)
    return table + rel if rel else None


def _fb_table(buf: bytes, table: int, field: int) -> int | None:
    pos = _fb_field(buf, table, field)
    return None if pos is None else pos + _fb_int(buf, pos, 4)


def _ipc_refusal(raw: np.ndarray, *, freeze: bool) -> str:
    """Why the IPC stream in *raw* cannot be read in place ("" if it can).

    Read from the messages' metadata before Arrow builds anything: a
    compressed body is inflated into fresh memory (a 130 KB zstd stream can
    declare 4 GiB) and a dictionary delta is concatenated with every earlier
    one (quadratic in the stream's size). The encoder writes neither, so they
    can only come from a forged segment. (Big-endian data is byte-swapped into
    a copy of at most the stream's size: slower, but bounded.)

    The stream is walked here as Arrow walks it (continuation marker, metadata
    length, metadata, body). With *freeze* (*raw* is a copy-on-write view of a
    segment whose bytes may change) each prefix and metadata is made private to
    this process before it is read, and Arrow then reads the same view: a writer
    cannot change what was checked before Arrow uses it.
    """
    pos, end = 0, len(raw)
    while pos < end:
        if end - pos < 8:
            raise ValueError(f"a message prefix is cut at byte {pos}")
        if freeze:
            freeze_pages(raw, pos, 8)
        prefix = raw[pos : pos + 8].tobytes()
        length = int.from_bytes(prefix[4:], "little", signed=True)
        if prefix[:4] != b"\xff\xff\xff\xff":
            raise ValueError("not an IPC stream with continuation markers (as nocopy writes)")
        if length == 0:  # the end-of-stream marker
            return ""
        if not 0 < length <= end - pos - 8:
            raise ValueError(f"a message of {length} bytes at byte {pos} exceeds the stream")
        if freeze:
            freeze_pages(raw, pos + 8, length)
        meta = raw[pos + 8 : pos + 8 + length].tobytes()
        refusal, body = _message_refusal(meta)
        if refusal:
            return refusal
        if not 0 <= body <= end - pos - 8 - length:
            raise ValueError(f"a message body of {body} bytes at byte {pos} exceeds the stream")
        pos += 8 + length + body
    return ""


def _message_refusal(meta: bytes) -> tuple[str, int]:
    """(why the message whose metadata is *meta* is refused or "", its body length)."""
    root = _fb_int(meta, 0, 4)
    body_pos = _fb_field(meta, root, 3)  # Message.bodyLength
    body = _fb_int(meta, body_pos, 8, signed=True) if body_pos is not None else 0
    kind_pos = _fb_field(meta, root, 1)
    kind = _fb_int(meta, kind_pos, 1) if kind_pos is not None else 0
    header = _fb_table(meta, root, 2)
    if header is None:
        return "", body
    if kind == _FB_DICTIONARY:
        pos = _fb_field(meta, header, 2)  # isDelta
        if pos is not None and _fb_int(meta, pos, 1):
            return "it holds a dictionary delta (concatenated into new memory)", body
        header = _fb_table(meta, header, 1)  # its RecordBatch
        if header is None:
            return "", body
    elif kind != _FB_RECORD_BATCH:
        return "", body
    if _fb_field(meta, header, 3) is not None:  # compression
        return "its buffers are compressed (inflated into new memory, never zero-copy)", body
    return "", body


def read_ipc(dec: Decoder, node: dict[str, Any], refusal: Callable[[Any, Any], str] | None = None) -> Any:
    """The Arrow object of an IPC node, read over the segment and fully validated.

    *refusal(pa, type)* says why a column's type is outside the caller's
    allow-list ("" if inside): checked on the stream's schema, before any batch is read.
    """
    pa = pyarrow("reading shared Arrow data")
    what = node.get("what")
    if what not in IPC_WHAT:
        raise dec.corrupt(f"unknown Arrow object {what!r:.40}")
    index = node.get("b")
    raw = dec.buffer(index)
    # A segment whose bytes may change (posix): check and read one frozen view (see _ipc_refusal).
    frozen = None if dec.arrow_owned else dec.frozen_buffer(index)
    try:
        refused = _ipc_refusal(raw if frozen is None else frozen, freeze=frozen is not None)
    except ValueError as exc:
        raise dec.corrupt(f"invalid Arrow IPC stream ({exc})"[:300]) from None
    if refused:
        raise dec.corrupt(f"Arrow IPC stream refused: {refused}")
    try:
        source = dec.arrow_buffer(index, raw) if frozen is None else pa.py_buffer(frozen)
        reader = pa.ipc.open_stream(source)
        if refusal is not None:
            for field in reader.schema:
                why = refusal(pa, field.type)
                if why:
                    raise dec.corrupt(f"Arrow IPC stream refused: column {field.name!r:.40} has type {why:.200}")
        out = _read_all(dec, reader, what)
        # Offsets, views and dictionary indices inside the stream are data: check them.
        validate(dec, pa, out)
    except (pa.ArrowException, OSError) as exc:
        raise dec.corrupt(f"invalid Arrow IPC stream ({exc})"[:300]) from None
    if what in ("table", "batch"):
        return out
    if what == "schema":
        return out.schema
    if out.num_columns != 1:
        raise dec.corrupt(f"an Arrow {what} stream has {out.num_columns} columns")
    return out.column(0)


def _read_all(dec: Decoder, reader: Any, what: str) -> Any:
    if what in ("array", "batch"):
        batches = list(reader)
        if len(batches) != 1:
            raise dec.corrupt(f"an Arrow {what} stream holds {len(batches)} record batches")
        return batches[0]
    return reader.read_all()


def decode_ipc(dec: Decoder, node: dict[str, Any]) -> Any:
    """A ``pa.ipc`` node: any Arrow type (the encoder writes whatever Arrow object it is given)."""
    return read_ipc(dec, node)


DECODERS: dict[str, DecodeFn] = {"pa.ipc": decode_ipc}
