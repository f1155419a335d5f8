"""Plain Python values and containers: scalars inline in the tree, containers recursed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._sequence import decode_sequence, encode_sequence, sequence_kind

if TYPE_CHECKING:
    from ._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "encode", "labels"]

_SCALARS = (type(None), bool, int, float, str)
_NUMBERS = frozenset((bool, int, float))

# Set while labels are encoded (dict keys, pandas names and attrs): a tuple of str there
# must come back a tuple (hashable, equal to itself), never a SharedSequence.
_LABELS: ContextVar[bool] = ContextVar("nocopy_labels", default=False)


@contextmanager
def labels() -> Iterator[None]:
    """Within it, lists and tuples of str or bytes are encoded as plain containers (for labels)."""
    token = _LABELS.set(True)
    try:
        yield
    finally:
        _LABELS.reset(token)


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    t = type(obj)
    if t in _SCALARS:
        return {"k": "py", "v": obj}
    if t is bytes:
        return {"k": "bytes", "b": enc.add(obj, len(obj))}
    if t is list or t is tuple:
        if not _LABELS.get():
            kind = sequence_kind(obj)
            node = None if kind is None else encode_sequence(enc, obj, kind, path)
            if node is not None:
                return node
            _note_numbers(enc, obj, path)
        items = [enc.encode(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return {"k": "list" if t is list else "tuple", "items": items}
    if t is dict:
        with labels():
            keys = [enc.encode(k, f"{path}<key>") for k in obj]
        vals = [enc.encode(v, f"{path}[{k!r}]") for k, v in obj.items()]
        return {"k": "dict", "keys": keys, "vals": vals}
    return None


def _note_numbers(enc: Encoder, obj: list[Any] | tuple[Any, ...], path: str) -> None:
    # A list of numbers stays a list (get() gives what was shared); explain() says what that costs.
    if obj and set(map(type, obj)) <= _NUMBERS:
        enc.note(
            path, f"{type(obj).__name__} of numbers", "converted",
            "kept in the header: every get() builds a new list (a copy per process). "
            "Fix: share numpy.asarray(it) for a zero-copy array",
        )


def _dec_py(dec: Decoder, node: dict[str, Any]) -> Any:
    if "v" not in node:
        raise dec.corrupt("inline value without its value")
    v = node["v"]
    if v is not None and type(v) not in _SCALARS:
        raise dec.corrupt("inline value is not a scalar")
    return v


def _dec_bytes(dec: Decoder, node: dict[str, Any]) -> bytes:
    return dec.buffer(node.get("b")).tobytes()


def _items(dec: Decoder, node: dict[str, Any]) -> list[Any]:
    items = node.get("items")
    if not isinstance(items, list):
        raise dec.corrupt("container items are not a list")
    return [dec.decode(v) for v in items]


def _dec_list(dec: Decoder, node: dict[str, Any]) -> list[Any]:
    return _items(dec, node)


def _dec_tuple(dec: Decoder, node: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_items(dec, node))


def _dec_dict(dec: Decoder, node: dict[str, Any]) -> dict[Any, Any]:
    keys, vals = node.get("keys"), node.get("vals")
    if not isinstance(keys, list) or not isinstance(vals, list) or len(keys) != len(vals):
        raise dec.corrupt("dict keys and values do not pair up")
    built = [dec.decode(k) for k in keys]
    dec.keys(built, "dict key")  # charged before the dict hashes them (colliding keys: quadratic)
    return dict(zip(built, [dec.decode(v) for v in vals], strict=True))


def _dec_pickle(dec: Decoder, node: dict[str, Any]) -> Any:
    return dec.unpickle(node)


DECODERS: dict[str, DecodeFn] = {
    "py": _dec_py,
    "bytes": _dec_bytes,
    "list": _dec_list,
    "tuple": _dec_tuple,
    "dict": _dec_dict,
    "pickle": _dec_pickle,
    "seq": decode_sequence,
}
