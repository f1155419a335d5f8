"""The classic experiment written three ways: pickled copies, the stdlib recipe, nocopy.

A record array of (datetime, float with NaN, 6-byte string) rows; each of N
spawned workers computes the NaN-aware sum of the float field.

1. Pickled copies -- the natural code: pass the array to every task.
   ``concurrent.futures`` pickles a full copy per task.
2. The standard library's shared-memory recipe -- copy the array into a
   ``SharedMemoryManager`` segment, pass its name, shape and dtype by hand,
   rebuild an ndarray over the buffer in every task, close it by hand.
   Fast, but every detail is yours (and object/string columns would not work).
3. nocopy -- the code of way 1 with only the import changed. The array is
   shared once; every task gets a (copy-on-write) view of the same pages.

    .venv/bin/python examples/classic_three_ways.py [--rows 10000000] [--workers 4]

It is teaching code, meant to be read and copied: it needs only NumPy and
nocopy, and builds its data in a few lines of its own. The measured
comparison (time phases, memory, every other method, on the experiment's
exact data) is ``nocopy bench seed --methods pickle,stdlib,nocopy-executor``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing as mp
import time
from datetime import datetime
from multiprocessing.managers import SharedMemoryManager
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

import nocopy


def make_records(rows: int) -> np.recarray:
    half = rows // 2
    dates = np.full(rows, np.datetime64(datetime(2024, 1, 1), "us"))
    floats = np.tile(np.array([1.0, np.nan]), half)
    strings = np.tile(np.array([b"string", b"abc"], dtype="S6"), half)
    return np.rec.fromarrays([dates, floats, strings], names="date_col,float_col,character_col")


def work(arr: np.recarray) -> float:
    return float(np.nansum(arr.float_col))


# -- 1. pickled copies ----------------------------------------------------------
def pickled_copies(arr: np.recarray, workers: int) -> list[float]:
    ctx = mp.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        return list(ex.map(work, [arr] * workers))


# -- 2. the standard library's recipe -----------------------------------------
def work_on_segment(name: str, shape: tuple[int, ...], dtype: Any) -> float:
    shm = SharedMemory(name)  # attach by name
    try:
        arr = np.recarray(shape, dtype=dtype, buf=shm.buf)
        total = float(np.nansum(arr.float_col))
        del arr  # a live view would make close() raise BufferError
        return total
    finally:
        shm.close()


def stdlib_recipe(arr: np.recarray, workers: int) -> list[float]:
    ctx = mp.get_context("spawn")
    with SharedMemoryManager() as smm:
        shm = smm.SharedMemory(arr.nbytes)
        copy = np.recarray(arr.shape, dtype=arr.dtype, buf=shm.buf)
        copy[:] = arr
        del copy
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            futs = [ex.submit(work_on_segment, shm.name, arr.shape, arr.dtype) for _ in range(workers)]
            return [f.result() for f in futs]


# -- 3. nocopy: way 1 with the import changed --------------------------------------
def with_nocopy(arr: np.recarray, workers: int) -> list[float]:
    ctx = mp.get_context("spawn")
    with nocopy.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        return list(ex.map(work, [arr] * workers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    arr = make_records(args.rows)
    expected = [float(np.nansum(arr.float_col))] * args.workers
    print(f"{args.rows:,} rows, {arr.nbytes / 1e6:.0f} MB, {args.workers} spawned workers")
    for name, way in (("pickled copies", pickled_copies), ("stdlib recipe", stdlib_recipe),
                      ("nocopy", with_nocopy)):
        t0 = time.perf_counter()
        sums = way(arr, args.workers)
        wall = time.perf_counter() - t0
        print(f"{name:<15} {wall:6.2f} s   sums ok: {sums == expected}")


if __name__ == "__main__":
    main()
