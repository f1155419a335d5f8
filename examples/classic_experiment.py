"""The classic experiment, first version: nocopy vs a pickled copy per task.

10M rows of (datetime, float with NaN, 6-byte string) as a record array;
each of os.cpu_count() spawned workers computes np.nansum of the float field.
Prints wall time and peak memory (sum of PSS over the parent and every
worker, sampled in a separate thread; each shared page counted once).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from multiprocessing import get_context

import numpy as np
import psutil

import nocopy


def make_records(rows: int) -> np.recarray:
    half = rows // 2
    dates = np.full(rows, np.datetime64(datetime.today(), "us"))
    floats = np.tile(np.array([1.0, np.nan]), half)
    strings = np.tile(np.array([b"string", b"abc"], dtype="S6"), half)
    return np.rec.fromarrays([dates, floats, strings], names="date_col,float_col,character_col")


def sum_pickled(arr: np.recarray) -> float:
    return float(np.nansum(arr.float_col))


def sum_shared(ref: nocopy.Shared[np.recarray]) -> float:
    return float(np.nansum(ref.get().float_col))


class PeakMemory:
    """Peak of sum of PSS (parent + children) plus shared-segment bytes not mapped."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(method: str, arr: np.recarray, workers: int) -> tuple[float, float, int]:
    ctx = get_context("spawn")
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            if method == "pickle":
                sums = list(ex.map(sum_pickled, [arr] * workers))
            else:
                with nocopy.share(arr) as ref:
                    # The segment's pages are not mapped by the parent, so
                    # PSS alone would miss them: add the segment's size.
                    mem.peak += 0
                    sums = list(ex.map(sum_shared, [ref] * workers))
                    extra = ref.size
        wall = time.perf_counter() - t0
    peak = mem.peak + (extra if method == "nocopy" else 0)
    return wall, sums[0], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    arr = make_records(args.rows)
    expected = float(np.nansum(arr.float_col))
    print(f"{args.rows:,} rows, {arr.nbytes / 1e6:.0f} MB, {args.workers} spawned workers")
    print(f"{'method':<10} {'wall s':>8} {'peak MB':>9}  sum ok")
    for method in ("pickle", "nocopy"):
        wall, total, peak = run(method, arr, args.workers)
        print(f"{method:<10} {wall:8.2f} {peak / 1e6:9.0f}  {total == expected}")


if __name__ == "__main__":
    main()
