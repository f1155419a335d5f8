"""Pool start-up per start method, cold: what a script pays before its first result.

Each measurement is one fresh interpreter (as a script runs once): it imports
numpy (and nocopy for nocopy's rows), builds an executor of N workers, runs one
task per worker that imports numpy and sums a small array, and shuts the pool
down. Timed from just before the executor is built to after its shutdown
returned (every worker started, ran and exited), and the whole process from
launch to exit beside it. Rows: the standard library's ``ProcessPoolExecutor``
under spawn, forkserver and fork, and ``nocopy.ProcessPoolExecutor`` under its
default (a forkserver with numpy, nocopy and the caller's heavy libraries
preloaded), spawn and fork. Methods run in a shuffled order each round;
medians, and ratios against the standard library's spawn pool measured in the
same run.

The task is the builtin ``exec`` over a string, so the standard library's
workers import nothing of nocopy's to unpickle it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._stats import ratio, summary

__all__ = ["BASELINE", "METHODS", "StartupConfig", "run_startup", "startup_table"]

# (row name, executor, start method or "default" for the executor's own default)
METHODS: tuple[tuple[str, str, str], ...] = (
    ("stdlib spawn", "stdlib", "spawn"),
    ("stdlib forkserver", "stdlib", "forkserver"),
    ("stdlib fork", "stdlib", "fork"),
    ("nocopy default", "nocopy", "default"),
    ("nocopy spawn", "nocopy", "spawn"),
    ("nocopy fork", "nocopy", "fork"),
)
BASELINE = "stdlib spawn"

_CHILD = r"""
import json, multiprocessing as mp, sys, time
import numpy
impl, method, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if impl == "nocopy":
    import nocopy
    Executor = nocopy.ProcessPoolExecutor
else:
    from concurrent.futures import ProcessPoolExecutor as Executor
kw = {} if method == "default" else {"mp_context": mp.get_context(method)}
t0 = time.perf_counter()
with Executor(n, **kw) as ex:
    list(ex.map(exec, ["import numpy; numpy.ones(1000).sum()"] * n))
t1 = time.perf_counter()
print(json.dumps({"startup_s": t1 - t0}), flush=True)
"""


@dataclass
class StartupConfig:
    workers: int = 4
    repeat: int = 5
    methods: list[str] = field(default_factory=lambda: [m[0] for m in METHODS])


def _available(name: str) -> bool:
    method = next(m for m in METHODS if m[0] == name)[2]
    return method == "default" or method in multiprocessing.get_all_start_methods()


def _one(name: str, workers: int) -> dict[str, float]:
    _, impl, method = next(m for m in METHODS if m[0] == name)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, impl, method, str(workers)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    script_s = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"start-up run {name!r} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    line = out.stdout.strip().splitlines()[-1]
    return {"startup_s": float(json.loads(line)["startup_s"]), "script_s": script_s}


def run_startup(
    cfg: StartupConfig, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Measure every available method *cfg.repeat* times, cold; return the JSON-able result."""
    unknown = [m for m in cfg.methods if m not in {n for n, _, _ in METHODS}]
    if unknown:
        raise ValueError(f"unknown start-up methods {unknown}; choose from {[m[0] for m in METHODS]}")
    names = [m for m in cfg.methods if _available(m)]
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in names}
    for r in range(cfg.repeat):
        order = random.sample(names, len(names))
        for name in order:
            samples[name].append(_one(name, cfg.workers))
        log(f"start-up round {r + 1}/{cfg.repeat} done")
    rows: dict[str, Any] = {}
    for name, runs in samples.items():
        rows[name] = {
            "startup_s": summary([s["startup_s"] for s in runs]),
            "script_s": summary([s["script_s"] for s in runs]),
            "runs": runs,
        }
    base = rows.get(BASELINE, {}).get("startup_s")
    for row in rows.values():
        med = row["startup_s"]["median"] if row["startup_s"] else None
        row["vs_stdlib_spawn"] = ratio(med, base["median"] if base else None)
    return {
        "config": {"workers": cfg.workers, "repeat": cfg.repeat, "python": sys.version.split()[0]},
        "methods": rows,
    }


def startup_table(result: dict[str, Any]) -> str:
    """The result as a text table, one row per method."""
    cfg = result["config"]
    lines = [
        f"Pool start-up, cold (a fresh interpreter per run; {cfg['workers']} workers, one numpy task each, "
        f"shutdown included; median of {cfg['repeat']}, Python {cfg['python']})",
        f"{'method':<20} {'start-up':>9} {'min':>7} {'max':>7} {'vs stdlib spawn':>16} {'script':>8}",
    ]
    for name, row in result["methods"].items():
        s, w = row["startup_s"], row["script_s"]
        rel = row["vs_stdlib_spawn"]
        lines.append(
            f"{name:<20} {s['median']:>8.3f}s {s['min']:>6.3f}s {s['max']:>6.3f}s "
            f"{(f'{rel:.2f}x' if rel is not None else '-'):>16} {w['median']:>7.3f}s"
        )
    lines.append("script: the whole process, launch to exit (interpreter, imports, pool, teardown)")
    return "\n".join(lines)
