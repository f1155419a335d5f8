"""String and binary columns as raw Arrow buffers (``pa.lstr``, ``pa.lbin``): validity
bitmap, int64 offsets and data, checked with NumPy before Arrow reads through them.

The layout allow-list: exactly large_string / large_binary, offsets from 0,
monotonic, ending at the data buffer's end; UTF-8 re-validated for segments
attached from a URI (each byte once: the offsets are monotonic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._base import checked_offsets, pyarrow

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "decode_large_binary", "decode_large_strings", "encode_large_binary", "encode_large_strings"]


def _bitmap(chunk: Any) -> np.ndarray | None:
    n = len(chunk)
    if chunk.null_count == 0:
        return None
    validity = chunk.buffers()[0]
    nb = (n + 7) // 8
    if chunk.offset % 8 == 0:
        start = chunk.offset // 8
        return np.frombuffer(validity, dtype=np.uint8)[start : start + nb]
    # A slice that starts mid-byte: re-pack its bits from 0.
    valid = chunk.is_valid().to_numpy(zero_copy_only=False)
    packed: np.ndarray = np.packbits(valid, bitorder="little")
    return packed


def _encode_chunk(enc: Encoder, typ: Any, chunk: Any) -> dict[str, Any]:
    """One string or binary chunk as raw buffers of *typ* (large_string or large_binary)."""
    if chunk.type != typ:
        chunk = chunk.cast(typ)
    n = len(chunk)
    _, offsets_buf, data_buf = chunk.buffers()
    if offsets_buf is None or n == 0:
        offsets = np.zeros(n + 1, dtype=np.int64)
    else:
        offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=n + 1, offset=8 * chunk.offset)
    first, last = int(offsets[0]), int(offsets[-1])
    if first:
        offsets = offsets - first  # a slice: rebase its offsets to 0 (the data is sliced to match)
    data = np.frombuffer(data_buf, dtype=np.uint8)[first:last] if data_buf is not None else np.empty(0, np.uint8)
    node: dict[str, Any] = {
        "n": n,
        "o": enc.add(offsets, offsets.nbytes),
        "d": enc.add(data, data.nbytes),
    }
    bitmap = _bitmap(chunk)
    if bitmap is not None:
        node["v"] = enc.add(bitmap, bitmap.nbytes)
    return node


def _encode_chunks(enc: Encoder, kind: str, typ: Any, values: Any) -> dict[str, Any]:
    pa = pyarrow()
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    if enc.explaining:
        return {"k": kind, "chunks": []}
    return {"k": kind, "chunks": [_encode_chunk(enc, typ, c) for c in chunks]}


def encode_large_strings(enc: Encoder, values: Any) -> dict[str, Any]:
    """Plan an Arrow string Array/ChunkedArray (string or large_string) as raw large_string chunks."""
    pa = pyarrow("sharing strings")
    return _encode_chunks(enc, "pa.lstr", pa.large_string(), values)


def encode_large_binary(enc: Encoder, values: Any) -> dict[str, Any]:
    """Plan an Arrow binary Array/ChunkedArray (binary or large_binary) as raw large_binary chunks."""
    pa = pyarrow("sharing bytes")
    return _encode_chunks(enc, "pa.lbin", pa.large_binary(), values)


def _int(dec: Decoder, node: dict[str, Any], key: str, limit: int = 1 << 62) -> int:
    v = node.get(key)
    if type(v) is not int or not 0 <= v <= limit:
        raise dec.corrupt(f"{key}={v!r:.40} is not a valid count")
    return v


def _decode_chunk(dec: Decoder, pa: Any, typ: Any, node: Any) -> Any:
    if not isinstance(node, dict):
        raise dec.corrupt("string or binary chunk is not an object")
    n = _int(dec, node, "n")
    data_raw = dec.buffer(node.get("d"))
    offsets = checked_offsets(dec, node.get("o"), n, data_raw.nbytes, str(typ))
    bufs = [None, pa.py_buffer(offsets), pa.py_buffer(data_raw)]
    if node.get("v") is not None:
        validity = dec.buffer(node.get("v"))
        if validity.nbytes < (n + 7) // 8:
            raise dec.corrupt(f"validity bitmap of {validity.nbytes} bytes is too short for {n} values")
        bufs[0] = pa.py_buffer(validity)
    arr = pa.Array.from_buffers(typ, n, bufs, null_count=-1)
    if not dec.trusted:
        try:
            arr.validate(full=True)
        except pa.ArrowException as exc:
            raise dec.corrupt(f"invalid {typ} values ({exc})"[:300]) from None
    return arr


def _decode_chunks(dec: Decoder, node: dict[str, Any], typ: Any) -> Any:
    pa = pyarrow("reading shared strings and bytes")
    chunks = node.get("chunks")
    if not isinstance(chunks, list):
        raise dec.corrupt(f"{typ} column without chunks")
    return pa.chunked_array([_decode_chunk(dec, pa, typ, c) for c in chunks], type=typ)


def decode_large_strings(dec: Decoder, node: dict[str, Any]) -> Any:
    """A ``pa.lstr`` node as a ChunkedArray of large_string over the segment."""
    return _decode_chunks(dec, node, pyarrow("reading shared strings").large_string())


def decode_large_binary(dec: Decoder, node: dict[str, Any]) -> Any:
    """A ``pa.lbin`` node as a ChunkedArray of large_binary over the segment."""
    return _decode_chunks(dec, node, pyarrow("reading shared bytes").large_binary())



DECODERS: dict[str, DecodeFn] = {"pa.lstr": decode_large_strings, "pa.lbin": decode_large_binary}
