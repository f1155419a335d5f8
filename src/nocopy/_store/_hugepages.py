"""Whether the kernel backs shared memory with huge pages here (``nocopy doctor``).

Filling a segment costs one page fault or page allocation per 4 KiB page;
with transparent huge pages (THP) for shmem the kernel allocates 2 MiB at a
time. Which pages a segment gets is decided by the kernel, per store:

- memfd (the internal shmem mount): ``/sys/kernel/mm/transparent_hugepage/
  shmem_enabled`` (and, since Linux 6.11, the per-size ``hugepages-<n>kB/
  shmem_enabled``). ``always``/``within_size`` give huge pages to every write,
  pwrite included; ``advise`` only to mappings madvised MADV_HUGEPAGE (pwrite,
  which share() uses, has no mapping); ``never``/``deny`` to none.
- posix (a tmpfs such as /dev/shm): the mount's ``huge=`` option (default
  never), overridden host-wide by ``deny`` or ``force`` in shmem_enabled.
- ``MFD_HUGETLB`` memfds need pages reserved in the hugetlb pool
  (``vm.nr_hugepages``), usually 0.

Those settings are the host administrator's decision, and nocopy only reads
them. But ``madvise(MADV_COLLAPSE)`` (Linux 6.1+) may turn a range of a shmem
file into 2 MiB pages whatever ``shmem_enabled`` says, short of ``deny``:
`collapse` does that for a fresh segment before it is filled, so share()
allocates and zeroes 2 MiB at a time instead of 4 KiB, and readers map the
segment with one page-table entry per 2 MiB (populating 220 MB: 15 ms -> 0.3 ms).
The memory is the same: only whole 2 MiB blocks inside the file are collapsed.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from typing import Any

from ._mapping import Mapping, huge_page_size

__all__ = ["collapse", "collapse_state", "forget_cost", "memfd_huge_pages", "tmpfs_huge_pages", "wanted"]

MADV_COLLAPSE = 25  # Linux 6.1+; not in Python 3.11's mmap module
# Kernels that do not know the call, or a host that denies shmem huge pages:
# asking again would only be refused again.
_REFUSED_FOR_GOOD = (errno.EINVAL, errno.ENOSYS, errno.EPERM)

# Module attributes so tests can point at a fake tree. Plain paths, not pathlib:
# the stores import this module in every worker, and pathlib costs ~4 ms to import.
_THP: str | os.PathLike[str] = "/sys/kernel/mm/transparent_hugepage"
_MEMINFO: str | os.PathLike[str] = "/proc/meminfo"

# shmem_enabled values that give huge pages to plain writes (pwrite) without a mapping.
_FOR_WRITES = ("always", "within_size", "force")


class _State:
    """What this process learned about MADV_COLLAPSE (a refusal for good is not asked again)."""

    refused: str | None = None
    # After a slow collapse, segments get small pages until then (time.monotonic()).
    slow_until = 0.0


# Collapsing costs ~0.06 ms per MiB where free huge pages are at hand. Where
# they are not, it can cost far more than small pages: on this project's VMs,
# once the process holds ~1 GB, every further huge page took ~2.2 ms per MiB
# (the host backs them again, one small page at a time), while 4 KiB pages
# stayed at ~0.3 ms per MiB, copy included. So the file is collapsed in
# steps (one block, then _STEP_MAX: a slow step wastes at most ~8 ms, and
# 4 MiB steps cost ~1 ms more per 220 MB than one call), and a step slower
# than _SLOW_PER_MIB of CPU ends the collapse. CPU time, not wall time:
# a thread preempted by booting workers is not slow memory. Once slow, the
# next shares for _SLOW_FOR seconds do not try (each try costs one block).
_SLOW_PER_MIB = 0.25e-3
_STEP_MAX = 4 << 20
_SLOW_FOR = 2.0


def collapse(fd: int, size: int) -> Mapping | None:
    """Give the fresh, empty shmem file *fd* of *size* bytes huge pages; a writable mapping of it, or None.

    Every whole huge-page block of the file is allocated as one zeroed 2 MiB
    page (``MADV_COLLAPSE`` needs one small page present in a block: a zero
    byte is written at each block's start). On success the returned
    mapping, aligned so that each block maps as one huge page, is the fast
    way to fill the segment (no allocation per page left to do); the caller
    still reserves the tail beyond the last whole block. None when not every
    block was collapsed (the kernel refused, had no free huge page, a cgroup
    or tmpfs limit, or huge pages cost more than small ones here just now):
    the caller then reserves the rest and writes as without huge pages; what
    was collapsed stays valid.
    """
    if not wanted():  # first: a bad setting is an error for every share, whatever its size
        return None
    block = huge_page_size()
    whole = size // block * block if block else 0
    if not whole or _State.refused is not None or time.monotonic() < _State.slow_until:
        return None
    try:
        mapping = Mapping(fd, size, mmap.ACCESS_WRITE)  # aligned: one entry per huge page
    except OSError:
        return None  # out of address space or map count: pwrite needs no mapping
    try:
        mapping.keep_from_children()
        for offset in range(0, whole, block):
            os.pwrite(fd, b"\0", offset)
        if _collapse_in_steps(mapping, whole, block):
            return mapping
    except OSError:
        pass  # a full tmpfs or memory limit (the caller's reservation reports it), or MADV_DONTFORK refused
    mapping.close()
    return None


def _collapse_in_steps(mapping: Mapping, whole: int, block: int) -> bool:
    """Collapse the first *whole* bytes of *mapping*; False if it stopped early (refused, or slow)."""
    done, step = 0, block
    while done < whole:
        n = min(step, whole - done)
        started = time.thread_time()
        if not mapping.advise(MADV_COLLAPSE, n, offset=done):
            err = ctypes.get_errno()
            # EINVAL also stands for passing failures of this range (a tmpfs that
            # filled up meanwhile): refused for good only if a fresh file is too.
            if err in _REFUSED_FOR_GOOD and _refused_here(block):
                _State.refused = f"madvise(MADV_COLLAPSE) refused: {os.strerror(err)}"
            return False
        done += n
        if done < whole and time.thread_time() - started > _SLOW_PER_MIB * n / (1 << 20):
            _State.slow_until = time.monotonic() + _SLOW_FOR
            return False
        step = min(2 * step, _STEP_MAX)
    return True


_OFF = ("0", "off", "no", "false", "never")
_ON = ("", "1", "on", "yes", "true", "auto")


def wanted() -> bool:
    """Whether $NOCOPY_HUGE_PAGES lets share() collapse segments (default: yes, where the kernel can)."""
    value = os.environ.get("NOCOPY_HUGE_PAGES", "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ValueError(
        f"NOCOPY_HUGE_PAGES={value!r} is not understood: set it to 'off' (segments get 4 KiB "
        "pages) or 'auto' (the default: 2 MiB pages where the kernel allows MADV_COLLAPSE)"
    )


def forget_cost() -> None:
    """Forget that huge pages were found dear a moment ago (the benchmark measures each way afresh)."""
    _State.slow_until = 0.0


def _refused_here(block: int) -> bool:
    """Whether the kernel refuses to collapse even one block of a fresh private memfd."""
    tried = _collapse_fresh(block)
    return tried is not None and tried[0] in _REFUSED_FOR_GOOD


def _collapse_fresh(size: int) -> tuple[int, float] | None:
    """Collapse a fresh private memfd of *size* bytes (whole blocks): (errno or 0, CPU seconds it took).

    None when the probe itself could not be made (no memfd, no room, no address space).
    """
    block = huge_page_size()
    try:
        fd = os.memfd_create("nocopy-collapse-probe", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None
    try:
        os.ftruncate(fd, size)
        for offset in range(0, size, block):
            os.pwrite(fd, b"\0", offset)
        mapping = Mapping(fd, size, mmap.ACCESS_WRITE)
        try:
            started = time.thread_time()
            ok = mapping.advise(MADV_COLLAPSE)
            return (0 if ok else ctypes.get_errno()), time.thread_time() - started
        finally:
            mapping.close()
    except OSError:
        return None
    finally:
        os.close(fd)


def collapse_state() -> dict[str, Any]:
    """For ``nocopy doctor`` and the bench: whether share() can give segments huge pages here, and their cost now.

    ``cost_ms_per_mib``: CPU time to allocate and zero a fresh 8 MiB in huge
    pages just now (cheap where free huge pages are at hand: ~0.06 ms per MiB;
    share() turns to 4 KiB pages above 0.25).
    """
    try:
        if not wanted():
            return {"available": False, "detail": "turned off by NOCOPY_HUGE_PAGES"}
    except ValueError as exc:
        return {"available": False, "detail": str(exc), "error": str(exc)}
    block = huge_page_size()
    if not block:
        return {"available": False, "detail": "this kernel has no transparent huge pages"}
    cost = _probe_cost(block) if _State.refused is None else None
    if cost is None:
        return {"available": False, "detail": _State.refused or "madvise(MADV_COLLAPSE) failed (no free huge page?)"}
    detail = f"segments get {block >> 20} MiB pages (MADV_COLLAPSE); the first 8 MiB cost {cost:.2f} ms per MiB now"
    if cost > _SLOW_PER_MIB * 1e3:
        detail += (
            ": more than 4 KiB pages cost (a VM whose host backs memory it was given back one small "
            "page at a time?), so share() uses 4 KiB pages while that lasts"
        )
    return {"available": True, "detail": detail, "cost_ms_per_mib": cost}


def _probe_cost(block: int) -> float | None:
    """ms of CPU per MiB to collapse a fresh 4-block memfd, or None if the kernel refused."""
    size = 4 * block
    tried = _collapse_fresh(size)
    if tried is None or tried[0]:
        return None
    return tried[1] * 1e3 / (size >> 20)


def _read(path: str | os.PathLike[str]) -> str:
    with open(path) as f:
        return f.read()


def _selected(path: str | os.PathLike[str]) -> str | None:
    """The bracketed choice of a sysfs setting such as ``always within_size advise [never] deny force``."""
    try:
        text = _read(path)
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def _hugetlb() -> dict[str, int | None]:
    values: dict[str, int] = {}
    try:
        for line in _read(_MEMINFO).splitlines():
            key, _, rest = line.partition(":")
            if key in ("HugePages_Total", "HugePages_Free", "Hugepagesize"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    size_kb = values.get("Hugepagesize")
    return {
        "pages_total": values.get("HugePages_Total"),
        "pages_free": values.get("HugePages_Free"),
        "page_size": None if size_kb is None else size_kb * 1024,
    }


def _per_size() -> dict[str, str]:
    """Per-size shmem THP settings (Linux >= 6.11): size -> setting; empty on older kernels."""
    out: dict[str, str] = {}
    try:
        names = sorted(n for n in os.listdir(_THP) if n.startswith("hugepages-") and n.endswith("kB"))
    except OSError:
        return out
    for name in names:
        value = _selected(os.path.join(_THP, name, "shmem_enabled"))
        if value is not None:
            out[name.removeprefix("hugepages-")] = value
    return out


def memfd_huge_pages() -> dict[str, Any]:
    """What memfd segments get: the shmem THP settings, the hugetlb pool, and a verdict.

    ``writes``: True when share()'s pwrite gets huge pages; ``mapped_advise``:
    True when only a mapping madvised MADV_HUGEPAGE would; None where the kernel has no THP.
    """
    shmem = _selected(os.path.join(_THP, "shmem_enabled"))
    sizes = _per_size()
    if sizes:
        # Per-size knobs decide; "inherit" follows the global setting.
        choices = {shmem if value == "inherit" else value for value in sizes.values()}
    else:
        choices = {shmem}
    known = shmem is not None and shmem != "deny"
    return {
        "shmem_enabled": shmem,
        "per_size": {size: value for size, value in sizes.items() if value != "never"},
        "writes": None if shmem is None else known and bool(choices & set(_FOR_WRITES)),
        "mapped_advise": None if shmem is None else known and "advise" in choices,
        "hugetlb": _hugetlb(),
    }


def tmpfs_huge_pages(mount_options: str | None) -> dict[str, Any]:
    """What posix segments in a tmpfs mounted with *mount_options* get."""
    huge = "never"
    for opt in (mount_options or "").split(","):
        if opt.startswith("huge="):
            huge = opt.removeprefix("huge=")
    shmem = _selected(os.path.join(_THP, "shmem_enabled"))
    if shmem in ("deny", "force"):
        huge = {"deny": "never", "force": "always"}[shmem]
    return {"huge": huge, "writes": huge in _FOR_WRITES}
