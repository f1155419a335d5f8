"""PyTorch CPU tensors as a data kind: every dtype, shape and strides; copy-on-write on get().

Skipped where torch is not installed (the extra ``nocopy[torch]``; no wheel for
every Python this machine has).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nocopy
from conftest import segment_of
from nocopy._codec import decode_buffer, plan
from nocopy._pool._threads import THREAD_VARS
from nocopy.errors import SegmentCorruptError, UnsupportedTypeError

torch = pytest.importorskip("torch")
from nocopy._codec import _torch  # noqa: E402 - needs torch

METHODS = ["spawn", "forkserver", "fork"]
SRC = Path(__file__).resolve().parent.parent / "src"
MiB = 1 << 20
DTYPES = sorted(_torch._DTYPES.values(), key=str)
_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: Any) -> Any:
    """*t*'s elements as integers of the same size (any dtype, any strides), contiguous."""
    if t.element_size() == 16:  # complex128: two float64 each
        t = torch.view_as_real(t)
    return t.view(_SAME_SIZE_INT[t.element_size()]).contiguous()


def same(got: Any, want: Any) -> None:
    assert type(got) is torch.Tensor
    assert (got.dtype, got.shape, got.requires_grad) == (want.dtype, want.shape, want.requires_grad)
    assert torch.equal(bits(got), bits(want))


def segment_of_tensor(t: Any) -> str | None:
    return segment_of(types.SimpleNamespace(__array_interface__={"data": (t.data_ptr(), False)}))


def random_tensor(dtype: Any, shape: tuple[int, ...], seed: int) -> Any:
    # Never torch.empty(dtype=...): torch warns at every complex32 allocation.
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    if dtype == torch.bool:
        raw %= 2
    flat = torch.from_numpy(raw) if n else torch.empty(0, dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


# -- round trip -------------------------------------------------------------------------------
VIEWS = ["as is", "transposed", "step slice", "expanded", "narrowed"]


def _view(t: Any, how: str) -> Any:
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1)
    if how == "step slice" and t.dim() >= 1:
        return t[::2]
    if how == "expanded" and t.dim() >= 1 and t.shape[0] >= 1:
        return t[:1].expand(3, *t.shape[1:])
    if how == "narrowed" and t.dim() >= 1 and t.shape[0] >= 2:
        return t[1:]
    return t


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
    how=st.sampled_from(VIEWS),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_every_dtype_shape_and_strides(dtype: Any, shape: tuple[int, ...], how: str, seed: int) -> None:
    t = _view(random_tensor(dtype, shape, seed), how)
    with nocopy.share(t) as ref:
        for private in (False, True):
            got = ref.get(private=private)
            same(got, t)
            if how != "step slice" or t.dim() == 0:  # a view with gaps is stored dense
                assert got.stride() == t.stride()
            if t.numel():
                assert segment_of_tensor(got) == ref.name.removeprefix("nocopy-")


def test_every_dtype_torch_has_is_shared_or_refused_clearly() -> None:
    every = {v for v in vars(torch).values() if isinstance(v, torch.dtype)}
    assert set(DTYPES) == every - _torch._QUANTIZED
    for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "complex32", "complex128", "bool", "uint64"):
        assert getattr(torch, name) in DTYPES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors
        q = torch.quantize_per_tensor(torch.ones(4), 0.5, 0, torch.qint8)
    with pytest.raises(UnsupportedTypeError, match="quantized tensor"):
        nocopy.share(q)


def test_strides_of_permuted_and_channels_last_tensors_are_kept() -> None:
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    for v in (t.permute(2, 0, 3, 1), t.to(memory_format=torch.channels_last), t[:, :1].expand(2, 7, 4, 5)):
        with nocopy.share(v) as ref:
            got = ref.get()
            same(got, v)
            assert got.stride() == v.stride()
    gapped = t[:, ::2, :, 1::2].transpose(0, 3)
    with nocopy.share(gapped) as ref:
        got = ref.get()
        same(got, gapped)
        assert got.is_contiguous() is False  # dense, in the same dimension order
        assert ref.nbytes < 2 * gapped.numel() * 4  # not the memory it skipped
    expanded = torch.ones(1000, 1).expand(1000, 10_000)
    with nocopy.share(expanded) as ref:
        assert ref.nbytes == 1000 * 4  # what it covers, not 10 M elements
        same(ref.get(), expanded)


def test_tensors_inside_dicts_and_lists_with_arrays() -> None:
    batch = {"x": torch.randn(8, 3), "y": [torch.arange(8), np.arange(8.0)], "name": "b0"}
    with nocopy.share(batch) as ref:
        got = ref.get()
        same(got["x"], batch["x"])
        same(got["y"][0], batch["y"][0])
        np.testing.assert_array_equal(got["y"][1], batch["y"][1])
        assert not got["y"][1].flags.writeable  # arrays stay read-only by default
        assert got["name"] == "b0"
        notes = {n.path: n for n in nocopy.explain(batch)}
        assert notes["['x']"].status == "zero-copy" and notes["['x']"].dtype == "torch.float32"


def test_requires_grad_leaf_kept_and_graphs_refused() -> None:
    leaf = torch.ones(3, requires_grad=True)
    with nocopy.share(leaf) as ref:
        got = ref.get()
        assert got.requires_grad and got.is_leaf
        (got * 2).sum().backward()
        assert got.grad is not None and got.grad.tolist() == [2.0] * 3
        assert leaf.grad is None
    with pytest.raises(UnsupportedTypeError, match=r"not a leaf.*detach\(\)"):
        nocopy.share(leaf * 2)
    with nocopy.share(torch.ones(2)) as ref:
        assert ref.get().requires_grad is False


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.ones(3, device="meta"), r"device meta.*tensor\.cpu\(\)"),
        (lambda: torch.eye(3).to_sparse(), r"sparse_coo tensor.*to_dense\(\)"),
        (lambda: torch.eye(3).to_sparse_csr(), r"sparse_csr tensor"),
        (lambda: torch.nn.Parameter(torch.ones(2)), r"tensor subclass Parameter.*plain tensor"),
        (lambda: {"model": torch.nn.Linear(2, 2)}, r"objects of type torch\.nn\.modules\.linear\.Linear at \['model'\]"),
    ],
    ids=["meta", "sparse", "sparse_csr", "Parameter", "Module"],
)
def test_what_is_not_a_plain_cpu_tensor_is_refused_clearly(make: Any, match: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "Sparse CSR tensor support is in beta state"
        obj = make()
    with pytest.raises(UnsupportedTypeError, match=match):
        nocopy.share(obj)
    assert nocopy._kinds.data_nbytes(obj) is None  # the pool passes such arguments on as they are


def test_conjugate_and_negative_views_are_stored_resolved() -> None:
    z = torch.tensor([1 + 2j, 3 - 4j])
    for v in (z.conj(), torch.ops.aten._neg_view(z)):
        with nocopy.share(v) as ref:
            got = ref.get()
            assert torch.equal(got, v.resolve_conj().resolve_neg())


# -- copy-on-write --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_get_is_copy_on_write_by_default_and_no_warning(backend: str, shm: Any) -> None:
    t = torch.arange(6, dtype=torch.float32)
    with nocopy.share(t, backend=backend) as ref, warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning would fail here
        a, b = ref.get(), ref.get(private=False)
        a[0] = 100.0
        b.add_(1)
        assert a.tolist() == [100.0, 1, 2, 3, 4, 5]
        assert b.tolist() == [1.0, 2, 3, 4, 5, 6]  # each get() its own private pages
        assert ref.get().tolist() == [0.0, 1, 2, 3, 4, 5]
        c = ref.get(private=True)
        c.mul_(2)
        assert ref.get().tolist() == [0.0, 1, 2, 3, 4, 5]
    assert t.tolist() == [0.0, 1, 2, 3, 4, 5]


def test_a_tensor_outlives_close_of_its_handle() -> None:
    ref = nocopy.share(torch.arange(1000))
    got = ref.get()
    ref.close()
    got[0] = 7
    assert int(got.sum()) == sum(range(1000)) + 7


def test_read_only_memory_gives_a_private_copy() -> None:
    # A layout held in read-only memory that cannot be mapped again (Ray's store):
    # the tensor is copied once, never a tensor over read-only pages.
    p = plan({"t": torch.arange(4.0)})
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    mem.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decode_buffer(mem, trusted=True)["t"]
    got[0] = 9.0
    assert got.tolist() == [9.0, 1.0, 2.0, 3.0]
    assert not np.shares_memory(np.frombuffer(mem, np.uint8), got.numpy())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dt": "qint8"}, "unknown tensor dtype"),
        ({"dt": "__class__"}, "unknown tensor dtype"),
        ({"sh": [5]}, "covering 5 elements"),
        ({"st": [1, 1]}, "bad tensor of shape"),
        ({"st": [-1]}, "bad tensor strides"),
        ({"sh": [1 << 61, 4]}, "bad tensor of shape"),
        ({"rg": 1}, "bad tensor of shape"),
        ({"dt": "int64", "rg": True}, "cannot require grad"),
    ],
)
def test_forged_tensor_nodes_are_refused(change: dict[str, Any], match: str) -> None:
    from nocopy._codec import decode
    from nocopy._codec._layout import parse_header

    p = plan(torch.arange(4.0))
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    header = parse_header(memoryview(mem), name="t", token=p.token, size=p.size)
    header.tree = {**header.tree, **change}  # what another writer of a posix file could put there
    with pytest.raises(SegmentCorruptError, match=match):
        decode(mem, header, name="t", trusted=True, allow_pickle=False)


# -- in workers -------------------------------------------------------------------------------------
def _in_worker(ref: nocopy.Shared[Any]) -> dict[str, Any]:
    got = ref.get()
    t = got["t"]
    before = float(t.sum())
    t[0] = -1e6  # private: the owner and other workers never see it
    return {
        "segment": segment_of_tensor(t), "sum": before, "dtype": str(t.dtype),
        "stride": t.stride(), "bf16": bits(got["bf16"]).tolist(), "pid": os.getpid(),
    }


@pytest.mark.parametrize("method", METHODS)
def test_workers_of_every_start_method_get_copy_on_write_tensors(method: str) -> None:
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4).T
    bf16 = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    with nocopy.share({"t": t, "bf16": bf16}) as ref, \
            nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        first = ex.submit(_in_worker, ref).result()
        second = ex.submit(_in_worker, ref).result()
        for r in (first, second):
            assert r["pid"] != os.getpid()
            assert r["segment"] == ref.name.removeprefix("nocopy-")
            assert r["sum"] == float(t.sum())  # the first worker's write stayed in its get()
            assert (r["dtype"], r["stride"]) == ("torch.float64", (1, 4))
            assert r["bf16"] == bits(bf16).tolist()
        assert float(ref.get()["t"].sum()) == float(t.sum())


def _mutate(t: Any) -> tuple[str | None, float]:
    seg = segment_of_tensor(t)
    t.fill_(-1.0)
    return seg, float(t.sum())


@pytest.mark.parametrize("method", METHODS)
def test_executor_shares_big_tensor_arguments_once(method: str) -> None:
    t = torch.arange(MiB // 4 * 2, dtype=torch.float32)  # 2 MiB: above the 1 MiB threshold
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        out = list(ex.map(_mutate, [t] * 3))
        small = ex.submit(_mutate, torch.ones(4)).result()
    segments = {seg for seg, _ in out}
    assert len(segments) == 1 and None not in segments  # one segment, every task
    assert [s for _, s in out] == [-float(t.numel())] * 3
    assert small == (None, -4.0)  # pickled, as below the threshold
    assert float(t[-1]) == t.numel() - 1  # the caller's tensor is untouched


def _make_tensor(n: int) -> Any:
    return {"big": torch.arange(n, dtype=torch.float64), "pid": os.getpid()}


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_big_tensor_results_come_back_through_shared_memory(method: str) -> None:
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        out = ex.submit(_make_tensor, 300_000).result()
    assert torch.equal(out["big"], torch.arange(300_000, dtype=torch.float64))
    assert (segment_of_tensor(out["big"]) or "").startswith(f"{out['pid']}-")  # the worker's segment
    out["big"][0] = 5.0  # the caller's to modify, as a pickled one would be
    assert float(out["big"][0]) == 5.0


def _uss_growth(ref: nocopy.Shared[Any]) -> dict[str, int]:
    import psutil

    proc = psutil.Process()
    uss0 = proc.memory_full_info().uss
    t = ref.get()
    total = int(t.sum())  # reads every page
    read = proc.memory_full_info().uss - uss0
    t[0] += 1  # one write: one page of private memory, not the tensor
    written = proc.memory_full_info().uss - uss0
    return {"read": read, "written": written, "total": total}


def test_a_worker_reading_a_shared_tensor_does_not_grow_by_its_size(spawn_pool: Any) -> None:
    t = torch.arange(16 * MiB, dtype=torch.int64)  # 128 MiB
    with nocopy.share(t) as ref:
        assert int(ref._shared_base().sum(dtype=np.uint64)) > 0  # every page touched here first
        report = spawn_pool.apply(_uss_growth, (ref,))
    assert report["total"] == int(t.sum())
    assert report["read"] < 0.10 * t.nbytes, report
    assert report["written"] - report["read"] < 1 * MiB, report


# -- nocopy.torch.SharedDataset ------------------------------------------------------------------------
def _epoch(ds: Any, method: str, workers: int = 2) -> list[Any]:
    """One pass of a DataLoader over *ds*, its workers started by *method*."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=4, num_workers=workers, multiprocessing_context=method)
    return list(loader)


def _worker_view(item: Any) -> Any:
    """A transform: the worker's pid, whether the sample lies in a nocopy segment, and a private write."""
    x, y = item
    seg = segment_of_tensor(x)
    x.add_(1000)  # copy-on-write: never seen by the parent or the other worker
    return {"x": x, "y": y, "pid": os.getpid(), "in_segment": seg is not None}


# Spawned and forkserver workers import torch afresh (DataLoader's forkserver preloads
# nothing): ~10 s an epoch on 2 cores.
@pytest.mark.parametrize("method", [
    pytest.param("spawn", marks=pytest.mark.slow), pytest.param("forkserver", marks=pytest.mark.slow), "fork",
])
def test_shared_dataset_with_two_dataloader_workers(method: str) -> None:
    import nocopy.torch

    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    y = np.arange(20)
    with nocopy.torch.SharedDataset((x, y), transform=_worker_view) as ds:
        assert len(ds) == 20
        batches = _epoch(ds, method)
        xs = torch.cat([b["x"] for b in batches])
        assert torch.equal(xs, x + 1000)  # each sample read once, written privately
        assert torch.cat([b["y"] for b in batches]).tolist() == y.tolist()
        pids = {int(p) for b in batches for p in b["pid"]}
        assert len(pids) == 2 and os.getpid() not in pids
        assert all(bool(v) for b in batches for v in b["in_segment"])
        again = _epoch(ds, method)  # nobody saw the writes
        assert torch.equal(torch.cat([b["x"] for b in again]), x + 1000)
        assert torch.equal(ds.shared.get()[0], x)
    assert ds.shared.closed


def test_shared_dataset_of_frames_dicts_and_a_shared_handle() -> None:
    import nocopy.torch

    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": np.arange(5.0), "s": pd.Series(list("vwxyz"), dtype="str")})
    with nocopy.torch.SharedDataset({"frame": df, "label": df["a"], "t": torch.arange(5)}) as ds:
        item = ds[2]
        assert item == {"frame": {"a": 2.0, "s": "x"}, "label": 2.0, "t": torch.tensor(2)}
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
        assert batch["frame"]["s"] == list("vwxyz")
        assert batch["t"].tolist() == [0, 1, 2, 3, 4]
    ref = nocopy.share([torch.zeros(3), torch.ones(3)])
    with nocopy.torch.SharedDataset(ref) as ds:
        assert [v.tolist() for v in ds[1]] == [0.0, 1.0]
    assert not ref.closed  # the dataset did not share it: not its to close
    assert ref.get()[1].tolist() == [1.0] * 3
    ref.close()


def test_shared_dataset_refuses_what_it_cannot_index() -> None:
    import nocopy.torch

    with pytest.raises(ValueError, match=r"differ in length \(\[0\]: 3, \[1\]: 2\)"):
        nocopy.torch.SharedDataset((torch.zeros(3), torch.zeros(2)))
    with pytest.raises(TypeError, match=r"\['n'\] \(int\) has no samples"):
        nocopy.torch.SharedDataset({"x": torch.zeros(3), "n": 3})


def _sum(t: Any) -> float:
    return float(t.sum())


def test_forked_pool_workers_after_parallel_torch_work_do_not_hang() -> None:
    # The caller's OpenMP threads (started by this big op) do not survive fork: a forked
    # worker's first parallel op used to wait for them for ever.
    t = torch.ones(1 << 21)
    assert float(t.sum()) == 1 << 21
    with nocopy.Pool(1, context=mp.get_context("fork")) as pool:
        assert pool.map(_sum, [t, t]) == [float(1 << 21)] * 2
        assert pool.apply(torch.get_num_threads) == 1


_FORKSERVER_THREADS = """
import multiprocessing as mp, torch, nocopy
def threads_after_a_parallel_op():
    assert float(torch.ones(1 << 21).sum()) == 1 << 21  # and it does not hang
    return torch.get_num_threads()
if __name__ == "__main__":
    with nocopy.Pool(1, context=mp.get_context("forkserver")) as pool:
        a = pool.apply(threads_after_a_parallel_op)
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as ex:
        b = ex.submit(threads_after_a_parallel_op).result()
    print(a, b)
"""


def test_forkserver_workers_keep_the_threads_the_caller_set(tmp_path: Path) -> None:
    # Only a fork of the caller needs torch at 1 thread: a forkserver worker is a fork of a
    # server that ran no parallel op, and keeps the threads the caller's environment asks for
    # (every thread variable set: nocopy then passes the workers none of its own). A fresh
    # interpreter, so that its forkserver starts with that environment.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: torch takes 1 thread however many the environment asks for")
    script = tmp_path / "threads.py"
    script.write_text(_FORKSERVER_THREADS)
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "2")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]  # 2 CPUs here: torch takes at most that


def _describe_all(ref: nocopy.Shared[Any]) -> dict[str, Any]:
    return {
        k: (str(t.dtype), tuple(t.shape), t.stride(), bits(t).flatten().tolist(), segment_of_tensor(t) is not None)
        for k, t in ref.get().items()
    }


@pytest.mark.parametrize("method", METHODS)
def test_every_dtype_and_view_round_trips_in_workers(method: str) -> None:
    data = {
        f"{dtype}/{how}": _view(random_tensor(dtype, (4, 3), seed=i), how)
        for i, dtype in enumerate(DTYPES) for how in VIEWS
    }
    with nocopy.share(data) as ref, nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        got = ex.submit(_describe_all, ref).result()
    assert set(got) == set(data)
    for k, t in data.items():
        dtype, shape, stride, values, in_segment = got[k]
        assert (dtype, shape) == (str(t.dtype), tuple(t.shape)), k
        assert values == bits(t).flatten().tolist(), k
        assert in_segment, k
        if "step slice" not in k:
            assert stride == t.stride(), k
