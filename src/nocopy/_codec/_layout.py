"""The segment layout: a fixed prefix, a JSON header, then 64-byte aligned buffers.

    prefix  magic(8) version(u16) flags(u16) header_len(u32) token(16)
            payload_size(u64) data_offset(u64)              -- 48 bytes
    header  UTF-8 JSON {"tree": node, "buffers": [[offset, length], ...]}
    data    buffers at data_offset + offset, each 64-byte aligned

JSON, not pickle: parsing a hostile header can fail but never run code, and
every number in it is checked against the segment's real size before any view
is built. Buffers are laid out in order and disjoint (as the encoder writes
them), and a header's JSON values are counted before it is parsed, so neither
can make a reader spend far more memory or time than the segment's size.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ..errors import SegmentAccessError, SegmentCorruptError, UnsupportedTypeError

__all__ = [
    "ALIGN",
    "MAGIC",
    "MAX_HEADER",
    "MAX_HEADER_ITEMS",
    "PREFIX",
    "VERSION",
    "Header",
    "align",
    "pack_header",
    "parse_header",
]

MAGIC = b"NOCOPY\x00\x01"
VERSION = 1
ALIGN = 64
PREFIX = struct.Struct("<8sHHI16sQQ")
MAX_HEADER = 64 << 20
# JSON values a header may hold, counted (over-estimated) from its commas and
# brackets before parsing: a parsed value costs up to ~60 bytes of Python
# objects per 3 header bytes ("[],"), so the byte limit alone would let a
# 64 MiB header cost gigabytes and tens of seconds. A frame column takes 9 to
# 16 values: two million allows well over 100 000 columns.
MAX_HEADER_ITEMS = 2_000_000
FLAG_PICKLE = 1  # the tree holds pickled nodes (allow_pickle=True)


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Header:
    __slots__ = ("buffers", "data_offset", "flags", "payload_size", "tree")

    def __init__(
        self, tree: Any, buffers: list[tuple[int, int]], data_offset: int, payload_size: int, flags: int
    ) -> None:
        self.tree = tree
        self.buffers = buffers
        self.data_offset = data_offset
        self.payload_size = payload_size
        self.flags = flags


def _items(body: bytes) -> int:
    """An upper bound of the JSON values in *body* (separators inside strings count too)."""
    return body.count(b",") + body.count(b"[") + body.count(b"{") + 1


def pack_header(
    tree: Any, buffers: list[tuple[int, int]], data_size: int, token: bytes, flags: int
) -> tuple[bytes, int, int]:
    """Return (prefix + header bytes, data_offset, payload_size)."""
    body = json.dumps({"tree": tree, "buffers": buffers}, separators=(",", ":")).encode()
    # Refused here rather than on every get(): readers refuse such headers (see parse_header).
    if len(body) > MAX_HEADER or _items(body) > MAX_HEADER_ITEMS:
        raise UnsupportedTypeError(
            f"cannot share this object: its description ({len(body)} bytes, up to {_items(body)} "
            f"parts) exceeds nocopy's limits ({MAX_HEADER} bytes, {MAX_HEADER_ITEMS} parts), "
            "set so that reading a hostile segment stays cheap. Fix: share fewer, larger "
            "arrays (e.g. stack columns of one dtype into a 2-d array, or split the object)."
        )
    data_offset = align(PREFIX.size + len(body))
    payload = data_offset + data_size
    prefix = PREFIX.pack(MAGIC, VERSION, flags, len(body), token, payload, data_offset)
    return prefix + body, data_offset, payload


def _corrupt(name: str, why: str) -> SegmentCorruptError:
    return SegmentCorruptError(
        f"segment {name} has a corrupt header: {why}. It was overwritten or truncated, "
        "or it was not written by a compatible nocopy. Fix: share the data again."
    )


def parse_header(mem: memoryview, *, name: str, token: bytes, size: int, detached: bool = False) -> Header:
    """Validate and parse the header at the start of a mapping of *size* bytes.

    *detached*: *mem* holds only the prefix and header, each buffer is held
    apart (a Ray object's out-of-band buffers), so *mem* is shorter than the payload.
    """
    flags, hlen, payload, data_offset = _check_prefix(mem, name=name, token=token, size=size, detached=detached)
    body = bytes(mem[PREFIX.size : PREFIX.size + hlen])
    if _items(body) > MAX_HEADER_ITEMS:
        raise _corrupt(name, f"header holds more than {MAX_HEADER_ITEMS} JSON values")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _corrupt(name, f"header is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or "tree" not in doc or not isinstance(doc.get("buffers"), list):
        raise _corrupt(name, "header lacks its tree or buffer table")
    buffers = _buffer_table(doc["buffers"], name=name, data_size=payload - data_offset)
    return Header(doc["tree"], buffers, data_offset, payload, flags)


def _check_prefix(
    mem: memoryview, *, name: str, token: bytes, size: int, detached: bool
) -> tuple[int, int, int, int]:
    """(flags, header length, payload size, data offset) of a prefix checked against *size*."""
    if len(mem) < PREFIX.size or size < PREFIX.size:
        raise _corrupt(name, f"{len(mem)} bytes is smaller than the {PREFIX.size}-byte prefix")
    magic, version, flags, hlen, seg_token, payload, data_offset = PREFIX.unpack_from(mem, 0)
    if magic != MAGIC:
        raise _corrupt(name, f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise SegmentCorruptError(
            f"segment {name} has layout version {version}; this nocopy reads version {VERSION}. "
            "Fix: use the same nocopy version in every process."
        )
    # A plain comparison: the reader already holds the segment (and so its
    # token); this catches a stale or mismatched handle, it guards no secret.
    # (The fd server's token check, which does, is constant-time.)
    if bytes(seg_token) != token:
        raise SegmentAccessError(
            f"segment {name}: the handle's token does not match the segment's. The handle is "
            "stale (the name was reused) or forged. Fix: use the uri of the current Shared."
        )
    if payload != size or (payload > len(mem) and not detached):
        raise _corrupt(name, f"payload size {payload} does not match the segment size {size}")
    if hlen > MAX_HEADER or PREFIX.size + hlen > min(payload, len(mem)):
        raise _corrupt(name, f"header length {hlen} exceeds the segment")
    if data_offset != align(PREFIX.size + hlen) or data_offset > payload:
        raise _corrupt(name, f"data offset {data_offset} is inconsistent")
    return flags, hlen, payload, data_offset


def _buffer_table(entries: list[Any], *, name: str, data_size: int) -> list[tuple[int, int]]:
    buffers: list[tuple[int, int]] = []
    end = 0
    for entry in entries:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not all(type(v) is int for v in entry)
        ):
            raise _corrupt(name, f"bad buffer table entry {entry!r:.60}")
        off, n = entry
        if off < 0 or n < 0 or off % ALIGN or off + n > data_size:
            raise _corrupt(name, f"buffer [{off}, {n}] lies outside the {data_size}-byte data area")
        # The encoder lays buffers out in order, disjoint: overlapping entries
        # would let one stored byte be decoded (and copied) many times.
        if off < end:
            raise _corrupt(name, f"buffer [{off}, {n}] overlaps or precedes the one before it")
        end = off + n
        buffers.append((off, n))
    return buffers
