"""What every part of the Arrow codec needs: importing pyarrow, Arrow's errors as corrupt segments,
and freezing bytes another process could still change before they are checked."""

from __future__ import annotations

import mmap
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder

__all__ = ["IPC_WHAT", "freeze", "guard", "pyarrow"]

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
