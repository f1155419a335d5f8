"""``nocopy bench scaling``: how nocopy's costs grow with size and with workers.

- ``get``: ``get()`` latency in a worker vs data size (1 MB ... 4 GB): attaching
  maps the segment and parses its header, so it must not grow with size;
- ``share``: ``nocopy.share()`` throughput as it runs by default (2 MiB
  pages where the kernel allows, filled by several threads), with 2 MiB pages
  from one thread, and with 4 KiB pages from one thread (share() before
  either: the baseline its ratio is to), vs a memcpy into fresh shared
  memory (memfd + ftruncate + mmap + copy, page faults included) and vs the
  seed floor's copy (pwrite into a fresh memfd); and how filling one fresh
  memfd scales with threads over disjoint ranges (fallocate + pwrite, or a
  mapping per range), 1 thread against one per core, interleaved;
- ``overhead``: per-task cost of tiny tasks (``list(ex.map(f, range(N)))``
  and one ``submit`` per item) in a warm pool of 2, nocopy's executor vs
  concurrent.futures, runs interleaved, medians and their ratio;
- ``workers``: the classic experiment's end-to-end time vs number of workers;
- ``startup``: pool start-up per start method, cold, against the standard
  library's pools (see ``_startup``), with the largest worker count up to 4.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import mmap
import multiprocessing
import os
import pickle
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .._text import format_bytes
from . import _tasks
from ._data import expected_sum, make_records
from ._methods import time_mapped_copy, time_pwrite_copy
from ._startup import StartupConfig, run_startup, startup_table
from ._stats import ratio, summary

__all__ = ["ScalingConfig", "run_scaling", "scaling_table"]

Log = Callable[[str], None]
PARTS = ("get", "share", "overhead", "workers", "startup")
SWEEP_METHODS = ("pickle", "stdlib", "nocopy-executor", "threads")


@dataclass
class ScalingConfig:
    min_size: int = 1 << 20
    max_size: int = 4 << 30
    rows: int = 10_000_000
    workers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    tasks: int = 2000
    start_method: str = "spawn"
    repeat: int = 3
    parts: list[str] = field(default_factory=lambda: list(PARTS))


def sizes(lo: int, hi: int) -> list[int]:
    """lo, 4*lo, 16*lo, ... up to hi (hi itself included)."""
    out = []
    n = lo
    while n < hi:
        out.append(n)
        n *= 4
    out.append(hi)
    return out


def _get_latency(cfg: ScalingConfig, log: Log) -> list[dict[str, Any]]:
    import nocopy

    out = []
    reps = max(5, cfg.repeat * 5)
    ctx = multiprocessing.get_context(cfg.start_method)
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        ex.submit(_tasks.identity, 0).result()  # the worker is up and has imported nocopy
        for n in sizes(cfg.min_size, cfg.max_size):
            # Fresh zero pages cost nothing to read: the source takes no memory.
            src = np.zeros(n, np.uint8)
            with nocopy.share(src) as ref:
                del src
                times = ex.submit(_tasks.time_gets, pickle.dumps(ref), reps).result()
            us = [t * 1e6 for t in times]
            point = {"nbytes": n, "get_us": summary(us), "reps": reps}
            out.append(point)
            log(f"  get()  {format_bytes(n):>8}: median {point['get_us']['median']:.0f} µs (min {min(us):.0f})")  # type: ignore[index]
    return out


_FILL_ALIGN = 2 << 20  # ranges start on huge-page boundaries (and mmap's granularity)
FILL_WAYS = ("pwrite", "mmap")


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // parts)
    step = -(-step // _FILL_ALIGN) * _FILL_ALIGN
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _fill_range(fd: int, src: np.ndarray, a: int, b: int, how: str) -> None:
    if how == "pwrite":
        # What share() does, for one range: reserve the pages, then write them.
        os.posix_fallocate(fd, a, b - a)
        view = src[a:b].data
        done = 0
        while done < b - a:
            done += os.pwrite(fd, view[done:], a + done)
    else:
        mm = mmap.mmap(fd, b - a, offset=a)
        dst = np.frombuffer(mm, np.uint8)
        np.copyto(dst, src[a:b])  # NumPy releases the GIL for the copy
        del dst
        mm.close()


def time_parallel_fill(src: np.ndarray, pool: cf.ThreadPoolExecutor, threads: int, how: str) -> float:
    """Seconds to fill a fresh memfd with *src* by *threads* threads over disjoint ranges."""
    fd = os.memfd_create("nocopy-bench-fill", os.MFD_CLOEXEC)
    try:
        t0 = time.perf_counter()
        os.ftruncate(fd, src.nbytes)
        for f in [pool.submit(_fill_range, fd, src, a, b, how) for a, b in _ranges(src.nbytes, threads)]:
            f.result()
        return time.perf_counter() - t0
    finally:
        os.close(fd)


# share() as it was before huge pages and fill threads (the baseline), with 2 MiB
# pages from one thread, and as it is by default: one run of each per round, interleaved.
SHARE_MODES: dict[str, dict[str, str]] = {
    "4k_1": {"NOCOPY_HUGE_PAGES": "off", "NOCOPY_FILL_THREADS": "1"},
    "huge_1": {"NOCOPY_HUGE_PAGES": "auto", "NOCOPY_FILL_THREADS": "1"},
    "default": {},
}


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _time_share(src: np.ndarray, mode: str) -> float:
    import nocopy

    from .._store import forget_huge_page_cost

    forget_huge_page_cost()  # each mode as a fresh process meets it, not after another's verdict
    with _environ(SHARE_MODES[mode]):
        t0 = time.perf_counter()
        ref = nocopy.share(src)
        took = time.perf_counter() - t0
    ref.close()
    return took


def _share_throughput(cfg: ScalingConfig, log: Log) -> list[dict[str, Any]]:
    from .._store import huge_pages_now

    state = huge_pages_now()
    log(f"  huge pages: {state['detail']}")
    out = []
    cores = os.cpu_count() or 1
    pool = cf.ThreadPoolExecutor(cores)
    for n in sizes(cfg.min_size, cfg.max_size):
        src = np.ones(n, np.uint8)  # real pages: the copy reads memory
        modes: dict[str, list[float]] = {mode: [] for mode in SHARE_MODES}
        memcpy_s, pwrite_s = [], []
        fill: dict[str, dict[int, list[float]]] = {how: {1: [], cores: []} for how in FILL_WAYS}
        for r in range(cfg.repeat):
            # A different order each round: a share right after another meets the
            # memory that one just freed (on a VM, still backed by the host).
            for mode in random.Random(r).sample(list(modes), len(modes)):
                modes[mode].append(_time_share(src, mode))
            memcpy_s.append(time_mapped_copy(src))
            pwrite_s.append(time_pwrite_copy(src))
            for how in FILL_WAYS:
                for threads in fill[how]:
                    fill[how][threads].append(time_parallel_fill(src, pool, threads, how))
        del src
        share_s = modes["default"]
        s, m, w = (float(np.median(x)) for x in (share_s, memcpy_s, pwrite_s))
        base = float(np.median(modes["4k_1"]))
        point: dict[str, Any] = {
            "nbytes": n,
            "huge_pages": state,
            "share_s": summary(share_s),
            "memcpy_shm_s": summary(memcpy_s),
            "pwrite_shm_s": summary(pwrite_s),
            "share_gbps": n / s / 1e9,
            "memcpy_shm_gbps": n / m / 1e9,
            "pwrite_shm_gbps": n / w / 1e9,
            "share_over_memcpy": ratio(s, m),
            "share_over_pwrite": ratio(s, w),
            # share() per mode: GB/s, and its time over share() with 4 KiB pages from one thread.
            "share_modes": {
                mode: {
                    "s": summary(times),
                    "gbps": n / float(np.median(times)) / 1e9,
                    "over_4k_1": ratio(float(np.median(times)), base),
                }
                for mode, times in modes.items()
            },
            # Filling one memfd: GB/s with 1 thread and with one per core, and the speed-up.
            "fill_threads": cores,
            "fill": {
                how: {
                    "gbps_1": n / float(np.median(times[1])) / 1e9,
                    "gbps_n": n / float(np.median(times[cores])) / 1e9,
                    "speedup": ratio(float(np.median(times[1])), float(np.median(times[cores]))),
                }
                for how, times in fill.items()
            },
        }
        out.append(point)
        sm = point["share_modes"]
        log(
            f"  share() {format_bytes(n):>8}: {point['share_gbps']:.2f} GB/s = {sm['default']['over_4k_1']:.2f}x "
            f"the time with 4 KiB pages from one thread ({sm['4k_1']['gbps']:.2f} GB/s; 2 MiB pages, one "
            f"thread: {sm['huge_1']['gbps']:.2f} GB/s); memcpy into fresh shm "
            f"{point['memcpy_shm_gbps']:.2f} GB/s, pwrite into a fresh memfd {point['pwrite_shm_gbps']:.2f} GB/s; "
            + _fill_text(point)
        )
    pool.shutdown()
    return out


def _fill_text(point: dict[str, Any]) -> str:
    k = point["fill_threads"]
    return ", ".join(
        f"{how} fill 1 thread {f['gbps_1']:.2f} GB/s, {k} threads {f['gbps_n']:.2f} GB/s ({f['speedup']:.2f}x)"
        for how, f in point["fill"].items()
    )


def _time_tasks(ex: cf.Executor, how: str, n: int) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    if how == "map":
        results = list(ex.map(_tasks.identity, range(n)))
    else:
        futures = [ex.submit(_tasks.identity, i) for i in range(n)]
        results = [f.result() for f in futures]
    return (time.perf_counter() - t0) / n * 1e6, results


def _task_overhead(cfg: ScalingConfig, log: Log) -> dict[str, Any]:
    import nocopy

    ctx = multiprocessing.get_context(cfg.start_method)
    pools: dict[str, cf.Executor] = {"concurrent.futures": cf.ProcessPoolExecutor(2, mp_context=ctx)}
    if hasattr(nocopy, "ProcessPoolExecutor"):
        pools["nocopy"] = nocopy.ProcessPoolExecutor(max_workers=2, mp_context=ctx)
    runs: dict[tuple[str, str], list[float]] = {(name, how): [] for name in pools for how in ("map", "submit")}
    try:
        for ex in pools.values():
            list(ex.map(_tasks.identity, range(50)))  # warm: workers started, modules imported
        names = list(pools)
        # Both pools stay warm and the runs alternate (the order flipping each
        # round), so drift on a noisy machine hits both sides alike.
        for r in range(cfg.repeat):
            for name in names if r % 2 == 0 else names[::-1]:
                for how in ("map", "submit"):
                    us, results = _time_tasks(pools[name], how, cfg.tasks)
                    if results != list(range(cfg.tasks)):
                        raise AssertionError(f"{name}: tiny tasks ({how}) returned wrong results")
                    runs[name, how].append(us)
    finally:
        for ex in pools.values():
            ex.shutdown()
    out: dict[str, Any] = {}
    for name in pools:
        m, s = runs[name, "map"], runs[name, "submit"]
        out[name] = {
            "us_per_task": float(np.median(m)), "us_per_task_runs": summary(m),
            "submit_us_per_task": float(np.median(s)), "submit_us_per_task_runs": summary(s), "tasks": cfg.tasks,
        }
    if "nocopy" in out:
        std, nc = out["concurrent.futures"], out["nocopy"]
        nc["map_over_stdlib"] = ratio(nc["us_per_task"], std["us_per_task"])
        nc["submit_over_stdlib"] = ratio(nc["submit_us_per_task"], std["submit_us_per_task"])
    for name, p in out.items():
        log(f"  overhead {name:<20} map {p['us_per_task']:.0f} µs per task, submit {p['submit_us_per_task']:.0f} µs per task")
    return out


def _workers_sweep(cfg: ScalingConfig, log: Log) -> list[dict[str, Any]]:
    from ._methods import RunContext, by_name
    from ._seed import _sums_ok

    data = make_records(cfg.rows)
    expected = expected_sum(data)
    out = []
    with tempfile.TemporaryDirectory(prefix="nocopy-bench-") as scratch:
        for name in SWEEP_METHODS:
            method = by_name(name)
            why = method.available()
            if why is not None:
                log(f"  workers sweep: skipping {name}: {why}")
                continue
            for w in cfg.workers:
                totals, ok = [], True
                for _ in range(cfg.repeat):
                    ctx = RunContext(data, w, cfg.start_method, tempfile.mkdtemp(dir=scratch))
                    t0 = time.perf_counter()
                    sums = method.run(ctx)
                    totals.append(time.perf_counter() - t0)
                    ok = ok and _sums_ok(method, sums, expected, w)
                point = {"method": name, "workers": w, "total_s": summary(totals), "sums_ok": ok}
                out.append(point)
                log(f"  workers {name:<16} N={w:<3} {point['total_s']['median']:.3f} s{'' if ok else '  SUMS WRONG'}")  # type: ignore[index]
    return out


def _startup_part(cfg: ScalingConfig, log: Log) -> dict[str, Any]:
    workers = max([w for w in cfg.workers if w <= 4] or [min(cfg.workers)])
    return run_startup(StartupConfig(workers=workers, repeat=cfg.repeat), log)


def run_scaling(cfg: ScalingConfig, log: Log = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Run the requested parts; return the JSON-able result."""
    unknown = [p for p in cfg.parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    if cfg.min_size < 1 or cfg.max_size < cfg.min_size:
        raise ValueError(f"need 1 <= --min-size <= --max-size, got {cfg.min_size} and {cfg.max_size}")
    result: dict[str, Any] = {
        "benchmark": "scaling",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "min_size": cfg.min_size, "max_size": cfg.max_size, "rows": cfg.rows, "workers": cfg.workers,
            "tasks": cfg.tasks, "start_method": cfg.start_method, "repeat": cfg.repeat, "parts": cfg.parts,
        },
        "failed": {},
    }
    steps: list[tuple[str, str, Callable[[ScalingConfig, Log], Any]]] = [
        ("get", "get_latency", _get_latency),
        ("share", "share_throughput", _share_throughput),
        ("overhead", "task_overhead", _task_overhead),
        ("workers", "workers", _workers_sweep),
        ("startup", "startup", _startup_part),
    ]
    for part, key, fn in steps:
        if part not in cfg.parts:
            continue
        log(f"{part} ...")
        try:
            result[key] = fn(cfg, log)
        except Exception as exc:
            result["failed"][part] = f"{type(exc).__name__}: {exc}"
            log(f"  FAILED: {result['failed'][part]}")
    if any(not p["sums_ok"] for p in result.get("workers", [])):
        result["failed"]["workers"] = "wrong sums"
    get = result.get("get_latency")
    if get and len(get) > 1:
        result["get_flatness"] = ratio(get[-1]["get_us"]["median"], get[0]["get_us"]["median"])
    return result


def _overhead_lines(over: dict[str, Any]) -> list[str]:
    lines = ["per-task overhead (tiny tasks, warm pool of 2):"]
    for name, p in over.items():
        vs = ""
        if p.get("map_over_stdlib") is not None:
            vs = f"   vs concurrent.futures: map {p['map_over_stdlib']:.2f}x, submit {p['submit_over_stdlib']:.2f}x"
        lines.append(
            f"  {name:<20} list(ex.map(f, range(N))) {p['us_per_task']:6.0f} µs per task,"
            f" submit {p['submit_us_per_task']:6.0f} µs per task{vs}"
        )
    return [*lines, ""]


def _share_lines(share: list[dict[str, Any]]) -> list[str]:
    lines = [
        "share() vs memcpy into fresh shared memory (memfd + mmap + copy) and pwrite into a fresh memfd "
        "(the seed floor's copy):"
    ]
    if "huge_pages" in share[0]:
        lines.append(f"  huge pages at the start: {share[0]['huge_pages']['detail']}")
    for p in share:
        lines.append(
            f"  {format_bytes(p['nbytes']):>9}  share {p['share_gbps']:6.2f} GB/s   memcpy {p['memcpy_shm_gbps']:6.2f} GB/s"
            f"   pwrite {p['pwrite_shm_gbps']:6.2f} GB/s   share time / memcpy {p['share_over_memcpy']:.2f}x,"
            f" / pwrite {p['share_over_pwrite']:.2f}x"
        )
        if "share_modes" in p:
            sm = p["share_modes"]
            lines.append(
                f"  {'':>9}  share() / share() with 4 KiB pages from one thread (the former share(), "
                f"{sm['4k_1']['gbps']:.2f} GB/s): 2 MiB pages, one thread {sm['huge_1']['over_4k_1']:.2f}x; "
                f"default {sm['default']['over_4k_1']:.2f}x"
            )
        if "fill" in p:
            lines.append(f"  {'':>9}  filling one memfd: {_fill_text(p)}")
    lines.append("")
    return lines


def scaling_table(result: dict[str, Any]) -> str:
    lines = ["nocopy bench scaling", ""]
    get = result.get("get_latency")
    if get:
        lines.append("get() in a worker (fresh handle, maps the segment):")
        for p in get:
            g = p["get_us"]
            lines.append(f"  {format_bytes(p['nbytes']):>9}  {g['median']:8.0f} µs  (min {g['min']:.0f}, max {g['max']:.0f})")
        if result.get("get_flatness") is not None:
            lines.append(f"  largest / smallest: {result['get_flatness']:.2f}x (target <= 1.5x)")
        lines.append("")
    share = result.get("share_throughput")
    if share:
        lines += _share_lines(share)
    over = result.get("task_overhead")
    if over:
        lines += _overhead_lines(over)
    wk = result.get("workers")
    if wk:
        lines.append(f"classic experiment ({result['config']['rows']:,} rows) vs workers, median s:")
        methods = list(dict.fromkeys(p["method"] for p in wk))
        counts = list(dict.fromkeys(p["workers"] for p in wk))
        lines.append(f"  {'method':<16}" + "".join(f"{'N=' + str(c):>9}" for c in counts))
        for m in methods:
            cells = {p["workers"]: p["total_s"]["median"] for p in wk if p["method"] == m}
            lines.append(f"  {m:<16}" + "".join(f"{cells[c]:9.3f}" if c in cells else f"{'-':>9}" for c in counts))
        lines.append("")
    if result.get("startup"):
        lines += [startup_table(result["startup"]), ""]
    for part, why in result.get("failed", {}).items():
        lines.append(f"FAILED {part}: {why}")
    return "\n".join(lines)
