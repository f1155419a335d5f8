"""Arrow data: Tables, RecordBatches, Arrays and ChunkedArrays of any type, and strings.

Two encodings:

* ``pa.ipc`` -- any Arrow object is written as one Arrow IPC stream straight
  into its slot of the segment (the size is measured first by writing to a
  ``MockOutputStream``, which moves no data). Reading opens the stream over
  the mapped bytes, so every buffer of the result lies in the segment. The
  stream is checked with ``validate(full=True)`` on read: offsets, dictionary
  indices and UTF-8 inside a corrupt segment raise SegmentCorruptError
  instead of reading out of bounds.
* ``pa.lstr`` -- a string column as raw ``large_string`` buffers (validity
  bitmap, int64 offsets, UTF-8 bytes). pandas string columns and object
  arrays of ``str`` use it: they are converted to Arrow once at share and
  rebuilt with ``pa.Array.from_buffers`` on get, after the offsets are
  checked (monotonic, within the data buffer) with NumPy. UTF-8 is
  re-validated only for segments attached from a URI (``trusted=False``).
* ``pa.lbin`` -- the same layout as ``large_binary``: object columns and
  arrays of Python ``bytes``. The offsets are checked the same way (there is
  no UTF-8 to validate).

pyarrow is imported lazily: ``import nocopy`` never imports it.
"""

from __future__ import annotations

import math
import mmap
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._registry import DecodeFn, Decoder, Encoder

__all__ = [
    "DECODERS",
    "Repeats",
    "decode_large_binary",
    "decode_large_strings",
    "encode",
    "encode_large_binary",
    "encode_large_strings",
    "encode_object_bytes",
    "encode_object_strings",
    "guard",
    "is_bytes_array",
    "is_string_array",
    "pyarrow",
    "repeats",
    "to_large_binary",
    "to_large_strings",
]

_INSTALL = "pip install 'nocopy[pandas]'"
_IPC_WHAT = ("table", "batch", "chunked", "array", "schema")


def pyarrow(why: str = "sharing Arrow data") -> Any:
    """Import pyarrow, or raise an ImportError that names the extra to install."""
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise ImportError(
            f"{why} needs pyarrow, which is not installed. Fix: {_INSTALL}"
        ) from exc
    return pa


# -- strings --------------------------------------------------------------

_NA_NONE, _NA_NAN, _NA_PDNA = 0, 1, 2


def _na_kind(x: Any) -> int:
    """The kind of a missing value in an object array of strings, or -1 if *x* is not one."""
    if x is None:
        return _NA_NONE
    if isinstance(x, float | np.floating) and math.isnan(x):
        return _NA_NAN
    if type(x).__name__ == "NAType" and type(x).__module__.startswith("pandas"):
        return _NA_PDNA
    return -1


# Object columns often repeat a few objects (labels, codes, words): pickle
# writes each distinct object once and then a memo reference, so converting
# every row, each through pyarrow's per-object path, costs more than pickling
# it. Such an array is grouped by object identity instead (the pointers,
# dictionary-encoded by Arrow in C): only the distinct objects are checked and
# converted, and Arrow's take() lays out the rows.
_REPEAT_MIN = 1 << 15  # below this, the per-object path is cheap anyway
_SAMPLE = 2048  # a sample this large likely holds a repeat if there are under ~2M distinct objects
_DISTINCT_SHARE = 4  # group only if at most 1/4 of the rows are distinct objects


class Repeats(NamedTuple):
    """An object array grouped by identity: *distinct* (in order of first appearance) and,
    for each row, its position in *distinct* (*indices*, an Arrow int32 array)."""

    distinct: np.ndarray
    indices: Any


def repeats(arr: np.ndarray) -> Repeats | None:
    """*arr* (1-d, object) grouped by object identity, or None if that would not pay.

    Grouped when it is long, C-contiguous, pyarrow is installed and at most a
    quarter of its rows are distinct objects (equal but distinct objects count
    apart: the grouping never compares values, so it cannot change them).

    Examples
    --------
    >>> words = np.array(["a", "bc"], dtype=object)[np.arange(1 << 16) % 2]
    >>> rep = repeats(words)
    >>> rep.distinct.tolist(), rep.indices[:3].to_pylist()
    (['a', 'bc'], [0, 1, 0])
    """
    n = len(arr)
    if arr.dtype != object or arr.ndim != 1 or n < _REPEAT_MIN:
        return None
    try:
        ptrs = np.frombuffer(arr.data.cast("B"), dtype=np.uintp)
    except TypeError:  # not C-contiguous
        return None
    sample = ptrs[np.random.default_rng(0).choice(n, _SAMPLE, replace=False)]
    if len(np.unique(sample)) == _SAMPLE:
        return None
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        return None  # the conversion will say pyarrow is needed
    try:
        encoded = pc.dictionary_encode(pa.array(ptrs))
    except pa.ArrowException:  # e.g. more distinct objects than int32 indices can number
        return None
    k = len(encoded.dictionary)
    if k > n // _DISTINCT_SHARE:
        return None
    first = _first_appearances(encoded.indices.to_numpy())
    if len(first) != k or not np.array_equal(ptrs[first], encoded.dictionary.to_numpy()):
        return None  # pragma: no cover - an Arrow that numbered them otherwise
    return Repeats(arr[first], encoded.indices)


_BLOCK = 1 << 12


def _first_appearances(indices: np.ndarray) -> np.ndarray:
    """The rows where each index appears first, *indices* being numbered in order of first appearance.

    Such a row is one where the running maximum grows. Computed block by block,
    and only in the blocks whose maximum exceeds every earlier block's: in a
    repetitive column the distinct objects mostly appear early, so most blocks
    are skipped after one vectorised maximum.

    Examples
    --------
    >>> _first_appearances(np.array([0, 1, 0, 2, 1, 3], dtype=np.int32)).tolist()
    [0, 1, 3, 5]
    """
    if not len(indices):
        return np.empty(0, np.intp)
    peaks = np.maximum.reduceat(indices, np.arange(0, len(indices), _BLOCK))
    before = np.concatenate(([-1], np.maximum.accumulate(peaks)[:-1]))
    growing = np.flatnonzero(peaks > before)
    if len(growing) > len(peaks) // 8:  # spread out: one pass over all is cheaper
        running = np.maximum.accumulate(indices)
        return np.concatenate(([0], np.flatnonzero(running[1:] > running[:-1]) + 1))
    found = []
    for b in growing.tolist():
        block = indices[b * _BLOCK : (b + 1) * _BLOCK]
        running = np.maximum.accumulate(np.concatenate(([before[b]], block)).astype(np.int64))
        found.append(np.flatnonzero(running[1:] > running[:-1]) + b * _BLOCK)
    return np.concatenate(found) if found else np.empty(0, np.intp)


def is_string_array(arr: np.ndarray, rep: Repeats | None = None) -> bool:
    """True if *arr* (1-d, object) holds only ``str`` and missing values.

    An empty or all-missing array counts as strings. (pandas' notion of
    missing is used: None, NaN, pd.NA, NaT; the conversion to Arrow turns them
    all into nulls.) With *rep* (`repeats` of *arr*), only its distinct
    objects are looked at.

    Examples
    --------
    >>> is_string_array(np.array(["a", None, "é"], dtype=object))
    True
    """
    return _holds_only(arr, rep, str, ("string", "empty"), at_least_one=False)


def is_bytes_array(arr: np.ndarray, rep: Repeats | None = None) -> bool:
    r"""True if *arr* (1-d, object) holds ``bytes`` (at least one) and otherwise only missing values.

    ``bytearray`` and ``memoryview`` are not bytes (mutable, or a view of
    something else): such columns stay unsupported. (An all-missing array is
    a string column, see `is_string_array`.) With *rep*, only its distinct
    objects are looked at.

    Examples
    --------
    >>> is_bytes_array(np.array([b"\x00\xff", None], dtype=object))
    True
    """
    return _holds_only(arr, rep, bytes, ("bytes",), at_least_one=True)


def _holds_only(
    arr: np.ndarray, rep: Repeats | None, typ: type, kinds: tuple[str, ...], *, at_least_one: bool
) -> bool:
    """Whether 1-d object *arr* holds only *typ* and missing values (and one *typ* at least, if asked).

    pandas' ``infer_dtype`` (one of *kinds*) decides where pandas is installed.
    With *rep*, only the distinct objects are looked at.
    """
    if arr.dtype != object or arr.ndim != 1:
        return False
    values = rep.distinct if rep is not None else arr
    try:
        from pandas.api.types import infer_dtype
    except ImportError:
        if not all(isinstance(x, typ) or _na_kind(x) >= 0 for x in values):
            return False
        return not at_least_one or any(isinstance(x, typ) for x in values)
    return infer_dtype(values, skipna=True) in kinds


def _to_arrow(pa: Any, arr: np.ndarray, typ: Any, rep: Repeats | None) -> Any:
    if rep is None:
        return pa.array(arr, type=typ, from_pandas=True)
    return pa.array(rep.distinct, type=typ, from_pandas=True).take(rep.indices)


def to_large_binary(arr: np.ndarray, rep: Repeats | None = None) -> Any:
    """Convert an object array of bytes (with None/NaN/pd.NA as nulls) to an Arrow large_binary array.

    With *rep* (`repeats` of *arr*), each distinct object is converted once.
    """
    pa = pyarrow("sharing bytes")
    return _to_arrow(pa, arr, pa.large_binary(), rep)


def to_large_strings(arr: np.ndarray, rep: Repeats | None = None) -> Any:
    """Convert an object array of str (with None/NaN/pd.NA as nulls) to an Arrow large_string array.

    With *rep* (`repeats` of *arr*), each distinct object is converted once.
    """
    pa = pyarrow("sharing strings")
    return _to_arrow(pa, arr, pa.large_string(), rep)


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


_CHECK_BLOCK = 1 << 20


def _monotonic(offsets: np.ndarray) -> bool:
    # Block by block: the temporary stays at 1 MiB however long the column.
    for start in range(0, len(offsets) - 1, _CHECK_BLOCK):
        block = offsets[start : start + _CHECK_BLOCK + 1]
        if bool(np.any(block[1:] < block[:-1])):
            return False
    return True


def _decode_chunk(dec: Decoder, pa: Any, typ: Any, node: Any) -> Any:
    if not isinstance(node, dict):
        raise dec.corrupt("string or binary chunk is not an object")
    n = _int(dec, node, "n")
    offsets_raw = dec.buffer(node.get("o"))
    data_raw = dec.buffer(node.get("d"))
    if offsets_raw.nbytes != 8 * (n + 1):
        raise dec.corrupt(f"{n} values need {8 * (n + 1)} offset bytes, found {offsets_raw.nbytes}")
    offsets = offsets_raw.view(np.int64)
    # The offsets are data, not header: check them before Arrow reads through them.
    if offsets[0] != 0 or offsets[-1] != data_raw.nbytes or not _monotonic(offsets):
        raise dec.corrupt(f"{typ} offsets are not monotonic within their data buffer")
    bufs = [None, pa.py_buffer(offsets_raw), pa.py_buffer(data_raw)]
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


def encode_object_strings(enc: Encoder, arr: np.ndarray, path: str, rep: Repeats | None = None) -> Any:
    """Plan a 1-d object ndarray of str: stored once as Arrow large_string.

    get() rebuilds an object ndarray (new Python str objects: a copy per
    get); missing values come back as the same None / NaN / pd.NA. *rep*:
    `repeats` of *arr*, if known.
    """
    return _encode_object_values(
        enc, arr, rep, path, "str", "pa.objstr",
        "stored once as Arrow large_string (never fixed-width); get() rebuilds Python str "
        "objects: share a pandas str column or an Arrow array for a zero-copy view",
        to_large_strings, encode_large_strings,
    )


def encode_object_bytes(enc: Encoder, arr: np.ndarray, path: str, rep: Repeats | None = None) -> Any:
    """Plan a 1-d object ndarray of bytes: stored once as Arrow large_binary.

    Like `encode_object_strings`: get() rebuilds an object ndarray
    (new Python bytes objects: a copy per get), missing values as they were.
    """
    return _encode_object_values(
        enc, arr, rep, path, "bytes", "pa.objbin",
        "stored once as Arrow large_binary; get() rebuilds Python bytes objects: share an Arrow "
        "array or a pandas column of bytes for a zero-copy view",
        to_large_binary, encode_large_binary,
    )


def _encode_object_values(
    enc: Encoder, arr: np.ndarray, rep: Repeats | None, path: str, what: str, kind: str, detail: str,
    convert: Callable[[np.ndarray, Repeats | None], Any], encode_values: Callable[[Encoder, Any], dict[str, Any]],
) -> Any:
    # One plan for object arrays of str or bytes: converted once to Arrow, rebuilt per get().
    enc.note(path, f"object ({what})", "converted", detail)
    if enc.explaining:
        return {"k": "py", "v": None}
    pa = pyarrow(f"sharing {what}")
    try:
        values = convert(arr, rep)
    except (pa.ArrowException, UnicodeError) as exc:
        return enc.unsupported(arr, path, f"object array of {what} Arrow cannot store ({exc})", dtype="object")
    node: dict[str, Any] = {"k": kind, "s": encode_values(enc, values)}
    if rep is not None:
        node["g"] = len(rep.distinct)  # few distinct values: get() builds one object per value
    return _with_null_kinds(enc, arr, path, what, node, values)


def _with_null_kinds(enc: Encoder, arr: np.ndarray, path: str, what: str, node: dict[str, Any], values: Any) -> Any:
    """*node* with the kind of each missing value of *arr* (None, NaN or pd.NA), to give them back as they were."""
    if values.null_count:
        where = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        kinds = np.fromiter((_na_kind(x) for x in arr[where]), dtype=np.int8, count=len(where))
        if (kinds < 0).any():
            return enc.unsupported(arr, path, f"object array of {what} with missing values other than None/NaN/pd.NA", dtype="object")
        if (kinds == kinds[0]).all():
            node["na"] = int(kinds[0])
        else:
            node["nak"] = enc.add(kinds, kinds.nbytes)
    return node


def _objects(dec: Decoder, node: dict[str, Any], values: Any) -> np.ndarray:
    """*values* (Arrow strings or bytes over the segment) as an object ndarray, missing values as stored."""
    out = _grouped_objects(values) if node.get("g") else None
    if out is None:
        out = values.to_numpy()
        if out.dtype != object:
            out = out.astype(object)
    nulls = values.null_count
    if nulls:
        where = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        if "nak" in node:
            kinds = dec.buffer(node.get("nak")).view(np.int8)
            if kinds.size != nulls or kinds.min() < 0 or kinds.max() > 2:
                raise dec.corrupt("null kinds do not match the nulls")
            out[where] = np.array(_missing_values(int(kinds.max())), dtype=object)[kinds]
        else:
            kind = node.get("na")
            if type(kind) is not int or not 0 <= kind <= 2:
                raise dec.corrupt("bad null kind")
            out[where] = _missing_values(kind)[kind]
    return out


def _grouped_objects(values: Any) -> np.ndarray | None:
    """*values* as an object ndarray holding one object per distinct value (as pickle
    rebuilds a column of repeated objects), or None to convert row by row.

    For a column the encoder found repetitive (its ``g``): hashing the values
    is then cheaper than making an object for each row. (A forged ``g`` on
    distinct values only makes this slower, bounded by the segment's size.)
    Null rows hold the first value: the caller puts the missing values there.
    """
    if values.num_chunks != 1:
        return None
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(values.chunk(0))
    if not len(encoded.dictionary):
        return None
    distinct: np.ndarray = encoded.dictionary.to_numpy(zero_copy_only=False)
    if distinct.dtype != object:
        distinct = distinct.astype(object)
    out: np.ndarray = distinct[encoded.indices.fill_null(0).to_numpy()]
    return out


def _sub(dec: Decoder, node: dict[str, Any], kind: str) -> dict[str, Any]:
    sub = node.get("s")
    if not isinstance(sub, dict) or sub.get("k") != kind:
        raise dec.corrupt(f"object values without their {kind} node")
    return sub


def _dec_objstr(dec: Decoder, node: dict[str, Any]) -> np.ndarray:
    return _objects(dec, node, decode_large_strings(dec, _sub(dec, node, "pa.lstr")))


def _dec_objbin(dec: Decoder, node: dict[str, Any]) -> np.ndarray:
    return _objects(dec, node, decode_large_binary(dec, _sub(dec, node, "pa.lbin")))


def _missing_values(up_to: int) -> list[Any]:
    """The missing values by kind (None, NaN, pd.NA) up to kind *up_to*.

    pandas is imported only when a pd.NA is needed (None without pandas).
    """
    values: list[Any] = [None, float("nan")]
    if up_to >= _NA_PDNA:
        try:
            import pandas as pd
        except ImportError:
            values.append(None)
        else:
            values.append(pd.NA)
    return values


# -- any Arrow object: an IPC stream in the segment --------------------------


def _classify(pa: Any, obj: Any) -> str:
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
    what = _classify(pa, obj)
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
            _freeze(raw, pos, 8)
        prefix = raw[pos : pos + 8].tobytes()
        length = int.from_bytes(prefix[4:], "little", signed=True)
        if prefix[:4] != b"\xff\xff\xff\xff":
            raise ValueError("not an IPC stream with continuation markers (as nocopy writes)")
        if length == 0:  # the end-of-stream marker
            return ""
        if not 0 < length <= end - pos - 8:
            raise ValueError(f"a message of {length} bytes at byte {pos} exceeds the stream")
        if freeze:
            _freeze(raw, pos + 8, length)
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


def _freeze(view: np.ndarray, start: int, n: int) -> None:
    """Give this process its own copy of every page of *view* (copy-on-write) that [start, start+n) touches."""
    page = mmap.PAGESIZE
    addr = view.__array_interface__["data"][0]
    i = start
    while i < start + n:
        view[i] = view[i]  # a write fault copies the page; the value stays
        i = ((addr + i) // page + 1) * page - addr


def decode_ipc(dec: Decoder, node: dict[str, Any]) -> Any:
    pa = pyarrow("reading shared Arrow data")
    what = node.get("what")
    if what not in _IPC_WHAT:
        raise dec.corrupt(f"unknown Arrow object {what!r:.40}")
    index = node.get("b")
    raw = dec.buffer(index)
    # A segment whose bytes may change (posix): check and read one frozen view (see _ipc_refusal).
    frozen = None if dec.arrow_owned else dec.frozen_buffer(index)
    try:
        refusal = _ipc_refusal(raw if frozen is None else frozen, freeze=frozen is not None)
    except ValueError as exc:
        raise dec.corrupt(f"invalid Arrow IPC stream ({exc})"[:300]) from None
    if refusal:
        raise dec.corrupt(f"Arrow IPC stream refused: {refusal}")
    try:
        source = dec.arrow_buffer(index, raw) if frozen is None else pa.py_buffer(frozen)
        reader = pa.ipc.open_stream(source)
        if what in ("array", "batch"):
            batches = list(reader)
            if len(batches) != 1:
                raise dec.corrupt(f"an Arrow {what} stream holds {len(batches)} record batches")
            out = batches[0]
        else:
            out = reader.read_all()
        # Offsets and dictionary indices inside the stream are data: check them.
        out.validate(full=True)
    except (pa.ArrowException, OSError) as exc:
        raise dec.corrupt(f"invalid Arrow IPC stream ({exc})"[:300]) from None
    if what in ("table", "batch"):
        return out
    if what == "schema":
        return out.schema
    if out.num_columns != 1:
        raise dec.corrupt(f"an Arrow {what} stream has {out.num_columns} columns")
    return out.column(0)


def _note_fields(enc: Encoder, pa: Any, obj: Any, path: str) -> None:
    detail = "Arrow IPC stream in the segment"
    if isinstance(obj, pa.Table | pa.RecordBatch | pa.Schema):
        schema = obj if isinstance(obj, pa.Schema) else obj.schema
        if len(schema) == 0:
            enc.note(path, type(obj).__name__, "zero-copy", detail + " (no columns)")
        for field in schema:
            enc.note(f"{path}[{field.name!r}]", str(field.type), "zero-copy", detail)
    else:
        enc.note(path, str(obj.type), "zero-copy", detail)


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    """Plan a pyarrow object (the dispatch target of Encoder.encode)."""
    pa = pyarrow()
    if isinstance(obj, pa.Buffer):
        enc.note(path, "Buffer", "zero-copy")
        return {"k": "pa.buf", "b": enc.add(obj, obj.size)}
    if not _classify(pa, obj):
        return enc.unsupported(obj, path, f"pyarrow object of type {type(obj).__qualname__}")
    _note_fields(enc, pa, obj, path)
    return ipc_node(enc, obj, path)


def _dec_buf(dec: Decoder, node: dict[str, Any]) -> Any:
    return pyarrow("reading shared Arrow data").py_buffer(dec.buffer(node.get("b")))


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


DECODERS: dict[str, DecodeFn] = {
    "pa.ipc": guard(decode_ipc),
    "pa.lstr": guard(decode_large_strings),
    "pa.objstr": guard(_dec_objstr),
    "pa.lbin": guard(decode_large_binary),
    "pa.objbin": guard(_dec_objbin),
    "pa.buf": _dec_buf,
}
