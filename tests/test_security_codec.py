"""A hostile segment's header cannot make get() allocate far beyond the segment's size,
nor make the reader open files: every such header is refused with SegmentCorruptError.

Segments are forged here from scratch (any header, any data), as a same-user
attacker can write them; decode_buffer runs the same decoder as attach().get().
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nocopy._codec import decode_buffer, plan
from nocopy._codec._layout import MAGIC, MAX_HEADER_ITEMS, PREFIX, VERSION, align
from nocopy.errors import SegmentCorruptError, UnsupportedTypeError

MiB = 1 << 20


def forge(header: dict[str, Any] | bytes, data: bytes = b"") -> np.ndarray:
    """A layout holding *header* (JSON, or raw bytes) and *data* as its data area."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    off = align(PREFIX.size + len(body))
    mem = np.zeros(off + len(data), dtype=np.uint8)
    prefix = PREFIX.pack(MAGIC, VERSION, 0, len(body), b"t" * 16, len(mem), off)
    mem[: PREFIX.size] = np.frombuffer(prefix, dtype=np.uint8)
    mem[PREFIX.size : PREFIX.size + len(body)] = np.frombuffer(body, dtype=np.uint8)
    mem[off:] = np.frombuffer(data, dtype=np.uint8)
    return mem


def decode(mem: np.ndarray) -> Any:
    return decode_buffer(mem, trusted=False)


def peak_while(fn: Any) -> tuple[Any, int]:
    """(fn()'s result or exception, peak traced bytes allocated meanwhile)."""
    tracemalloc.start()
    try:
        try:
            out: Any = fn()
        except Exception as exc:  # returned for the caller to check
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def ipc_stream(table: pa.Table, **options: Any) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# -- item 5: allocation bounded by the segment's size ----------------------------------


def test_a_buffer_copied_by_many_nodes_is_refused_before_the_copies_add_up() -> None:
    # r9a: 100 "bytes" nodes over one 1 MiB buffer made get() allocate 100 MiB.
    mem = forge({"tree": {"k": "list", "items": [{"k": "bytes", "b": 0}] * 100}, "buffers": [[0, MiB]]}, b"A" * MiB)
    out, peak = peak_while(lambda: decode(mem))
    assert isinstance(out, SegmentCorruptError), out
    assert "buffer 0 is referenced more than once" in str(out)
    assert peak < 4 * mem.nbytes, f"{peak} bytes allocated decoding a {mem.nbytes}-byte segment"


def test_object_strings_sharing_their_buffers_are_refused() -> None:
    # An object ndarray of str is rebuilt as Python str objects: sharing its
    # Arrow buffers between many nodes would materialise them again each time.
    mem, _ = _planted(np.array(["x" * 1000] * 100, dtype=object))
    doc, data = _split(mem)
    node = doc["tree"]
    assert node["k"] == "pa.objstr"
    doc["tree"] = {"k": "list", "items": [node] * 50}
    out, peak = peak_while(lambda: decode(forge(doc, data)))
    assert isinstance(out, SegmentCorruptError), out
    assert "referenced more than once" in str(out)
    assert peak < 4 * len(data) + MiB


@pytest.mark.parametrize("trusted", [True, False])
def test_a_forged_grouping_hint_on_object_strings_changes_no_value(trusted: bool) -> None:
    # "g" only says the encoder found few distinct objects (get() then hashes the
    # values): on distinct ones a forged "g" makes get() slower, never different.
    arr = np.array(["a", None, "b", "é", float("nan"), "a", pd.NA], dtype=object)
    mem, _ = _planted(arr)
    doc, data = _split(mem)
    assert doc["tree"]["k"] == "pa.objstr" and "g" not in doc["tree"]
    doc["tree"]["g"] = 1
    got = decode_buffer(forge(doc, data), trusted=trusted)
    assert got[[0, 2, 3, 5]].tolist() == ["a", "b", "é", "a"]
    assert got[1] is None and isinstance(got[4], float) and np.isnan(got[4]) and got[6] is pd.NA


def test_an_array_view_and_a_copying_node_cannot_share_a_buffer() -> None:
    doc = {"tree": {"k": "list", "items": [
        {"k": "nd", "b": 0, "dt": "|u1", "sh": [64]}, {"k": "bytes", "b": 0},
    ]}, "buffers": [[0, 64]]}
    with pytest.raises(SegmentCorruptError, match="referenced more than once"):
        decode(forge(doc, b"x" * 64))
    doc["tree"]["items"].reverse()  # type: ignore[index]
    with pytest.raises(SegmentCorruptError, match="referenced more than once"):
        decode(forge(doc, b"x" * 64))


def test_the_same_array_shared_twice_still_comes_back_as_two_views() -> None:
    # The encoder stores an array met twice once (as pickle would): array views may share.
    a = np.arange(1000)
    p = plan([a, a, {"k": a}])
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    x, y, d = decode(mem)
    assert np.shares_memory(x, y) and np.shares_memory(x, d["k"]) and np.shares_memory(x, mem)
    np.testing.assert_array_equal(y, a)


def test_overlapping_buffer_table_entries_are_refused() -> None:
    tree = {"k": "list", "items": [{"k": "bytes", "b": 0}, {"k": "bytes", "b": 1}]}
    for table in ([[0, 128], [64, 64]], [[0, 128], [0, 128]], [[64, 64], [0, 64]]):
        with pytest.raises(SegmentCorruptError, match="overlaps or precedes"):
            decode(forge({"tree": tree, "buffers": table}, b"y" * 128))
    assert decode(forge({"tree": tree, "buffers": [[0, 64], [64, 64]]}, b"y" * 128)) == [b"y" * 64] * 2


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_arrow_stream_is_refused_before_it_is_inflated(codec: str) -> None:
    # r9b: a 134 KB zstd stream declared 4 GiB of zeros; here 32 MiB in a few KB.
    stream = ipc_stream(pa.table({"v": np.zeros(32 * MiB, np.int8)}), compression=codec)
    assert len(stream) < MiB
    mem = forge({"tree": {"k": "pa.ipc", "what": "table", "b": 0}, "buffers": [[0, len(stream)]]}, stream)
    before = pa.total_allocated_bytes()
    with pytest.raises(SegmentCorruptError, match="compressed"):
        decode(mem)
    assert pa.total_allocated_bytes() == before


def test_an_arrow_stream_with_dictionary_deltas_is_refused() -> None:
    # Each delta is concatenated with all the earlier ones: quadratic in the stream's size.
    t1 = pa.table({"s": pa.DictionaryArray.from_arrays(pa.array([0, 1]), pa.array(["a", "b"]))})
    t2 = pa.table({"s": pa.DictionaryArray.from_arrays(pa.array([2]), pa.array(["a", "b", "c"]))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t1.schema, options=pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)) as w:
        w.write_table(t1)
        w.write_table(t2)
    stream = sink.getvalue().to_pybytes()
    mem = forge({"tree": {"k": "pa.ipc", "what": "table", "b": 0}, "buffers": [[0, len(stream)]]}, stream)
    with pytest.raises(SegmentCorruptError, match="dictionary delta"):
        decode(mem)


def test_arrow_data_the_encoder_writes_still_decodes_in_place() -> None:
    t1 = pa.table({"s": pa.array(["a", "b"] * 50).dictionary_encode(), "v": np.arange(100)})
    t2 = pa.table({"s": pa.array(["c", "d"]).dictionary_encode(), "v": np.arange(2)})
    table = pa.concat_tables([t1, t2])  # two chunks, two dictionaries: a replacement, not a delta
    mem = _planted(table)[0]
    out = decode(mem)
    assert out.equals(table)
    assert np.shares_memory(np.asarray(out.column("v").chunk(0)), mem)


def test_a_header_of_millions_of_tiny_values_is_refused_before_parsing() -> None:
    # r9c: a 64 MiB header of "[]," took ~20 s and ~1.8 GB to parse.
    n = MAX_HEADER_ITEMS
    body = b'{"tree":{"k":"py","v":null},"buffers":[],"x":[' + b"[]," * n + b"[]]}"
    out, peak = peak_while(lambda: decode(forge(body)))
    assert isinstance(out, SegmentCorruptError), out
    assert f"more than {MAX_HEADER_ITEMS} JSON values" in str(out)
    assert peak < 4 * len(body)


def test_share_refuses_an_object_whose_header_readers_would_refuse() -> None:
    with pytest.raises(UnsupportedTypeError, match="exceeds nocopy's limits"):
        plan(list(range(MAX_HEADER_ITEMS // 2)))
    assert decode(_planted(list(range(1000)))[0]) == list(range(1000))


def test_codes_pandas_would_narrow_cannot_be_decoded_into_many_copies() -> None:
    # Wide codes shared by many MultiIndexes: pandas narrows each to int8 (a copy apiece).
    n = 1 << 18
    level = {"k": "pd.range", "start": 0, "stop": 1, "step": 1}
    mi = {"k": "pd.mi", "levels": [level], "codes": [{"k": "nd", "b": 0, "dt": "<i8", "sh": [n]}],
          "names": [{"k": "py", "v": None}]}
    few = forge({"tree": {"k": "list", "items": [mi] * 4}, "buffers": [[0, 8 * n]]}, bytes(8 * n))
    assert [len(x) for x in decode(few)] == [n] * 4
    many = forge({"tree": {"k": "list", "items": [mi] * 40}, "buffers": [[0, 8 * n]]}, bytes(8 * n))
    out, peak = peak_while(lambda: decode(many))
    assert isinstance(out, SegmentCorruptError), out
    assert "would allocate or scan more than" in str(out)
    assert peak < 4 * many.nbytes


# -- item 6: header strings never reach files ------------------------------------------


def _tzif(tmp_path: Path) -> Path:
    import tzdata

    src = Path(tzdata.__file__).parent / "zoneinfo" / "Europe" / "London"
    dst = tmp_path / "London"
    shutil.copyfile(src, dst)
    return dst


def _tz_nodes(tz: str) -> list[dict[str, Any]]:
    """Every header node that turns a tz string into a time zone, with buffers [8 bytes]."""
    ts = {"k": "pd.ts", "v": 0, "unit": "s", "tz": tz}
    column = {"k": "pd.dt", "v": {"k": "nd", "b": 0, "dt": "<M8[ns]", "sh": [1]}, "tz": tz}
    masked = {"k": "pd.masked", "dt": f"datetime64[ns, {tz}]",
              "v": {"k": "nd", "b": 0, "dt": "<i8", "sh": [1]}, "m": {"k": "nd", "b": 0, "dt": "|b1", "sh": [8]}}
    period = {"k": "pd.period", "dt": f"datetime64[ns, {tz}]", "v": {"k": "nd", "b": 0, "dt": "<i8", "sh": [1]}}
    return [ts, column, masked, period]


@pytest.mark.parametrize("which", ["pd.ts", "pd.dt"])
def test_a_header_cannot_make_the_reader_load_a_tz_file_by_path(tmp_path: Path, which: str) -> None:
    # r10: "dateutil/<path>" was handed to dateutil.tz.gettz, which loads any file
    # (here a valid tz file: the forged timestamp decoded with it).
    node = next(n for n in _tz_nodes(f"dateutil/{_tzif(tmp_path)}") if n["k"] == which)
    with pytest.raises(SegmentCorruptError, match="not a name from the tz database"):
        decode(forge({"tree": node, "buffers": [[0, 8]]}, bytes(8)))


def test_a_tz_naming_a_fifo_or_proc_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "tz"
    os.mkfifo(fifo)
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_security_codec import forge, decode, _tz_nodes
        from nocopy.errors import SegmentCorruptError
        for tz in ("dateutil/{fifo}", "dateutil//proc/self/mem", "dateutil/../../../../proc/self/mem"):
            for node in _tz_nodes(tz):
                try:
                    decode(forge({{"tree": node, "buffers": [[0, 8]]}}, bytes(8)))
                except SegmentCorruptError:
                    continue
                sys.exit(f"{{node['k']}} {{tz}} was not refused")
        print("ok")
    """)
    # The timeout only turns a hang (the reader blocked opening the FIFO) into a failure.
    try:
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("get() blocked opening a FIFO named by a segment's time zone")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5", "dateutil/Europe/London"])
def test_tz_database_names_still_round_trip(tz: str) -> None:
    s = pd.Series(pd.date_range("2024-03-30", periods=3, freq="D", tz=tz))
    out = decode(_planted(s)[0])
    pd.testing.assert_series_equal(out, s)
    ts = pd.Timestamp("2024-06-01 12:00", tz=tz)
    assert decode(_planted(ts)[0]) == ts


def test_nullable_and_period_dtypes_the_encoder_writes_still_round_trip() -> None:
    df = pd.DataFrame({
        **{d: pd.array([1, None, 3], dtype=d) for d in ("Int8", "UInt64", "Float32")},
        "boolean": pd.array([True, None, False], dtype="boolean"),
        "p": pd.period_range("2024-01", periods=3, freq="M"),
        "w": pd.period_range("2024-01-01", periods=3, freq="W-SUN"),
        "q": pd.period_range("2024Q1", periods=3, freq="Q-DEC"),
    })
    pd.testing.assert_frame_equal(decode(_planted(df)[0]), df)


# -- minor: categorical and MultiIndex codes -------------------------------------------


def test_multiindex_codes_out_of_range_are_refused_not_wrapped() -> None:
    # 256 narrowed to int8 by pandas wraps to 0, a valid code: checked before pandas sees it.
    for code in (256, 5, -2, 300):
        mi = {"k": "pd.mi", "levels": [{"k": "pd.range", "start": 0, "stop": 5, "step": 1}],
              "codes": [{"k": "nd", "b": 0, "dt": "<i8", "sh": [1]}], "names": [{"k": "py", "v": None}]}
        data = np.array([code], np.int64).tobytes()
        with pytest.raises(SegmentCorruptError, match=r"MultiIndex codes outside \[-1, 5\)"):
            decode(forge({"tree": mi, "buffers": [[0, 8]]}, data))


def test_categorical_codes_out_of_range_are_refused() -> None:
    cats = {"k": "pd.oidx", "v": ["a", "b"], "name": None}
    for code in (256, 2, -2):
        node = {"k": "pd.cat", "codes": {"k": "nd", "b": 0, "dt": "<i8", "sh": [1]}, "cats": cats, "ordered": False}
        with pytest.raises(SegmentCorruptError, match=r"categorical codes outside \[-1, 2\)"):
            decode(forge({"tree": node, "buffers": [[0, 8]]}, np.array([code], np.int64).tobytes()))


# -- helpers ---------------------------------------------------------------------------


def _planted(obj: Any) -> tuple[np.ndarray, Any]:
    p = plan(obj)
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    return mem, p


def _split(mem: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """The parsed JSON header and the data area of a layout."""
    _, _, _, hlen, _, payload, off = PREFIX.unpack_from(mem, 0)
    return json.loads(mem[PREFIX.size : PREFIX.size + hlen].tobytes()), mem[off:payload].tobytes()


# -- issue 10 prep: a bug in nocopy is not reported as a corrupt segment ----------------


@pytest.mark.parametrize("tree", [
    {"k": "py"},
    {"k": "bytes"},
    {"k": "list"},
    {"k": "dict", "keys": []},
    {"k": "nd", "b": 0, "sh": [8]},
    {"k": "nd", "b": 0, "dt": {"names": ["a"], "offsets": [0], "itemsize": 8}, "sh": [1]},
    {"k": "nd", "b": 0, "dt": {"names": ["a"], "formats": ["<f8"], "offsets": [0]}, "sh": [1]},
    {"k": "nd", "b": 0, "dt": {"base": "<f8"}, "sh": [1]},
    {"k": "pd.dt"},
    {"k": "pd.cat", "codes": {"k": "nd", "b": 0, "dt": "|i1", "sh": [8]}, "ordered": False},
    {"k": "pd.interval", "closed": "left"},
    {"k": "pd.series", "index": {"k": "pd.range", "start": 0, "stop": 1, "step": 1},
     "v": {"k": "nd", "b": 0, "dt": "<i8", "sh": [1]}},
    {"k": "pa.lstr", "chunks": [{"n": 0}]},
    {"k": "pa.ipc", "what": "table"},
])
def test_a_node_missing_a_field_is_refused_as_corrupt(tree: dict[str, Any]) -> None:
    with pytest.raises(SegmentCorruptError):
        decode(forge({"tree": tree, "buffers": [[0, 8]]}, bytes(8)))


@pytest.mark.parametrize("bug", [KeyError, IndexError, AttributeError])
def test_a_bug_in_a_decoder_propagates_with_its_traceback(monkeypatch: pytest.MonkeyPatch, bug: type) -> None:
    from nocopy._codec import _registry

    def broken(dec: Any, node: Any) -> Any:
        raise bug("a bug, not a corrupt segment")

    monkeypatch.setitem(_registry._DECODERS, "test.broken", broken)
    with pytest.raises(bug, match="a bug, not a corrupt segment"):
        decode(forge({"tree": {"k": "list", "items": [{"k": "test.broken"}]}, "buffers": []}))


def test_share_refuses_a_tz_readers_would_refuse(tmp_path: Path) -> None:
    import dateutil.tz

    tz = dateutil.tz.tzfile(str(_tzif(tmp_path)))
    for obj in (pd.Timestamp("2024-01-01", tz=tz), pd.Series(pd.date_range("2024-01-01", periods=2, tz=tz))):
        with pytest.raises(UnsupportedTypeError, match="by tz database name"):
            plan(obj)


def test_a_type_error_raised_by_nocopy_code_propagates_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._codec import _numpy, _registry

    # A decoder called with the wrong arguments: a bug in nocopy, raised where nocopy calls it.
    monkeypatch.setitem(_registry._DECODERS, "test.broken", _numpy.dtype_to_json)
    with pytest.raises(TypeError, match="positional argument"):
        decode(forge({"tree": {"k": "list", "items": [{"k": "test.broken"}]}, "buffers": []}))


@pytest.mark.parametrize("tree", [
    {"k": "dtype", "dt": "|S99999999999"},  # NumPy: TypeError, "not understood"
    {"k": "dtype", "dt": {"names": ["a"], "formats": ["<i8"], "offsets": [None]}},
    {"k": "dtype", "dt": {"names": ["a"], "formats": ["<i8"], "offsets": [0], "itemsize": [8]}},
    {"k": "dict", "keys": [{"k": "list", "items": []}], "vals": [{"k": "py", "v": 1}]},
    {"k": "pd.series", "name": {"k": "list", "items": []}, "index": {"k": "pd.range", "start": 0, "stop": 0, "step": 1, "name": None},
     "v": {"k": "nd", "b": 0, "dt": "<i8", "sh": [0]}},
    {"k": "pd.idx", "name": {"k": "dict", "keys": [], "vals": []}, "v": {"k": "nd", "b": 0, "dt": "<i8", "sh": [0]}},
    {"k": "pd.interval", "closed": "left",  # pandas refuses an interval of strings with a TypeError
     "left": {"k": "pd.oidx", "v": ["a"], "name": None}, "right": {"k": "pd.oidx", "v": ["b"], "name": None}},
    {"k": "pd.df", "index": {"k": ["not", "a", "kind"]}, "columns": {"k": "pd.oidx", "v": [], "name": None}, "cols": []},
])
def test_a_header_value_of_the_wrong_type_is_refused_as_corrupt(tree: dict[str, Any]) -> None:
    with pytest.raises(SegmentCorruptError):
        decode(forge({"tree": tree, "buffers": [[0, 0]]}))


# -- issue 20, root cause 3: decode cost bounded by the segment's size ---------------------


def _polars_column_segment(table: pa.Table) -> np.ndarray:
    stream = ipc_stream(table)
    tree = {"k": "pl.df", "cols": [{"k": "pl.col", "t": {"k": "pa.ipc", "what": "table", "b": 0}}], "rows": table.num_rows}
    return forge({"tree": tree, "buffers": [[0, len(stream)]]}, stream)


def test_n5_a_polars_column_of_a_dictionary_of_lists_is_refused_before_polars_expands_it() -> None:
    pytest.importorskip("polars")
    # Every row names the one 2,048-long list: Polars made each row a copy (1 GiB from 272 KiB).
    rows = 1 << 16
    values = pa.array([list(range(2048))], pa.list_(pa.int64()))
    arr = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), values)
    mem = _polars_column_segment(pa.table([arr], names=["c"]))
    out, peak = peak_while(lambda: decode(mem))
    assert isinstance(out, SegmentCorruptError), out
    assert "Polars writes dictionaries only of string_view values" in str(out)
    assert peak < 4 * mem.nbytes


@pytest.mark.parametrize("typ", [pa.large_string(), pa.string(), pa.int64(), pa.list_(pa.int8()), pa.run_end_encoded(pa.int32(), pa.int8())])
def test_a_polars_column_of_a_type_polars_never_exports_is_refused(typ: pa.DataType) -> None:
    pytest.importorskip("polars")
    values = pa.array([None], typ)
    mem = _polars_column_segment(pa.table([values], names=["c"]))
    if typ == pa.int64():
        assert decode(mem).shape == (1, 1)  # inside the allow-list
        return
    with pytest.raises(SegmentCorruptError, match="refused: column 'c' has type"):
        decode(mem)


def _range(n: int, start: int = 0) -> dict[str, Any]:
    return {"k": "pd.range", "start": start, "stop": start + n, "step": 1, "name": None}


@pytest.mark.parametrize("shape", ["interval", "multi"])
def test_n7_a_range_index_the_decoder_materialises_is_charged_first(shape: str) -> None:
    # A RangeIndex is three ints in the header; interval and MultiIndex decoders made
    # pandas turn it into arrays: a 263-byte header asked for 16 GiB.
    n = 1 << 34
    if shape == "interval":
        tree: dict[str, Any] = {"k": "pd.array", "v": {"k": "pd.interval", "left": _range(n), "right": _range(n, 1), "closed": "right"}}
    else:
        tree = {"k": "pd.mi", "levels": [_range(n)], "codes": [{"k": "nd", "b": 0, "dt": "|i1", "sh": [0]}],
                "names": [{"k": "py", "v": None}]}
    out, peak = peak_while(lambda: decode(forge({"tree": tree, "buffers": [[0, 0]]})))
    assert isinstance(out, SegmentCorruptError), out
    assert "would allocate or scan more than" in str(out)
    assert peak < 16 * MiB
    if shape == "multi":  # a small level (a few KiB of labels) still decodes: the budget has a floor
        tree["levels"] = [_range(100)]
        assert len(decode(forge({"tree": tree, "buffers": [[0, 0]]}))) == 0


def test_n6_string_views_sharing_their_bytes_validate_in_time_linear_in_the_segment() -> None:
    # 2^16 views of one 4 MiB string: Arrow's validate(full=True) read 256 GiB of UTF-8.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np, pyarrow as pa
        from test_security_codec import forge, decode, ipc_stream
        n, size = 1 << 16, 4 << 20
        views = np.zeros((n, 4), np.int32); views[:, 0] = size; views[:, 1] = int.from_bytes(b"xxxx", "little")
        arr = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views.tobytes()), pa.py_buffer(b"x" * size)])
        stream = ipc_stream(pa.table([arr], names=["c"]))
        mem = forge({{"tree": {{"k": "pa.ipc", "what": "table", "b": 0}}, "buffers": [[0, len(stream)]]}}, stream)
        t = time.process_time()
        out = decode(mem)
        assert out.num_rows == n and out.column(0)[n - 1].as_py() == "x" * size
        print(time.process_time() - t)
    """)
    try:
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("validating 2^16 views of one 4 MiB string ran over 60 s")
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) < 10


def _views_table(views: np.ndarray, data: bytes) -> pa.Table:
    arr = pa.Array.from_buffers(pa.string_view(), len(views), [None, pa.py_buffer(views.tobytes()), pa.py_buffer(data)])
    return pa.table([arr], names=["c"])


def _ipc_segment(table: pa.Table) -> np.ndarray:
    stream = ipc_stream(table)
    return forge({"tree": {"k": "pa.ipc", "what": "table", "b": 0}, "buffers": [[0, len(stream)]]}, stream)


def test_string_views_are_still_checked_for_utf8() -> None:
    data = "aé".encode() * 20 + b"\xff" * 16  # 60 bytes of UTF-8, then bytes that are not
    def view(off: int, n: int) -> list[int]:
        return [n, int(np.frombuffer(data[off : off + 4].ljust(4, b"\0"), np.int32)[0]), 0, off]
    good = np.array([view(0, 15), view(3, 21)], np.int32)
    assert decode(_ipc_segment(_views_table(good, data))).column(0).to_pylist() == [data[0:15].decode(), data[3:24].decode()]
    for bad in (view(2, 13),  # starts inside "é"
                view(0, 14),  # ends inside "é"
                view(50, 14)):  # runs into the bytes that are not UTF-8
        with pytest.raises(SegmentCorruptError, match="invalid Arrow IPC stream"):
            decode(_ipc_segment(_views_table(np.array([bad], np.int32), data)))
    inline = np.array([[2, int.from_bytes(b"\xff\xfe", "little"), 0, 0]], np.int32)
    with pytest.raises(SegmentCorruptError, match="invalid Arrow IPC stream"):
        decode(_ipc_segment(_views_table(inline, data)))


def test_an_arrow_dictionary_shared_by_many_batches_is_validated_once() -> None:
    # Arrow validates a dictionary again for every chunk using it: charged once here.
    dictionary = pa.array([f"word{i}" * 50 for i in range(20_000)], pa.string_view())
    batch = pa.record_batch([pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), dictionary)], names=["c"])
    table = pa.Table.from_batches([batch] * 500)
    out = decode(_ipc_segment(table))
    assert out.num_rows == 1000 and out.column(0).num_chunks == 500


def test_n17_dict_keys_whose_hashes_collide_are_charged_before_hashing() -> None:
    # Multiples of 2**61 - 1 all hash to 0: building the dict was quadratic (20,000 keys: 7 s).
    p = (1 << 61) - 1
    n = 20_000
    tree = {"k": "dict", "keys": [{"k": "py", "v": k * p} for k in range(1, n + 1)], "vals": [{"k": "py", "v": 0}] * n}
    mem = forge({"tree": tree, "buffers": []})
    import time

    t = time.process_time()
    with pytest.raises(SegmentCorruptError, match="dict keys whose hashes collide"):
        decode(mem)
    assert time.process_time() - t < 2
    tree["keys"] = [{"k": "py", "v": k} for k in range(1, n + 1)]
    assert len(decode(forge({"tree": tree, "buffers": []}))) == n
    assert decode(_planted({-1: "a", -2: "b"})[0]) == {-1: "a", -2: "b"}  # hash(-1) == hash(-2): fine


def test_index_labels_whose_hashes_collide_are_charged_before_pandas_hashes_them() -> None:
    p = (1 << 61) - 1
    n = 20_000
    cats = {"k": "pd.oidx", "v": [k * p for k in range(1, n + 1)], "name": None}
    node = {"k": "pd.cat", "codes": {"k": "nd", "b": 0, "dt": "<i8", "sh": [1]}, "cats": cats, "ordered": False}
    with pytest.raises(SegmentCorruptError, match="labels whose hashes collide"):
        decode(forge({"tree": node, "buffers": [[0, 8]]}, bytes(8)))


def test_honest_views_into_shared_bytes_still_decode_in_place() -> None:
    # Polars' gather() makes many views of the same bytes: honest, and within the budget
    # (each byte validated once), though Arrow's own full validation reads 100 MB here.
    pl = pytest.importorskip("polars")
    df = pl.DataFrame({"s": pl.Series(["é" * 500]).gather([0] * 100_000), "c": pl.Series(["a", "b"] * 50_000, dtype=pl.Categorical)})
    mem = _planted(df)[0]
    assert mem.nbytes < 4 * MiB
    out = decode(mem)
    assert out.equals(df)
