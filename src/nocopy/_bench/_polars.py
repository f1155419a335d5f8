"""``nocopy bench polars``: one Polars DataFrame handed to N workers, pickled vs shared.

The frame (`._data.polars_frame`): 10 numeric columns (float64 with
nulls, int64), a string column and a datetime column, about 1 GB at the
default 8.5M rows. Both methods hand the same frame to ``--workers`` spawned
processes of one ``multiprocessing`` pool (started and warmed up beforehand,
not timed), one task each; every task sums a float column and returns it:

- **pickle**: the frame is the task's argument, so the pool pickles it once
  per task (Polars' own ``__getstate__``: an IPC serialisation of every
  column) and each worker unpickles a private copy -- what handing a Polars
  frame to a process pool does.
- **nocopy**: ``nocopy.share(df)`` once (timed), the task's argument is the
  small ``Shared`` handle, and each worker's ``get()`` maps the segment.

Time: from handing out the work to the last result (``share()`` included),
median of ``--repeat`` runs. Memory: Σ PSS of the parent and its workers plus
shared-memory bytes, each page once (`._monitor`), sampled through one
more run (the first, in workers that never held the frame) in which every
worker holds its frame until all of them have it; reported as the peak added
to what was there before the run. Ratios are
pickle / nocopy from the same invocation.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .._text import format_bytes, render_table
from . import _tasks
from ._data import MIXED_NUMERIC, polars_frame
from ._monitor import MemoryMonitor

__all__ = ["PolarsConfig", "polars_table", "run_polars"]

Log = Callable[[str], None]
METHODS = ("pickle", "nocopy")
LABELS = {"pickle": "pickle (Polars' own)", "nocopy": "nocopy share/get"}
_HOLD_TIMEOUT = 600.0


@dataclass
class PolarsConfig:
    rows: int = 8_500_000
    workers: int = 2
    repeat: int = 3
    interval: float = 0.01  # memory sampling period, seconds


def _hand_out(pool: Any, method: str, df: Any, workers: int, hold: str | None, on_all_holding: Callable[[], None]) -> list[float]:
    """One run: the frame to *workers* tasks by *method*; their sums."""
    import nocopy

    ref = nocopy.share(df) if method == "nocopy" else None
    try:
        payload = ref if ref is not None else df
        # One item per task, chunksize 1: with pickle, each task's frame is pickled on its own.
        pending = pool.starmap_async(_tasks.polars_sum, [(method, payload, hold, workers)] * workers, chunksize=1)
        if hold is not None:
            _wait_until_all_hold(pending, hold, workers)
            on_all_holding()
            with open(os.path.join(hold, _tasks.RELEASE), "w"):
                pass
        sums: list[float] = pending.get(timeout=_HOLD_TIMEOUT)
    finally:
        if ref is not None:
            ref.close()
    return sums


def _wait_until_all_hold(pending: Any, hold: str, workers: int) -> None:
    deadline = time.monotonic() + _HOLD_TIMEOUT
    while len([f for f in os.listdir(hold) if f != _tasks.RELEASE]) < workers:
        if pending.ready():  # a task failed before holding: its error is raised by get()
            pending.get()
            raise RuntimeError("the tasks returned without holding the frame")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {workers} workers got the frame in {_HOLD_TIMEOUT:.0f} s")
        time.sleep(0.002)


def _started_pool(workers: int) -> Any:
    """A spawned pool whose every worker has imported polars and nocopy (start-up is not measured)."""
    pool = multiprocessing.get_context("spawn").Pool(workers)
    with tempfile.TemporaryDirectory(prefix="nocopy-bench-") as where:
        pool.starmap(_tasks.arrive, [(where, workers, ("polars", "pyarrow", "nocopy"))] * workers, chunksize=1)
    return pool


def _run_method(method: str, df: Any, cfg: PolarsConfig, expected: float, monitor: MemoryMonitor, log: Log) -> dict[str, Any]:
    times: list[float] = []
    out: dict[str, Any] = {}
    pool = _started_pool(cfg.workers)
    try:
        _hand_out(pool, method, df.head(2), cfg.workers, None, lambda: None)  # first get/unpickle imports
        # Memory first, in workers that never held the frame: an allocator keeps
        # what a worker freed, and a later peak would reuse it unseen.
        gc.collect()
        with tempfile.TemporaryDirectory(prefix="nocopy-bench-") as hold:
            baseline = monitor.sample().total
            monitor.start()
            try:
                sums = _hand_out(pool, method, df, cfg.workers, hold, monitor.mark)
            finally:
                peak = monitor.stop().peak
        _check(method, sums, expected, cfg.workers)
        for _ in range(cfg.repeat):
            gc.collect()
            t0 = time.perf_counter()
            sums = _hand_out(pool, method, df, cfg.workers, None, lambda: None)
            times.append(time.perf_counter() - t0)
            _check(method, sums, expected, cfg.workers)
        log(f"  {method}: {statistics.median(times):.3f} s, {format_bytes(peak.total - baseline)} added")
        out = {
            "time_s": statistics.median(times),
            "times_s": times,
            "baseline_bytes": baseline,
            "peak_bytes": peak.total,
            "added_bytes": peak.total - baseline,
            "shm_bytes_at_peak": peak.shm_bytes,
            "processes_at_peak": peak.processes,
        }
    finally:
        pool.terminate()
        pool.join()
    return out


def _check(method: str, sums: list[float], expected: float, workers: int) -> None:
    if len(sums) != workers or any(abs(s - expected) > 1e-6 * max(1.0, abs(expected)) for s in sums):
        raise RuntimeError(f"{method}: the workers summed {sums}, want {expected} from each of {workers}")


def run_polars(cfg: PolarsConfig, log: Log = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Hand the frame to the workers each way; return the JSON-able result."""
    if cfg.rows < 2 or cfg.workers < 1 or cfg.repeat < 1:
        raise ValueError(f"need --rows >= 2, --workers >= 1, --repeat >= 1; got {cfg}")
    import nocopy

    log(f"building a Polars frame of {cfg.rows:,} rows ...")
    df = polars_frame(cfg.rows)
    expected = float(df["n0"].sum())
    with nocopy.share(df) as ref:
        segment = ref.nbytes
    methods: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with MemoryMonitor(cfg.interval) as monitor:
        for method in METHODS:
            log(f"{method}: {cfg.workers} workers, {cfg.repeat} runs ...")
            try:
                methods[method] = _run_method(method, df, cfg, expected, monitor, log)
            except Exception as exc:
                failed[method] = f"{type(exc).__name__}: {exc}"
    ratios: dict[str, float] = {}
    if not failed:
        p, n = methods["pickle"], methods["nocopy"]
        ratios = {
            "time": p["time_s"] / max(n["time_s"], 1e-9),
            # A floor of 1 MiB: nocopy's added memory is about one copy, never near zero.
            "memory": p["added_bytes"] / max(n["added_bytes"], 1 << 20),
        }
    return {
        "benchmark": "polars",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"rows": cfg.rows, "workers": cfg.workers, "repeat": cfg.repeat, "start_method": "spawn"},
        "rows": cfg.rows,
        "frame_bytes": int(df.estimated_size()),
        "segment_bytes": segment,
        "methods": methods,
        "ratios": ratios,
        "failed": failed,
    }


def polars_table(result: dict[str, Any]) -> str:
    """The result as text: time and Σ memory per method, and the ratios."""
    rows = [
        [LABELS[key], f"{m['time_s']:.3f} s", format_bytes(m["added_bytes"]), format_bytes(m["peak_bytes"])]
        for key, m in result["methods"].items()
    ]
    cfg = result["config"]
    lines = [
        f"Polars DataFrame: {result['rows']:,} rows, {MIXED_NUMERIC} numeric + string + datetime columns, "
        f"~{format_bytes(result['frame_bytes'])} (segment {format_bytes(result['segment_bytes'])}), "
        f"to {cfg['workers']} spawned workers",
        render_table(["method", "time", "Σ memory added", "Σ memory peak"], rows, right={1, 2, 3}),
    ]
    if result["ratios"]:
        r = result["ratios"]
        lines.append(f"ratios pickle / nocopy: time {r['time']:.1f}x, memory {r['memory']:.1f}x")
    lines.append(
        f"(time: median of {cfg['repeat']} runs, share() included; memory: Σ PSS + shared memory, "
        "each page once, while every worker holds the frame)"
    )
    lines += [f"FAILED {name}: {why}" for name, why in result["failed"].items()]
    return "\n".join(lines)
