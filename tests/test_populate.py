"""Populated mappings: get(populate=True) and the pools' arguments arrive with every page mapped.

Proved from the kernel's own accounting: the Rss of the mapping that holds
the data (``/proc/self/smaps``), before anything reads it. Populating a
private (copy-on-write) mapping must not copy: its Anonymous stays 0.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
import pytest

import nocopy
from nocopy._pool import _walk

MiB = 1 << 20


def mapping_of(address: int) -> dict[str, int]:
    """The smaps counters (kB) of this process's mapping that contains *address*."""
    found: dict[str, int] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                if found is not None:
                    break
                if lo <= address < hi:
                    found = {"size_kB": (hi - lo) // 1024}
            elif found is not None and head.endswith(":"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    found[head[:-1]] = int(parts[1])
    assert found is not None, f"no mapping holds {address:#x}"
    return found


def resident_share(arr: np.ndarray) -> tuple[float, int]:
    """(fraction of *arr*'s mapping resident in this process, its anonymous kB), read before touching it."""
    m = mapping_of(arr.__array_interface__["data"][0])
    return m["Rss"] / m["size_kB"], m["Anonymous"]


def set_populate_max(n: int) -> None:
    _walk.POPULATE_MAX = n


@pytest.mark.parametrize("private", [False, True])
def test_get_populate_maps_every_page_and_copies_none(private: bool) -> None:
    data = np.arange(8 * MiB, dtype=np.float64)  # 64 MiB
    with nocopy.share(data) as ref:
        lazy = ref.get(private=private)
        if private:  # the cached read-only mapping of the first check is not reused by a private get
            frac, _ = resident_share(lazy)
            assert frac < 0.1, "a plain get() must stay O(1): its pages are faulted on access"
        full = ref.get(private=private, populate=True)
        frac, anon = resident_share(full)
        assert frac > 0.99
        assert anon == 0, "populating a copy-on-write mapping must not copy its pages"
        assert float(full[-1]) == data[-1]
        del lazy, full


def residency_of_argument(arr: np.ndarray) -> tuple[float, int, bool]:
    frac, anon = resident_share(arr)
    return frac, anon, bool(arr.flags.writeable)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_an_executor_argument_arrives_populated_as_a_private_view(method: str) -> None:
    data = np.arange(4 * MiB, dtype=np.float64)  # 32 MiB
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        frac, anon, writable = ex.submit(residency_of_argument, data).result()
    assert frac > 0.99
    assert anon == 0
    assert writable


def test_arguments_above_the_cap_are_faulted_on_access() -> None:
    data = np.arange(4 * MiB, dtype=np.float64)  # 32 MiB > the 16 MiB cap set in the worker
    with nocopy.ProcessPoolExecutor(
        1, mp_context=mp.get_context("spawn"), initializer=set_populate_max, initargs=(16 * MiB,)
    ) as ex:
        frac, _, _ = ex.submit(residency_of_argument, data).result()
    assert frac < 0.1


def test_pool_arguments_arrive_populated() -> None:
    data: Any = np.arange(4 * MiB, dtype=np.float64)
    with nocopy.Pool(1, context=mp.get_context("spawn")) as pool:
        frac, anon, _ = pool.apply(residency_of_argument, (data,))
    assert frac > 0.99 and anon == 0
