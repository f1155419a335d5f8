"""A planned encoding and its writing: the header, then each buffer copied once.

``plan(obj)`` walks the object (no bytes move) and knows the exact size
before anything is allocated; ``Plan.write_to_fd`` then copies each buffer
into the segment's file with pwrite, or ``Plan.write_into`` into a buffer (the
Ray integration). ``plan_output`` plans an empty writable array: no buffer to
copy, the segment's fresh pages are its zeros.
"""

from __future__ import annotations

import functools
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._process import usable_cpus
from ..errors import UnsupportedTypeError
from ._layout import FLAG_PICKLE, pack_header
from ._numpy import array_node
from ._registry import UNWRITTEN, Encoder

__all__ = ["PARALLEL_MIN", "Plan", "copy_bytes", "fill_threads", "plan", "plan_output", "write_at"]

_CHUNK = 64 << 20


class Plan:
    """An object planned for encoding: its exact ``size`` and ``token``, then
    ``write_into(mem)`` or ``write_to_fd(fd)`` (what share() does into a segment)."""

    def __init__(self, enc: Encoder, tree: Any) -> None:
        self._enc = enc
        self.token = os.urandom(16)
        flags = FLAG_PICKLE if enc.pickled else 0
        self._head, self._data_offset, self.size = pack_header(tree, enc.table, enc.data_size, self.token, flags)
        self.nbytes = sum(n for _, n in enc.table)
        self.pickled = enc.pickled

    @property
    def head(self) -> bytes:
        """The prefix and header written at the start of the segment (private: the owner's decode plan)."""
        return self._head

    def _pieces(self) -> Iterator[tuple[int, int, Any]]:
        for (off, n), src in zip(self._enc.table, self._enc.sources, strict=True):
            if n and src is not UNWRITTEN:
                yield self._data_offset + off, n, src

    def write_into(self, mem: np.ndarray) -> None:
        """Write header and buffers into *mem*, a writable uint8 array of at least ``size`` bytes.

        Large plans are copied by several threads at once, on disjoint ranges
        (NumPy releases the GIL while it copies).
        """
        if mem.dtype != np.uint8 or mem.ndim != 1 or mem.nbytes < self.size:
            raise ValueError(f"need a 1-d uint8 buffer of at least {self.size} bytes")
        mem[: len(self._head)] = np.frombuffer(self._head, dtype=np.uint8)
        jobs: list[Callable[[], None]] = []
        for start, n, src in self._pieces():
            jobs.extend(_copy_jobs(mem[start : start + n], src, n))
        _run_jobs(jobs, threads=fill_threads(self.nbytes))
        self._enc.release()

    def parts(self) -> tuple[bytes, list[Any]]:
        """The prefix and header, then every buffer as a contiguous bytes-like object, in table order.

        For writers that place each buffer themselves (Ray copies pickle
        out-of-band buffers straight into its object store): contiguous
        arrays and bytes are handed over as they are, without a copy; only
        a non-contiguous array or an Arrow IPC stream is materialised here,
        once. ``decode_parts`` rebuilds the object from them.
        """
        out: list[Any] = []
        for (_, n), src in zip(self._enc.table, self._enc.sources, strict=True):
            if src is UNWRITTEN or not n:
                out.append(np.zeros(n, dtype=np.uint8))
            elif isinstance(src, np.ndarray):
                arr = np.asarray(src)
                if arr.flags.f_contiguous and not arr.flags.c_contiguous:
                    arr = arr.T  # the same bytes in memory order
                out.append(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
            elif callable(src):
                dst = np.empty(n, dtype=np.uint8)
                src(dst)
                out.append(dst)
            else:
                out.append(memoryview(src).cast("B"))
        return self._head, out

    def write_to_fd(self, fd: int) -> None:
        """Write header and buffers into file *fd* (at least ``size`` bytes long) with pwrite.

        Writing through the file instead of a fresh mapping skips one page
        fault per 4 KiB page in this process: about 2x faster for large data.
        """
        os.pwrite(fd, self._head, 0)
        for start, n, src in self._pieces():
            if isinstance(src, np.ndarray):
                for pos, chunk in _contiguous_chunks(np.asarray(src)):
                    write_at(fd, chunk, start + pos)
            elif callable(src):
                _write_through_mapping(fd, start, n, src)
            else:
                write_at(fd, memoryview(src).cast("B"), start)
        self._enc.release()


def plan(obj: Any, *, allow_pickle: bool = False) -> Plan:
    """Plan sharing *obj*: UnsupportedTypeError now for anything it cannot store."""
    enc = Encoder(allow_pickle=allow_pickle)
    tree = enc.encode(obj)
    return Plan(enc, tree)


def plan_output(shape: tuple[int, ...], dtype: Any, *, order: str = "C") -> Plan:
    """Plan an array of *shape* and *dtype*, all zeros, for a writable segment.

    *shape* is already a tuple of non-negative ints. A subarray dtype adds its
    shape, as NumPy does (``zeros(2, ("f8", (3,)))`` has shape (2, 3)).
    """
    dt = np.dtype(dtype)
    if dt.subdtype is not None:
        dt, sub = dt.subdtype
        shape += tuple(sub)
    if dt.hasobject:
        raise UnsupportedTypeError(
            f"cannot make a shared output of dtype {dt}: Python objects cannot live in shared "
            "memory. Fix: use a fixed-width dtype (e.g. 'U20', 'f8')."
        )
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    enc = Encoder()
    nbytes = int(np.prod(shape, dtype=object)) * dt.itemsize
    node = array_node(enc.add(UNWRITTEN, nbytes), dt, shape, fortran=order == "F" and len(shape) > 1)
    return Plan(enc, node)


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write all of *data* into file *fd* at *offset* (pwrite in pieces of at most 1 GiB)."""
    done, total = 0, len(data)
    while done < total:
        done += os.pwrite(fd, data[done : done + (1 << 30)], offset + done)


def _contiguous_chunks(src: np.ndarray) -> Iterator[tuple[int, memoryview]]:
    """Yield (byte offset, uint8 memoryview) pieces of *src* in C order."""
    if src.flags.f_contiguous and not src.flags.c_contiguous:
        src = src.T
    if src.flags.c_contiguous:
        yield 0, src.reshape(-1).view(np.uint8).data
        return
    # Non-contiguous: make it contiguous a slab at a time (bounded extra memory).
    rows = max(1, _CHUNK // max(1, src[0].nbytes)) if src.ndim else 1
    row_bytes = src[0].nbytes if src.ndim else src.nbytes
    for i in range(0, len(src), rows):
        slab = np.ascontiguousarray(src[i : i + rows])
        yield i * row_bytes, slab.reshape(-1).view(np.uint8).data


def _write_through_mapping(fd: int, start: int, n: int, writer: Callable[[np.ndarray], None]) -> None:
    """Let *writer* fill bytes [start, start+n) of *fd* through a mapping of just those pages."""
    base = start - start % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(fd, start + n - base, offset=base)
    # A child forked meanwhile must not inherit a writable mapping: the kernel
    # would refuse to seal the segment against writes while it lives.
    mm.madvise(mmap.MADV_DONTFORK)
    view = np.frombuffer(mm, dtype=np.uint8)
    try:
        writer(view[start - base :])
    finally:
        del view  # the mapping can only close once no array exports it
        try:
            mm.close()
        except BufferError:  # pragma: no cover - a writer kept a view; unmapped when collected
            pass


def fill_threads(nbytes: int) -> int:
    """How many threads copy *nbytes*: one below `PARALLEL_MIN`, else $NOCOPY_FILL_THREADS,
    else the usable CPUs (at most 4).

    Measured filling 220 MB of fresh huge-page shared memory on 2 cores: one
    thread 29.6 ms, two 24.6 ms, three and four no better (memory-bound).
    """
    env = os.environ.get("NOCOPY_FILL_THREADS", "").strip()
    # ASCII digits only ("²".isdigit() is true, int() refuses it), and at most
    # MAX_FILL_THREADS: the copy is memory-bound long before, and a typo'd
    # 10**7 would build that many threads before any byte is copied.
    if env and (not (env.isascii() and env.isdigit()) or not 1 <= int(env) <= MAX_FILL_THREADS):
        raise ValueError(
            f"NOCOPY_FILL_THREADS={env!r} is not a number of threads from 1 to {MAX_FILL_THREADS}: "
            "set it to 1 to fill segments from the calling thread only, or unset it (one per CPU, at most 4)"
        )
    if nbytes < PARALLEL_MIN:
        return 1
    if env:
        return int(env)
    return min(usable_cpus(), 4)


# Below this, starting threads costs more than they save.
PARALLEL_MIN = 64 << 20
MAX_FILL_THREADS = 64
_PIECE = 16 << 20


def copy_bytes(dst: np.ndarray, src: np.ndarray) -> None:
    """Copy the flat uint8 array *src* into *dst* as share() fills a segment (threads when large)."""
    _run_jobs(list(_copy_jobs(dst, src, src.nbytes)), threads=fill_threads(src.nbytes))


def _copy_jobs(dst: np.ndarray, src: Any, n: int) -> Iterator[Callable[[], None]]:
    """The copies that fill *dst* from *src*, contiguous ones cut in `_PIECE`-sized ranges."""
    if callable(src):
        yield lambda: src(dst)  # a writer that fills its slot in place (Arrow IPC streams)
        return
    if isinstance(src, np.ndarray):
        raw = _raw_bytes(src)
        if raw is None:
            yield lambda: _copy_strided(dst, src)
            return
    else:
        raw = np.frombuffer(src, dtype=np.uint8, count=n)
    for lo in range(0, n, _PIECE):
        yield functools.partial(_copy_range, dst, raw, lo, min(n, lo + _PIECE))


def _copy_range(dst: np.ndarray, src: np.ndarray, lo: int, hi: int) -> None:
    dst[lo:hi] = src[lo:hi]


def _run_jobs(jobs: list[Callable[[], None]], *, threads: int) -> None:
    """Run *jobs* on *threads* threads (this one included); the first error is raised here."""
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    pending = iter(jobs)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while not errors:
            with lock:
                job = next(pending, None)
            if job is None:
                return
            try:
                job()
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

    # Never more threads than jobs: the others would find nothing to do.
    helpers = [
        threading.Thread(target=work, name="nocopy-fill", daemon=True) for _ in range(min(threads, len(jobs)) - 1)
    ]
    for t in helpers:
        t.start()
    try:
        work()
    except BaseException as exc:  # Ctrl-C in this thread: stop handing out jobs, then wait
        errors.append(exc)
    interrupted = _join_all(helpers)
    if interrupted is not None:
        raise interrupted
    if errors:
        raise errors[0]


def _join_all(threads: list[threading.Thread]) -> BaseException | None:
    """Join every thread, even through Ctrl-C (retried); the first interruption, if any.

    They write into memory that the caller may unmap as soon as this returns.
    """
    interrupted: BaseException | None = None
    for t in threads:
        while t.is_alive():
            try:
                t.join()
            except BaseException as exc:
                interrupted = interrupted or exc
    return interrupted


def _raw_bytes(src: np.ndarray) -> np.ndarray | None:
    """*src*'s bytes in memory order as a flat uint8 array, or None when it is not contiguous."""
    src = np.asarray(src)
    if src.flags.f_contiguous and not src.flags.c_contiguous:
        src = src.T
    if not src.flags.c_contiguous:
        return None
    # Raw bytes: numpy copies structured dtypes field by field, ~3x slower.
    return src.reshape(-1).view(np.uint8)


def _copy_strided(dst: np.ndarray, src: np.ndarray) -> None:
    src = np.asarray(src)
    typed = dst.view(src.dtype).reshape(src.shape)
    np.copyto(typed, src, casting="no")
