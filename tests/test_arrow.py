"""Arrow Tables, RecordBatches, Arrays and ChunkedArrays of any type through shared memory."""

from __future__ import annotations

import decimal
import pickle
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings

import nocopy
from nocopy._codec import decode_buffer
from nocopy.errors import SegmentCorruptError, UnsupportedTypeError
from strategies import arrow_arrays, buffer_in, buffers_of, outside, planted, worker_roundtrip_many

N = 7


def _columns() -> dict[str, pa.Array]:
    """One column per Arrow type family, nested and large types included, with nulls."""
    ints = [0, None, 2, 3, None, 5, 6]
    strs = ["a", None, "ü", "", "long " * 20, "z", None]
    cols: dict[str, pa.Array] = {
        "null": pa.nulls(N),
        "bool": pa.array([True, None, False, True, True, False, None]),
        "int8": pa.array(ints, pa.int8()),
        "uint64": pa.array([2**64 - 1, None, 0, 1, 2, 3, 4], pa.uint64()),
        "float16": pa.array(np.arange(N, dtype=np.float16)),
        "float64": pa.array([1.5, None, -0.0, 0.0, -1.0, 1e300, 2.0]),  # NaN != NaN in Arrow equals()
        "decimal128": pa.array([decimal.Decimal("1.25"), None] + [decimal.Decimal(i) for i in range(5)], pa.decimal128(10, 2)),
        "decimal256": pa.array([decimal.Decimal("123456789012345678901234567890.5")] * N, pa.decimal256(40, 1)),
        "date32": pa.array([0, None, 1, 2, 3, 4, 5], pa.date32()),
        "date64": pa.array([0, None, 86400000, 0, 0, 0, 0], pa.date64()),
        "time64": pa.array([1, None, 2, 3, 4, 5, 6], pa.time64("ns")),
        "ts_tz": pa.array([0, None, 1, 2, 3, 4, 5], pa.timestamp("us", tz="Europe/Paris")),
        "ts_naive": pa.array([0, None, 1, 2, 3, 4, 5], pa.timestamp("s")),
        "duration": pa.array([1, None, 2, 3, 4, 5, 6], pa.duration("ms")),
        "interval": pa.array([pa.scalar((1, 2, 3), pa.month_day_nano_interval()).as_py()] * N, pa.month_day_nano_interval()),
        "string": pa.array(strs, pa.string()),
        "large_string": pa.array(strs, pa.large_string()),
        "string_view": pa.array(strs, pa.string_view()),
        "binary": pa.array([b"\x00\xff", None, b"", b"x", b"y", b"z", b"w"], pa.binary()),
        "large_binary": pa.array([b"\x00" * 100, None, b"", b"x", b"y", b"z", b"w"], pa.large_binary()),
        "fixed_binary": pa.array([b"ab", None, b"cd", b"ef", b"gh", b"ij", b"kl"], pa.binary(2)),
        "list": pa.array([[1, 2], None, [], [3], [4, None], [5], [6]], pa.list_(pa.int32())),
        "large_list": pa.array([["a"], None, [], ["b", None], ["c"], [], ["d"]], pa.large_list(pa.string())),
        "fixed_list": pa.array([[1.0, 2.0]] * N, pa.list_(pa.float64(), 2)),
        "list_of_struct": pa.array([[{"x": 1, "y": "a"}], None, [], [{"x": None, "y": None}], [], [], []],
                                   pa.list_(pa.struct([("x", pa.int64()), ("y", pa.string())]))),
        "struct": pa.array([{"a": i, "b": [str(i)], "c": {"d": float(i)}} if i % 3 else None for i in range(N)]),
        "map": pa.array([[("k", 1)], None, [], [("a", 2), ("b", None)], [], [], []], pa.map_(pa.string(), pa.int64())),
        "dictionary": pa.array(["x", "y", None, "x", "x", "z", "y"]).dictionary_encode(),
        "dict_int": pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 1, 0, 0, 1], pa.int8()), pa.array([10.5, 20.5])),
        "dense_union": pa.UnionArray.from_dense(
            pa.array([0, 1, 0, 1, 0, 1, 0], pa.int8()), pa.array([0, 0, 1, 1, 2, 2, 3], pa.int32()),
            [pa.array([1, 2, 3, 4]), pa.array(["a", "b", "c"])]),
        "sparse_union": pa.UnionArray.from_sparse(
            pa.array([0, 1, 0, 1, 0, 1, 0], pa.int8()), [pa.array(range(N)), pa.array([str(i) for i in range(N)])]),
        "run_end": pa.RunEndEncodedArray.from_arrays(pa.array([3, 7], pa.int32()), pa.array(["p", None])),
    }
    for name, ext in (("uuid", "uuid"), ("bool8", "bool8")):
        factory = getattr(pa, ext, None)
        if factory is not None:
            storage_type = factory().storage_type
            if name == "uuid":
                storage = pa.array([bytes(range(16))] * N, storage_type)
            else:
                storage = pa.array([1, 0, None, 1, 1, 0, 0], storage_type)
            cols[name] = pa.ExtensionArray.from_storage(factory(), storage)
    return cols


def _table() -> pa.Table:
    cols = _columns()
    schema = pa.schema(
        [pa.field(k, v.type, metadata={"about": k}) for k, v in cols.items()],
        metadata={"source": "nocopy test", "ü": "✓"},
    )
    return pa.Table.from_arrays(list(cols.values()), schema=schema)


def _in_segment(ref: nocopy.Shared[Any], obj: Any) -> None:
    base = ref._shared_base()
    bufs = buffers_of(obj)
    assert bufs
    assert outside(bufs, base.ctypes.data, base.nbytes) == []


def test_table_of_every_type_round_trips_with_metadata_and_zero_copy() -> None:
    table = _table()
    with nocopy.share(table) as ref:
        got = ref.get()
        assert got.equals(table, check_metadata=True)
        assert got.schema.metadata == table.schema.metadata
        _in_segment(ref, got)


@pytest.mark.parametrize("name", list(_columns()))
def test_each_type_as_array_chunked_array_and_slice(name: str) -> None:
    arr = _columns()[name]
    chunked = pa.chunked_array([arr, arr.slice(2, 3), arr.slice(0, 0)], type=arr.type)
    for obj in (arr, chunked, arr.slice(1, 4), arr.slice(N, 0)):
        with nocopy.share(obj) as ref:
            got = ref.get()
            assert type(got) is type(obj)
            assert got.type == obj.type and got.equals(obj), (obj, got)
            if isinstance(obj, pa.ChunkedArray):
                assert got.num_chunks == obj.num_chunks
            if len(obj) and name != "null":
                _in_segment(ref, got)


def test_record_batch_schema_empty_and_chunkless() -> None:
    table = _table()
    batch = table.to_batches()[0]
    empty_chunked = pa.chunked_array([], type=pa.list_(pa.string()))
    for obj in (batch, table.schema, table.slice(0, 0), pa.table({}), empty_chunked, pa.Table.from_batches([], table.schema)):
        with nocopy.share(obj) as ref:
            got = ref.get()
            assert type(got) is type(obj)
            assert got.equals(obj), (obj, got)


def test_multi_chunk_table_keeps_its_chunks() -> None:
    table = pa.concat_tables([pa.table({"a": [1, 2], "s": ["x", "y"]}), pa.table({"a": [3], "s": ["z"]})])
    with nocopy.share(table) as ref:
        got = ref.get()
        assert got.equals(table)
        assert got.column("a").num_chunks == 2


def test_buffers_and_nesting() -> None:
    table = _table()
    obj = {"t": table, "parts": [table.column("list"), table.column("struct").chunk(0)], "buf": pa.py_buffer(b"raw bytes")}
    with nocopy.share(obj) as ref:
        got = ref.get()
        assert got["t"].equals(table)
        assert got["parts"][0].equals(table.column("list"))
        assert got["parts"][1].equals(table.column("struct").chunk(0))
        assert got["buf"].to_pybytes() == b"raw bytes"


def test_round_trip_through_a_spawned_worker(spawn_pool: Any) -> None:
    table = _table()
    objs = [table, table.to_batches()[0], table.column("map"), table.column("dense_union").chunk(0)]
    refs = [nocopy.share(o) for o in objs]
    try:
        errors = spawn_pool.apply(worker_roundtrip_many, ([(r, pickle.dumps(o)) for r, o in zip(refs, objs, strict=True)],))
    finally:
        for r in refs:
            r.close()
    assert errors == [None] * len(objs)


@settings(max_examples=100, deadline=None, database=None)
@given(arr=arrow_arrays())
def test_hypothesis_arrays_round_trip(arr: pa.Array) -> None:
    with nocopy.share([arr, pa.chunked_array([arr, arr])]) as ref:
        got = ref.get()
    assert got[0].equals(arr) and got[1].equals(pa.chunked_array([arr, arr]))


def test_attach_untrusted_validates_fully_and_still_reads() -> None:
    table = _table()
    with nocopy.share(table) as ref:
        assert nocopy.attach(ref.uri).get().equals(table)


# -- numpy object arrays of str (the _numpy hook) ---------------------------


def test_numpy_object_strings_are_stored_as_arrow_and_rebuilt_exactly() -> None:
    arr = np.array(["a", None, "ü" * 300, float("nan"), "", "x"], dtype=object)
    with nocopy.share(arr) as ref:
        got = ref.get()
    assert got.dtype == object and got.shape == arr.shape
    assert got[0] == "a" and got[1] is None and got[2] == "ü" * 300 and np.isnan(got[3]) and got[4] == ""
    report = nocopy.explain(arr)
    assert report[0].status == "converted" and "large_string" in report[0].detail


@pytest.mark.parametrize(
    "missing",
    [[None, None], [float("nan")], [pd.NA, pd.NA], [None, pd.NA, float("nan")]],
    ids=["none", "nan", "pd.NA", "mixed"],
)
def test_numpy_object_strings_keep_each_kind_of_missing_value(missing: list[Any]) -> None:
    arr = np.array(["a", *missing, "b"], dtype=object)
    with nocopy.share(arr) as ref:
        got = ref.get()
    assert got[0] == "a" and got[-1] == "b"
    for want, have in zip(missing, got[1:-1], strict=True):
        if isinstance(want, float):
            assert isinstance(have, float) and np.isnan(have)
        else:
            assert have is want


def test_numpy_object_array_of_other_objects_is_refused() -> None:
    with pytest.raises(UnsupportedTypeError, match="object"):
        nocopy.share(np.array([{"a": 1}, "x"], dtype=object))


# -- corrupt segments -------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_corrupt_ipc_stream_is_refused_not_crashed(trusted: bool, where: str) -> None:
    table = pa.table({"s": ["abc", "de", None] * 50, "l": [[1, 2], None, [3]] * 50})
    mem, header = planted(table)
    raw = buffer_in(mem, header, header.tree["b"])
    n = len(raw)
    part = {"start": slice(8, 64), "middle": slice(n // 2, n // 2 + 64), "end": slice(n - 300, n - 200)}[where]
    raw[part] = 0xFF
    try:
        got = decode_buffer(mem, trusted=trusted)
    except SegmentCorruptError:
        return
    # Some bytes are padding or plain values: then the data must still be valid Arrow.
    got.validate(full=True)


def test_random_corruption_of_an_arrow_table_never_crashes() -> None:
    """Byte flips anywhere in the IPC stream of a table of every type: decode succeeds
    (and the data passes full validation) or raises SegmentCorruptError. A fresh
    interpreter, so that a segfault fails the test instead of pytest."""
    import json
    import os

    from conftest import run_python

    out = run_python(f"""
        import json, random, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, pyarrow as pa
        from test_arrow import _table
        from strategies import planted
        from nocopy._codec import decode_buffer
        from nocopy.errors import SegmentCorruptError
        clean, header = planted(_table())
        rng = random.Random(2)
        outcomes = {{"ok": 0, "refused": 0, "garbage": 0}}
        for i in range(400):
            mem = clean.copy()
            for _ in range(rng.randint(1, 3)):
                mem[rng.randrange(header.data_offset, clean.nbytes)] = rng.randrange(256)
            try:
                got = decode_buffer(mem, trusted=bool(i % 2))
            except SegmentCorruptError:
                outcomes["refused"] += 1
                continue
            outcomes["ok"] += 1
            got.validate(full=True)
            try:
                got.to_pylist()
            except (ValueError, OverflowError, pa.ArrowException):
                outcomes["garbage"] += 1
        print(json.dumps(outcomes))
    """, timeout=240)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    outcomes = json.loads(out.stdout.strip().splitlines()[-1])
    assert outcomes["ok"] + outcomes["refused"] == 400 and outcomes["refused"] > 20, outcomes
