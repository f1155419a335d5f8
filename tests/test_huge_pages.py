"""share() gives large segments 2 MiB pages (MADV_COLLAPSE) and fills them from several threads."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import nocopy
from nocopy._codec import _plan, decode_buffer, plan
from nocopy._store import _hugepages
from nocopy._store._mapping import Mapping

MiB = 1 << 20


def _kernel_can_collapse() -> str | None:
    """Why this kernel cannot collapse shmem into huge pages, or None when it must be able to."""
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if release is None or (int(release[1]), int(release[2])) < (6, 1):
        return f"MADV_COLLAPSE needs Linux 6.1+ (this is {os.uname().release})"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            if "[deny]" in f.read():
                return "the host denies shmem huge pages"
    except OSError:
        return "no transparent huge pages in this kernel"
    return None


def _collapse_works_now() -> str | None:
    why = _kernel_can_collapse()
    if why is None and _hugepages._probe_cost(2 * MiB) is None:
        why = "MADV_COLLAPSE failed just now (no free huge page, or a memory limit)"
    return why


needs_collapse = pytest.mark.skipif(_collapse_works_now() is not None, reason=str(_collapse_works_now()))


def _pmd_mapped_bytes(address: int) -> int:
    """Bytes of the mapping holding *address* that this process maps with huge-page entries."""
    with open("/proc/self/smaps") as f:
        text = f.read()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        lo, hi = (int(x, 16) for x in block.split(" ", 1)[0].split("-"))
        if lo <= address < hi:
            return 1024 * sum(int(kb) for kb in re.findall(r"(?:Shmem|File)PmdMapped:\s+(\d+) kB", block))
    raise AssertionError(f"no mapping holds {address:#x}")


def _writable_shared_mappings_of(name: str) -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if name in line and line.split()[1][1:2] == "w" and line.split()[1][3] == "s"]


@pytest.fixture
def never_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Judge no collapse slow: whether huge pages are cheap right now depends on the host
    (on a VM, on whether it still backs the free memory), not on the code under test."""
    monkeypatch.setattr(_hugepages.time, "thread_time", lambda: 0.0)


@pytest.fixture(autouse=True)
def _fresh_collapse_state() -> Iterator[None]:
    # A refusal "for good" is remembered per process: give every test a clean slate.
    saved = _hugepages._State.refused, _hugepages._State.slow_until
    _hugepages._State.refused, _hugepages._State.slow_until = None, 0.0
    yield
    _hugepages._State.refused, _hugepages._State.slow_until = saved


@needs_collapse
@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_large_segments_get_huge_pages_and_readers_map_them_so(backend: str, never_slow: None) -> None:
    data = np.arange(16 * MiB // 8, dtype=np.int64)
    with nocopy.share(data, backend=backend) as ref:
        got = ref.get(populate=True)
        np.testing.assert_array_equal(got, data)
        # 16 MiB of data plus a header: at least 7 whole 2 MiB blocks, each one page-table entry.
        assert _pmd_mapped_bytes(got.__array_interface__["data"][0]) >= 14 * MiB
        assert not _writable_shared_mappings_of(ref.name), "the writer's mapping outlived the fill"


@needs_collapse
def test_a_shared_huge_segment_is_still_sealed_against_writes(never_slow: None) -> None:
    with nocopy.share(np.ones(8 * MiB, np.uint8), backend="memfd") as ref:
        fd = ref._owner.fd  # type: ignore[attr-defined]
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)


@pytest.mark.skipif(
    bool(_hugepages.memfd_huge_pages()["writes"]), reason="this kernel gives shared memory huge pages on every write"
)
def test_huge_pages_off_gives_small_pages_and_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOCOPY_HUGE_PAGES", "off")
    data = np.arange(8 * MiB // 8, dtype=np.int64)
    with nocopy.share(data) as ref:
        got = ref.get(populate=True)
        np.testing.assert_array_equal(got, data)
        assert _pmd_mapped_bytes(got.__array_interface__["data"][0]) == 0


@pytest.mark.parametrize(
    ("err", "for_good"), [(errno.EAGAIN, False), (errno.ENOMEM, False), (errno.EINVAL, True)]
)
def test_a_refused_collapse_falls_back_to_reserved_small_pages(
    err: int, for_good: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Mapping, advice: int, length: int | None = None, *, offset: int = 0) -> bool:
        ctypes.set_errno(err)
        return False

    monkeypatch.setattr(Mapping, "advise", refuse)
    data = np.arange(6 * MiB // 8, dtype=np.int64)
    for backend in ("memfd", "posix"):
        with nocopy.share(data, backend=backend) as ref:
            np.testing.assert_array_equal(ref.get(), data)
            # Every page reserved all the same (a later shortage is an error now, not SIGBUS).
            assert os.fstat(ref._owner.fd).st_blocks * 512 >= ref.size  # type: ignore[attr-defined]
    # A kernel that does not know the call is not asked again; a busy one is.
    assert (_hugepages._State.refused is not None) is for_good
    assert _hugepages.collapse_state()["available"] is False


def test_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.zeros(4 * MiB, np.uint8)
    monkeypatch.setenv("NOCOPY_HUGE_PAGES", "sometimes")
    with pytest.raises(ValueError, match="NOCOPY_HUGE_PAGES='sometimes'"):
        nocopy.share(data)
    monkeypatch.delenv("NOCOPY_HUGE_PAGES")
    monkeypatch.setenv("NOCOPY_FILL_THREADS", "0")
    with pytest.raises(ValueError, match="NOCOPY_FILL_THREADS='0'"):
        _plan.fill_threads(_plan.PARALLEL_MIN)
    # Whatever the size, and before anything is allocated.
    with pytest.raises(ValueError, match="NOCOPY_FILL_THREADS='0'"):
        nocopy.share(np.zeros(10))
    # Not ASCII digits (int() refuses "²", which isdigit() accepts), or absurdly many:
    # the same clear error, at once (10**7 once built that many threads first).
    for bad in ("\u00b2", "\u0663", "10000000", str(_plan.MAX_FILL_THREADS + 1), "-2", "2.5"):
        monkeypatch.setenv("NOCOPY_FILL_THREADS", bad)
        with pytest.raises(ValueError, match=f"NOCOPY_FILL_THREADS={bad!r} is not a number of threads from 1 to"):
            nocopy.share(np.zeros(10))
    monkeypatch.setenv("NOCOPY_FILL_THREADS", str(_plan.MAX_FILL_THREADS))
    assert _plan.fill_threads(_plan.PARALLEL_MIN) == _plan.MAX_FILL_THREADS
    monkeypatch.setenv("NOCOPY_FILL_THREADS", "2")
    monkeypatch.setenv("NOCOPY_HUGE_PAGES", "maybe")
    with pytest.raises(ValueError, match="NOCOPY_HUGE_PAGES='maybe'"):
        nocopy.share(np.zeros(10))
    state = _hugepages.collapse_state()  # the doctor says so instead of failing
    assert state["available"] is False and "NOCOPY_HUGE_PAGES='maybe'" in state["error"]


def _mixed() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    grid = rng.random((300, 200))
    rec = np.zeros(5000, dtype=[("a", "i8"), ("b", "f4"), ("c", "S3")])
    rec["a"] = np.arange(5000)
    return {
        "c": rng.integers(0, 1 << 30, 300_000),
        "f": np.asfortranarray(grid),
        "strided": grid[::3, ::2],  # neither C- nor F-contiguous
        "rec": rec,
        "bytes": b"abc" * 50_000,
    }


def test_threads_fill_the_same_bytes_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _mixed()
    p1 = plan(obj)
    one = np.zeros(p1.size, np.uint8)
    monkeypatch.setenv("NOCOPY_FILL_THREADS", "1")
    p1.write_into(one)

    # Every piece split into many small ranges, copied by 3 threads.
    monkeypatch.setattr(_plan, "PARALLEL_MIN", 0)
    monkeypatch.setattr(_plan, "_PIECE", 4096)
    monkeypatch.setenv("NOCOPY_FILL_THREADS", "3")
    seen: set[str] = set()
    two = threading.Event()
    copy = _plan._copy_range

    def spy(*args: Any) -> None:
        # The first thread to copy waits (up to 10 s) for a second one: no
        # scheduling luck can let one thread take every piece unnoticed.
        seen.add(threading.current_thread().name)
        if len(seen) > 1:
            two.set()
        two.wait(10)
        copy(*args)

    monkeypatch.setattr(_plan, "_copy_range", spy)
    p3 = plan(obj)
    many = np.zeros(p3.size, np.uint8)
    p3.write_into(many)
    assert len(seen) > 1, "one thread did all the copying"
    # The token differs per plan; everything after the header is the same.
    head = p1.size - p1.nbytes
    assert p3.size == p1.size and bytes(many[head:]) == bytes(one[head:])
    back = decode_buffer(many, trusted=True)
    for key, value in obj.items():
        if isinstance(value, bytes):
            assert bytes(back[key]) == value
        else:
            np.testing.assert_array_equal(back[key], value)


def test_an_error_in_a_fill_thread_is_raised_in_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_plan, "PARALLEL_MIN", 0)
    monkeypatch.setattr(_plan, "_PIECE", 4096)
    monkeypatch.setenv("NOCOPY_FILL_THREADS", "3")
    calls = 0
    lock = threading.Lock()

    def fail_once(*args: Any) -> None:
        nonlocal calls
        with lock:
            calls += 1
            n = calls
        if n == 5:
            raise OSError(errno.EFAULT, "simulated")

    monkeypatch.setattr(_plan, "_copy_range", fail_once)
    p = plan(np.arange(100_000))
    with pytest.raises(OSError, match="simulated"):
        p.write_into(np.zeros(p.size, np.uint8))
    assert not [t for t in threading.enumerate() if t.name == "nocopy-fill"]


def _spy_on_collapse(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = Mapping.advise

    def spy(self: Mapping, advice: int, length: int | None = None, *, offset: int = 0) -> bool:
        if advice == _hugepages.MADV_COLLAPSE:
            calls.append((offset, length or 0))
        return real(self, advice, length, offset=offset)

    monkeypatch.setattr(Mapping, "advise", spy)
    return calls


@needs_collapse
def test_collapsing_goes_in_steps(monkeypatch: pytest.MonkeyPatch, never_slow: None) -> None:
    calls = _spy_on_collapse(monkeypatch)
    data = np.arange(41 * MiB // 8, dtype=np.int64)  # 41 MiB + header: 20 whole blocks
    with nocopy.share(data) as ref:
        got = ref.get(populate=True)
        np.testing.assert_array_equal(got, data)
        assert _pmd_mapped_bytes(got.__array_interface__["data"][0]) >= 38 * MiB
    assert [length // MiB for _, length in calls] == [2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2]
    assert [offset // MiB for offset, _ in calls] == [0, 2, 6, 10, 14, 18, 22, 26, 30, 34, 38]


@needs_collapse
def test_collapsing_stops_at_the_first_step_slower_than_small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    # Huge pages that cost more than 4 KiB ones (a VM's host backing them again):
    # one block is tried, the rest gets small pages, written with pwrite.
    calls = _spy_on_collapse(monkeypatch)
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(_hugepages.time, "thread_time", lambda: float(next(ticks)))  # 1 s per step
    data = np.arange(16 * MiB // 8, dtype=np.int64)
    with nocopy.share(data) as ref:
        np.testing.assert_array_equal(ref.get(), data)
        assert os.fstat(ref._owner.fd).st_blocks * 512 >= ref.size  # type: ignore[attr-defined]
        assert not _writable_shared_mappings_of(ref.name)
    assert calls == [(0, 2 * MiB)]
    # Slow now is not refused for good: the next shares for a while do not try,
    # later ones try again.
    assert _hugepages._State.refused is None
    nocopy.share(data).close()
    assert calls == [(0, 2 * MiB)]
    now = time.monotonic()
    monkeypatch.setattr(_hugepages.time, "monotonic", lambda: now + _hugepages._SLOW_FOR + 1)
    nocopy.share(data).close()
    assert len(calls) == 2


@needs_collapse
def test_the_doctor_reports_what_huge_pages_cost_now(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _hugepages.collapse_state()
    assert state["available"] is True and state["cost_ms_per_mib"] >= 0
    assert "MADV_COLLAPSE" in state["detail"]
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(_hugepages.time, "thread_time", lambda: float(next(ticks)))  # 1 s per collapse
    slow = _hugepages.collapse_state()
    assert slow["cost_ms_per_mib"] > 100 and "share() uses 4 KiB pages while that lasts" in slow["detail"]
    monkeypatch.setenv("NOCOPY_HUGE_PAGES", "off")
    assert _hugepages.collapse_state() == {"available": False, "detail": "turned off by NOCOPY_HUGE_PAGES"}


_FAILED_FILL = """
import os, sys, traceback, numpy as np, nocopy
from nocopy._codec import _plan
from nocopy._store import _hugepages
_hugepages.time.thread_time = lambda: 0.0   # the huge-page path, whatever the host's state
_plan.PARALLEL_MIN = 0
os.environ["NOCOPY_FILL_THREADS"] = "2"
calls = [0]
copy = _plan._copy_range
def failing(*args):
    calls[0] += 1
    if calls[0] == 3:
        raise OSError(5, "simulated copy failure")
    copy(*args)
_plan._copy_range = failing
try:
    nocopy.share(np.ones(40 << 20, np.uint8))
except OSError as exc:
    # What pytest -l, IDEs and error reporters do: read the failed frames' arrays.
    traceback.TracebackException.from_exception(exc, capture_locals=True)
    tb, total = exc.__traceback__, 0
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, np.ndarray):
                total += int(value[:4096].sum())
        tb = tb.tb_next
    print("read after the failure:", total > 0)
else:
    sys.exit("no error")
"""


@needs_collapse
def test_arrays_left_in_a_failed_fills_traceback_stay_readable() -> None:
    proc = subprocess.run([sys.executable, "-c", _FAILED_FILL], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"  # -11: read unmapped memory
    assert "read after the failure: True" in proc.stdout


_INTERRUPTED_FILL = """
import os, sys, threading, time, numpy as np, nocopy
from nocopy._codec import _plan
from nocopy._store import _hugepages
_hugepages.time.thread_time = lambda: 0.0
_plan.PARALLEL_MIN = 0
_plan._PIECE = 1 << 20
os.environ["NOCOPY_FILL_THREADS"] = "2"
copy = _plan._copy_range
def slow(*args):
    if threading.current_thread().name == "nocopy-fill":
        time.sleep(0.05)   # the helper is still copying when Ctrl-C arrives
    copy(*args)
_plan._copy_range = slow
join = threading.Thread.join
hits = [0]
def interrupted_join(self, timeout=None):
    if self.name == "nocopy-fill" and hits[0] == 0:
        hits[0] += 1
        raise KeyboardInterrupt
    return join(self, timeout)
threading.Thread.join = interrupted_join
try:
    nocopy.share(np.ones(64 << 20, np.uint8))
except KeyboardInterrupt:
    print("interrupted; fill threads left:", [t.name for t in threading.enumerate() if t.name == "nocopy-fill"])
else:
    sys.exit("no KeyboardInterrupt")
time.sleep(0.2)
"""


@needs_collapse
def test_ctrl_c_during_a_fill_waits_for_its_threads() -> None:
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_FILL], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    assert "interrupted; fill threads left: []" in proc.stdout


@needs_collapse
def test_a_fork_during_a_fill_does_not_block_the_seal(monkeypatch: pytest.MonkeyPatch, never_slow: None) -> None:
    # A child forked while share() fills (another thread, a fork-context pool)
    # must not inherit the writer's mapping: the kernel refuses F_SEAL_WRITE
    # while any process maps the segment writable.
    children: list[int] = []
    copy = _plan._copy_range

    def fork_once(*args: Any) -> None:
        if not children:
            pid = os.fork()
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        copy(*args)

    monkeypatch.setattr(_plan, "_copy_range", fork_once)
    try:
        with nocopy.share(np.ones(8 * MiB, np.uint8), backend="memfd") as ref:
            assert fcntl.fcntl(ref._owner.fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE  # type: ignore[attr-defined]
            assert int(ref.get()[-1]) == 1
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert children


@needs_collapse
def test_a_failure_midway_is_not_taken_for_a_kernel_without_collapse(
    monkeypatch: pytest.MonkeyPatch, never_slow: None
) -> None:
    # EINVAL from a later step (a tmpfs filling up meanwhile) is not "this kernel cannot".
    calls = 0
    real = Mapping.advise

    def third_fails(self: Mapping, advice: int, length: int | None = None, *, offset: int = 0) -> bool:
        nonlocal calls
        if advice == _hugepages.MADV_COLLAPSE:
            calls += 1
            if calls == 3:
                ctypes.set_errno(errno.EINVAL)
                return False
        return real(self, advice, length, offset=offset)

    monkeypatch.setattr(Mapping, "advise", third_fails)
    data = np.arange(30 * MiB // 8, dtype=np.int64)
    with nocopy.share(data) as ref:
        np.testing.assert_array_equal(ref.get(), data)
    assert _hugepages._State.refused is None
    assert calls == 4  # the third step failed, then one probe of a fresh file succeeded


@needs_collapse
def test_the_writers_mapping_is_never_unmapped_under_a_live_array(never_slow: None) -> None:
    from nocopy._store import get_store

    store = get_store("memfd")
    seg = store.create(8 * MiB, what="a test segment")
    try:
        assert seg.mapping is not None
        arr = np.asarray(seg.mapping)
        arr[:4] = 7
        # Something still holds the writer's mapping: sealing fails cleanly...
        with pytest.raises(OSError) as info:
            store.seal(seg, "0" * 32, writable=False)
        assert info.value.errno == errno.EBUSY
        assert int(arr[:4].sum()) == 28
    finally:
        seg.release()
    # ...and the array stays readable after release: it is unmapped with its last view.
    assert int(arr[0]) == 7


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not _hugepages.huge_page_size(), reason="no transparent huge pages: mappings are not aligned")
def test_mapping_a_segment_of_any_size_gives_back_all_its_address_space() -> None:
    # A size that is not a multiple of the page size (a header and 64-byte
    # aligned buffers): the aligned placement once left the tail of its
    # reservation mapped, up to 2 MiB of address space per mapping ever made.
    size = 4 * MiB + 100
    fd = os.memfd_create("nocopy-test-aligned", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        Mapping(fd, size, mmap.ACCESS_READ).close()  # warm up whatever the first call allocates
        before = _address_space()
        for _ in range(64):
            m = Mapping(fd, size, mmap.ACCESS_READ)
            assert m.address % _hugepages.huge_page_size() == 0
            m.close()
        for _ in range(64):
            np.asarray(Mapping(fd, size, mmap.ACCESS_READ))[0]  # dropped: unmapped by the finalizer
        grown = _address_space() - before
    finally:
        os.close(fd)
    assert grown < 16 * MiB, f"128 mappings left {grown >> 20} MiB of address space behind"


def test_a_refused_munmap_is_an_oserror_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._store import _mapping

    fd = os.memfd_create("nocopy-test-unmap", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 3 * MiB + 1)
        m = Mapping(fd, 3 * MiB + 1, mmap.ACCESS_READ)
    finally:
        os.close(fd)
    address, size, real = m.address, m.size, _mapping._munmap

    def refuse(addr: int, length: int) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(_mapping, "_munmap", refuse)
    with pytest.raises(OSError) as info:
        m.close()
    assert info.value.errno == errno.EINVAL and "munmap" in str(info.value)
    assert real(address, size) == 0  # still mapped: the refusal was real, undo it by hand
