"""Executor benchmark (issue 4): the classic experiment's "method 2" code three ways,
and the per-task overhead of tiny tasks.

    .venv/bin/python benchmarks/bench_executor.py [--rows 10000000] [--workers 4]
                                                  [--repeat 3] [--tiny 2000] [--json out.json]

Method 2 is "pass the array to every task": ``list(ex.map(work, [arr] * n))``
inside ``with Executor(n, mp_context=spawn)``. Timed, start-up to teardown:

* ``pickled``   -- ``concurrent.futures.ProcessPoolExecutor``: a pickled copy per task;
* ``stdlib-shm``-- the hand-written ``SharedMemoryManager`` recipe: copy into a
  segment, pass (name, shape, dtype), rebuild the array in each task;
* ``nocopy``    -- the method-2 code with only the import changed to
  ``nocopy.ProcessPoolExecutor``.

Tiny tasks: a warm pool of each kind runs ``--tiny`` submits of a no-op and
reports microseconds per task. Every number is the median of ``--repeat``
runs; ratios are against the baselines of the same run (these machines are
noisy -- compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
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


def work_shm(spec: tuple[str, tuple[int, ...], Any]) -> float:
    name, shape, dtype = spec
    shm = SharedMemory(name)
    try:
        arr = np.recarray(shape, dtype=dtype, buf=shm.buf)
        total = float(np.nansum(arr.float_col))
        del arr
        return total
    finally:
        shm.close()


def noop(x: int) -> int:
    return x


def run_pickled(arr: np.recarray, n: int) -> float:
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as ex:
        return sum(ex.map(work, [arr] * n))


def run_nocopy(arr: np.recarray, n: int) -> float:
    with nocopy.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as ex:
        return sum(ex.map(work, [arr] * n))


def run_stdlib_shm(arr: np.recarray, n: int) -> float:
    with SharedMemoryManager() as smm:
        shm = smm.SharedMemory(arr.nbytes)
        shared = np.recarray(arr.shape, dtype=arr.dtype, buf=shm.buf)
        shared[:] = arr
        del shared
        with concurrent.futures.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as ex:
            return sum(ex.map(work_shm, [(shm.name, arr.shape, arr.dtype)] * n))


def timed(fn: Callable[[], float], repeat: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def per_task_us(ex: concurrent.futures.Executor, tasks: int, repeat: int) -> float:
    list(ex.map(noop, range(50)))  # warm: workers up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        futs = [ex.submit(noop, i) for i in range(tasks)]
        for f in futs:
            f.result()
        times.append((time.perf_counter() - t0) / tasks * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", type=int, default=2000, help="tiny tasks per overhead run")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    arr = make_records(args.rows)
    expected = float(np.nansum(arr.float_col)) * args.workers
    n = args.workers
    print(f"method 2: {args.rows:,} rows ({arr.nbytes / 1e6:.0f} MB record array), {n} spawned "
          f"workers, one task per worker; median of {args.repeat}")
    results: dict[str, Any] = {"rows": args.rows, "mb": arr.nbytes / 1e6, "workers": n, "method2": {}}
    for name, fn in (("pickled", run_pickled), ("stdlib-shm", run_stdlib_shm), ("nocopy", run_nocopy)):
        wall, value = timed(lambda fn=fn: fn(arr, n), args.repeat)  # type: ignore[misc]
        assert value == expected, (name, value, expected)
        results["method2"][name] = wall
    m2 = results["method2"]
    print(f"{'method':<12} {'wall s':>8} {'vs pickled':>11} {'vs stdlib-shm':>14}")
    for name, wall in m2.items():
        print(f"{name:<12} {wall:8.3f} {wall / m2['pickled']:10.2f}x {wall / m2['stdlib-shm']:13.2f}x")

    ctx = mp.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx) as std:
        std_us = per_task_us(std, args.tiny, args.repeat)
    with nocopy.ProcessPoolExecutor(n, mp_context=ctx) as ours:
        ours_us = per_task_us(ours, args.tiny, args.repeat)
    results["tiny_task_us"] = {"concurrent.futures": std_us, "nocopy": ours_us}
    print(f"\ntiny tasks ({args.tiny} submits of a no-op, warm pool of {n}):")
    print(f"  concurrent.futures {std_us:8.1f} us/task")
    print(f"  nocopy             {ours_us:8.1f} us/task  ({ours_us / std_us:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
