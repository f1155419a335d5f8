"""Plain Python values and containers: scalars inline in the tree, containers recursed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Decoder, Encoder

_SCALARS = (type(None), bool, int, float, str)


def encode(enc: Encoder, obj: Any, path: str) -> Any:
    t = type(obj)
    if t in _SCALARS:
        return {"k": "py", "v": obj}
    if t is bytes:
        return {"k": "bytes", "b": enc.add(obj, len(obj))}
    if t is list or t is tuple:
        items = [enc.encode(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return {"k": "list" if t is list else "tuple", "items": items}
    if t is dict:
        keys = [enc.encode(k, f"{path}<key>") for k in obj]
        vals = [enc.encode(v, f"{path}[{k!r}]") for k, v in obj.items()]
        return {"k": "dict", "keys": keys, "vals": vals}
    return None


def _dec_py(dec: Decoder, node: dict[str, Any]) -> Any:
    if "v" not in node:
        raise dec.corrupt("inline value without its value")
    v = node["v"]
    if v is not None and type(v) not in _SCALARS:
        raise dec.corrupt("inline value is not a scalar")
    return v


def _dec_bytes(dec: Decoder, node: dict[str, Any]) -> bytes:
    return dec.buffer(node.get("b")).tobytes()


def _dec_seq(dec: Decoder, node: dict[str, Any]) -> Any:
    items = node.get("items")
    if not isinstance(items, list):
        raise dec.corrupt("container items are not a list")
    out = [dec.decode(v) for v in items]
    return out if node["k"] == "list" else tuple(out)


def _dec_dict(dec: Decoder, node: dict[str, Any]) -> dict[Any, Any]:
    keys, vals = node.get("keys"), node.get("vals")
    if not isinstance(keys, list) or not isinstance(vals, list) or len(keys) != len(vals):
        raise dec.corrupt("dict keys and values do not pair up")
    return {dec.decode(k): dec.decode(v) for k, v in zip(keys, vals, strict=True)}


def register() -> None:
    from ._core import register_decoder

    register_decoder("py", _dec_py)
    register_decoder("bytes", _dec_bytes)
    register_decoder("list", _dec_seq)
    register_decoder("tuple", _dec_seq)
    register_decoder("dict", _dec_dict)
    register_decoder("pickle", lambda dec, node: dec.unpickle(node))
