"""The codec's facade and registry: what other layers use, and how a family's codec is wired."""

from __future__ import annotations

import os
import sys
import tempfile
import types
from typing import Any

import numpy as np
import pytest

from nocopy import _kinds
from nocopy._codec import _registry, decode_buffer, explain_notes, plan, plan_output, write_at
from nocopy.errors import SegmentCorruptError, UnsupportedTypeError


def _round_trip(p: Any) -> Any:
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    return decode_buffer(mem, trusted=True)


@pytest.mark.parametrize("order", ["C", "F"])
def test_plan_output_is_a_zeroed_array_of_the_shape_dtype_and_order(order: str) -> None:
    got = _round_trip(plan_output((3, 4), np.dtype("i4"), order=order))
    assert got.shape == (3, 4) and got.dtype == np.int32 and not got.any()
    assert got.flags.f_contiguous if order == "F" else got.flags.c_contiguous
    assert plan_output((3, 4), "i4", order=order).nbytes == 48


def test_plan_output_adds_a_subarray_dtype_s_shape_as_numpy_does() -> None:
    got = _round_trip(plan_output((2,), np.dtype(("f8", (3,))), order="C"))
    assert got.shape == np.zeros(2, ("f8", (3,))).shape == (2, 3)


def test_plan_output_refuses_object_dtypes_and_unknown_orders() -> None:
    with pytest.raises(UnsupportedTypeError, match="Python objects"):
        plan_output((2,), np.dtype(object), order="C")
    with pytest.raises(ValueError, match="order"):
        plan_output((2,), np.dtype("f8"), order="K")


def test_write_at_writes_everything_at_the_offset() -> None:
    data = np.arange(1000, dtype=np.uint8)
    with tempfile.TemporaryFile() as f:
        write_at(f.fileno(), data.data, 7)
        assert os.pread(f.fileno(), 1007, 0) == bytes(7) + data.tobytes()


def test_explain_notes_describe_without_planning_buffers() -> None:
    notes = explain_notes({"a": np.arange(3)})
    assert [(n.path, n.status) for n in notes] == [("['a']", "zero-copy")]


class _Toy:
    """An object of a family nocopy does not know (its type's module is the toy library)."""

    def __init__(self, values: list[int]) -> None:
        self.values = values


_Toy.__module__ = "toylib.core"


class _ToyFamily(_kinds.Family):
    name = codec = "toy"
    module = "toylib"


def _toy_codec() -> types.ModuleType:
    """A codec module as a family adds one: ``encode`` plus one decoder per node kind."""
    codec = types.ModuleType("nocopy_test_toy_codec")

    def encode(enc: Any, obj: Any, path: str) -> Any:
        enc.note(path, "toy", "zero-copy")
        return {"k": "toy.v", "v": enc.encode(np.asarray(obj.values), f"{path}.values")}

    def decode(dec: Any, node: dict[str, Any]) -> Any:
        return _Toy([int(x) for x in dec.decode(node.get("v"))])

    codec.encode = encode  # type: ignore[attr-defined]
    codec.DECODERS = {"toy.v": decode}  # type: ignore[attr-defined]
    return codec


def test_a_family_s_codec_is_one_module_plus_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_kinds.FAMILIES, "toylib", _ToyFamily)
    monkeypatch.setitem(sys.modules, "nocopy_test_toy_codec", _toy_codec())
    for table in ("_ENCODERS", "_DECODERS", "_LAZY_BY_CODEC", "_LAZY_BY_PREFIX"):
        monkeypatch.setattr(_registry, table, dict(getattr(_registry, table)))
    with pytest.raises(UnsupportedTypeError, match="_Toy"):
        plan(_Toy([1]))  # a family without a codec is refused, as any unknown object
    _registry.register_lazy("toy", "nocopy_test_toy_codec", prefix="toy.")
    assert "toy" not in _registry._ENCODERS  # imported on first use only
    got = _round_trip(plan({"t": _Toy([1, 2, 3])}))
    assert isinstance(got["t"], _Toy) and got["t"].values == [1, 2, 3]
    assert [n.status for n in explain_notes(_Toy([1]))] == ["zero-copy", "zero-copy"]


def test_a_node_of_a_kind_no_codec_registers_is_corrupt() -> None:
    p = plan([1])
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    raw = bytes(mem).replace(b'"k":"py"', b'"k":"zz"')
    with pytest.raises(SegmentCorruptError, match="unknown node kind"):
        decode_buffer(np.frombuffer(bytearray(raw), dtype=np.uint8), trusted=True)
