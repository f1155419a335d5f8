"""``nocopy bench seed``: the classic experiment, every method, one run, same data.

Each method runs ``repeat`` times for timing (nothing else measuring) and
``memory_repeat`` times (default: 1; peaks vary far less than times) for
memory (the sampler process running, tracemalloc on in the parent); the two
never share a run because sampling perturbs timing.
Rounds interleave the methods, so a noisy moment hits all of them; Ray runs
last, because it leaves threads behind in the parent and forking a process
with threads is unsafe (the fork method).

Cold runs (``cold_repeat`` per method, 0: none) come first: each runs one
method once in a fresh interpreter (``python -c``, see `cold_main`),
in rounds (every method once per round, in a shuffled order), with the data loaded from a file before the
clock starts, as a user's script would have it. Beside the method's own
phases they time the interpreter's exit after the run (``exit_s``: atexit
handlers, finalizers), which a script pays too; ``end_to_end_s`` is the
method's total plus that exit. Warm runs repeat every method in this one
process, so imports, caches and the allocator are warm.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .._text import format_bytes
from . import _methods
from ._data import expected_sum, make_records
from ._methods import FLOOR, METHODS, Method, RunContext, by_name
from ._monitor import MemoryMonitor
from ._startup import StartupConfig, run_startup
from ._stats import ratio, summary

__all__ = ["SeedConfig", "cold_main", "run_seed"]

Log = Callable[[str], None]

MEMORY_ACCOUNTING = (
    "peak over time of: sum over the parent and all its descendants of PSS minus the PSS of "
    "their shared-memory mappings, plus the allocated bytes of every shared-memory object "
    "(memfd, /dev/shm and tmpfs files, SysV/shared-anonymous memory) they map or hold open or "
    "that the method registered, each object once; sampled every ~10 ms by a separate process"
)


@dataclass
class SeedConfig:
    rows: int = 10_000_000
    workers: int = os.cpu_count() or 2
    start_method: str = "spawn"
    methods: list[str] | None = None  # None: every method
    repeat: int = 3
    memory_repeat: int | None = 1  # None: as many as repeat
    interval: float = 0.01  # memory sampling period, seconds
    cold_repeat: int = 2  # runs per method in a fresh interpreter each (0: no cold runs)
    cold_timeout: float = 600.0  # seconds one cold run may take before it is killed
    warm_up: bool = True  # False: no warm-up task before the work (as a script runs it)
    startup_repeat: int = 0  # pool start-up per start method, cold, rounds (0: not measured; the CLI: 2)


def select_methods(names: list[str] | None) -> list[Method]:
    """The requested methods in canonical order; unknown names are a ValueError."""
    known = {m.name: m for m in METHODS}
    if names is None:
        return list(METHODS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    return [m for m in METHODS if m.name in names]


def _children() -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:  # pragma: no cover
        return set()


def _helpers() -> set[int]:
    """Resource trackers (multiprocessing's, loky's) and the forkserver: started once, kept."""
    pids = set()
    from multiprocessing import resource_tracker

    # Stdlib (and loky) privates, read here and nowhere else: no public API
    # names the pid of multiprocessing's resource tracker (ensure_running() and
    # getfd() give none) or of the forkserver, and a run must not wait for
    # helpers that live as long as the parent. getattr with a default: a
    # Python that renames them makes a run wait for them, it does not crash.
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    pid = getattr(tracker, "_pid", None)
    if pid:
        pids.add(pid)
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is not None:
        pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
        if pid:
            pids.add(pid)
    loky = sys.modules.get("joblib.externals.loky.backend.resource_tracker")
    if loky is not None:
        pid = getattr(getattr(loky, "_resource_tracker", None), "_pid", None)
        if pid:
            pids.add(pid)
    return pids


def _settle(before: set[int], log: Log, timeout: float = 15.0) -> list[int]:
    """Wait until the processes a run started are gone; return any that linger."""
    deadline = time.monotonic() + timeout
    while True:
        extra = sorted(_children() - before - _helpers())
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if extra:
        log(f"  warning: processes {extra} outlived their run")
    return extra


def _sums_ok(method: Method, sums: list[float], expected: float, workers: int) -> bool:
    if method is FLOOR:
        return len(sums) == 1 and sums[0] == expected
    if method.whole_column:
        return len(sums) == workers and all(s == expected for s in sums)
    return len(sums) >= 1 and float(np.sum(sums)) == expected


def _one_run(
    method: Method, kind: str, data: np.ndarray, cfg: SeedConfig, expected: float,
    scratch: str, monitor: MemoryMonitor | None,
) -> dict[str, Any]:
    gc.collect()
    before = _children()
    ctx = RunContext(data, cfg.workers, cfg.start_method, tempfile.mkdtemp(dir=scratch), warm_up=cfg.warm_up)
    record: dict[str, Any] = {"kind": kind}
    globs = method.shm_globs()
    try:
        if kind == "memory":
            assert monitor is not None
            record["baseline_bytes"] = monitor.sample(globs).total
            ctx.on_checkpoint = monitor.mark
            tracemalloc.start()
            monitor.start(globs)
        t0 = time.perf_counter()
        try:
            sums = method.run(ctx)
        finally:
            total = time.perf_counter() - t0
            if kind == "memory":
                assert monitor is not None
                peak = monitor.stop()
                record["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                record["peak_bytes"] = peak.peak.total
                # Memory held before the run and freed during it (a finished run's
                # pages still being released) is no part of this run's baseline:
                # "added" is measured from the lowest point, never understated.
                if peak.low is not None and peak.low < record["baseline_bytes"]:
                    record["baseline_bytes"] = peak.low
                record["added_bytes"] = peak.peak.total - record["baseline_bytes"]
                record["pss_private_bytes_at_peak"] = peak.peak.pss_private
                record["shm_bytes_at_peak"] = peak.peak.shm_bytes
                record["processes_at_peak"] = peak.peak.processes
                record["unresolved_maps_at_peak"] = peak.peak.unresolved_maps
                record["samples"] = peak.samples
                record["interval_ms_median"] = peak.interval_ms_median
                record["interval_ms_max"] = peak.interval_ms_max
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        return record
    finally:
        record["lingering"] = _settle(before, lambda s: None)
    record.update({f"{k}_s": v for k, v in ctx.phases.items()})
    # The floor also times a reference copy outside its phases; its total is its phases.
    record["total_s"] = sum(ctx.phases.values()) if method is FLOOR else total
    record["extra"] = dict(ctx.extra)
    record["sums"] = sums
    record["sums_ok"] = _sums_ok(method, sums, expected, cfg.workers)
    return record


def _describe_run(method: Method, rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"FAILED: {rec['error']}"
    parts = [
        f"{rec['total_s']:.3f} s (start {rec['startup_s']:.3f}, work {rec['work_s']:.3f}, "
        f"teardown {rec['teardown_s']:.3f})"
    ]
    if rec["kind"] == "memory":
        parts.append(f"peak {format_bytes(rec['peak_bytes'])}, tracemalloc {format_bytes(rec['tracemalloc_peak_bytes'])}")
    parts.append("sums ok" if rec["sums_ok"] else f"SUMS WRONG {rec['sums']}")
    if rec["lingering"]:
        parts.append(f"lingering pids {rec['lingering']}")
    return ", ".join(parts)


def _aggregate(method: Method, runs: list[dict[str, Any]], expected: float) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    timing = [r for r in ok if r["kind"] == "time"]
    memory = [r for r in ok if r["kind"] == "memory"]
    extra_keys = sorted({k for r in ok for k in r["extra"]})
    out: dict[str, Any] = {
        "name": method.name,
        "summary": method.summary,
        "whole_column": method.whole_column,
        "time": {
            key: summary([r[key] for r in timing])
            for key in ("total_s", "startup_s", "work_s", "teardown_s")
        },
        "memory": {
            "peak_bytes": summary([r["peak_bytes"] for r in memory]),
            "added_bytes": summary([r["added_bytes"] for r in memory]),
            "baseline_bytes": summary([r["baseline_bytes"] for r in memory]),
            "pss_private_bytes_at_peak": summary([r["pss_private_bytes_at_peak"] for r in memory]),
            "shm_bytes_at_peak": summary([r["shm_bytes_at_peak"] for r in memory]),
            "processes_at_peak": summary([r["processes_at_peak"] for r in memory]),
            "samples": summary([r["samples"] for r in memory]),
            "interval_ms_median": summary([r["interval_ms_median"] for r in memory if r["interval_ms_median"]]),
        },
        "tracemalloc_peak_bytes": summary([r["tracemalloc_peak_bytes"] for r in memory]),
        # Timing runs only: memory runs are slowed by the sampler.
        "extra": {k: summary([r["extra"][k] for r in timing if k in r["extra"]]) for k in extra_keys},
        "sums": {
            "expected": expected,
            "ok": bool(ok) and len(ok) == len(runs) and all(r["sums_ok"] for r in ok),
            "last": ok[-1]["sums"] if ok else None,
        },
        "errors": [r["error"] for r in runs if "error" in r],
        "runs": runs,
    }
    return out


def _median(stats: dict[str, float] | None) -> float | None:
    return None if stats is None else stats["median"]


def _memory_repeat(cfg: SeedConfig) -> int:
    """Check *cfg* (a ValueError names the bad option) and return the number of memory runs."""
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
        raise ValueError("nocopy bench measures memory through Linux's /proc and needs memfd: run it on Linux")
    if cfg.rows < 2:
        raise ValueError(f"--rows must be at least 2, not {cfg.rows}")
    if cfg.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {cfg.workers}")
    if cfg.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, not {cfg.repeat}")
    if cfg.cold_repeat < 0:
        raise ValueError(f"--cold-repeat must be at least 0, not {cfg.cold_repeat}")
    memory_repeat = cfg.repeat if cfg.memory_repeat is None else cfg.memory_repeat
    if memory_repeat < 1:
        raise ValueError(f"--memory-repeat must be at least 1, not {memory_repeat}")
    import multiprocessing

    if cfg.start_method not in multiprocessing.get_all_start_methods():
        raise ValueError(
            f"start method {cfg.start_method!r} does not exist here: choose from "
            f"{', '.join(multiprocessing.get_all_start_methods())}"
        )
    return memory_repeat


def _available(chosen: list[Method], log: Log) -> tuple[list[Method], dict[str, str]]:
    """The methods that can run here, and why each of the others cannot."""
    skipped: dict[str, str] = {}
    runnable: list[Method] = []
    for m in chosen:
        why = m.available()
        if why is None:
            runnable.append(m)
        else:
            skipped[m.name] = why
            log(f"skipping {m.name}: {why}")
    return runnable, skipped


def _schedule(runnable: list[Method], repeat: int, memory_repeat: int) -> list[tuple[Method, str, int]]:
    """(method, "time" or "memory", round) in the order they run: rounds interleave the methods, Ray last."""
    late = [m for m in runnable if m.name == "ray"]
    early = [FLOOR, *(m for m in runnable if m.name != "ray")]
    schedule: list[tuple[Method, str, int]] = []
    for r in range(max(repeat, memory_repeat)):
        if r < repeat:
            schedule += [(m, "time", r) for m in early]
        if r < memory_repeat:
            schedule += [(m, "memory", r) for m in early]
    for r in range(max(repeat, memory_repeat)):
        kinds = [k for k, n in (("time", repeat), ("memory", memory_repeat)) if r < n]
        schedule += [(m, kind, r) for m in late for kind in kinds]
    return schedule


def _run_schedule(
    schedule: list[tuple[Method, str, int]], data: np.ndarray, cfg: SeedConfig, expected: float, log: Log
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Every run's record by method name, and the memory baseline before the first run."""
    runs: dict[str, list[dict[str, Any]]] = {m.name: [] for m, _, _ in schedule}
    with tempfile.TemporaryDirectory(prefix="nocopy-bench-") as scratch, MemoryMonitor(cfg.interval) as monitor:
        baseline = monitor.sample().total
        width = len(str(len(schedule)))
        for i, (method, kind, r) in enumerate(schedule, 1):
            rec = _one_run(method, kind, data, cfg, expected, scratch, monitor)
            rec["repeat"] = r
            runs[method.name].append(rec)
            log(f"[{i:>{width}}/{len(schedule)}] {kind:<6} {method.name:<16} #{r + 1}  {_describe_run(method, rec)}")
    return runs, baseline


# -- cold runs: one method, once, in a fresh interpreter ----------------------
_COLD_CHILD = "import sys; from nocopy._bench._seed import cold_main; sys.exit(cold_main(sys.argv[1:]))"
_COLD_MARK = "nocopy-bench-cold-result:"


def cold_main(argv: list[str]) -> int:
    """The child of a cold run: load the data, run one method once, print its record on stdout.

    *argv* is one JSON object: method, data (path of the raw records), rows,
    workers, start_method, scratch, launched (the parent's perf_counter just
    before it started this interpreter: CLOCK_MONOTONIC, the same in every process).
    """
    ready = time.perf_counter()
    spec = json.loads(argv[0])
    if spec["start_method"] == "forkserver":
        import multiprocessing

        multiprocessing.set_forkserver_preload(["numpy", "nocopy", "nocopy._bench._tasks"])
    method = by_name(spec["method"])
    t0 = time.perf_counter()
    data = np.fromfile(spec["data"], dtype=make_records(1).dtype).view(np.recarray)
    if len(data) != spec["rows"]:
        raise SystemExit(f"cold run: {spec['data']} holds {len(data)} rows, expected {spec['rows']}")
    record: dict[str, Any] = {
        "pid": os.getpid(),
        "launch_s": ready - spec["launched"],
        "load_s": time.perf_counter() - t0,
    }
    ctx = RunContext(
        data, spec["workers"], spec["start_method"], tempfile.mkdtemp(dir=spec["scratch"]), warm_up=spec["warm_up"]
    )
    t0 = time.perf_counter()
    try:
        sums = method.run(ctx)
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        sums = []
    total = time.perf_counter() - t0
    record.update({f"{k}_s": v for k, v in ctx.phases.items()})
    record["total_s"] = sum(ctx.phases.values()) if method is FLOOR else total
    record["extra"] = dict(ctx.extra)
    record["sums"] = [float(v) for v in sums]
    print(_COLD_MARK + json.dumps(record), flush=True)
    # The parent times the exit from here: what the interpreter does after the run.
    record_end = time.perf_counter()
    print(_COLD_MARK + json.dumps({"finished": record_end}), flush=True)
    return 0


def _cold_run(method: Method, data_path: str, cfg: SeedConfig, expected: float, scratch: str) -> dict[str, Any]:
    spec = {
        "method": method.name, "data": data_path, "rows": cfg.rows, "workers": cfg.workers,
        "start_method": cfg.start_method, "scratch": scratch, "warm_up": cfg.warm_up,
    }
    # ray.init() without an address joins whatever `ray start` cluster this machine
    # runs at that moment (and then refuses num_cpus): a fresh script starts its own.
    env = dict(os.environ)
    env.setdefault("RAY_ADDRESS", "local")
    spec["launched"] = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _COLD_CHILD, json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=scratch, env=env,
    )
    try:
        out, err = proc.communicate(timeout=cfg.cold_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"kind": "cold", "pid": proc.pid, "error": f"no result within {cfg.cold_timeout:.0f} s (killed)"}
    exited = time.perf_counter()
    parts = [json.loads(line[len(_COLD_MARK):]) for line in out.splitlines() if line.startswith(_COLD_MARK)]
    if len(parts) != 2 or proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        return {"kind": "cold", "pid": proc.pid, "error": f"exit code {proc.returncode}: {tail or 'no output'}"}
    record: dict[str, Any] = {"kind": "cold", **parts[0]}
    record["exit_s"] = exited - parts[1]["finished"]
    if "error" not in record:
        record["end_to_end_s"] = record["total_s"] + record["exit_s"]
        record["sums_ok"] = _sums_ok(method, record["sums"], expected, cfg.workers)
    return record


def _describe_cold(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"FAILED: {rec['error']}"
    return (
        f"{rec['end_to_end_s']:.3f} s (start {rec['startup_s']:.3f}, work {rec['work_s']:.3f}, "
        f"teardown {rec['teardown_s']:.3f}, exit {rec['exit_s']:.3f}; interpreter {rec['launch_s']:.3f}), "
        f"pid {rec['pid']}, " + ("sums ok" if rec["sums_ok"] else f"SUMS WRONG {rec['sums']}")
    )


def _run_cold(
    runnable: list[Method], data: np.ndarray, cfg: SeedConfig, expected: float, log: Log
) -> dict[str, list[dict[str, Any]]]:
    """``cold_repeat`` rounds over the floor and every method, each run in a fresh interpreter.

    Each round runs every method once, in an order shuffled per round (seeded
    by the round: the same in every invocation). A run is slower right after
    a memory-hungry one (the kernel is still reclaiming its pages): a fixed
    order would always hand that cost to the same method.
    """
    runs: dict[str, list[dict[str, Any]]] = {m.name: [] for m in (FLOOR, *runnable)}
    if not cfg.cold_repeat:
        return runs
    methods = [FLOOR, *runnable]
    with tempfile.TemporaryDirectory(prefix="nocopy-bench-cold-") as scratch:
        data_path = os.path.join(scratch, "records.bin")
        data.tofile(data_path)
        total = cfg.cold_repeat * len(methods)
        width = len(str(total))
        for r in range(cfg.cold_repeat):
            order = list(methods)
            random.Random(r).shuffle(order)
            for i, method in enumerate(order, r * len(order) + 1):
                rec = _cold_run(method, data_path, cfg, expected, scratch)
                rec["repeat"] = r
                runs[method.name].append(rec)
                log(f"[{i:>{width}}/{total}] cold   {method.name:<16} #{r + 1}  {_describe_cold(rec)}")
    return runs


_COLD_KEYS = ("end_to_end_s", "total_s", "startup_s", "work_s", "teardown_s", "exit_s", "launch_s", "load_s")


def _aggregate_cold(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    return {
        "time": {key: summary([r[key] for r in ok]) for key in _COLD_KEYS},
        "sums_ok": bool(ok) and len(ok) == len(runs) and all(r["sums_ok"] for r in ok),
        "pids": [r.get("pid") for r in runs],
        "errors": [r["error"] for r in runs if "error" in r],
        "runs": runs,
    }


def _with_ratios(
    runnable: list[Method],
    runs: dict[str, list[dict[str, Any]]],
    cold: dict[str, list[dict[str, Any]]],
    expected: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The floor's and each method's aggregate, with its ratios to the floor."""
    floor = _aggregate(FLOOR, runs[FLOOR.name], expected)
    floor["cold"] = _aggregate_cold(cold[FLOOR.name])
    results: dict[str, Any] = {}
    for m in (FLOOR, *runnable):
        agg = floor if m is FLOOR else _aggregate(m, runs[m.name], expected)
        if m is not FLOOR:
            agg["cold"] = _aggregate_cold(cold[m.name])
        agg["ratio_to_floor"] = {
            "total": ratio(_median(agg["time"]["total_s"]), _median(floor["time"]["work_s"])),
            "work": ratio(_median(agg["time"]["work_s"]), _median(floor["time"]["work_s"])),
            "memory": ratio(_median(agg["memory"]["peak_bytes"]), _median(floor["memory"]["peak_bytes"])),
            # Cold end to end against the floor's, which pays the same interpreter exit.
            "cold": ratio(
                _median(agg["cold"]["time"]["end_to_end_s"]), _median(floor["cold"]["time"]["end_to_end_s"])
            ),
        }
        # How much a first run in a fresh interpreter costs over a warm one.
        agg["cold_over_warm"] = ratio(_median(agg["cold"]["time"]["total_s"]), _median(agg["time"]["total_s"]))
        results[m.name] = agg
    return results.pop(FLOOR.name), results


def run_seed(cfg: SeedConfig, log: Log = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Run the experiment; return the JSON-able result (see BENCHMARKS.md for the fields)."""
    memory_repeat = _memory_repeat(cfg)
    if cfg.start_method == "forkserver":
        import multiprocessing

        # The same for every method: the server imports numpy (and the task
        # module) once, so no worker pays those imports. nocopy's executor
        # would ask for this itself, but the first method to start the server
        # decides what it preloads.
        multiprocessing.set_forkserver_preload(["__main__", "numpy", "nocopy", "nocopy._bench._tasks"])
    chosen = select_methods(cfg.methods)
    runnable, skipped = _available(chosen, log)

    for path in _methods.remove_stale_arrow_files():
        log(f"removed {path}, left behind by a benchmark that did not finish")
    log(f"building {cfg.rows:,} rows ...")
    t0 = time.perf_counter()
    data = make_records(cfg.rows)
    build_s = time.perf_counter() - t0
    expected = expected_sum(data)
    log(
        f"data: {cfg.rows:,} rows, {format_bytes(data.nbytes)} ({data.dtype.descr}), built in {build_s:.1f} s; "
        f"{cfg.workers} workers, start method {cfg.start_method}, {cfg.cold_repeat} cold, {cfg.repeat} timing and "
        f"{memory_repeat} memory run(s) per method"
    )

    started = time.perf_counter()
    # Cold first: nothing this process starts for the warm runs (Ray) is around yet.
    cold = _run_cold(runnable, data, cfg, expected, log)
    runs, baseline = _run_schedule(_schedule(runnable, cfg.repeat, memory_repeat), data, cfg, expected, log)
    elapsed = time.perf_counter() - started

    startup = None
    if cfg.startup_repeat > 0:
        log("pool start-up per start method (cold) ...")
        startup = run_startup(StartupConfig(workers=cfg.workers, repeat=cfg.startup_repeat), log)
    floor_rec, results = _with_ratios(runnable, runs, cold, expected)
    failed: dict[str, list[str]] = {}
    for name, rec in (("floor", floor_rec), *results.items()):
        bad_cold = cfg.cold_repeat > 0 and not rec["cold"]["sums_ok"]
        if rec["errors"] or not rec["sums"]["ok"] or bad_cold:
            failed[name] = rec["errors"] + rec["cold"]["errors"] or ["wrong sum"]
    return {
        "benchmark": "seed",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "rows": cfg.rows,
            "workers": cfg.workers,
            "start_method": cfg.start_method,
            "repeat": cfg.repeat,
            "memory_repeat": memory_repeat,
            "cold_repeat": cfg.cold_repeat,
            "warm_up": cfg.warm_up,
            "startup_repeat": cfg.startup_repeat,
            "methods": [m.name for m in chosen],
            "memory_interval_ms": cfg.interval * 1e3,
        },
        "machine": _machine(),
        "startup": startup,
        "data": {
            "rows": cfg.rows,
            "nbytes": int(data.nbytes),
            "dtype": str(data.dtype.descr),
            "type": f"{type(data).__module__}.{type(data).__qualname__}",
            "build_s": build_s,
            "expected_sum": expected,
        },
        "memory_accounting": MEMORY_ACCOUNTING,
        "baseline_memory_bytes": baseline,
        "elapsed_s": elapsed,
        "floor": floor_rec,
        "methods": results,
        "skipped": skipped,
        "failed": failed,
    }


def _machine() -> dict[str, Any]:
    import nocopy

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "nocopy": nocopy.__version__,
    }
    try:
        import psutil

        info["memory_total_bytes"] = psutil.virtual_memory().total
        info["load_average"] = list(os.getloadavg())
    except (ImportError, OSError):  # pragma: no cover
        pass
    for name in ("pandas", "pyarrow", "joblib", "ray"):
        mod = sys.modules.get(name)
        if mod is not None:
            info[name] = getattr(mod, "__version__", "?")
    return info


