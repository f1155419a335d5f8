"""Codec: objects to (header, buffers) and back, knowing nothing of stores or processes."""

from ._core import Decoder, Encoder, Note
from ._layout import FLAG_PICKLE, pack_header, parse_header

__all__ = ["FLAG_PICKLE", "Decoder", "Encoder", "Note", "pack_header", "parse_header"]
