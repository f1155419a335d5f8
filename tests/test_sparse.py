"""scipy.sparse matrices and arrays (csr, csc, coo, bsr): zero-copy, read-only, the same class
back; index arrays checked once from pages nobody else can change; no flag read from the segment."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nocopy
from conftest import run_python
from nocopy import _kinds
from nocopy._codec import decode_buffer
from nocopy._codec._registry import Decoder
from nocopy.errors import SegmentCorruptError, UnsupportedTypeError
from strategies import buffer_in, mapping_range, planted

sp = pytest.importorskip("scipy.sparse")

METHODS = [m for m in ("spawn", "fork", "forkserver") if m in mp.get_all_start_methods()]
VALUE_DTYPES = ["f8", "f4", "i1", "u2", "i8", "c16", "?", "c8"]
INDEX_DTYPES = [np.int32, np.int64]


def _assemble(cls: Any, shape: tuple[int, int], data: np.ndarray, indices: np.ndarray, indptr: np.ndarray) -> Any:
    """A compressed matrix holding exactly these arrays (duplicates, order and index dtype kept)."""
    m = cls(shape, dtype=data.dtype)
    m.data, m.indices, m.indptr = data, indices, indptr
    return m


@st.composite
def compressed(draw: Any) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
    """(shape, data, indices, indptr) of a CSR layout with empty rows, duplicates and unsorted indices."""
    rows, cols = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    idx = draw(st.sampled_from(INDEX_DTYPES))
    per_row = [draw(st.lists(st.integers(0, cols - 1), max_size=5)) if cols else [] for _ in range(rows)]
    indices = np.array([c for row in per_row for c in row], dtype=idx)
    indptr = np.concatenate(([0], np.cumsum([len(r) for r in per_row]))).astype(idx)
    dt = np.dtype(draw(st.sampled_from(VALUE_DTYPES)))
    data = np.arange(1, len(indices) + 1).astype(dt)
    return (rows, cols), data, indices, indptr


def _same(got: Any, want: Any) -> None:
    """Exactly the same matrix: class, shape, dtype and every stored array (order, duplicates, index dtype)."""
    assert type(got) is type(want) and got.shape == want.shape and got.dtype == want.dtype
    if want.format == "coo":
        pairs = [(got.data, want.data), *zip(got.coords, want.coords, strict=True)]
    else:
        pairs = [(got.data, want.data), (got.indices, want.indices), (got.indptr, want.indptr)]
    for a, b in pairs:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _sorted_truth(m: Any) -> bool:
    """Whether each row's (column's, block row's) indices are non-decreasing: scipy's "sorted"."""
    return all(bool(np.all(np.diff(m.indices[a:b]) >= 0)) for a, b in zip(m.indptr[:-1], m.indptr[1:], strict=True))


def _canonical_truth(m: Any) -> bool:
    keys = np.ravel_multi_index(m.coords, m.shape) if m.nnz else np.empty(0, np.int64)
    return bool(np.all(np.diff(keys) > 0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=compressed(), kind=st.sampled_from(["matrix", "array"]))
def test_round_trip_with_duplicates_unsorted_indices_and_empty_rows(parts: Any, kind: str) -> None:
    shape, data, indices, indptr = parts
    csr = _assemble(getattr(sp, f"csr_{kind}"), shape, data, indices, indptr)
    csc = _assemble(getattr(sp, f"csc_{kind}"), shape[::-1], data, indices, indptr)
    row = np.repeat(np.arange(shape[0], dtype=indices.dtype), np.diff(indptr))
    coo = getattr(sp, f"coo_{kind}")((data, (row, indices)), shape=shape)
    for m in (csr, csc, coo):
        with nocopy.share(m) as ref:
            got = ref.get()
            _same(got, m)
            assert not got.data.flags.writeable
            if m.format == "coo":
                assert got.has_canonical_format == _canonical_truth(m)
            else:  # worked out from the checked arrays, as scipy does for its own matrices
                assert got.has_sorted_indices == _sorted_truth(m)
            np.testing.assert_array_equal(got.toarray(), m.toarray())  # duplicates summed, as scipy does


@pytest.mark.parametrize("kind", ["matrix", "array"])
@pytest.mark.parametrize("blocksize", [(1, 1), (2, 3)])
def test_bsr_round_trips_with_unsorted_blocks(kind: str, blocksize: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    dense = rng.random((4, 6)) * (rng.random((4, 6)) > 0.4)
    m = getattr(sp, f"bsr_{kind}")(dense, blocksize=blocksize)
    # Reverse the blocks of each block row: unsorted, as scipy allows.
    order = np.concatenate([np.arange(a, b)[::-1] for a, b in zip(m.indptr[:-1], m.indptr[1:], strict=True)])
    m.indices, m.data = m.indices[order].copy(), m.data[order].copy()
    with nocopy.share(m) as ref:
        got = ref.get()
        _same(got, m)
        assert got.blocksize == blocksize
        assert got.has_sorted_indices == _sorted_truth(m)
        np.testing.assert_array_equal(got.toarray(), dense)


def test_coo_arrays_of_any_dimension() -> None:
    for shape in [(7,), (2, 3, 4)]:
        coords = tuple(np.array([0, s - 1, 0], dtype=np.int64) for s in shape)
        m = sp.coo_array((np.array([1.0, 2.0, 3.0]), coords), shape=shape)  # a duplicate: not canonical
        with nocopy.share(m) as ref:
            got = ref.get()
            _same(got, m)
            assert got.has_canonical_format is False
            np.testing.assert_array_equal(got.toarray(), m.toarray())


def test_zero_copy_read_only_and_private_writable() -> None:
    m = sp.random(50, 40, density=0.2, format="csr", random_state=3)
    with nocopy.share(m) as ref:
        got = ref.get()
        base = ref._shared_base()
        for name in ("data", "indices", "indptr"):
            assert np.shares_memory(getattr(got, name), base), name
            assert not getattr(got, name).flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            got.data[0] = 1.0
        with pytest.raises(ValueError, match="read-only"):
            got.sort_indices() if not got.has_sorted_indices else got.indices.__setitem__(0, 0)
        # Everyday operations read only.
        np.testing.assert_allclose(got @ np.ones(40), m @ np.ones(40))
        assert (got.T @ got - m.T @ m).nnz == 0 and got[5:9].shape == (4, 40) and got.sum() == pytest.approx(m.sum())
        mine = ref.get(private=True)  # copy-on-write: writes stay here
        mine.data[:] = 0
        assert ref.get().sum() == pytest.approx(m.sum())


def test_other_scipy_objects_are_refused_with_the_fix() -> None:
    for m in (sp.dia_matrix(np.eye(3)), sp.lil_matrix((2, 2)), sp.dok_array((2, 2))):
        with pytest.raises(UnsupportedTypeError, match=r"tocsr"):
            nocopy.share(m)
    odd = sp.csr_matrix((1, 2))
    odd.data = np.zeros(0, np.float16)  # a dtype scipy's routines do not know
    with pytest.raises(UnsupportedTypeError, match="csr_matrix of dtype float16"):
        nocopy.share(odd)


def test_explain_and_sizes() -> None:
    m = sp.random(10, 10, density=0.3, format="csr", random_state=1, dtype=np.float32)
    note = nocopy.explain({"X": m})["['X']"]
    assert note.status == "zero-copy" and note.dtype == "csr_matrix float32 (int32 indices)"
    assert _kinds.data_nbytes(m) == m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
    coo = m.tocoo()
    assert _kinds.data_nbytes(coo) == coo.data.nbytes + sum(c.nbytes for c in coo.coords)
    assert _kinds.data_nbytes(sp.lil_matrix((2, 2))) is None


# -- row chunks -----------------------------------------------------------------------


def test_csr_row_chunks_are_views() -> None:
    m = sp.random(30, 8, density=0.3, format="csr", random_state=5)
    m = sp.csr_matrix(m.toarray() * (np.arange(30) % 4 != 0)[:, None])  # empty rows
    m.indices = m.indices.astype(np.int64)
    m.indptr = m.indptr.astype(np.int64)
    assert _kinds.row_count(m) == 30
    part = _kinds.take_rows(m, 7, 19)
    assert type(part) is type(m) and part.indices.dtype == np.int64
    np.testing.assert_array_equal(part.toarray(), m.toarray()[7:19])
    assert np.shares_memory(part.data, m.data) and np.shares_memory(part.indices, m.indices)
    assert _kinds.take_rows(m, 3, 3).shape == (0, 8)
    with pytest.raises(UnsupportedTypeError, match="cannot split"):
        _kinds.row_count(m.tocsc())


def chunk_sums(chunk: Any) -> tuple[str, int, float]:
    return type(chunk).__name__, chunk.shape[0], float(chunk.sum())


def test_parallel_map_gives_csr_row_chunks() -> None:
    m = sp.random(1000, 50, density=0.1, format="csr", random_state=2)
    out = nocopy.parallel_map(chunk_sums, sp.csr_array(m), chunks=4, workers=2)
    assert [o[0] for o in out] == ["csr_array"] * 4 and sum(o[1] for o in out) == 1000
    assert sum(o[2] for o in out) == pytest.approx(m.sum())


# -- hostile segments -----------------------------------------------------------------


def _planted(m: Any) -> tuple[np.ndarray, Any, dict[str, Any]]:
    mem, header = planted(m)
    return mem, header, header.tree


@pytest.mark.parametrize(
    ("key", "at", "value", "why"),
    [
        ("i", 0, -1, "indices out of range"), ("i", 2, 4, "indices out of range"),
        ("p", 1, 5, "not monotonic"), ("p", 0, 1, "from 0"), ("p", 3, 2, "from 0"),
    ],
)
def test_forged_csr_indices_are_refused(key: str, at: int, value: int, why: str) -> None:
    m = _assemble(sp.csr_matrix, (3, 4), np.ones(3), np.array([0, 3, 1], np.int32), np.array([0, 2, 2, 3], np.int32))
    mem, header, tree = _planted(m)
    buffer_in(mem, header, tree[key]["b"]).view(np.int32)[at] = value
    with pytest.raises(SegmentCorruptError, match=why):
        decode_buffer(mem, trusted=True)


def test_forged_coo_coordinates_and_shapes_are_refused() -> None:
    m = sp.coo_matrix((np.ones(2), (np.array([0, 2]), np.array([1, 3]))), shape=(3, 4))
    mem, header, tree = _planted(m)
    buffer_in(mem, header, tree["c"][1]["b"]).view(m.coords[1].dtype)[1] = 4
    with pytest.raises(SegmentCorruptError, match="coordinates of axis 1 out of range"):
        decode_buffer(mem, trusted=True)
    mem, header, tree = _planted(m)
    for forged, why in [
        (dict(tree, sh=[3, 4, 1]), "bad sparse shape"), (dict(tree, sh=[3, -1]), "bad sparse shape"),
        (dict(tree, c=tree["c"][:1]), "do not match its shape"), (dict(tree, cls="dia_matrix"), "class"),
        (dict(tree, d=dict(tree["d"], dt="|O")), "not one scipy uses"),
        (dict(tree, d=dict(tree["d"], dt=["<f8"])), "not one scipy uses"),  # unhashable (found by fuzzing)
        (dict(tree, d=dict(tree["d"], sh=[3])), "does not fit"),
        (dict(tree, c=[tree["c"][0], dict(tree["c"][1], dt="<i2")]), "not one scipy uses"),
    ]:
        with pytest.raises(SegmentCorruptError, match=why):
            Decoder(mem, header, name="t", trusted=True, allow_pickle=False).decode(forged)


def test_coordinates_of_another_length_and_arrays_of_a_bad_shape_are_refused() -> None:
    coo = sp.coo_matrix((np.ones(2), (np.array([0, 2]), np.array([1, 3]))), shape=(3, 4))
    mem, header = planted({"m": coo, "x": np.zeros(3, coo.coords[1].dtype)})
    tree, other = header.tree["vals"]
    for forged, why in [
        (dict(tree, c=[tree["c"][0], dict(tree["c"][1], b=other["b"], sh=[3])]), "one length"),
        (dict(tree, d=dict(tree["d"], sh=[])), "bad sparse array shape"),
    ]:
        with pytest.raises(SegmentCorruptError, match=why):
            Decoder(mem, header, name="t", trusted=True, allow_pickle=False).decode(forged)


def test_forged_compressed_and_bsr_layouts_are_refused() -> None:
    m = sp.bsr_matrix(np.eye(4), blocksize=(2, 2))
    mem, header, tree = _planted(m)
    csr = _planted(sp.csr_matrix(np.eye(4)))
    cases = [
        (mem, header, dict(tree, sh=[4, 5]), "do not tile"),
        (mem, header, dict(tree, sh=[2, 4]), "do not match"),
        (mem, header, dict(tree, d=tree["i"], i=tree["d"]), "not one scipy uses"),
        (csr[0], csr[1], dict(csr[2], sh=[4, 4, 1]), "bad sparse shape"),
        (csr[0], csr[1], dict(csr[2], d=dict(csr[2]["d"], dt="<i4", sh=[4, 2])), "not 1-d"),
        (csr[0], csr[1], dict(csr[2], sh=[1 << 40, 4]), "do not match"),
        (csr[0], csr[1], dict(csr[2], i=dict(csr[2]["i"], dt="<i8", sh=[2])), "one dtype"),
        (csr[0], csr[1], dict(csr[2], d="x"), "without its description"),
    ]
    for mem_, header_, forged, why in cases:
        with pytest.raises(SegmentCorruptError, match=why):
            Decoder(mem_, header_, name="t", trusted=True, allow_pickle=False).decode(forged)


def test_int32_indices_for_a_shape_beyond_int32_are_refused() -> None:
    m = sp.csr_matrix((2, 3))
    mem, header, tree = _planted(m)
    assert tree["i"]["dt"] == "<i4"
    forged = dict(tree, cls="csc_matrix", sh=[2, 1 << 33])  # csc: indptr would need 2**33 + 1 entries
    with pytest.raises(SegmentCorruptError):
        Decoder(mem, header, name="t", trusted=True, allow_pickle=False).decode(forged)
    forged = dict(tree, sh=[2, 1 << 33])  # csr: 2 rows of 2**33 columns, int32 indices
    with pytest.raises(SegmentCorruptError, match="beyond int32"):
        Decoder(mem, header, name="t", trusted=True, allow_pickle=False).decode(forged)


def test_indices_rewritten_in_a_posix_file_after_get_never_reach_scipy(shm: Path) -> None:
    # A same-user process rewrites the indices in the posix file after get() checked them:
    # scipy must keep reading the checked ones (this process's copy-on-write pages);
    # through the rewritten ones its compiled code would write far outside the array.
    out = run_python(
        """
        import os
        import numpy as np, scipy.sparse as sp, nocopy
        n = 4096
        m = sp.csr_matrix((np.ones(n), np.arange(n, dtype=np.int64) % 7, np.arange(n + 1, dtype=np.int64)), shape=(n, 7))
        ref = nocopy.share(m, backend="posix")
        path = os.path.join(os.environ["NOCOPY_SHM_DIR"], "nocopy-%d" % os.geteuid(), ref.name)
        with open(path, "rb") as f:
            pos = f.read().find(m.indices.tobytes())
        assert pos > 0, "the indices are not in the file"
        got = nocopy.attach(ref.uri).get()           # checked here
        os.chmod(path, 0o600)
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, np.full(n, 1 << 40, dtype=np.int64).tobytes(), pos)  # rewritten after
        os.close(fd)
        print(int(got.toarray().sum()), int(got.indices.max()), flush=True)
        """
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["4096", "6"]


def test_reading_without_scipy_names_the_extra() -> None:
    m = sp.csr_matrix(np.eye(3))
    with nocopy.share(m) as ref:
        out = run_python(
            """
            import sys
            sys.modules["scipy"] = None
            import nocopy
            try:
                nocopy.attach(sys.argv[1]).get()
            except ImportError as exc:
                print(exc)
            """,
            ref.uri,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'nocopy[scipy]'" in out.stdout


# -- in workers ----------------------------------------------------------------------


def describe_sparse(d: dict[str, Any], ref: nocopy.Shared[Any]) -> dict[str, Any]:
    def mapped(a: np.ndarray) -> bool:
        try:
            mapping_range(a)
        except AssertionError:
            return False
        return True

    explicit = ref.get()
    return {
        "types": {k: type(v).__name__ for k, v in d.items()},
        "sums": {k: float(v.toarray().sum()) for k, v in d.items()},  # bsr_matrix.sum() fails in scipy 1.17
        "mapped": {k: mapped(v.data) for k, v in d.items()},
        "explicit": [type(explicit).__name__, float(explicit.sum()), explicit.data.flags.writeable],
    }


@pytest.mark.parametrize("method", METHODS)
def test_in_workers_of_every_start_method(method: str) -> None:
    base = sp.random(400, 400, density=0.7, format="csr", random_state=7)  # 1.3 MB: shared
    d = {"csr": base, "coo": sp.coo_array(base), "bsr": sp.bsr_matrix(base, blocksize=(2, 2)), "small": sp.csc_array(np.eye(3))}
    with nocopy.share(sp.csc_matrix(base)) as ref, nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        out = ex.submit(describe_sparse, d, ref).result()
    assert out["types"] == {k: type(v).__name__ for k, v in d.items()}
    assert out["sums"] == pytest.approx({k: float(v.toarray().sum()) for k, v in d.items()})
    assert out["mapped"] == {"csr": True, "coo": True, "bsr": True, "small": False}  # the small one pickled
    assert out["explicit"] == ["csc_matrix", pytest.approx(base.sum()), False]


def test_joblib_backend_shares_sparse_arguments() -> None:
    joblib = pytest.importorskip("joblib")
    import nocopy.joblib  # registers the backend

    m = sp.random(400, 400, density=0.7, format="csr", random_state=8)
    with nocopy.share(m) as ref, joblib.parallel_config(backend="nocopy", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(describe_sparse)({"X": m}, ref) for _ in range(2))
    assert all(o["mapped"] == {"X": True} and o["types"] == {"X": "csr_matrix"} for o in out)
