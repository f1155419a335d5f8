"""Ray benchmark (issue 7): nocopy.ray vs plain Ray, inside tasks.

    .venv/bin/python benchmarks/bench_ray.py [--gb 1.0] [--rows 10000000]
                                             [--workers 2] [--repeat 3] [--json out.json]

Smoke run (seconds): ``--gb 0.02 --rows 100000 --repeat 1``.

Part 1, "frame": a DataFrame of --gb GB (datetime64 column, float column,
object-string column) is put once with ``ray.put`` and once with
``nocopy.ray.put``; a task then gets it (``ray.get`` vs ``nocopy.ray.get``)
and reads the datetime and float values. Reported per method: put time in
the driver, get time in the task, and the task's USS growth (pages it owns:
what it copied); ratios are plain / nocopy.

Part 2, "classic": the classic experiment's Ray method (``ray.put`` of the
record array, --workers tasks each ``np.nansum`` its float field) against the
same with ``nocopy.ray.put`` / ``nocopy.ray.get``. Work phase only (put plus
all tasks); ``ray.init`` and worker start-up are timed apart, once.

Both parts use one local Ray instance with --workers CPUs. Times are medians
of --repeat runs; ratios compare methods measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def uss() -> int:
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def make_frame(nbytes: int) -> Any:
    """datetime (8 B) + float (8 B) + 8-character strings (8 B + 8 B offset in Arrow) per row."""
    import pandas as pd

    n = max(1, nbytes // 32)
    words = np.array([f"w{i:07d}" for i in range(1000)], dtype=object)
    return pd.DataFrame(
        {
            "t": pd.date_range("2000-01-01", periods=n, freq="s"),
            "x": np.linspace(0.0, 1.0, n),
            "s": pd.Series(words[np.arange(n) % 1000], dtype=object),
        }
    )


def get_in_task(ref: list[Any], use_nocopy: bool) -> dict[str, float]:
    """Runs in a Ray task: get the frame, read its datetime and float values."""
    import pandas  # noqa: F401 -- imports are start-up, not the get
    import pyarrow
    import ray

    import nocopy.ray

    before = uss()
    t0 = time.perf_counter()
    df = nocopy.ray.get(ref[0]) if use_nocopy else ray.get(ref[0])
    got = time.perf_counter() - t0
    checksum = int(df["t"].to_numpy().view("i8").sum()) + float(df["x"].sum())
    read = time.perf_counter() - t0 - got
    # Arrow's allocator caches freed temporaries: give them back, they are not copies.
    pyarrow.default_memory_pool().release_unused()
    grown = float(uss() - before)  # while df is alive: what this task owns because of it
    return {"get_s": got, "read_s": read, "uss_growth": grown, "rows": len(df),
            "checksum": checksum}


def nansum_plain(arr: Any) -> float:
    from nocopy._bench._data import FIELD

    return float(np.nansum(arr[FIELD]))


def nansum_nocopy(ref: Any) -> float:
    import nocopy.ray
    from nocopy._bench._data import FIELD

    return float(np.nansum(nocopy.ray.get(ref)[FIELD]))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_frame(ray: Any, nray: Any, nbytes: int, repeat: int) -> dict[str, Any]:
    task = ray.remote(num_cpus=1)(get_in_task)
    df = make_frame(nbytes)
    rows: dict[str, dict[str, list[float]]] = {"ray": {}, "nocopy": {}}
    for _ in range(repeat):
        for method in ("ray", "nocopy"):
            t0 = time.perf_counter()
            ref = nray.put(df) if method == "nocopy" else ray.put(df)
            put_s = time.perf_counter() - t0
            out = ray.get(task.remote([ref], method == "nocopy"))
            del ref
            rec = rows[method]
            rec.setdefault("put_s", []).append(put_s)
            for key in ("get_s", "read_s", "uss_growth"):
                rec.setdefault(key, []).append(out[key])
            rec.setdefault("checksum", []).append(out["checksum"])
    if rows["ray"]["checksum"] != rows["nocopy"]["checksum"]:
        raise RuntimeError("the two methods read different data")
    size = int(nray.put(df).nbytes)
    result: dict[str, Any] = {"bytes": size, "rows": len(df)}
    for method, rec in rows.items():
        result[method] = {k: median(v) for k, v in rec.items() if k != "checksum"}
    r, n = result["ray"], result["nocopy"]
    result["ratios"] = {
        "get_time": r["get_s"] / max(n["get_s"], 1e-9),
        "put_time": r["put_s"] / max(n["put_s"], 1e-9),
        # floor of 1 MiB: a zero-copy get owns next to nothing
        "task_uss_growth": r["uss_growth"] / max(n["uss_growth"], float(1 << 20)),
    }
    return result


def bench_classic(ray: Any, nray: Any, rows: int, workers: int, repeat: int) -> dict[str, Any]:
    from nocopy._bench._data import expected_sum, make_records

    data = make_records(rows)
    want = expected_sum(data)
    plain = ray.remote(num_cpus=1)(nansum_plain)
    ours = ray.remote(num_cpus=1)(nansum_nocopy)
    times: dict[str, list[float]] = {"ray": [], "ray+nocopy": []}
    for _ in range(repeat):
        for method in times:
            t0 = time.perf_counter()
            if method == "ray":
                ref = ray.put(data)
                sums = ray.get([plain.remote(ref) for _ in range(workers)])
            else:
                ref = nray.put(data)
                sums = ray.get([ours.remote(ref) for _ in range(workers)])
            times[method].append(time.perf_counter() - t0)
            del ref
            if not all(np.isclose(s, want) for s in sums):
                raise RuntimeError(f"{method}: wrong sums {sums} (want {want})")
    med = {m: median(v) for m, v in times.items()}
    return {
        "rows": rows,
        "bytes": int(data.nbytes),
        "workers": workers,
        "work_s": med,
        "ratio": med["ray"] / max(med["ray+nocopy"], 1e-9),
    }


def warm_up(ray: Any, workers: int) -> float:
    """One task per worker, all waiting for each other: every worker is up (and has imported nocopy.ray)."""
    from nocopy._bench._tasks import arrive

    t0 = time.perf_counter()
    task = ray.remote(num_cpus=1)(arrive)
    with tempfile.TemporaryDirectory() as where:
        ray.get([task.remote(where, workers, ("nocopy.ray", "pandas", "pyarrow")) for _ in range(workers)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="frame size in GB (part 1)")
    ap.add_argument("--rows", type=int, default=10_000_000, help="classic experiment rows (part 2)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    import ray

    import nocopy.ray as nray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    init_s = time.perf_counter() - t0
    try:
        startup_s = warm_up(ray, args.workers)
        frame = bench_frame(ray, nray, int(args.gb * 1e9), args.repeat)
        classic = bench_classic(ray, nray, args.rows, args.workers, args.repeat)
    finally:
        ray.shutdown()

    mb = 1 << 20
    print(f"ray.init {init_s:.2f} s, worker start-up {startup_s:.2f} s (both excluded below)")
    print(f"\n1. frame: {frame['bytes'] / 1e9:.2f} GB, {frame['rows']:,} rows "
          "(datetime64, float, object strings), read inside one task")
    print(f"{'method':<16}{'put s':>8}{'get s':>10}{'read s':>9}{'task USS +MiB':>15}")
    for method, label in (("ray", "ray.get"), ("nocopy", "nocopy.ray.get")):
        m = frame[method]
        print(f"{label:<16}{m['put_s']:8.2f}{m['get_s']:10.4f}{m['read_s']:9.3f}"
              f"{m['uss_growth'] / mb:15.0f}")
    ratios = frame["ratios"]
    print(f"ratios plain/nocopy: get time {ratios['get_time']:.0f}x, "
          f"task memory {ratios['task_uss_growth']:.0f}x, put time {ratios['put_time']:.2f}x")
    print(f"\n2. classic experiment, Ray method: {classic['rows']:,} rows "
          f"({classic['bytes'] / 1e6:.0f} MB), {classic['workers']} tasks, work phase")
    for method, secs in classic["work_s"].items():
        print(f"{method:<16}{secs:8.2f} s")
    print(f"ratio ray / ray+nocopy: {classic['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ray_init_s": init_s, "startup_s": startup_s, "frame": frame,
                       "classic": classic, "args": vars(args)}, fh, indent=2)


if __name__ == "__main__":
    main()
