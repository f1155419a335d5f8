"""Mappings of a segment that hold no file descriptor.

CPython's ``mmap.mmap`` keeps a duplicate of the descriptor it maps for as
long as it lives, so a reader holding views of many segments runs out of
descriptors (``ulimit -n``, often 1024, in containers sometimes 64) although
a mapping needs none once made. A `Mapping` is made with the C
library's ``mmap`` and the caller closes its descriptor at once; the pages
are unmapped when the object is collected, that is when the last array or
buffer built over it is gone (each holds a reference to it), never before.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
from typing import Any

__all__ = ["MADV_POPULATE_READ", "Mapping", "huge_page_size"]

_MAP_FIXED = 0x10  # Linux; the mmap module does not export it
_MADV_DONTFORK = 10

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
# off_t is a C long on every LP64 system and on 32-bit Linux (without
# _FILE_OFFSET_BITS); the offset is always 0 here anyway.
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munmap.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value
_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int
# Linux 5.14+; Python 3.11's mmap module lacks the constant.
MADV_POPULATE_READ = 22

# mmap module access modes -> (protection, flags), as mmap.mmap maps them.
_MODES = {
    mmap.ACCESS_READ: (mmap.PROT_READ, mmap.MAP_SHARED),
    mmap.ACCESS_WRITE: (mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED),
    mmap.ACCESS_COPY: (mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE),
}


class Mapping:
    """*size* bytes of file *fd* mapped with *access* (an ``mmap.ACCESS_*`` mode).

    The descriptor may be closed as soon as this returns. Exposes the
    bytes through ``__array_interface__`` (read-only unless the mapping is
    writable), so ``numpy.asarray(mapping)`` is a uint8 array whose base is
    this object: it stays mapped while any view of it lives.
    """

    __slots__ = ("__weakref__", "address", "pid", "readonly", "size")

    def __init__(self, fd: int, size: int, access: int) -> None:
        prot, flags = _MODES[access]
        if size <= 0:
            raise ValueError(f"cannot map {size} bytes")
        # Aligned to the huge-page size when it spans one: a segment's 2 MiB
        # pages (see _hugepages) then map with one page-table entry each.
        # The kernel aligns some shmem mappings itself, not all (a tmpfs
        # mounted huge=never, the default).
        block = huge_page_size()
        if block and size >= block:
            self.address: int = _map_aligned(fd, size, prot, flags, block)
        else:
            self.address = _map(None, size, prot, flags, fd)
        self.size = size
        self.readonly = access == mmap.ACCESS_READ
        self.pid = 0  # set by keep_from_children: only that process may unmap

    def keep_from_children(self) -> None:
        """Leave this mapping out of processes forked from now on (``MADV_DONTFORK``).

        A writer's shared mapping inherited by a child (a fork in another
        thread, a fork-context pool) would make the kernel refuse to seal the
        segment against writes. In a forked child the object remains but the
        pages are not there: it never unmaps that address range, which the
        child may have reused. OSError if the kernel refuses.
        """
        self.pid = os.getpid()
        if _madvise(self.address, self.size, _MADV_DONTFORK) != 0:
            raise _errno_error("madvise(MADV_DONTFORK)")

    def populate(self) -> bool:
        """Map every page now, in one system call, instead of one fault per page later.

        A full pass over a fresh mapping of shared memory costs a page fault
        per few pages; ``MADV_POPULATE_READ`` maps them all at several times
        the speed (and a private mapping's pages stay shared until written).
        It makes this call O(size), so only callers about to read all of the
        data use it. Returns False where the kernel cannot (before 5.14), or
        when a page cannot be read (a truncated file): the pages are then
        faulted on access as usual, and a truncation is reported as it would be.
        """
        return self.advise(MADV_POPULATE_READ)

    def advise(self, advice: int, length: int | None = None, *, offset: int = 0) -> bool:
        """``madvise`` *length* bytes from *offset* (page-aligned; all by default); False when refused.

        The refusal's errno is left in ``ctypes.get_errno()``.
        """
        if not self.address:
            return False
        length = self.size - offset if length is None else length
        return bool(_madvise(self.address + offset, length, advice) == 0)

    def close(self) -> None:
        """Unmap now. Only for the mapping's maker, once no array built over it is left.

        (A writer must unmap before the segment is sealed against writes:
        the kernel refuses F_SEAL_WRITE while a writable shared mapping exists.)
        OSError if the kernel refuses.
        """
        address = self.address
        if address:
            self.address = 0
            if not self.pid or self.pid == os.getpid():
                _unmap(address, self.size)

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"data": (self.address, self.readonly), "shape": (self.size,), "typestr": "|u1", "version": 3}

    def __del__(self, _munmap: Any = _munmap, _getpid: Any = os.getpid) -> None:
        # Bound as defaults: at interpreter exit the module's globals may be gone.
        # The result is deliberately not checked: munmap of a whole mapping this
        # object made fails only for arguments it never passes (EINVAL), and a
        # finalizer has no caller to tell; close() reports it.
        address = getattr(self, "address", 0)
        if address:
            self.address = 0
            if not self.pid or self.pid == _getpid():
                _munmap(address, self.size)


@functools.cache
def huge_page_size() -> int:
    """The size of a huge page that maps with one page-table entry (2 MiB on x86-64); 0 without THP."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


_PAGE = mmap.PAGESIZE


def _errno_error(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def _map(addr: int | None, size: int, prot: int, flags: int, fd: int) -> int:
    got = _mmap(addr, size, prot, flags, fd, 0)
    if got is None or got == _MAP_FAILED:
        raise _errno_error("mmap")
    return int(got)


def _unmap(address: int, length: int) -> None:
    if _munmap(address, length) != 0:
        raise _errno_error("munmap")


def _map_aligned(fd: int, size: int, prot: int, flags: int, align: int) -> int:
    """Map *fd* at an address that is a multiple of *align* (a huge page maps only at its own alignment).

    Reserves *align* bytes more than needed with no access, maps the file over
    the aligned part, then gives back the slack on both sides. The file's
    mapping ends at *size* rounded up to a whole page (munmap refuses an
    address inside a page: the tail of the reservation would stay mapped,
    *align* bytes of address space lost per mapping).
    """
    anon = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    span = size + align
    reserved = _map(None, span, 0, anon, -1)  # PROT_NONE
    start = (reserved + align - 1) & ~(align - 1)
    end = start + (size + _PAGE - 1) // _PAGE * _PAGE
    try:
        _map(start, size, prot, flags | _MAP_FIXED, fd)
        if start > reserved:
            _unmap(reserved, start - reserved)
        if reserved + span > end:
            _unmap(end, reserved + span - end)
    except OSError:
        # Give back the whole span, the file's part included; this munmap
        # cannot fail (a whole range this function reserved, page-aligned).
        _munmap(reserved, span)
        raise
    return start
