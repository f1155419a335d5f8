"""Polars DataFrames and Series: each column an Arrow IPC stream, Polars again on get().

A column is exported with Polars' newest Arrow compatibility level, so strings
and binaries travel as Arrow ``string_view``/``binary_view`` -- Polars' own
layout -- and the export moves no data. It is written as a one-column Arrow
IPC stream (the ``pa.ipc`` node of `._arrow`, so the stream is read over
the segment and validated the same way). The field's metadata carries what
Arrow cannot say (Categorical vs Enum and its categories); Arrow's own type
carries time zones, units, decimals and nesting. On get() ``pl.from_arrow``
imports every buffer without copying, measured for polars 2.1 + pyarrow 26:

=====================================  =======================================
Polars type                            on get()
=====================================  =======================================
ints, floats (16/32/64), bool          zero-copy
Date, Datetime (any unit, any tz),     zero-copy
Duration, Time
String, Binary (views)                 zero-copy (views + data buffers)
List, Array, Struct, Null              zero-copy (children as above)
Decimal                                zero-copy: stored as raw decimal128
                                       buffers, 64-byte aligned (not IPC)
Decimal nested in List/Array/Struct    converted: Polars copies 128-bit values
                                       that are not 16-byte aligned, and an IPC
                                       stream aligns its buffers to 8 bytes only
Struct with nulls                      converted: Polars re-derives the fields'
                                       null bitmaps (one bit per row)
Map                                    converted: offsets widened to 64 bits
Categorical, Enum (also nested)        converted: Polars re-maps the codes into
                                       this process's categories (one code per
                                       row copied, per get); the category
                                       strings are small
Int128, UInt128, Object, extensions    UnsupportedTypeError naming the column
                                       (Polars cannot export them to Arrow, or
                                       Object would export raw pointers);
                                       pickled with ``allow_pickle=True``
=====================================  =======================================

On get() a column's stream must hold only the Arrow types of the table above
(``_arrow.polars_refusal``: e.g. dictionaries only of string_view values, as
Categorical/Enum export them), checked on its schema before any batch is
read: Polars expands what Arrow keeps compact (a dictionary of lists would
make every row a copy of its list). What Polars still copies -- categorical
codes (4 bytes a row), map offsets (8), struct null bits -- is at most a few
times the index/offset bytes the stream holds, which the validation of the
stream charges to the decode's budget.

The buffers come from a mapping of the segment that Arrow owns (see
`Decoder.arrow_buffer`), so Polars' threads can drop them without the GIL:
``serialize()``, and with it ``pickle.dumps``, rechunks in those threads while
the caller holds the GIL.

Chunks, column order, names and the schema round-trip. Polars never writes into
a foreign (imported) buffer: its in-place operations copy first, so a shared
frame cannot be changed through Polars; the buffers lie in a read-only
mapping anyway (or a copy-on-write one with ``get(private=True)``).

polars and pyarrow are imported lazily: ``import nocopy`` imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UnsupportedTypeError
from . import _arrow

if TYPE_CHECKING:
    from ._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "encode"]

_INSTALL = "pip install 'nocopy[polars]'"


def _imports(why: str) -> tuple[Any, Any]:
    """(polars, pyarrow), or an ImportError that names the extra to install."""
    try:
        import polars as pl
        import pyarrow as pa
    except ImportError as exc:
        raise ImportError(f"{why} needs polars and pyarrow ({exc.name} is not installed). Fix: {_INSTALL}") from exc
    return pl, pa


def _dtypes(pl: Any, dtype: Any) -> Iterator[Any]:
    """*dtype* and every dtype nested inside it."""
    yield dtype
    if isinstance(dtype, pl.List | pl.Array):
        yield from _dtypes(pl, dtype.inner)
    elif isinstance(dtype, pl.Struct):
        for field in dtype.fields:
            yield from _dtypes(pl, field.dtype)
    elif isinstance(dtype, pl.Map):
        yield from _dtypes(pl, dtype.key)
        yield from _dtypes(pl, dtype.value)


def _refused(pl: Any, dtype: Any) -> str:
    """Why a column of *dtype* cannot be shared, or "" if it can."""
    for inner in _dtypes(pl, dtype):
        if isinstance(inner, pl.Object):
            return "it holds Python objects"
        if isinstance(inner, pl.Int128 | pl.UInt128):
            return f"Polars cannot export {inner} to Arrow"
        if isinstance(inner, pl.BaseExtension):
            return "Polars extension types are not shared"
    return ""


def _copied_on_get(pl: Any, s: Any) -> list[str]:
    """What Polars copies when it imports column *s* (measured: polars 2.1), or [] if nothing."""
    dtype = s.dtype
    found = set(type(d) for d in _dtypes(pl, dtype))
    why = []
    if found & {pl.Categorical, pl.Enum}:
        why.append("re-maps the categorical codes into that process's categories (one code per row)")
    if pl.Map in found:
        why.append("widens the map offsets to 64 bits (one offset per row)")
    if pl.Decimal in found and not isinstance(dtype, pl.Decimal):
        # Polars needs its 128-bit decimals 16-byte aligned; an Arrow IPC stream
        # aligns buffers to 8 bytes only, so whether they are depends on the
        # layout of the stream (names, null bitmaps before them...). A top-level
        # Decimal column gets buffers of its own instead (see _encode_decimal).
        why.append("copies nested decimal values unless they happen to lie 16-byte aligned (IPC aligns to 8)")
    if isinstance(dtype, pl.Struct) and s.null_count():
        why.append("re-derives the fields' null bitmaps from the struct's nulls (one bit per row)")
    return why


def _encode_column(enc: Encoder, pl: Any, pa: Any, s: Any, path: str) -> Any:
    dname = str(s.dtype)
    label = f"column {s.name!r} of type {dname}"
    why = _refused(pl, s.dtype)
    if why:
        return enc.unsupported(s, path, f"{label} ({why})", dtype=dname)
    try:
        table = s.to_frame().to_arrow(compat_level=pl.CompatLevel.newest())
    except (pa.ArrowException, pl.exceptions.PolarsError) as exc:
        return enc.unsupported(s, path, f"{label} (Polars cannot export it to Arrow: {exc})", dtype=dname)
    if isinstance(s.dtype, pl.Decimal):
        enc.note(path, dname, "zero-copy", "128-bit values and null bitmap in buffers of their own")
        return _encode_decimal(enc, table)
    copied = _copied_on_get(pl, s)
    if copied:
        enc.note(path, dname, "converted", "Arrow IPC stream in the segment; every get() " + "; ".join(copied))
    else:
        enc.note(path, dname, "zero-copy", "Arrow IPC stream in the segment")
    return {"k": "pl.col", "t": _arrow.ipc_node(enc, table, path)}


def _encode_decimal(enc: Encoder, table: Any) -> dict[str, Any]:
    """A Decimal column as raw decimal128 buffers per chunk, each 64-byte aligned in the segment."""
    field = table.schema.field(0)
    node: dict[str, Any] = {
        "k": "pl.dec", "name": field.name, "p": field.type.precision, "s": field.type.scale, "chunks": [],
    }
    if enc.explaining:
        return node
    for chunk in table.column(0).chunks:
        n = len(chunk)
        data = chunk.buffers()[1]
        values = (
            np.frombuffer(data, dtype=np.uint8, count=16 * n, offset=16 * chunk.offset)
            if n else np.empty(0, dtype=np.uint8)
        )
        part: dict[str, Any] = {"n": n, "d": enc.add(values, values.nbytes)}
        if chunk.null_count:
            # Re-packed from bit 0: a sliced chunk's bitmap may start mid-byte.
            bits = np.packbits(chunk.is_valid().to_numpy(zero_copy_only=False), bitorder="little")
            part["v"] = enc.add(bits, bits.nbytes)
        node["chunks"].append(part)
    return node


def _decode_decimal(dec: Decoder, pl: Any, pa: Any, node: dict[str, Any]) -> Any:
    name, precision, scale, chunks = node.get("name"), node.get("p"), node.get("s"), node.get("chunks")
    if (
        not isinstance(name, str) or not isinstance(chunks, list)
        or type(precision) is not int or type(scale) is not int or not 0 <= scale <= precision <= 38
    ):
        raise dec.corrupt("bad polars decimal column")
    dtype = pa.decimal128(precision, scale)
    arrays = []
    for part in chunks:
        n = part.get("n") if isinstance(part, dict) else None
        if type(n) is not int or n < 0:
            raise dec.corrupt("bad decimal chunk")
        values = dec.buffer(part["d"])
        if values.nbytes != 16 * n:
            raise dec.corrupt(f"{n} decimals need {16 * n} bytes, found {values.nbytes}")
        bufs = [None, dec.arrow_buffer(part["d"], values)]
        if "v" in part:
            validity = dec.buffer(part["v"])
            if validity.nbytes < (n + 7) // 8:
                raise dec.corrupt(f"validity bitmap of {validity.nbytes} bytes is too short for {n} decimals")
            bufs[0] = dec.arrow_buffer(part["v"], validity)
        arr = pa.Array.from_buffers(dtype, n, bufs, null_count=-1)
        if not dec.trusted:
            arr.validate(full=True)  # digits beyond the precision
        arrays.append(arr)
    table = pa.table([pa.chunked_array(arrays, type=dtype)], names=[name])
    return pl.from_arrow(table, rechunk=False).to_series()


def _lazy(enc: Encoder, obj: Any, path: str) -> Any:
    what = "a polars LazyFrame (a query plan, not data)"
    if enc.explaining:
        enc.note(path, "LazyFrame", "unsupported", f"{what}: collect() it first")
        return {"k": "py", "v": None}
    raise UnsupportedTypeError(
        f"cannot share {what} at {path or '<root>'}. Fix: share lf.collect(), the DataFrame it computes."
    )


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    """Plan a polars object (the dispatch target of Encoder.encode)."""
    pl, pa = _imports("sharing polars data")
    if isinstance(obj, pl.DataFrame):
        if obj.width == 0:
            enc.note(path, "DataFrame", "zero-copy", "no columns")
        cols = [_encode_column(enc, pl, pa, s, f"{path}[{s.name!r}]") for s in obj.iter_columns()]
        return {"k": "pl.df", "cols": cols, "rows": obj.height}
    if isinstance(obj, pl.Series):
        return {"k": "pl.series", "v": _encode_column(enc, pl, pa, obj, path)}
    if isinstance(obj, pl.LazyFrame):
        return _lazy(enc, obj, path)
    return enc.unsupported(obj, path, f"polars object of type {type(obj).__qualname__}")


def _decode_column(dec: Decoder, pl: Any, pa: Any, node: Any) -> Any:
    # Buffers no Polars thread needs the GIL to drop (see Decoder.arrow_buffer).
    owned, dec.arrow_owned = dec.arrow_owned, True
    try:
        return _decode_owned(dec, pl, pa, node)
    finally:
        dec.arrow_owned = owned


def _decode_owned(dec: Decoder, pl: Any, pa: Any, node: Any) -> Any:
    if not isinstance(node, dict):
        raise dec.corrupt("polars column node is not an object")
    kind = node.get("k")
    if kind == "pl.dec":
        return _import(dec, pl, pa, lambda: _decode_decimal(dec, pl, pa, node))
    if kind != "pl.col":
        out = dec.decode(node)  # a pickled column (allow_pickle=True)
        if not isinstance(out, pl.Series):
            raise dec.corrupt("a polars column does not decode to a Series")
        return out
    sub = node.get("t")
    if not isinstance(sub, dict) or sub.get("k") != "pa.ipc" or sub.get("what") != "table":
        raise dec.corrupt("polars column without its Arrow table")
    # Only the types Polars' own export writes: Polars materialises what Arrow keeps
    # compact (a dictionary of lists: every row a copy of its list).
    table = _arrow.read_ipc(dec, sub, _arrow.polars_refusal)
    if table.num_columns != 1:
        raise dec.corrupt(f"a polars column's Arrow table has {table.num_columns} columns")
    return _import(dec, pl, pa, lambda: pl.from_arrow(table, rechunk=False).to_series())


def _import(dec: Decoder, pl: Any, pa: Any, make: Callable[[], Any]) -> Any:
    """make(), with Polars' own errors (and its Rust panics) on Arrow data that
    passed Arrow's validation reported as a corrupt segment, like every other."""
    try:
        return make()
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, pa.ArrowException) as exc:
        raise dec.corrupt(f"polars cannot import the column ({type(exc).__name__}: {exc})"[:300]) from None


def _decode_frame(dec: Decoder, node: dict[str, Any]) -> Any:
    pl, pa = _imports("reading shared polars data")
    cols, rows = node.get("cols"), node.get("rows")
    if not isinstance(cols, list) or type(rows) is not int:
        raise dec.corrupt("polars frame without its columns")
    series = [_decode_column(dec, pl, pa, c) for c in cols]
    names = [s.name for s in series]
    if len(set(names)) != len(names) or any(len(s) != rows for s in series):
        raise dec.corrupt("the polars frame's columns have duplicate names or unequal lengths")
    # Building a frame from Series takes their chunks as they are: no copy, no rechunk.
    if rows < 0:
        raise dec.corrupt(f"a polars frame of {rows} rows")
    return _import(dec, pl, pa, lambda: pl.DataFrame(series) if series else pl.DataFrame(height=rows))


def _decode_series(dec: Decoder, node: dict[str, Any]) -> Any:
    pl, pa = _imports("reading shared polars data")
    return _decode_column(dec, pl, pa, node.get("v"))


DECODERS: dict[str, DecodeFn] = {
    "pl.df": _arrow.guard(_decode_frame),
    "pl.series": _arrow.guard(_decode_series),
}
