"""Core benchmark (issue 2): share() vs a raw copy into fresh shared memory, and
get() latency in a worker as the data grows (each get() maps the segment
afresh from a new handle: the mapping is dropped between runs).

    .venv/bin/python benchmarks/bench_core.py [--sizes 1,100,1000] [--repeat 5]

Ratios are against a baseline measured in the same run (medians of --repeat
runs): "copyto" = posix_fallocate + mmap + np.copyto of the bytes into a fresh
memfd, the floor any shared-memory method pays; get() is timed inside a
spawned worker that receives the pickled handle.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import statistics
import time

import numpy as np

import nocopy


def raw_copy_into_fresh_shm(arr: np.ndarray) -> float:
    t0 = time.perf_counter()
    fd = os.memfd_create("bench", os.MFD_CLOEXEC)
    os.ftruncate(fd, arr.nbytes)
    os.posix_fallocate(fd, 0, arr.nbytes)
    mm = mmap.mmap(fd, arr.nbytes)
    dst = np.frombuffer(mm, dtype=np.uint8)
    np.copyto(dst, arr.view(np.uint8))
    elapsed = time.perf_counter() - t0
    del dst
    mm.close()
    os.close(fd)
    return elapsed


def time_share(arr: np.ndarray) -> float:
    t0 = time.perf_counter()
    ref = nocopy.share(arr)
    elapsed = time.perf_counter() - t0
    ref.close()
    return elapsed


def _get_in_worker(ref: nocopy.Shared[np.ndarray]) -> tuple[float, float]:
    t0 = time.perf_counter()
    view = ref.get()
    t1 = time.perf_counter()
    first = view[len(view) // 2]  # touch one page
    del first
    ref.close()
    return t1 - t0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1,100,1000", help="sizes in MB, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'size':>8} {'copyto ms':>10} {'share ms':>9} {'ratio':>6} {'get() us in worker':>19}")
    get_times: dict[int, float] = {}
    with mp.get_context("spawn").Pool(1) as pool:
        for mb in sizes:
            arr = np.frombuffer(np.random.default_rng(0).bytes(mb * 2**20), dtype=np.uint8)
            base = [raw_copy_into_fresh_shm(arr) for _ in range(args.repeat)]
            share = [time_share(arr) for _ in range(args.repeat)]
            # One segment, several fresh handles: timing get() right after a
            # fresh 1 GB share would mostly measure the CPU caches it evicted.
            with nocopy.share(arr) as ref:
                gets = [pool.apply(_get_in_worker, (ref,))[0] for _ in range(args.repeat)]
            b, s, g = statistics.median(base), statistics.median(share), statistics.median(gets)
            get_times[mb] = g
            print(f"{mb:>6}MB {b * 1e3:10.1f} {s * 1e3:9.1f} {s / b:6.2f} {g * 1e6:19.0f}")
    lo, hi = min(sizes), max(sizes)
    print(f"get() {hi} MB / get() {lo} MB = {get_times[hi] / get_times[lo]:.2f}")


if __name__ == "__main__":
    main()
