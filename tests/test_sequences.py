"""Lists and tuples of str or bytes (with None): stored once as Arrow large_string /
large_binary buffers; get() gives a read-only nocopy.SharedSequence building each item on access."""

from __future__ import annotations

import copy
import multiprocessing as mp
import pickle
import sys
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
from nocopy.errors import SegmentCorruptError
from strategies import buffer_in, planted

MiB = 1 << 20
METHODS = [m for m in ("spawn", "fork", "forkserver") if m in mp.get_all_start_methods()]

# Every code point but the surrogates (which UTF-8 cannot hold), every plane included.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
STRINGS = st.lists(st.one_of(st.none(), TEXT), max_size=40)
BLOBS = st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=40)


def _check_sequence(got: Any, items: list[Any]) -> None:
    """*got* behaves as the sequence *items* in every way SharedSequence documents."""
    assert type(got) is nocopy.SharedSequence
    assert len(got) == len(items)
    assert got == items and items == got and got == tuple(items) and (got != items) is False
    assert list(got) == items
    assert [got[i] for i in range(len(items))] == items
    assert [got[-i] for i in range(1, len(items) + 1)] == [items[-i] for i in range(1, len(items) + 1)]
    for s in (slice(None), slice(1, None), slice(None, None, -1), slice(1, -1, 2), slice(-3, None, -2), slice(5, 2)):
        part = got[s]
        assert type(part) is nocopy.SharedSequence and list(part) == items[s]
    assert list(reversed(got)) == items[::-1]
    assert pickle.loads(pickle.dumps(got)) == items and type(pickle.loads(pickle.dumps(got))) is list
    assert copy.deepcopy(got) == items
    with pytest.raises(IndexError):
        got[len(items)]
    with pytest.raises(TypeError):
        got[0] = items[0]  # type: ignore[index]
    with pytest.raises(TypeError):
        hash(got)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=STRINGS, as_tuple=st.booleans())
def test_strings_round_trip(items: list[Any], as_tuple: bool) -> None:
    obj = tuple(items) if as_tuple else items
    with nocopy.share(obj) as ref:
        got = ref.get()
        if any(x is not None for x in items):
            _check_sequence(got, items)
        else:  # empty or all None: nothing says str; kept as it was
            assert got == obj and type(got) is type(obj)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=BLOBS)
def test_bytes_round_trip(items: list[Any]) -> None:
    with nocopy.share(items) as ref:
        got = ref.get()
        if any(x is not None for x in items):
            _check_sequence(got, items)
            assert all(type(x) is bytes for x in got if x is not None)
        else:
            assert got == items


def test_every_unicode_plane_and_empty_strings() -> None:
    items = ["", *(chr(plane << 16 | 0x41) + chr(plane << 16 | 0xFFFD) for plane in range(17)), "", None, "\x00"]
    with nocopy.share(items) as ref:
        _check_sequence(ref.get(), items)


def test_what_stays_as_it_was() -> None:
    # Mixed lists, empty ones, lone surrogates (UTF-8 cannot hold them), labels (dict keys,
    # pandas names): as today, plain containers.
    for obj in (["a", b"b"], ["a", 1], [], [None], ["\ud800", "x"], (1, 2.5)):
        with nocopy.share(obj) as ref:
            got = ref.get()
            assert got == obj and type(got) is type(obj)
    with nocopy.share({("a", "b"): ["x", "y"]}) as ref:
        got = ref.get()
        assert list(got) == [("a", "b")] and type(next(iter(got))) is tuple
        assert type(got[("a", "b")]) is nocopy.SharedSequence
    pd = pytest.importorskip("pandas")
    s = pd.Series([1, 2], name=("a", "b"))
    s.attrs["tags"] = ["t1", "t2"]
    with nocopy.share(s) as ref:
        got = ref.get()
        assert got.name == ("a", "b") and got.attrs == {"tags": ["t1", "t2"]}
        assert type(got.attrs["tags"]) is list


def test_the_items_lie_in_the_segment_and_nothing_per_item_is_held() -> None:
    items = [f"item {i}" for i in range(10_000)]
    with nocopy.share(items) as ref:
        got = ref.get()
        base = ref._shared_base()
        assert np.shares_memory(got._data, base) and np.shares_memory(got._offsets, base)
        assert not got._offsets.flags.writeable
        assert sys.getsizeof(got) < 200  # no per-item object


def test_repr_and_construction() -> None:
    with nocopy.share(["a", None, "c" * 100, "d", "e", "f", "g"]) as ref:
        text = repr(ref.get())
    assert text.startswith("nocopy.SharedSequence(['a', None, 'ccc") and text.endswith(", ...], len=7)")
    with pytest.raises(TypeError, match="made by nocopy"):
        nocopy.SharedSequence()


def test_contains_index_count() -> None:
    with nocopy.share(["a", None, "b", "a"]) as ref:
        got = ref.get()
        assert "a" in got and None in got and "z" not in got and b"a" not in got and 1 not in got
        assert got.index("b") == 2 and got.count("a") == 2
        assert got != ["a"] and got != "abc" and (got == 3) is False


def test_explain_says_which_applies() -> None:
    report = nocopy.explain({"s": ["x", None], "b": (b"y",), "n": [1, 2.5, True], "m": [1, "x"]})
    assert report["['s']"].status == "zero-copy" and "SharedSequence" in report["['s']"].detail
    assert report["['b']"].dtype == "tuple of bytes"
    assert report["['n']"].status == "converted" and "numpy.asarray" in report["['n']"].detail
    assert "['m']" not in {n.path for n in report}


def test_data_nbytes_counts_only_sequences_of_str_or_bytes() -> None:
    assert _kinds.data_nbytes(["ab", None, "c"]) == 8 * 4 + 3
    assert _kinds.data_nbytes((b"xy",)) == 8 * 2 + 2
    for other in ([], [None], ["a", b"b"], [1, 2], 5, "abc", {"a": 1}):
        assert _kinds.data_nbytes(other) is None


# -- hostile segments -----------------------------------------------------------------


def _seq_buffers(obj: Any) -> tuple[np.ndarray, Any, dict[str, Any]]:
    mem, header = planted(obj)
    return mem, header, header.tree


@pytest.mark.parametrize(("at", "value"), [(0, 1), (1, -1), (1, 9), (3, 99), (3, 4), (2, 1)])
def test_forged_offsets_are_refused(at: int, value: int) -> None:
    mem, header, tree = _seq_buffers(["abc", None, "de"])  # offsets 0 3 3 5
    buffer_in(mem, header, tree["o"]).view(np.int64)[at] = value
    with pytest.raises(SegmentCorruptError, match="monotonic"):
        decode_buffer(mem, trusted=False)


def test_invalid_utf8_is_refused_when_the_item_is_built() -> None:
    mem, header, tree = _seq_buffers(["abc", "de"])
    buffer_in(mem, header, tree["d"])[3] = 0xFF
    got = decode_buffer(mem, trusted=False)
    assert got[0] == "abc"
    with pytest.raises(SegmentCorruptError, match="item 1 is not valid UTF-8"):
        got[1]


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("n", 0, "length"), ("n", -1, "length"), ("n", "3", "length"), ("t", "int", "unknown kind"),
        ("c", "set", "unknown kind"), ("n", 4, "offset bytes"),
    ],
)
def test_forged_nodes_are_refused(key: str, value: Any, why: str) -> None:
    from nocopy._codec._registry import Decoder

    mem, header, tree = _seq_buffers(["abc", None, "de"])
    forged = dict(tree, **{key: value})
    dec = Decoder(mem, header, name="t", trusted=False, allow_pickle=False)
    with pytest.raises(SegmentCorruptError, match=why):
        dec.decode(forged)


def test_a_short_validity_bitmap_is_refused() -> None:
    from nocopy._codec._registry import Decoder

    mem, header, tree = _seq_buffers(["a"] * 9 + [None])  # 10 items: a 2-byte bitmap
    forged = dict(tree, v=tree["o"])  # the offsets' 88 bytes as a bitmap
    with pytest.raises(SegmentCorruptError):
        Decoder(mem, header, name="t", trusted=False, allow_pickle=False).decode(forged)
    forged = dict(tree, n=9, o=tree["o"])
    with pytest.raises(SegmentCorruptError, match="offset bytes"):
        Decoder(mem, header, name="t", trusted=False, allow_pickle=False).decode(forged)


def test_offsets_rewritten_in_a_posix_file_after_get_never_move_the_reader(shm: Path) -> None:
    # As for pandas string columns: the reader keeps the offsets it checked (its own
    # copy-on-write pages), never the ones a same-user process rewrote afterwards.
    out = run_python(
        """
        import os
        import numpy as np, nocopy
        n = 20000
        ref = nocopy.share(["abcd"] * n, backend="posix")
        path = os.path.join(os.environ["NOCOPY_SHM_DIR"], "nocopy-%d" % os.geteuid(), ref.name)
        offsets = np.arange(0, 4 * (n + 1), 4, dtype=np.int64).tobytes()
        with open(path, "rb") as f:
            pos = f.read().find(offsets)
        assert pos > 0, "the offsets are not in the file"
        seq = nocopy.attach(ref.uri).get()           # checked here
        os.chmod(path, 0o600)
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, np.zeros(n, dtype=np.int64).tobytes(), pos + 8)  # rewritten after
        os.close(fd)
        print(sum(len(s) for s in seq), flush=True)
        """
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == [str(4 * 20000)]


# -- in workers ----------------------------------------------------------------------


def describe_sequence(seq: Any, ref: nocopy.Shared[Any]) -> dict[str, Any]:
    explicit = ref.get()
    return {
        "auto": type(seq).__name__, "explicit": type(explicit).__name__,
        "auto_items": [*seq[:3], seq[-1]], "explicit_equal": explicit == seq, "len": len(seq),
    }


@pytest.mark.parametrize("method", METHODS)
def test_in_workers_of_every_start_method(method: str) -> None:
    # 2 MiB of strings: above the executor's threshold, so it shares them as it does arrays.
    items = [None if i % 97 == 0 else f"{chr(0x1F600 + i % 50)}{i}" for i in range(200_000)]
    assert _kinds.data_nbytes(items) > MiB
    with nocopy.share(items) as ref, nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        out = ex.submit(describe_sequence, items, ref).result()
    assert out == {
        "auto": "SharedSequence", "explicit": "SharedSequence", "auto_items": [*items[:3], items[-1]],
        "explicit_equal": True, "len": len(items),
    }


def sequence_kinds(seqs: list[Any]) -> list[str]:
    return [type(s).__name__ for s in seqs]


def test_pool_shares_big_lists_and_small_ones_travel_as_they_are() -> None:
    big = ["x" * 100] * 20_000
    with nocopy.Pool(1) as pool:
        assert pool.apply(sequence_kinds, ([big, ["small"], ("t", "u")],)) == ["SharedSequence", "list", "tuple"]


def walk_and_measure(ref: nocopy.Shared[Any]) -> dict[str, int]:
    """In a worker: get(), walk every item, and report the growth of private memory (USS)."""
    import psutil

    proc = psutil.Process()
    uss0 = proc.memory_full_info().uss
    seq = ref.get()
    chars = 0
    for s in seq:
        chars += len(s)
    chars += sum(len(s) for s in seq[::3])
    return {"chars": chars, "growth": proc.memory_full_info().uss - uss0}


def test_a_worker_walking_the_sequence_does_not_grow_by_its_size(spawn_pool: Any) -> None:
    # The plain list would cost a worker ~40 MB here (an object per item): walking the
    # SharedSequence creates each str and drops it, and the shared pages stay shared.
    n = 400_000
    items = [f"row {i:>12} of a list" for i in range(n)]
    with nocopy.share(items) as ref:
        ref._shared_base().sum(dtype=np.uint64)  # the parent's pages: mapped and touched
        out = spawn_pool.apply(walk_and_measure, (ref,))
        assert out["chars"] == sum(map(len, items)) + sum(map(len, items[::3]))
        assert ref.nbytes > 10e6
        assert out["growth"] < 0.10 * ref.nbytes, (out["growth"], ref.nbytes)


def test_sharing_and_reading_needs_no_pyarrow() -> None:
    # The core is NumPy-only: sharing and reading a list of str never imports pyarrow.
    out = run_python(
        """
        import sys
        sys.modules["pyarrow"] = None  # importing it raises ImportError
        import nocopy
        with nocopy.share(["a", None, "b"]) as ref:
            print(list(ref.get()), "pyarrow" in sys.modules and sys.modules["pyarrow"] is not None)
        """
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "['a', None, 'b'] False"


def test_the_parent_mapping_survives_close_while_a_sequence_is_alive() -> None:
    ref = nocopy.share(["alpha", "beta"])
    got = ref.get()
    ref.close()
    assert list(got) == ["alpha", "beta"]


def sequence_tail(seq: Any) -> tuple[str, int, Any]:
    return type(seq).__name__, len(seq), seq[-1]


def test_a_list_changed_between_submits_is_shared_again() -> None:
    # Arguments are cached by identity; a list of str is checked for changes (appends,
    # items replaced), as its items cannot change: the task sees the list as submitted.
    items = ["x" * 100] * 20_000
    with nocopy.ProcessPoolExecutor(1) as ex:
        first = ex.submit(sequence_tail, items).result()
        again = ex.submit(sequence_tail, items).result()
        items.append("new")
        grown = ex.submit(sequence_tail, items).result()
        items[-1] = "other"
        replaced = ex.submit(sequence_tail, items).result()
        frozen = tuple(items)
        assert ex.submit(sequence_tail, frozen).result() == ("SharedSequence", 20_001, "other")
    assert first == again == ("SharedSequence", 20_000, "x" * 100)
    assert grown == ("SharedSequence", 20_001, "new") and replaced == ("SharedSequence", 20_001, "other")


def test_a_bitmap_of_the_wrong_size_is_refused_and_copy_is_itself() -> None:
    from nocopy._codec._registry import Decoder

    mem, header = planted({"s": ["a"] * 9 + [None], "x": np.zeros(5, np.uint8)})
    seq, arr = header.tree["vals"]
    forged = dict(seq, v=arr["b"])  # 5 bytes where 10 items need 2
    with pytest.raises(SegmentCorruptError, match="does not fit 10 items"):
        Decoder(mem, header, name="t", trusted=False, allow_pickle=False).decode(forged)
    got = decode_buffer(mem, trusted=False)["s"]
    assert copy.copy(got) is got and got[-1] is None


def test_parallel_map_still_splits_a_list_of_str_into_items() -> None:
    # A list of str is a sequence family now (shareable data), and still plain items to split.
    assert _kinds.row_count(["a", "b", "c"]) == 3 and _kinds.take_rows(("a", "b", "c"), 1, 3) == ("b", "c")
    assert nocopy.parallel_map(len, ["a"] * 10, chunks=2, workers=1, backend="threads") == [5, 5]


def chunk_kind(chunk: Any) -> tuple[str, int, Any]:
    return type(chunk).__name__, len(chunk), chunk[-1]


def test_parallel_map_gives_processes_plain_chunks_of_a_big_list_of_str() -> None:
    # Each chunk is over the share threshold: the pool shares it on the way (as any big
    # list of str argument), and fn still gets the plain slice parallel_map promises.
    items = [f"{i:020d}" for i in range(120_000)]  # 2 chunks of ~1.7 MB
    try:
        out = nocopy.parallel_map(chunk_kind, items, chunks=2, workers=1)
    finally:
        nocopy.shutdown_parallel_map_workers()
    assert out == [("list", 60_000, items[59_999]), ("list", 60_000, items[-1])]


def test_the_share_cache_keeps_only_the_most_recent_unreferenceable_arguments() -> None:
    # Lists cannot be weak-referenced: the cache holds them itself, so it must let old ones
    # go (with their segments) or a loop submitting new big lists grows without bound.
    from nocopy._pool import _cache

    cache = _cache.ShareCache()
    lists = [["y" * 64] * 20_000 for _ in range(_cache.STRONG_MAX + 5)]
    segments = [cache.lookup(x) for x in lists]
    try:
        assert all(isinstance(s, nocopy.Shared) for s in segments)
        held = [x for x in lists if cache.cached(x)[0]]
        assert held == lists[-_cache.STRONG_MAX:]
        # An unhashable item appended to a cached list: changed, shared again (no TypeError).
        lists[-1].append({"not": "hashable"})
        assert cache.cached(lists[-1]) == (False, None)
    finally:
        cache.clear(close=True)
        for s in segments:
            s.close()
