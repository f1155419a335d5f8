"""nocopy.ray: put/get through Ray's object store, zero-copy inside tasks.

Runs on one local Ray instance (2 CPUs) shared by the session (``ray_cluster``).
"Zero-copy" is checked two ways: every array's data pointer lies in the
mapping of Ray's object store (the plasma file), and a task's USS does not
grow by the data's size -- while plain ``ray.get`` of the same data does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conftest import run_python

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

import nocopy.ray as nray  # noqa: E402
from nocopy.errors import SegmentCorruptError, UnsupportedTypeError  # noqa: E402

# Ray workers cannot import tests/ by module name: ship this module's
# functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


pytestmark = pytest.mark.usefixtures("ray_cluster")


# -- helpers (also run inside tasks) -----------------------------------------
def object_store_mapping(arr: np.ndarray) -> str | None:
    """The path of this process's mapping that holds arr's first byte."""
    addr = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    return None


def in_object_store(arr: np.ndarray) -> bool:
    path = object_store_mapping(arr)
    return path is not None and "plasma" in path


def leaves(obj: Any) -> list[np.ndarray]:
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in leaves(v)]
    if isinstance(obj, list | tuple):
        return [a for v in obj for a in leaves(v)]
    if isinstance(obj, np.ndarray):
        return [obj]
    return []


def uss() -> int:
    return int(psutil.Process().memory_full_info().uss)


def assert_same(got: Any, want: Any) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, list | tuple):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, np.ndarray):
        assert type(got) is type(want)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    else:
        assert got == want


@ray.remote
def inspect_in_task(ref: Any) -> tuple[Any, list[tuple[bool, bool]]]:
    """Decode in the task; report (read-only, in the object store) per array."""
    obj = nray.get(ref)
    report = [(not a.flags.writeable, in_object_store(a)) for a in leaves(obj) if a.nbytes]
    return obj, report


# -- the numpy matrix, large enough to live in the shared store (>100 KiB) ----
N = 50_000
rng = np.random.default_rng(7)
rec_dtype = np.dtype([("t", "M8[ns]"), ("x", "f8"), ("s", "S5")])
records = np.rec.fromarrays(
    [np.arange(N).astype("M8[s]").astype("M8[ns]"), rng.random(N), np.full(N, b"abcde")],
    dtype=rec_dtype,
)
NUMPY_CASES: dict[str, Any] = {
    "int64": np.arange(N, dtype=np.int64),
    "uint8-2d": rng.integers(0, 255, (N, 7), dtype=np.uint8),
    "float32-fortran": np.asfortranarray(rng.random((N // 10, 10), dtype=np.float32)),
    "complex128": rng.random(N) + 1j * rng.random(N),
    "bool": rng.random(N) > 0.5,
    "datetime64": np.arange(N).astype("M8[ms]"),
    "timedelta64": np.arange(N).astype("m8[us]"),
    "unicode": np.array([f"row{i}" for i in range(N)]),
    "structured": np.zeros(N, dtype=rec_dtype),
    "recarray": records,
    "non-contiguous": np.arange(3 * N, dtype=np.float64)[::3],
    "nested": {
        "a": np.arange(N),
        "pair": (np.zeros(0, dtype="f4"), np.array(3.5)),
        "list": [np.arange(10, dtype=np.int8), records[:100]],
    },
}


@pytest.mark.parametrize("case", list(NUMPY_CASES))
def test_numpy_matrix_round_trips_zero_copy_through_a_task(case: str) -> None:
    obj = NUMPY_CASES[case]
    ref = nray.put(obj)
    got, report = ray.get(inspect_in_task.remote(ref))
    assert_same(got, obj)
    assert report, "no arrays decoded"
    assert all(read_only for read_only, _ in report), report
    assert all(in_store for _, in_store in report), f"{case}: not all views in the object store"


def test_driver_get_is_read_only_view_into_the_object_store() -> None:
    ref = nray.put(records)
    assert ref.kind == "recarray" and ref.nbytes == records.nbytes and ref.size > ref.nbytes
    view = ref.get()
    assert type(view) is np.recarray
    assert in_object_store(view)
    assert not in_object_store(records)  # the check tells heap memory apart
    with pytest.raises(ValueError, match="read-only"):
        view["x"][0] = 1.0
    np.testing.assert_array_equal(nray.get(ref), records)


def test_small_objects_are_read_only_too() -> None:
    # Ray keeps small objects in its in-process store, handing back writable copies.
    view = nray.get(nray.put(np.arange(3)))
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1


@ray.remote
def kinds_seen(top: Any, nested: list[Any]) -> tuple[str, str, int, int]:
    a, b = nray.get(top), nray.get(nested[0])
    return type(top).__name__, type(nested[0]).__name__, int(a.sum()), int(b.sum())


def test_get_accepts_ref_object_ref_and_resolved_buffer() -> None:
    data = np.arange(100_000)
    ref = nray.put(data)
    want = int(data.sum())
    # A Ref arrives as itself, at top level or nested.
    assert ray.get(kinds_seen.remote(ref, [ref])) == ("Ref", "Ref", want, want)
    # A top-level ObjectRef is resolved by Ray into the object's buffers; nested ones are not.
    assert ray.get(kinds_seen.remote(ref.object_ref, [ref.object_ref])) == (
        "_Layout", "ObjectRef", want, want,
    )


@ray.remote
def sums_of_list(refs: list[Any]) -> list[int]:
    return [int(x.sum()) for x in nray.get(refs)]


def test_get_takes_a_list_as_ray_get_does() -> None:
    a, b = np.arange(200_000), np.arange(100_000, dtype="f8")
    ra, rb = nray.put(a), nray.put(b)
    got = nray.get([ra, rb.object_ref, ra], timeout=120)
    assert isinstance(got, list) and len(got) == 3
    for x, want in zip(got, (a, b, a), strict=True):
        np.testing.assert_array_equal(x, want)
        assert in_object_store(x)
    assert nray.get([]) == []
    assert ray.get(sums_of_list.remote([ra, rb])) == [int(a.sum()), int(b.sum())]  # in a task too
    with pytest.raises(TypeError, match=r"or a list of them\), not int"):
        nray.get([ra, 42])


def test_ray_backend_splits_plain_items_too() -> None:
    import nocopy

    assert nocopy.parallel_map(sum, list(range(10)), chunksize=4, backend="ray") == [6, 22, 17]
    assert nocopy.parallel_map(len, (i for i in range(7)), chunks=2, backend="ray") == [3, 4]


def test_plain_ray_get_of_a_ref_says_to_use_nocopy_ray_get() -> None:
    ref = nray.put(np.arange(10))
    with pytest.raises(ValueError, match=r"nocopy\.ray\.Ref: read it with nocopy\.ray\.get\(ref\)"):
        ray.get(ref)
    with pytest.raises(TypeError, match=r"nocopy\.ray\.Ref: read it with nocopy\.ray\.get\(ref\)"):
        ray.get([ref, ref])
    assert repr(ref) == f"<nocopy.ray.Ref ndarray int64 (10,) 80 B at ray:{ref.object_ref.hex()}>"  # stays short


@ray.remote
def put_in_task(n: int) -> Any:
    return nray.put({"t": np.arange(n).astype("M8[s]")})


def test_put_inside_a_task_get_in_the_driver() -> None:
    ref = ray.get(put_in_task.remote(200_000))
    got = nray.get(ref)
    np.testing.assert_array_equal(got["t"], np.arange(200_000).astype("M8[s]"))
    assert in_object_store(got["t"])


def test_ref_survives_the_driver_dropping_it_while_a_task_borrows_it() -> None:
    ref = nray.put(np.arange(300_000))
    pending = inspect_in_task.remote(ref)
    del ref
    got, _ = ray.get(pending)
    assert int(got.sum()) == int(np.arange(300_000).sum())


def test_get_of_a_plain_ray_object_is_a_clear_error() -> None:
    with pytest.raises(SegmentCorruptError, match=r"not made by nocopy\.ray\.put"):
        nray.get(ray.put({"a": 1}))
    with pytest.raises(SegmentCorruptError, match=r"ndarray of dtype uint8 without nocopy's magic bytes"):
        nray.get(ray.put(np.zeros(200_000, dtype=np.uint8)))
    with pytest.raises(TypeError, match=r"nocopy\.ray\.Ref"):
        nray.get(42)  # type: ignore[call-overload]


def test_unsupported_data_fails_before_anything_is_put_unless_allow_pickle() -> None:
    bad = {"ok": np.arange(3), "bad": np.array([{"x": 1}, None], dtype=object)}
    with pytest.raises(UnsupportedTypeError, match="allow_pickle"):
        nray.put(bad)
    ref = nray.put(bad, allow_pickle=True)
    assert ref.pickled
    got, _ = ray.get(inspect_in_task.remote(ref))
    assert list(got["bad"]) == [{"x": 1}, None]


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/self/status")


def test_put_makes_no_temporary_copy_in_the_caller() -> None:
    pd = pytest.importorskip("pandas")
    n = 6_000_000  # 6M rows x (datetime, float, int): 144 MB
    df = pd.DataFrame({
        "t": np.arange(n).astype("M8[s]").astype("M8[ns]"),
        "x": np.random.default_rng(1).random(n),
        "i": np.arange(n, dtype=np.int64),
    })
    nbytes = int(df.memory_usage(index=False).sum())
    # Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    ref = nray.put(df)
    growth = (_status_kib("VmHWM") - before) * 1024
    # The driver writes the object-store pages itself, so they count once
    # (nbytes); a temporary layout of the frame would add a second nbytes.
    assert growth < 1.4 * nbytes, f"peak RSS grew by {growth} bytes putting {nbytes}"
    got = nray.get(ref)
    pd.testing.assert_frame_equal(got, df)
    assert all(in_object_store(got[c].to_numpy()) for c in ("x", "i"))


def test_unsupported_data_puts_nothing() -> None:
    with pytest.raises(UnsupportedTypeError):
        nray.put({"ok": records, "bad": np.array([object()], dtype=object)})
    np.testing.assert_array_equal(nray.get(nray.put(records)), records)


def test_put_of_a_shared_puts_what_it_holds() -> None:
    import nocopy

    data = np.arange(200_000).astype("M8[s]")
    with nocopy.share(data) as shared:
        ref = nray.put(shared)
    assert ref.kind == "ndarray"
    got, report = ray.get(inspect_in_task.remote(ref))
    np.testing.assert_array_equal(got, data)
    assert report == [(True, True)]


def test_ref_repr_names_kind_shape_and_size() -> None:
    ref = nray.put(np.zeros(1000))
    assert repr(ref) == f"<nocopy.ray.Ref ndarray float64 (1000,) 7.8 KiB at ray:{ref.object_ref.hex()}>"


# -- imports ------------------------------------------------------------------
def test_import_nocopy_does_not_import_ray() -> None:
    out = run_python("import sys, nocopy; print('ray' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_import_nocopy_ray_without_ray_names_the_extra() -> None:
    out = run_python(
        """
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        try:
            import nocopy.ray
        except ImportError as exc:
            print(exc)
        """
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'nocopy[ray]'" in out.stdout


# -- memory: views vs plain ray.get copies ------------------------------------
@ray.remote
def uss_growth(ref: list[Any], use_nocopy: bool) -> dict[str, Any]:
    """Read every value of the object in a task; return how much the task's USS grew."""
    import pandas  # noqa: F401 -- imports are not data: keep them out of the measurement
    import pyarrow

    before = uss()
    obj = nray.get(ref[0]) if use_nocopy else ray.get(ref[0])
    checksum = 0
    views: list[np.ndarray] = []
    if isinstance(obj, np.ndarray):
        for name in obj.dtype.names or ():
            checksum += int(obj[name].view(np.uint64).sum(dtype=np.uint64))
        views.append(obj)
    else:  # DataFrame: datetime / float values, string lengths
        for name in obj.columns:
            col = obj[name]
            if col.dtype.kind in "Mf":
                checksum += int(col.to_numpy().view(np.uint64).sum(dtype=np.uint64))
            else:
                checksum += int(col.str.len().sum())
            views.extend(_frame_column_buffers(col))
        if use_nocopy:
            # Touch every byte the frame is made of, string characters included.
            checksum += 0 * sum(int(v.view(np.uint8).sum(dtype=np.uint64)) for v in views)
    # Arrow's allocator keeps freed temporaries (str.len's results) cached: they
    # are not data copies, give them back before measuring.
    pyarrow.default_memory_pool().release_unused()
    grown = uss() - before
    return {
        "grown": grown,
        "checksum": checksum,
        "read_only_in_store": [(not v.flags.writeable, in_object_store(v)) for v in views],
    }


def _frame_column_buffers(col: Any) -> list[np.ndarray]:
    """numpy views over the data buffers behind a pandas column (not its labels)."""
    values = col.array if hasattr(col, "array") else col
    if hasattr(values, "_pa_array"):  # Arrow-backed: str, string[pyarrow], ArrowDtype
        return [
            np.frombuffer(buf, dtype=np.uint8)
            for chunk in values._pa_array.chunks
            for buf in chunk.buffers()
            if buf is not None and buf.size
        ]
    if hasattr(values, "codes") and hasattr(values, "categories"):  # categories may be inline
        return [np.asarray(values.codes)]
    if hasattr(values, "_mask"):  # nullable Int64 / Float64 / boolean
        return [values._data, values._mask]
    if hasattr(values, "_ndarray"):  # numpy, datetime, timedelta, period
        return [values._ndarray]
    if hasattr(values, "left"):  # interval
        return _frame_column_buffers(values.left) + _frame_column_buffers(values.right)
    return [np.asarray(values)]


def task_uss_growth(make: Callable[[], Any], what: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """How much a task's USS grows reading ``make()`` through nocopy.ray.get, then plain ray.get.

    Returns (ours, theirs, the data bytes nocopy stored). The data is built
    here and dropped as soon as it is in the store: one object in the store at
    a time, because Ray's store keeps its high-water mark until shutdown.
    """
    data = make()
    ref = nray.put(data)
    size = ref.nbytes
    ours = ray.get(uss_growth.remote([ref], True))
    del ref
    plain = ray.put(data)
    del data
    theirs = ray.get(uss_growth.remote([plain], False))
    del plain
    print(f"task USS growth, {size >> 20} MiB {what}: nocopy.ray.get {ours['grown'] >> 20} MiB, "
          f"ray.get {theirs['grown'] >> 20} MiB")
    return ours, theirs, size


big_dtype = np.dtype([("t", "M8[ns]"), ("x", "f8"), ("s", "S8")])


def big_records(nbytes: int) -> np.recarray:
    n = nbytes // big_dtype.itemsize
    out = np.recarray(n, dtype=big_dtype)
    out["t"] = np.arange(n).astype("M8[s]")
    out["x"] = 1.5
    out["s"] = b"hello"
    return out


@pytest.mark.slow
def test_task_reads_500mb_records_without_copying_where_plain_ray_get_copies() -> None:
    ours, theirs, size = task_uss_growth(lambda: big_records(500 << 20), "records")
    assert ours["checksum"] == theirs["checksum"]
    assert all(ro and inside for ro, inside in ours["read_only_in_store"])
    assert ours["grown"] < 0.10 * size, f"nocopy grew USS by {ours['grown'] / size:.0%} of the data"
    # The contrast: Ray pickles a recarray in-band, so every task gets a full copy.
    assert theirs["grown"] > 0.80 * size, f"plain ray.get grew USS by only {theirs['grown'] / size:.0%}"


# -- pandas ------------------------------------------------------------------------


def dtype_matrix_frame(n: int = 20_000) -> Any:
    """One column per row of DESIGN.md's zero-copy matrix (n rows: the frame lives in the store)."""
    import pandas as pd
    import pyarrow as pa

    idx = np.arange(n)
    return pd.DataFrame(
        {
            "i8": idx.astype("i8"),
            "u2": (idx % 60_000).astype("u2"),
            "f4": idx.astype("f4") / 3,
            "f8_nan": np.where(idx % 7 == 0, np.nan, idx / 7),
            "c16": idx + 1j,
            "bool": idx % 2 == 0,
            "dt_naive": pd.date_range("2020-01-01", periods=n, freq="s"),
            "dt_ms": pd.date_range("2020-01-01", periods=n, freq="ms").as_unit("ms"),
            "dt_tz": pd.date_range("2020-01-01", periods=n, freq="min", tz="Europe/Paris"),
            "td": pd.to_timedelta(idx, unit="ms"),
            "Int64": pd.array(np.where(idx % 5 == 0, None, idx), dtype="Int64"),
            "Float64": pd.array(np.where(idx % 5 == 1, None, idx / 2), dtype="Float64"),
            "boolean": pd.array(np.where(idx % 3 == 0, None, idx % 2 == 0), dtype="boolean"),
            "category": pd.Categorical.from_codes(idx % 3, ["a", "b", "c"]),
            "obj_str": pd.Series([f"s{i}" if i % 13 else None for i in idx], dtype=object),
            "str": pd.Series([f"x{i % 100}" if i % 11 else None for i in idx], dtype="str"),
            "pa_str": pd.Series([f"p{i}" for i in idx], dtype="string[pyarrow]"),
            "arrow_i32": pd.Series(idx.astype("i4"), dtype=pd.ArrowDtype(pa.int32())),
            "period": pd.period_range("2000-01", periods=n, freq="M"),
        },
        index=pd.RangeIndex(5, 5 + n, name="row"),
    )


def as_documented(df: Any) -> Any:
    """What get() promises for *df*: object columns of str come back as pandas ``str``."""
    return df.astype({c: "str" for c in df.columns if df[c].dtype == object})


@ray.remote
def frame_in_task(ref: Any) -> tuple[Any, list[str]]:
    """Decode in the task; name the columns whose buffers are not read-only store views."""
    frame = nray.get(ref)

    def store_views(values: Any) -> bool:
        buffers = [buf for buf in _frame_column_buffers(values) if buf.nbytes]
        return bool(buffers) and all(not b.flags.writeable and in_object_store(b) for b in buffers)

    copied = [str(name) for name in frame.columns if not store_views(frame[name])]
    index = frame.index
    if type(index).__name__ not in ("RangeIndex", "MultiIndex") and not store_views(index):
        copied.append("<index>")
    return frame, copied


def index_frames() -> dict[str, Any]:
    import pandas as pd

    n = 10_000
    return {
        "matrix": dtype_matrix_frame(),
        "datetime-index": pd.DataFrame(
            {"x": np.arange(n, dtype="f8")},
            index=pd.date_range("2021-03-01", periods=n, freq="h", tz="UTC", name="when"),
        ),
        "multiindex": pd.DataFrame(
            {"v": np.arange(n)},
            index=pd.MultiIndex.from_arrays([idx_a := np.arange(n) % 10, idx_a * 2], names=["a", "b"]),
        ),
    }


@pytest.mark.parametrize("case", ["matrix", "datetime-index", "multiindex"])
def test_dataframe_dtype_matrix_round_trips_through_ray_tasks(case: str) -> None:
    import pandas as pd

    df = index_frames()[case]
    got, copied = ray.get(frame_in_task.remote(nray.put(df)))
    pd.testing.assert_frame_equal(got, as_documented(df))
    assert copied == [], f"columns not read from the object store in the task: {copied}"


def big_frame(nbytes: int) -> Any:
    import pandas as pd

    # datetime (8 B) + float (8 B) + strings of 8 chars (8 B data + 8 B offset)
    n = nbytes // 32
    words = np.array([f"w{i:07d}" for i in range(1000)], dtype=object)
    return pd.DataFrame(
        {
            "t": pd.date_range("2000-01-01", periods=n, freq="s"),
            "x": np.ones(n),
            "s": pd.Series(words[np.arange(n) % 1000], dtype=object),
        }
    )


@pytest.mark.slow
def test_task_reads_500mb_frame_datetime_and_strings_without_copying() -> None:
    ours, theirs, size = task_uss_growth(lambda: big_frame(500 << 20), "frame")
    assert ours["checksum"] == theirs["checksum"]
    assert ours["read_only_in_store"] and all(ro and inside for ro, inside in ours["read_only_in_store"])
    assert ours["grown"] < 0.10 * size, f"nocopy grew USS by {ours['grown'] / size:.0%} of the frame"
    # Plain ray.get copies the datetime column and unpickles every object string.
    assert theirs["grown"] > 0.30 * size, f"plain ray.get grew USS by only {theirs['grown'] / size:.0%}"


# -- where parallel_map(backend="ray") runs ----------------------------------------
MAP_ON_RAY = """
import logging, numpy as np, ray, nocopy
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
print(nocopy.parallel_map(len, np.arange(40), chunks=4, workers=2, backend="ray"))
print(ray.get_runtime_context().get_node_id())
"""


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.slow
def test_without_a_cluster_ray_backend_starts_a_local_instance_and_says_so() -> None:
    out = run_python(MAP_ON_RAY, env=_env(RAY_ADDRESS=None), timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "[10, 10, 10, 10]"
    assert "nocopy.ray: no Ray cluster" in out.stderr
    assert "started a local Ray instance with 2 CPUs" in out.stderr
    # its own instance, not the session's
    assert lines[1] != ray.get_runtime_context().get_node_id()


@pytest.mark.slow
def test_with_ray_address_the_ray_backend_joins_that_cluster() -> None:
    address = ray.get_runtime_context().gcs_address
    out = run_python(MAP_ON_RAY, env=_env(RAY_ADDRESS=address), timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "[10, 10, 10, 10]"
    assert f"connected to the Ray cluster at RAY_ADDRESS={address}" in out.stderr
    assert "started a local Ray instance" not in out.stderr
    assert lines[1] == ray.get_runtime_context().get_node_id()


INTERRUPTED_MAP = """
import os, sys, time
import numpy as np, nocopy

WHERE = sys.argv[1]  # read here: in a Ray worker sys.argv is the worker's

def slow(rows):
    open(os.path.join(WHERE, str(os.getpid())), "w").close()
    time.sleep(120)
    return len(rows)

try:
    nocopy.parallel_map(slow, np.arange(1000.0), chunks=8, workers=2, backend="ray")
except KeyboardInterrupt:
    print("interrupted", flush=True)
sys.stdin.readline()  # stay connected until the test has looked at the workers
"""


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_ctrl_c_stops_the_ray_tasks_of_the_call(procs: Any, tmp_path: Any) -> None:
    import signal
    import subprocess
    import time

    env = _env(RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    p = procs.python(INTERRUPTED_MAP, str(tmp_path), env=env, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(os.listdir(tmp_path)) < 2:  # both CPUs busy with a chunk
        assert p.poll() is None, p.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the chunks never started"
        time.sleep(0.1)
    workers = [int(name) for name in os.listdir(tmp_path)]
    p.send_signal(signal.SIGINT)
    assert p.stdout.readline().decode().strip() == "interrupted"
    deadline = time.monotonic() + 60
    while not all(_gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "Ray workers still run the interrupted chunks"
        time.sleep(0.2)
    assert p.poll() is None  # the driver is alive: abort() stopped them, not its exit
    p.stdin.write(b"\n")
    p.stdin.flush()
    assert p.wait(timeout=60) == 0


TWO_NODES = """
import json, os, sys
import numpy as np, ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
import nocopy.ray as nray

def mapping(arr):
    addr = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            f = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if lo <= addr < hi:
                return f[5].strip() if len(f) > 5 else ""

@ray.remote
def where(ref):
    obj = nray.get(ref)
    return {"node": ray.get_runtime_context().get_node_id(),
            "maps": [mapping(a) for a in (obj["t"], obj["r"])],
            "writable": [bool(a.flags.writeable) for a in (obj["t"], obj["r"])],
            "last": [str(obj["t"][-1]), str(obj["r"]["t"][-1]), type(obj["r"]).__name__]}

store = {"object_store_memory": 200 << 20}
cluster = Cluster(initialize_head=True,
                  head_node_args={"num_cpus": 1, "include_dashboard": False, **store})
try:
    cluster.add_node(num_cpus=1, **store)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    n = 1_000_000
    ref = nray.put({"t": np.arange(n).astype("M8[s]"),
                    "r": np.rec.fromarrays([np.arange(n).astype("M8[ms]")], names="t")})
    print(json.dumps({"driver": ray.get_runtime_context().get_node_id(),
                      "driver_map": mapping(nray.get(ref)["t"])}))
    for node in ray.nodes():
        pinned = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        print(json.dumps(ray.get(where.options(scheduling_strategy=pinned).remote(ref))))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_zero_copy_on_every_node_of_a_two_node_cluster() -> None:
    """Two raylets on this machine, each with its own object store: a task on
    the second node reads views into *its* node's store, not the driver's."""
    import json

    out = run_python(TWO_NODES, env=_env(RAY_ADDRESS=None), timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    first, *tasks = (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))
    assert len(tasks) == 2 and len({t["node"] for t in tasks}) == 2
    for task in tasks:
        assert all("plasma" in m for m in task["maps"]), task
        assert task["writable"] == [False, False]
        assert task["last"] == ["1970-01-12T13:46:39", "1970-01-01T00:16:39.999", "recarray"]
        same_node = task["node"] == first["driver"]
        assert all((m == first["driver_map"]) == same_node for m in task["maps"]), task
