"""NumPy round trips: every fixed-width dtype, layouts, subclasses, zero-copy views."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nocopy
from nocopy.errors import SegmentNotFoundError, UnsupportedTypeError


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert type(got) is type(want)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    # Byte equality: NaN payloads and structured fields compare exactly.
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def mapping_of(ref: nocopy.Shared) -> np.ndarray:
    base = ref._shared_base()
    return base


FIXED_DTYPES = [
    "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g",
    "c8", "c16", ">i4", ">f8", "S1", "S6", "U1", "U7", "V5",
    "M8[ns]", "M8[us]", "M8[D]", "m8[ns]", "m8[s]",
]


@pytest.mark.parametrize("dtype", FIXED_DTYPES)
@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_fixed_width_dtypes_round_trip_zero_copy(dtype: str, backend: str) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=24 * np.dtype(dtype).itemsize, dtype=np.uint8)
    arr = raw.view(dtype).reshape(4, -1) if np.dtype(dtype).itemsize else np.zeros(6, dtype)
    with nocopy.share(arr, backend=backend) as ref:
        got = ref.get()
        assert_same(got, arr)
        assert np.shares_memory(got, mapping_of(ref))
        assert not got.flags.writeable


def test_structured_record_array_with_datetimes_keeps_subclass() -> None:
    n = 1000
    rec = np.rec.fromarrays(
        [
            np.arange(n).astype("M8[s]").astype("M8[us]"),
            np.where(np.arange(n) % 2, np.nan, 1.0),
            np.array([b"string", b"abc"] * (n // 2), dtype="S6"),
        ],
        names="date_col,float_col,character_col",
    )
    with nocopy.share(rec) as ref:
        got = ref.get()
        assert isinstance(got, np.recarray)
        assert_same(got, rec)
        assert got.dtype == rec.dtype
        assert np.nansum(got.float_col) == np.nansum(rec.float_col)
        assert np.shares_memory(got, mapping_of(ref))


def test_aligned_nested_and_subarray_structured_dtypes() -> None:
    inner = np.dtype([("x", "i1"), ("y", "f8")], align=True)
    dt = np.dtype({"names": ["a", "b", "c"], "formats": [inner, ("u2", (2, 3)), "M8[ms]"],
                   "offsets": [0, 24, 40], "itemsize": 56})
    arr = np.zeros(5, dtype=dt)
    arr["a"]["y"] = np.arange(5)
    arr["b"][:, 1, 2] = 7
    with nocopy.share(arr) as ref:
        got = ref.get()
        assert got.dtype == dt
        assert got.dtype.fields == dt.fields
        assert_same(got, arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.array(3.5),
        np.zeros((0,), "f8"),
        np.zeros((3, 0, 2), "i4"),
        np.zeros((0,), [("a", "i4"), ("b", "S3")]),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(60).reshape(3, 4, 5)[:, ::2, 1:],
        np.arange(10)[::-1],
        np.arange(24, dtype="i2").reshape(2, 3, 4).transpose(2, 0, 1),
    ],
    ids=["0d", "empty", "empty-3d", "empty-structured", "fortran", "strided", "reversed", "transposed"],
)
def test_shapes_and_layouts(arr: np.ndarray) -> None:
    with nocopy.share(arr) as ref:
        got = ref.get()
        assert got.shape == arr.shape and got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)
        if arr.flags.f_contiguous and arr.ndim > 1 and not arr.flags.c_contiguous:
            assert got.flags.f_contiguous


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        dtype=st.one_of(
            hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
            hnp.array_dtypes(allow_subarrays=True),
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    ),
    st.booleans(),
)
def test_hypothesis_round_trip(arr: np.ndarray, fortran: bool) -> None:
    if fortran:
        arr = np.asfortranarray(arr)
    with nocopy.share(arr) as ref:
        got = ref.get()
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(arr).tobytes()


def test_views_are_read_only_and_shared_data_untouched() -> None:
    arr = np.arange(10.0)
    with nocopy.share(arr) as ref:
        view = ref.get()
        with pytest.raises(ValueError, match="read-only"):
            view[0] = 99
        with pytest.raises(ValueError):
            view.flags.writeable = True
        assert ref.get()[0] == 0.0


def test_private_view_is_copy_on_write() -> None:
    arr = np.arange(1_000_000, dtype="f8")
    with nocopy.share(arr) as ref:
        private = ref.get(private=True)
        assert private.flags.writeable
        private[:10] = -1
        assert ref.get()[0] == 0.0
        other = ref.get(private=True)
        assert other[0] == 0.0  # each private view is its own copy
        assert private[0] == -1


def test_empty_and_zeros_are_writable_shared_outputs() -> None:
    out = nocopy.zeros((4, 3), "i8")
    assert out.writable
    a = out.get()
    assert (a == 0).all()
    a[1] = 5
    # Another handle for the same segment (as a worker would get) sees it.
    other = pickle.loads(pickle.dumps(out))
    assert other.get()[1].tolist() == [5, 5, 5]
    f = nocopy.empty((3, 2), "f4", order="F")
    assert f.get().flags.f_contiguous and f.get().flags.writeable
    out.close()
    f.close()


def test_close_keeps_existing_views_valid_and_is_idempotent() -> None:
    ref = nocopy.share(np.arange(100))
    view = ref.get()
    ref.close()
    ref.close()
    assert view.sum() == 4950
    with pytest.raises(SegmentNotFoundError):
        nocopy.attach(ref.uri)


def test_use_after_close_is_one_error_for_every_path() -> None:
    from nocopy._shared import map_now
    from nocopy.errors import SegmentClosedError

    ref = nocopy.share(np.arange(10))
    clone = pickle.loads(pickle.dumps(ref))
    clone.get()  # a handle that has mapped the segment before it is closed
    for handle in (ref, clone):
        handle.close()
        assert handle.closed
        uses = (
            handle.get,
            lambda h=handle: h.get(private=True),
            lambda h=handle: map_now(h),
            lambda h=handle: nocopy.parallel_map(len, h, chunks=2, backend="threads"),
        )
        for use in uses:
            with pytest.raises(SegmentClosedError, match=r"is closed.*Fix"):
                use()


def test_pickled_handle_is_small() -> None:
    with nocopy.share(np.zeros(10_000_000)) as ref:
        data = pickle.dumps(ref)
        assert len(data) < 1024
        clone = pickle.loads(data)
        assert not clone.is_owner
        assert clone.get().shape == (10_000_000,)


def test_containers_and_scalars() -> None:
    obj = {"a": [np.arange(3), (1, "x", None, 2.5, True)], "b": b"raw", 3: np.float32(1.5)}
    with nocopy.share(obj) as ref:
        got = ref.get()
        assert got["a"][1] == (1, "x", None, 2.5, True)
        assert got["b"] == b"raw"
        assert got[3] == np.float32(1.5) and type(got[3]) is np.float32
        np.testing.assert_array_equal(got["a"][0], [0, 1, 2])


def test_object_arrays_are_refused_naming_the_fix() -> None:
    with pytest.raises(UnsupportedTypeError, match="allow_pickle"):
        nocopy.share(np.array([{}, 1], dtype=object))
    with pytest.raises(TypeError):  # also a builtin TypeError
        nocopy.share({"col": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(UnsupportedTypeError, match="object"):
        nocopy.empty(3, object)


def test_pickle_fallback_only_when_trusted() -> None:
    obj = {"meta": {1, 2, 3}}
    with nocopy.share(obj, allow_pickle=True) as ref:
        assert pickle.loads(pickle.dumps(ref)).get() == obj
        with pytest.raises(nocopy.errors.SegmentAccessError, match="trusted=True"):
            nocopy.attach(ref.uri).get()
        assert nocopy.attach(ref.uri, trusted=True).get() == obj


def test_unknown_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="memfd, posix"):
        nocopy.share(np.arange(3), backend="nope")
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    with nocopy.share(np.arange(3)) as ref:
        assert ref.backend == "posix"


def test_deep_nesting_is_refused_at_share_not_at_every_get() -> None:
    nested: object = np.arange(3)
    for _ in range(99):
        nested = [nested]
    with nocopy.share(nested) as ref:
        got = ref.get()
        for _ in range(99):
            got = got[0]
        np.testing.assert_array_equal(got, np.arange(3))
    too_deep: object = np.arange(3)
    for _ in range(150):
        too_deep = [too_deep]
    with pytest.raises(UnsupportedTypeError, match="nested deeper than 100 levels"):
        nocopy.share(too_deep)
    with nocopy.share(too_deep, allow_pickle=True) as ref:  # the opt-in still works
        got = ref.get()
        for _ in range(150):
            got = got[0]
        np.testing.assert_array_equal(got, np.arange(3))


@pytest.mark.parametrize("shape", [2.7, (2.5, 3), "3"])
def test_empty_refuses_a_non_integer_shape_instead_of_truncating(shape: object) -> None:
    with pytest.raises(TypeError, match="shape must be an int"):
        nocopy.empty(shape, "f8")  # type: ignore[arg-type]
    with nocopy.zeros(np.int32(3)) as out:  # numpy integers are fine
        assert out.get().shape == (3,)


def test_close_from_another_thread_during_a_private_get_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import threading

    ref = nocopy.share(np.arange(10))
    real_dup = os.dup
    closer = threading.Thread(target=ref.close)

    def dup_while_closing(fd: int) -> int:
        # close() runs in another thread right between get()'s "still open?" and its dup
        if not closer.is_alive() and closer.ident is None:
            closer.start()
            closer.join(0.3)
        return real_dup(fd)

    monkeypatch.setattr(os, "dup", dup_while_closing)
    try:
        got = ref.get(private=True)
    except SegmentNotFoundError:
        pass  # closed first: the clear error
    else:
        assert got.tolist() == list(range(10))
    monkeypatch.setattr(os, "dup", real_dup)
    closer.join()
    assert ref.closed


def test_the_same_array_met_twice_is_stored_once() -> None:
    a = np.arange(1000.0)
    with nocopy.share([a, a, {"again": a}, a[:10]]) as ref:
        assert ref.nbytes == a.nbytes + 80  # a once, plus the slice (another object)
        x, y, d, head = ref.get()
        for v in (x, y, d["again"]):
            np.testing.assert_array_equal(v, a)
        np.testing.assert_array_equal(head, a[:10])
        assert np.shares_memory(x, y) and np.shares_memory(x, d["again"])


def test_outputs_of_a_subarray_dtype_expand_like_numpy() -> None:
    with nocopy.zeros(2, ("f8", (2, 3))) as out:
        got = out.get()
        expected = np.zeros(2, ("f8", (2, 3)))
        assert got.shape == expected.shape == (2, 2, 3) and got.dtype == expected.dtype
        got[1] = 7.0
        assert out.get()[1].sum() == 42.0


def test_parts_rebuild_without_a_contiguous_layout_and_refuse_a_wrong_part() -> None:
    from nocopy._codec import decode_parts, plan
    from nocopy.errors import SegmentCorruptError

    rec = np.rec.fromarrays([np.arange(5).astype("M8[s]"), np.arange(5.0)], names="t,x")
    obj = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "e": np.zeros(0, "i4"), "r": rec,
           "s": np.arange(20)[::2], "z": np.array(7)}
    head, parts = plan(obj).parts()
    arrays = [np.frombuffer(p, dtype=np.uint8) for p in parts]
    got = decode_parts(head, arrays, trusted=False, name="parts")
    for key, want in obj.items():
        assert type(got[key]) is type(want) and got[key].dtype == want.dtype
        np.testing.assert_array_equal(got[key], want)
    # Contiguous sources are handed over as they are, not copied.
    assert np.shares_memory(arrays[list(obj).index("r")], rec)
    assert np.shares_memory(got["r"], rec)
    with pytest.raises(SegmentCorruptError, match="buffer 0 holds 8 bytes"):
        decode_parts(head, [np.zeros(8, np.uint8), *arrays[1:]], trusted=False, name="parts")
    with pytest.raises(SegmentCorruptError, match="holds 1 buffers"):
        decode_parts(head, arrays[:1], trusted=False, name="parts")


@pytest.mark.parametrize("spec", ["(,1)i4", "i4,(,1)f8"])
def test_a_dtype_string_numpy_parses_as_python_is_a_corrupt_segment(spec: str) -> None:
    # Found by the header fuzzer: NumPy hands the repeat of a comma string to
    # ast.literal_eval, whose SyntaxError must not escape as if nocopy had a bug.
    from nocopy._codec._registry import Decoder
    from nocopy.errors import SegmentCorruptError
    from strategies import planted

    mem, header = planted(np.zeros(2, "i4"))
    forged = dict(header.tree, dt=spec)
    with pytest.raises(SegmentCorruptError, match="NumPy makes no dtype"):
        Decoder(mem, header, name="t", trusted=False, allow_pickle=False).decode(forged)
