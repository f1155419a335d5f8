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

Reading only: changing these is the host administrator's decision.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["memfd_huge_pages", "tmpfs_huge_pages"]

# Module attributes so tests can point at a fake tree. Plain paths, not pathlib:
# the stores import this module in every worker, and pathlib costs ~4 ms to import.
_THP: str | os.PathLike[str] = "/sys/kernel/mm/transparent_hugepage"
_MEMINFO: str | os.PathLike[str] = "/proc/meminfo"

# shmem_enabled values that give huge pages to plain writes (pwrite) without a mapping.
_FOR_WRITES = ("always", "within_size", "force")


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
