"""PyTorch CPU tensors: every dtype torch has, any shape and strides, copy-on-write on get().

A tensor is stored as the bytes of the memory it covers (its span) with its
dtype, shape and strides, so a transposed, permuted (channels_last) or
expanded tensor comes back with the same strides. A view with gaps (a step
slice) would store bytes it does not use: it is stored dense once at share,
its dimension order kept, as NumPy arrays are. Dtypes NumPy lacks (bfloat16,
float8, complex32, the bit and sub-byte types) travel as bytes: the tensor is
rebuilt with ``Tensor.view(dtype)`` over them.

PyTorch has no read-only tensors: a tensor over read-only pages dies with
SIGSEGV on its first write. So every tensor is built over a private
copy-on-write mapping (`Decoder.private_buffer`): reads share the pages,
a write copies its page for this process alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .._kinds import TorchFamily

try:
    import torch
except ImportError as exc:  # pragma: no cover - decoding a tensor where torch is not installed
    raise ImportError(
        "this data holds PyTorch tensors, and torch is not installed here. "
        "Fix: pip install 'nocopy[torch]'"
    ) from exc

if TYPE_CHECKING:
    from ._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "encode"]

_MAX_NDIM = 64
_MAX_ELEMENTS = 1 << 62

# Quantized dtypes carry a scale and zero point outside their bytes: refused at share.
_QUANTIZED = frozenset(
    getattr(torch, n) for n in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4") if hasattr(torch, n)
)
# Every other dtype this torch has, by the name stored in the tree ("bfloat16"...).
_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in vars(torch).values()
    if isinstance(d, torch.dtype) and d not in _QUANTIZED
}


def _span(shape: list[int], strides: list[int]) -> int:
    """Elements of memory a tensor of *shape* and *strides* covers, from its first element."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((n - 1) * st for n, st in zip(shape, strides, strict=True))


# Integers of each element size: the bit, sub-byte and float8 dtypes have no copy kernel,
# so their bytes are copied as these.
_AS_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _dense(t: torch.Tensor) -> torch.Tensor:
    """*t* copied without gaps, its dimensions in the same memory order."""
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    inverse = [order.index(d) for d in range(t.dim())]
    as_int = _AS_INT.get(t.element_size())
    src = t if as_int is None else t.view(as_int)
    dense = src.permute(order).contiguous().permute(inverse)
    return dense if as_int is None else dense.view(t.dtype)


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    why = TorchFamily.problem(obj)
    if why is not None:
        return enc.unsupported(obj, path, why, dtype=str(getattr(obj, "dtype", "")))
    t: torch.Tensor = obj.detach().resolve_conj().resolve_neg()
    shape, strides = list(t.shape), list(t.stride())
    span = _span(shape, strides)
    detail = ""
    if span > t.numel():
        t = _dense(t)
        strides = list(t.stride())
        span = t.numel()
        detail = "a view with gaps: stored dense once at share"
    if span:
        flat = torch.as_strided(t, (span,), (1,), t.storage_offset())
        raw: np.ndarray = flat.view(torch.uint8).numpy()
    else:
        raw = np.empty(0, dtype=np.uint8)
    enc.note(path, str(t.dtype), "zero-copy", detail or "copy-on-write on get()")
    return {
        "k": "torch.t",
        "b": enc.add(raw, raw.nbytes),
        "dt": str(t.dtype).removeprefix("torch."),
        "sh": shape,
        "st": strides,
        "rg": bool(obj.requires_grad),
    }


def _ints(dec: Decoder, value: Any, what: str) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > _MAX_NDIM
        or not all(type(v) is int and 0 <= v < _MAX_ELEMENTS for v in value)
    ):
        raise dec.corrupt(f"bad tensor {what} {value!r:.60}")
    return value


def _dec_tensor(dec: Decoder, node: dict[str, Any]) -> torch.Tensor:
    dt = _DTYPES.get(node.get("dt"))  # type: ignore[arg-type]
    if dt is None:
        raise dec.corrupt(f"unknown tensor dtype {node.get('dt')!r:.40}")
    shape, strides = _ints(dec, node.get("sh"), "shape"), _ints(dec, node.get("st"), "strides")
    grad = node.get("rg", False)
    if len(shape) != len(strides) or math.prod(shape) >= _MAX_ELEMENTS or type(grad) is not bool:
        raise dec.corrupt(f"bad tensor of shape {shape!r:.40}, strides {strides!r:.40}")
    if grad and not (dt.is_floating_point or dt.is_complex):
        raise dec.corrupt(f"a tensor of dtype {dt} cannot require grad")
    index = node.get("b")
    raw = dec.buffer(index)
    span = _span(shape, strides)
    if raw.nbytes != span * dt.itemsize:
        raise dec.corrupt(f"tensor covering {span} elements of {dt} in a buffer of {raw.nbytes} bytes")
    if span:
        # Writable, private to this get(): no warning from torch, never SIGSEGV on a write.
        flat = torch.from_numpy(dec.private_buffer(index, raw)).view(dt)
    else:  # no allocation of *dt* (torch warns at every complex32 one)
        flat = torch.empty(0, dtype=torch.uint8).view(dt)
    t = flat.as_strided(shape, strides, 0)
    if grad:
        t.requires_grad_(True)
    return t


DECODERS: dict[str, DecodeFn] = {"torch.t": _dec_tensor}
