"""Arrow data: Tables, RecordBatches, Arrays and ChunkedArrays of any type, and strings.

One module per layout, each with its own allow-list of what it reads back:

* ``_ipc`` (``pa.ipc``) -- any Arrow object as one Arrow IPC stream in the
  segment, read over the mapped bytes; no compressed bodies or dictionary
  deltas; a caller's type allow-list (``_check.polars_refusal``) checked on
  the schema first; the data validated at a cost charged to the decoder's
  budget (``_check``).
* ``_raw`` (``pa.lstr``, ``pa.lbin``) -- string and binary columns as raw
  ``large_string`` / ``large_binary`` buffers, offsets checked with NumPy.
  pandas string columns use them.
* ``_objects`` (``pa.objstr``, ``pa.objbin``) -- object ndarrays of ``str``
  or ``bytes``, stored through ``_raw``, rebuilt as Python objects on get().

The NumPy and pandas codecs use ``_objects`` and ``_raw`` directly; this
package exports what the registry and the Polars codec need.

pyarrow is imported lazily: ``import nocopy`` never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _ipc, _objects, _raw
from ._base import guard, pyarrow
from ._check import polars_refusal
from ._ipc import ipc_node, read_ipc

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "encode", "guard", "ipc_node", "polars_refusal", "pyarrow", "read_ipc"]


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
    if not _ipc.classify(pa, obj):
        return enc.unsupported(obj, path, f"pyarrow object of type {type(obj).__qualname__}")
    _note_fields(enc, pa, obj, path)
    return ipc_node(enc, obj, path)



def _dec_buf(dec: Decoder, node: dict[str, Any]) -> Any:
    return pyarrow("reading shared Arrow data").py_buffer(dec.buffer(node.get("b")))


DECODERS: dict[str, DecodeFn] = {
    **{kind: guard(fn) for table in (_ipc.DECODERS, _raw.DECODERS, _objects.DECODERS) for kind, fn in table.items()},
    "pa.buf": _dec_buf,
}
