"""``nocopy bench ray``: ``nocopy.ray`` against plain Ray, inside tasks.

1. **frame**: a DataFrame of ``--gb`` GB (`._data.dated_frame`:
   datetime64, float and object-string columns) is put once with
   ``ray.put`` and once with ``nocopy.ray.put``; a task then gets it
   (``ray.get`` vs ``nocopy.ray.get``) and reads the datetime and float
   values. Per method: put time in the driver, get time in the task, and the
   task's USS growth (pages it owns: what it copied); ratios plain / nocopy.
2. **classic**: the classic experiment's Ray method (``ray.put`` of the
   record array, ``--workers`` tasks each ``np.nansum`` its float field)
   against the same with ``nocopy.ray.put`` / ``nocopy.ray.get``. Work phase
   only (put plus all tasks); ``ray.init`` and worker start-up are timed
   apart, once.

Both parts use one local Ray instance with ``--workers`` CPUs. Times are
medians of ``--repeat`` runs; ratios compare methods measured in the same run.
(``nocopy bench seed`` runs plain Ray among every other method.)
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .._text import format_bytes, render_table
from . import _tasks
from ._data import dated_frame, expected_sum, make_records

__all__ = ["RayConfig", "ray_table", "run_ray"]

Log = Callable[[str], None]
MiB = 1 << 20


@dataclass
class RayConfig:
    gb: float = 1.0  # frame size (part 1), in units of 1e9 bytes
    rows: int = 10_000_000  # classic experiment rows (part 2)
    workers: int = 2
    repeat: int = 3


def _frame(ray: Any, nray: Any, nbytes: int, repeat: int) -> dict[str, Any]:
    task = ray.remote(num_cpus=1)(_tasks.ray_frame_get)
    df = dated_frame(nbytes)
    runs: dict[str, dict[str, list[float]]] = {"ray": {}, "nocopy": {}}
    for _ in range(repeat):
        for method, rec in runs.items():
            t0 = time.perf_counter()
            ref = nray.put(df) if method == "nocopy" else ray.put(df)
            put_s = time.perf_counter() - t0
            out = ray.get(task.remote([ref], method == "nocopy"))
            del ref
            rec.setdefault("put_s", []).append(put_s)
            for key in ("get_s", "read_s", "uss_growth", "checksum"):
                rec.setdefault(key, []).append(out[key])
    if runs["ray"]["checksum"] != runs["nocopy"]["checksum"]:
        raise RuntimeError("ray.get and nocopy.ray.get read different data")
    result: dict[str, Any] = {"bytes": int(nray.put(df).nbytes), "rows": len(df)}
    for method, rec in runs.items():
        result[method] = {k: statistics.median(v) for k, v in rec.items() if k != "checksum"}
    r, n = result["ray"], result["nocopy"]
    result["ratios"] = {
        "get_time": r["get_s"] / max(n["get_s"], 1e-9),
        "put_time": r["put_s"] / max(n["put_s"], 1e-9),
        # A floor of 1 MiB: a zero-copy get owns next to nothing.
        "task_uss_growth": r["uss_growth"] / max(n["uss_growth"], float(MiB)),
    }
    return result


def _classic(ray: Any, nray: Any, rows: int, workers: int, repeat: int) -> dict[str, Any]:
    data = make_records(rows)
    want = expected_sum(data)
    tasks = {
        "ray": (ray.put, ray.remote(num_cpus=1)(_tasks.nansum_records)),
        "ray+nocopy": (nray.put, ray.remote(num_cpus=1)(_tasks.nansum_ray_nocopy)),
    }
    times: dict[str, list[float]] = {method: [] for method in tasks}
    for _ in range(repeat):
        for method, (put, task) in tasks.items():
            t0 = time.perf_counter()
            ref = put(data)
            sums = ray.get([task.remote(ref) for _ in range(workers)])
            times[method].append(time.perf_counter() - t0)
            del ref
            if not all(np.isclose(s, want) for s in sums):
                raise RuntimeError(f"{method}: wrong sums {sums} (want {want})")
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "rows": rows, "bytes": int(data.nbytes), "workers": workers, "work_s": med,
        "ratio": med["ray"] / max(med["ray+nocopy"], 1e-9),
    }


def _warm_up(ray: Any, workers: int) -> float:
    """One task per worker, all waiting for each other: every worker is up and has imported nocopy.ray."""
    t0 = time.perf_counter()
    task = ray.remote(num_cpus=1)(_tasks.arrive)
    with tempfile.TemporaryDirectory() as where:
        ray.get([task.remote(where, workers, ("nocopy.ray", "pandas", "pyarrow")) for _ in range(workers)])
    return time.perf_counter() - t0


def run_ray(cfg: RayConfig, log: Log = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Start a local Ray, run both parts, shut Ray down; return the JSON-able result."""
    if cfg.gb <= 0 or cfg.rows < 2 or cfg.workers < 1 or cfg.repeat < 1:
        raise ValueError(f"need --gb > 0, --rows >= 2, --workers >= 1, --repeat >= 1; got {cfg}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    import nocopy.ray as nray

    t0 = time.perf_counter()
    ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    init_s = time.perf_counter() - t0
    try:
        startup_s = _warm_up(ray, cfg.workers)
        log(f"frame of {cfg.gb} GB ...")
        frame = _frame(ray, nray, int(cfg.gb * 1e9), cfg.repeat)
        log(f"classic experiment, {cfg.rows:,} rows ...")
        classic = _classic(ray, nray, cfg.rows, cfg.workers, cfg.repeat)
    finally:
        ray.shutdown()
    return {
        "benchmark": "ray",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"gb": cfg.gb, "rows": cfg.rows, "workers": cfg.workers, "repeat": cfg.repeat},
        "ray_init_s": init_s,
        "startup_s": startup_s,
        "frame": frame,
        "classic": classic,
        "failed": {},
    }


def ray_table(result: dict[str, Any]) -> str:
    """The result as text: part 1's table and ratios, part 2's times and ratio."""
    frame, classic = result["frame"], result["classic"]
    rows = [
        [label, f"{m['put_s']:.2f}", f"{m['get_s']:.4f}", f"{m['read_s']:.3f}", f"{m['uss_growth'] / MiB:.0f}"]
        for label, m in (("ray.get", frame["ray"]), ("nocopy.ray.get", frame["nocopy"]))
    ]
    ratios = frame["ratios"]
    lines = [
        f"ray.init {result['ray_init_s']:.2f} s, worker start-up {result['startup_s']:.2f} s (both excluded below)",
        "",
        f"1. frame: {format_bytes(frame['bytes'])}, {frame['rows']:,} rows "
        "(datetime64, float, object strings), read inside one task",
        render_table(["method", "put s", "get s", "read s", "task USS +MiB"], rows, right={1, 2, 3, 4}),
        f"ratios plain/nocopy: get time {ratios['get_time']:.0f}x, "
        f"task memory {ratios['task_uss_growth']:.0f}x, put time {ratios['put_time']:.2f}x",
        "",
        f"2. classic experiment, Ray method: {classic['rows']:,} rows ({format_bytes(classic['bytes'])}), "
        f"{classic['workers']} tasks, work phase",
        render_table(["method", "work s"], [[m, f"{s:.2f}"] for m, s in classic["work_s"].items()], right={1}),
        f"ratio ray / ray+nocopy: {classic['ratio']:.2f}x",
    ]
    return "\n".join(lines)
