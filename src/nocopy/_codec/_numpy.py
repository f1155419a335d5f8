"""NumPy arrays of every fixed-width dtype, structured and record arrays included."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._registry import DecodeFn, Decoder, Encoder

__all__ = [
    "DECODERS", "array_node", "dtype_from_json", "dtype_to_json", "encode", "encode_array", "is_output_node",
]

_MAX_NDIM = 64


def dtype_to_json(dt: np.dtype[Any]) -> Any:
    """A JSON form of *dt* that round-trips exactly (fields, offsets, padding, byte order)."""
    if dt.fields is not None:
        names = list(dt.names or ())
        fields = dt.fields
        out: dict[str, Any] = {
            "names": names,
            "formats": [dtype_to_json(fields[n][0]) for n in names],
            "offsets": [int(fields[n][1]) for n in names],
            "itemsize": int(dt.itemsize),
        }
        entries: list[tuple[Any, ...]] = [tuple(fields[n]) for n in names]
        titles = [e[2] if len(e) > 2 else None for e in entries]
        if any(t is not None for t in titles):
            out["titles"] = titles
        if dt.isalignedstruct:
            out["aligned"] = True
        return out
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return {"base": dtype_to_json(base), "shape": list(shape)}
    return dt.str


def dtype_from_json(spec: Any) -> np.dtype[Any]:
    """The dtype `dtype_to_json` gave *spec* for; ValueError if NumPy cannot make one of it."""
    if isinstance(spec, dict) and "base" in spec:
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(type(s) is int and 0 <= s < 1 << 40 for s in shape):
            raise ValueError("bad subarray shape")
        dt = _dtype((dtype_from_json(spec["base"]), tuple(shape)))
    elif isinstance(spec, dict):
        dt = _dtype(_fields_from_json(spec), align=bool(spec.get("aligned", False)))
    elif isinstance(spec, str):
        dt = _dtype(spec)
    else:
        raise ValueError(f"bad dtype spec {spec!r:.40}")
    if dt.hasobject:
        # Object pointers read from shared bytes would be wild pointers.
        raise ValueError("object dtype in header")
    return dt


def _fields_from_json(spec: dict[str, Any]) -> Any:
    names, formats, offsets = spec.get("names"), spec.get("formats"), spec.get("offsets")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("bad field names")
    if not isinstance(formats, list) or not isinstance(offsets, list) or not all(type(o) is int for o in offsets):
        raise ValueError("bad field formats or offsets")
    itemsize = spec.get("itemsize", -1)
    if type(itemsize) is not int:
        raise ValueError("bad itemsize")
    d: dict[str, Any] = {
        "names": names,
        "formats": [dtype_from_json(f) for f in formats],
        "offsets": offsets,
        "itemsize": itemsize,
    }
    if "titles" in spec:
        d["titles"] = spec["titles"]
    return d


def _dtype(spec: Any, *, align: bool = False) -> np.dtype[Any]:
    # NumPy refuses a string or a fields dict it cannot read with a TypeError
    # (raised in C, so as if by this line): a bad value, not a bug. A comma string
    # with a malformed repeat ("(,1)i4") reaches ast.literal_eval: a SyntaxError.
    try:
        dt: np.dtype[Any] = np.dtype(spec, align=align)
    except (TypeError, SyntaxError) as exc:
        raise ValueError(f"NumPy makes no dtype of it ({exc})"[:200]) from None
    return dt


def _describe(dt: np.dtype[Any]) -> str:
    return str(dt) if dt.fields is None else "structured[" + ", ".join(
        f"{n}: {dt.fields[n][0]}" for n in (dt.names or ())
    ) + "]"


def array_node(buffer: int, dt: np.dtype[Any], shape: tuple[int, ...], *, fortran: bool) -> dict[str, Any]:
    """The tree node of an array of *dt* and *shape* stored in planned buffer *buffer*."""
    node: dict[str, Any] = {"k": "nd", "b": buffer, "dt": dtype_to_json(dt), "sh": list(shape)}
    if fortran:
        node["o"] = "F"
    return node


def is_output_node(tree: Any, buffers: int) -> bool:
    """Whether *tree* is what `plan_output` writes: one plain array node over buffer 0, the only buffer."""
    return (
        isinstance(tree, dict)
        and tree.get("k") == "nd"
        and type(tree.get("b")) is int
        and tree["b"] == 0
        and buffers == 1
        and set(tree) <= {"k", "b", "dt", "sh", "o"}
    )


def encode_array(enc: Encoder, arr: np.ndarray, path: str, *, note: bool = True) -> dict[str, Any]:
    """Plan an ndarray (any fixed-width dtype, any layout) as one buffer."""
    if arr.dtype.hasobject:
        raise AssertionError("object arrays are handled by the caller")
    fortran = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
    node = array_node(enc.add(arr, arr.nbytes), arr.dtype, arr.shape, fortran=fortran)
    if isinstance(arr, np.recarray):
        node["cls"] = "recarray"
    if note:
        contiguous = arr.flags.c_contiguous or arr.flags.f_contiguous
        enc.note(
            path,
            _describe(arr.dtype),
            "zero-copy",
            "" if contiguous else "non-contiguous: made contiguous once at share",
        )
    return node


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    if isinstance(obj, np.ndarray):
        if type(obj) not in (np.ndarray, np.recarray, np.memmap):
            return enc.unsupported(obj, path, f"ndarray subclass {type(obj).__qualname__}", dtype=str(obj.dtype))
        if obj.dtype.hasobject:
            return _encode_object_array(enc, obj, path)
        return encode_array(enc, obj, path)
    if isinstance(obj, np.generic):
        if obj.dtype.hasobject:
            return enc.unsupported(obj, path, "NumPy object scalar")
        node = encode_array(enc, np.asarray(obj), path)
        node["scalar"] = True
        return node
    if isinstance(obj, np.dtype):
        return {"k": "dtype", "dt": dtype_to_json(obj)} if not obj.hasobject else enc.unsupported(obj, path, "object dtype")
    return None


def _encode_object_array(enc: Encoder, arr: np.ndarray, path: str) -> Any:
    if arr.dtype == object and arr.ndim == 1:
        # A 1-d object array of str is a string column: stored once as Arrow
        # large_string, never truncated to a fixed width (NumPy's S/U dtypes
        # would). One of bytes likewise, as large_binary.
        from ._arrow import _objects  # imports pyarrow only if there are strings to store

        rep = _objects.repeats(arr)
        if _objects.is_string_array(arr, rep):
            return _objects.encode_object_strings(enc, arr, path, rep)
        if _objects.is_bytes_array(arr, rep):
            return _objects.encode_object_bytes(enc, arr, path, rep)
    return enc.unsupported(
        arr, path, f"ndarray of dtype {arr.dtype} (Python objects)", dtype=str(arr.dtype)
    )


def _dec_nd(dec: Decoder, node: dict[str, Any]) -> Any:
    dt = dtype_from_json(node.get("dt"))
    shape = node.get("sh")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(type(s) is int and s >= 0 for s in shape)
    ):
        raise dec.corrupt(f"bad shape {shape!r:.60}")
    raw = dec.buffer(node.get("b"), owned=False)
    count = math.prod(shape)
    if count * dt.itemsize != raw.nbytes:
        raise dec.corrupt(
            f"array of shape {tuple(shape)} and dtype {dt} needs {count * dt.itemsize} bytes, "
            f"buffer has {raw.nbytes}"
        )
    if dt.itemsize == 0 or count == 0:
        arr = np.empty(shape, dtype=dt)
        arr.flags.writeable = raw.flags.writeable
    else:
        flat = raw.view(dt)
        if node.get("o") == "F":
            arr = flat.reshape(shape[::-1]).T
        else:
            arr = flat.reshape(shape)
    if node.get("cls") == "recarray":
        arr = arr.view(np.recarray)
    if node.get("scalar"):
        return arr[()] if arr.ndim == 0 else arr
    return arr


def _dec_dtype(dec: Decoder, node: dict[str, Any]) -> np.dtype[Any]:
    return dtype_from_json(node.get("dt"))


DECODERS: dict[str, DecodeFn] = {"nd": _dec_nd, "dtype": _dec_dtype}
