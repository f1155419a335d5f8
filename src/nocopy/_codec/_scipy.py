"""scipy.sparse matrices and arrays (csr, csc, coo, bsr): their data and index arrays as
buffers of the segment, the same class back on get(), zero-copy and read-only.

scipy's compiled routines trust the index arrays: an index out of range is a read or
write outside an array (a segfault), and a wrong "sorted" or "canonical" flag sends them
down paths that assume it. So nothing that decides where scipy reads is taken on trust:

* the index arrays (indices, indptr, coordinates) are checked once on get() -- every index
  within the shape, indptr monotonic from 0 to the number of stored values -- from pages
  no other process can change any more: a sealed segment's, or (a posix file, which any
  process of the user can rewrite) this process's own copy-on-write copy of them;
* no flag is stored: CSR/CSC/BSR work out whether their indices are sorted from those
  checked arrays when scipy first asks; a COO's canonical flag is computed on get().

The values (``data``) stay shared pages whatever the store: a rewrite there changes values,
never where scipy reads. scipy is imported lazily (``nocopy[scipy]``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ._arrow._base import freeze

if TYPE_CHECKING:
    from ._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "encode"]

# The classes shared, by format: exact types only (a subclass may carry state nocopy cannot restore).
_CLASSES = {
    "csr": ("csr_matrix", "csr_array"),
    "csc": ("csc_matrix", "csc_array"),
    "coo": ("coo_matrix", "coo_array"),
    "bsr": ("bsr_matrix", "bsr_array"),
}
_FORMAT_OF = {name: fmt for fmt, names in _CLASSES.items() for name in names}
# Value dtypes scipy's compiled routines know (by name: the byte order is native).
_VALUE_DTYPES = frozenset(
    np.dtype(t).str for t in (
        np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
        np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.clongdouble,
    )
)
_INDEX_DTYPES = frozenset((np.dtype(np.int32).str, np.dtype(np.int64).str))
_INT32_MAX = np.iinfo(np.int32).max
_MAX_NDIM = 64
_BLOCK = 1 << 20  # index values checked per block (the temporaries stay small)


def scipy_sparse(why: str = "sharing scipy.sparse data") -> Any:
    """Import scipy.sparse, or raise an ImportError that names the extra to install."""
    try:
        return importlib.import_module("scipy.sparse")
    except ImportError as exc:
        raise ImportError(f"{why} needs scipy, which is not installed. Fix: pip install 'nocopy[scipy]'") from exc


def is_sparse(obj: Any) -> bool:
    """Whether *obj* is a scipy.sparse matrix or array of a format nocopy shares."""
    t = type(obj)
    return t.__name__ in _FORMAT_OF and t.__module__.startswith("scipy.sparse")


def _add(enc: Encoder, arr: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    # A fresh view: the same array met twice (a COO's row and col) must still be two buffers,
    # as the decoder reads each index buffer once.
    return {"b": enc.add(arr.view(), arr.nbytes), "dt": arr.dtype.str, "sh": list(arr.shape)}


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    """Plan a scipy.sparse matrix or array (the dispatch target of Encoder.encode)."""
    name = type(obj).__name__
    if not is_sparse(obj):
        fix = "convert it with .tocsr()" if hasattr(obj, "tocsr") else "convert it to supported data"
        return enc.unsupported(obj, path, f"scipy object of type {type(obj).__qualname__} ({fix})")
    fmt = _FORMAT_OF[name]
    data = obj.data
    if data.dtype.str not in _VALUE_DTYPES:
        return enc.unsupported(obj, path, f"{name} of dtype {data.dtype}", dtype=str(data.dtype))
    index = [*obj.coords] if fmt == "coo" else [obj.indices, obj.indptr]
    # scipy keeps the index arrays of one matrix in one dtype; if not, the wider one for both.
    idx_dtype = np.result_type(*index) if index else np.dtype(np.int64)
    enc.note(
        path, f"{name} {data.dtype} ({idx_dtype} indices)", "zero-copy",
        "data and index arrays shared; the indices are checked once on get()",
    )
    if enc.explaining:
        return {"k": "py", "v": None}
    node: dict[str, Any] = {"k": f"sp.{fmt}", "cls": name, "sh": [int(s) for s in obj.shape], "d": _add(enc, data)}
    arrays = [_add(enc, a.astype(idx_dtype, copy=False)) for a in index]
    if fmt == "coo":
        node["c"] = arrays
    else:
        node["i"], node["p"] = arrays
    return node


# -- decoding ------------------------------------------------------------------


def _array(dec: Decoder, spec: Any, dtypes: frozenset[str], *, index: bool) -> np.ndarray:
    """The array *spec* describes, over the segment; an *index* array from pages nobody else can change."""
    if not isinstance(spec, dict):
        raise dec.corrupt("sparse array without its description")
    dt, shape = spec.get("dt"), spec.get("sh")
    if not isinstance(dt, str) or dt not in dtypes:
        raise dec.corrupt(f"sparse array of dtype {dt!r:.20} (not one scipy uses)")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 3 or not all(type(s) is int and s >= 0 for s in shape):
        raise dec.corrupt(f"bad sparse array shape {shape!r:.60}")
    dtype = np.dtype(dt)
    raw = dec.buffer(spec.get("b"))
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != raw.nbytes:
        raise dec.corrupt(f"sparse array of shape {tuple(shape)} and dtype {dtype} does not fit its buffer")
    writeable = raw.flags.writeable  # a private (copy-on-write) get() stays writable, as for arrays
    if index:
        # As for Arrow strings (_arrow._raw): frozen before they are checked where the
        # segment can still change (posix), so what is checked is what scipy reads.
        frozen = dec.frozen_buffer(spec.get("b"))
        if frozen is not None:
            freeze(frozen, 0, frozen.nbytes)
            raw = frozen
    arr = raw.view(dtype).reshape(shape)
    arr.flags.writeable = writeable
    return arr


def _shape(dec: Decoder, node: dict[str, Any], ndims: tuple[int, ...]) -> tuple[int, ...]:
    shape = node.get("sh")
    if (
        not isinstance(shape, list)
        or len(shape) not in ndims
        or not all(type(s) is int and 0 <= s < 1 << 62 for s in shape)
    ):
        raise dec.corrupt(f"bad sparse shape {shape!r:.60}")
    return tuple(shape)


def _class(dec: Decoder, node: dict[str, Any], fmt: str) -> Any:
    name = node.get("cls")
    if name not in _CLASSES[fmt]:
        raise dec.corrupt(f"{fmt} node of class {name!r:.40}")
    return getattr(scipy_sparse("reading shared scipy.sparse data"), name)


def _within(dec: Decoder, values: np.ndarray, bound: int, what: str) -> None:
    """Every value of the 1-d index array *values* in [0, bound)."""
    for start in range(0, len(values), _BLOCK):
        block = values[start : start + _BLOCK]
        if int(block.min()) < 0 or int(block.max()) >= bound:
            raise dec.corrupt(f"sparse {what} out of range [0, {bound})")


def _index_fits(dec: Decoder, dtype: np.dtype[Any], *sizes: int) -> None:
    # scipy's routines compute in the index dtype: it must hold every size they meet.
    if dtype == np.int32 and max(sizes, default=0) > _INT32_MAX:
        raise dec.corrupt("sparse int32 indices for sizes beyond int32")


def _compressed(dec: Decoder, node: dict[str, Any], fmt: str) -> Any:
    """CSR, CSC and BSR: data, indices, indptr."""
    cls = _class(dec, node, fmt)
    shape = _shape(dec, node, (2,))
    data = _array(dec, node.get("d"), _VALUE_DTYPES, index=False)
    indices = _array(dec, node.get("i"), _INDEX_DTYPES, index=True)
    indptr = _array(dec, node.get("p"), _INDEX_DTYPES, index=True)
    if indices.ndim != 1 or indptr.ndim != 1 or indices.dtype != indptr.dtype:
        raise dec.corrupt("sparse indices and indptr are not two 1-d arrays of one dtype")
    if fmt == "bsr":
        if data.ndim != 3 or 0 in data.shape[1:] or shape[0] % data.shape[1] or shape[1] % data.shape[2]:
            raise dec.corrupt("BSR blocks do not tile the shape")
        rows, cols = shape[0] // data.shape[1], shape[1] // data.shape[2]
    elif data.ndim != 1:
        raise dec.corrupt("sparse data is not 1-d")
    else:
        rows, cols = shape
    major, minor = (cols, rows) if fmt == "csc" else (rows, cols)
    nnz = len(indices)
    if len(indptr) != major + 1 or len(data) != nnz:
        raise dec.corrupt(f"sparse {fmt} arrays do not match: {len(indptr)} indptr, {nnz} indices, {len(data)} values")
    _index_fits(dec, indptr.dtype, *shape, nnz)
    if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
        raise dec.corrupt("sparse indptr does not run from 0 to the number of values")
    for start in range(0, major, _BLOCK):
        block = indptr[start : start + _BLOCK + 1]
        if bool(np.any(block[1:] < block[:-1])):
            raise dec.corrupt("sparse indptr is not monotonic")
    _within(dec, indices, minor, "indices")
    # An empty matrix of the class (its indptr: major + 1 zeros, charged first), then the
    # arrays: scipy's constructor would copy index arrays it finds a narrower dtype for.
    dec.spend(8 * (major + 1), "an empty sparse matrix")
    blocksize = {"blocksize": data.shape[1:]} if fmt == "bsr" else {}
    out = cls(shape, dtype=data.dtype, **blocksize)
    out.data, out.indices, out.indptr = data, indices, indptr
    return out


def _dec_csr(dec: Decoder, node: dict[str, Any]) -> Any:
    return _compressed(dec, node, "csr")


def _dec_csc(dec: Decoder, node: dict[str, Any]) -> Any:
    return _compressed(dec, node, "csc")


def _dec_bsr(dec: Decoder, node: dict[str, Any]) -> Any:
    return _compressed(dec, node, "bsr")


def _canonical(coords: list[np.ndarray]) -> bool:
    """Whether *coords* are strictly increasing in C order (sorted, no duplicates): scipy's canonical COO."""
    n = len(coords[0]) if coords else 0
    for start in range(0, max(n - 1, 0), _BLOCK):
        stop = min(start + _BLOCK, n - 1)
        ok = np.zeros(stop - start, dtype=np.bool_)
        for c in reversed(coords):  # the last coordinate varies fastest
            a, b = c[start:stop], c[start + 1 : stop + 1]
            ok = (b > a) | ((b == a) & ok)
        if not ok.all():
            return False
    return True


def _dec_coo(dec: Decoder, node: dict[str, Any]) -> Any:
    cls = _class(dec, node, "coo")
    shape = _shape(dec, node, (2,) if node.get("cls") == "coo_matrix" else tuple(range(1, _MAX_NDIM + 1)))
    data = _array(dec, node.get("d"), _VALUE_DTYPES, index=False)
    specs = node.get("c")
    if not isinstance(specs, list) or len(specs) != len(shape):
        raise dec.corrupt("COO coordinates do not match its shape")
    coords = [_array(dec, s, _INDEX_DTYPES, index=True) for s in specs]
    if data.ndim != 1 or any(c.ndim != 1 or len(c) != len(data) or c.dtype != coords[0].dtype for c in coords):
        raise dec.corrupt("COO coordinates and values are not 1-d arrays of one length")
    _index_fits(dec, coords[0].dtype, *shape, len(data))
    for axis, (c, bound) in enumerate(zip(coords, shape, strict=True)):
        _within(dec, c, bound, f"coordinates of axis {axis}")
    out = cls(shape, dtype=data.dtype)
    out.coords, out.data = tuple(coords), data
    out.has_canonical_format = _canonical(coords)  # computed, never read from the segment
    return out


DECODERS: dict[str, DecodeFn] = {"sp.csr": _dec_csr, "sp.csc": _dec_csc, "sp.bsr": _dec_bsr, "sp.coo": _dec_coo}
