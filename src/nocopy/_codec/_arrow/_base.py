"""What every part of the Arrow codec needs: importing pyarrow, Arrow's errors as corrupt segments,
and freezing bytes another process could still change before they are checked."""

from __future__ import annotations

import mmap
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder

__all__ = ["IPC_WHAT", "checked_offsets", "freeze", "guard", "pyarrow"]

_INSTALL = "pip install 'nocopy[pandas]'"
# The Arrow objects an IPC node may hold (its "what").
IPC_WHAT = ("table", "batch", "chunked", "array", "schema")


def pyarrow(why: str = "sharing Arrow data") -> Any:
    """Import pyarrow, or raise an ImportError that names the extra to install."""
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise ImportError(
            f"{why} needs pyarrow, which is not installed. Fix: {_INSTALL}"
        ) from exc
    return pa



def guard(fn: DecodeFn) -> DecodeFn:
    """*fn* with Arrow's own errors (e.g. invalid UTF-8 met while pandas checks
    categories) reported as a corrupt segment, like every other decoding error."""

    def run(dec: Decoder, node: dict[str, Any]) -> Any:
        try:
            return fn(dec, node)
        except Exception as exc:
            pa = sys.modules.get("pyarrow")
            if pa is not None and isinstance(exc, pa.ArrowException) and not isinstance(exc, ValueError | TypeError):
                raise dec.corrupt(f"{type(exc).__name__}: {exc}"[:300]) from None
            raise

    return run


def freeze(view: np.ndarray, start: int, n: int) -> None:
    """Give this process its own copy of every page of *view* (copy-on-write) that [start, start+n) touches."""
    page = mmap.PAGESIZE
    addr = view.__array_interface__["data"][0]
    i = start
    while i < start + n:
        view[i] = view[i]  # a write fault copies the page; the value stays
        i = ((addr + i) // page + 1) * page - addr


_CHECK_BLOCK = 1 << 20


def _monotonic(offsets: np.ndarray) -> bool:
    # Block by block: the temporary stays at 1 MiB however long the column.
    for start in range(0, len(offsets) - 1, _CHECK_BLOCK):
        block = offsets[start : start + _CHECK_BLOCK + 1]
        if bool(np.any(block[1:] < block[:-1])):
            return False
    return True


def checked_offsets(dec: Decoder, index: Any, n: int, size: int, what: str) -> np.ndarray:
    """The int64 offsets of *n* variable-length values in buffer *index*, checked: from 0,
    monotonic, ending at *size* (the data buffer's length); read-only.

    Where the segment's bytes can change after this check (posix: any process of the user
    can rewrite the file), they are this process's own copy-on-write pages, frozen before
    they are checked: rewritten offsets would point a reader outside the data (SIGSEGV in
    Arrow). Only the offsets' pages are copied; the data stays shared (a rewrite there
    changes values, never where they are read).
    """
    raw = dec.buffer(index)
    if raw.nbytes != 8 * (n + 1):
        raise dec.corrupt(f"{n} values need {8 * (n + 1)} offset bytes, found {raw.nbytes}")
    frozen = dec.frozen_buffer(index)
    if frozen is not None:
        freeze(frozen, 0, frozen.nbytes)
        raw = frozen
    offsets = raw.view(np.int64)
    offsets.flags.writeable = False
    # The offsets are data, not header: checked before anything reads through them.
    if offsets[0] != 0 or offsets[-1] != size or not _monotonic(offsets):
        raise dec.corrupt(f"{what} offsets are not monotonic within their data buffer")
    return offsets
