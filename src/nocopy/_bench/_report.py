"""Results out: the text table, the JSON file and the PNG plot."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .._text import format_bytes, render_table
from ._startup import startup_table

__all__ = ["plot_scaling", "plot_seed", "seed_table", "write_json"]


def _finite(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null (a wrong sum is still visible in ``sums_ok``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dump_json(result: dict[str, Any]) -> str:
    """*result* as the JSON text ``--json`` prints and ``--json-out`` writes (NaN/inf as null)."""
    return json.dumps(_finite(result), indent=2, allow_nan=False)


def write_json(result: dict[str, Any], path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        f.write(dump_json(result) + "\n")


def _med(stats: dict[str, float] | None) -> float | None:
    return None if stats is None else stats["median"]


def _sec(stats: dict[str, float] | None, spread: bool = False) -> str:
    if stats is None:
        return "-"
    text = f"{stats['median']:.3f}"
    if spread:
        text += f" ({stats['min']:.2f}-{stats['max']:.2f})"
    return text


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def seed_table(result: dict[str, Any]) -> str:
    """The seed experiment as fixed-width text tables: time cold and warm, then memory (medians)."""
    cfg, data = result["config"], result["data"]
    cold_n = cfg.get("cold_repeat", 0)
    lines = [
        f"nocopy bench seed: {data['rows']:,} rows ({format_bytes(data['nbytes'])}), {cfg['workers']} workers, "
        f"start method {cfg['start_method']}; cold: median of {cold_n} run(s), each in a fresh interpreter; "
        f"warm: median of {cfg['repeat']} run(s) in one process, total with (min-max); "
        f"memory: median of {cfg.get('memory_repeat', cfg['repeat'])} separate warm run(s)",
        "",
    ]
    header = [
        "method", "cold s", "start-up", "work", "teardown", "exit", "cold/floor",
        "warm s", "w.start-up", "w.work", "w.teardown", "warm/floor", "cold/warm", "sums",
    ]
    rows = [("floor", result["floor"]), *result["methods"].items()]
    cells = []
    for name, rec in rows:
        t, rat = rec["time"], rec["ratio_to_floor"]
        cold = rec.get("cold") or {"time": {}, "sums_ok": True}
        c = cold["time"]
        sums_ok = rec["sums"]["ok"] and (cold["sums_ok"] or not cold_n)
        sums = "ok" if sums_ok else "WRONG" if not (rec["errors"] or cold.get("errors")) else "FAILED"
        cells.append([
            name, _sec(c.get("end_to_end_s")), _sec(c.get("startup_s")), _sec(c.get("work_s")),
            _sec(c.get("teardown_s")), _sec(c.get("exit_s")), _x(rat.get("cold")),
            _sec(t["total_s"], True), _sec(t["startup_s"]), _sec(t["work_s"]), _sec(t["teardown_s"]),
            _x(rat["total"]), _x(rec.get("cold_over_warm")), sums,
        ])
    lines.append(render_table(header, cells, right=range(1, len(header) - 1), rule=True))
    lines.append("")
    header = ["method", "peak memory", "added", "mem/floor", "tracemalloc", "work/floor"]
    cells = []
    for name, rec in rows:
        mem, rat = rec["memory"], rec["ratio_to_floor"]
        cells.append([
            name, format_bytes(_med(mem["peak_bytes"])), format_bytes(_med(mem["added_bytes"])),
            _x(rat["memory"]), format_bytes(_med(rec["tracemalloc_peak_bytes"])), _x(rat["work"]),
        ])
    lines.append(render_table(header, cells, right=range(1, len(header)), rule=True))
    lines.append("")
    notes = []
    ray = result["methods"].get("ray")
    if ray is not None and ray["extra"].get("ray_init_s"):
        notes.append(f"ray: ray.init took {ray['extra']['ray_init_s']['median']:.2f} s of its start-up")
    floor_extra = result["floor"]["extra"]
    if floor_extra.get("memcpy_shm_s"):
        notes.append(
            "floor: copy into fresh shared memory (as share() copies: into 2 MiB pages where the kernel allows, "
            "else pwrite into a memfd) "
            f"{floor_extra['memcpy_shm_s']['median']:.3f} s + nansum {floor_extra['nansum_s']['median']:.3f} s; "
            f"for reference, memcpy through a fresh shared mapping {floor_extra['memcpy_shm_mapped_s']['median']:.3f} s, "
            f"into fresh private memory {floor_extra['memcpy_private_s']['median']:.3f} s"
        )
    notes.append(
        "cold s: one run in a fresh interpreter, end to end: the method's start-up + work + teardown + the "
        "interpreter's exit after it (atexit handlers, finalizers); cold/floor against the floor's cold end to end; "
        "warm s: the same method repeated in one process (start-up + work + teardown), warm/floor against "
        "the floor's warm work; cold/warm: the method's phases cold over warm"
    )
    if not cfg.get("warm_up", True):
        notes.append(
            "no warm-up (as a script runs it): start-up is only the pool's construction; the workers boot "
            "during the work phase, so compare end to end (cold s), not the phases"
        )
    notes.append(
        "peak memory: Σ PSS of the parent and all its descendants + shared memory, each page once; "
        "added: over the same sum just before the run (the parent with the data and its imports, "
        f"{format_bytes(result['baseline_memory_bytes'])} before the first run); "
        "tracemalloc: the parent's own traced peak, the original's figure"
    )
    if any(not rec["whole_column"] for _, rec in rows[1:]):
        notes.append("nocopy-map: each worker sums one chunk; the chunks' total is checked")
    for name, why in result["skipped"].items():
        notes.append(f"skipped {name}: {why}")
    for name, errors in result["failed"].items():
        notes.append(f"FAILED {name}: {errors}")
    lines += [f"  {n}" for n in notes]
    if result.get("startup"):
        lines += ["", startup_table(result["startup"])]
    return "\n".join(lines)


def plot_seed(result: dict[str, Any], path: str) -> None:
    """PNG: time per method (stacked phases, min-max whiskers) and peak memory per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("floor", result["floor"]), *result["methods"].items()]
    rows = [(n, r) for n, r in rows if r["time"]["total_s"] is not None]
    names = [n for n, _ in rows][::-1]
    recs = [r for _, r in rows][::-1]
    y = list(range(len(names)))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(14, 0.6 * len(names) + 3.0))
    # Two bars per method: cold (a fresh interpreter, exit included) above, warm below.
    colds = [(r.get("cold") or {}).get("time") or {} for r in recs]
    has_cold = any(c.get("end_to_end_s") for c in colds)
    bars: list[tuple[str, list[dict[str, Any]], tuple[tuple[str, str], ...], float]] = [
        ("warm", [r["time"] for r in recs],
         (("startup_s", "#9ecae1"), ("work_s", "#3182bd"), ("teardown_s", "#c6dbef")), -0.2 if has_cold else 0.0),
    ]
    if has_cold:
        bars.append(("cold", colds, (("startup_s", "#fdae6b"), ("work_s", "#e6550d"), ("teardown_s", "#fdd0a2"),
                                    ("exit_s", "#bdbdbd")), 0.2))
    height = 0.38 if has_cold else 0.8
    spans: list[tuple[float, dict[str, float]]] = []
    for label, times, phases, dy in bars:
        left = [0.0] * len(names)
        ys = [yi + dy for yi in y]
        for phase, color in phases:
            vals = [_med(t.get(phase)) or 0.0 for t in times]
            ax_t.barh(ys, vals, left=left, height=height, color=color,
                      label=f"{label} {phase[:-2].replace('startup', 'start-up')}")
            left = [a + b for a, b in zip(left, vals, strict=True)]
        key = "end_to_end_s" if label == "cold" else "total_s"
        for yi, t in zip(ys, times, strict=True):
            if t.get(key):
                spans.append((yi, t[key]))
    ax_t.errorbar(
        [t["median"] for _, t in spans], [yi for yi, _ in spans],
        xerr=[[t["median"] - t["min"] for _, t in spans], [t["max"] - t["median"] for _, t in spans]],
        fmt="none", ecolor="black", capsize=3, lw=1,
    )
    floor_t = _med(result["floor"]["time"]["work_s"])
    if floor_t:
        ax_t.axvline(floor_t, color="red", ls="--", lw=1, label="floor (warm work)")
    # One slow outlier (Ray's start-up) would squash every other bar: clip it
    # and say so on the bar.
    tops = sorted(t["max"] for _, t in spans)
    xmax = tops[-1] * 1.25
    if len(tops) > 2 and tops[-1] > 3 * tops[-2]:
        xmax = tops[-2] * 1.6
    for yi, t in spans:
        clipped = t["max"] > xmax
        ax_t.text(
            min(t["max"], xmax * 0.7), yi, f"  {t['median']:.2f} s" + (" (clipped)" if clipped else ""),
            va="center", fontsize=7, color="white" if clipped else "black",
            fontweight="bold" if clipped else "normal",
        )
    ax_t.set_yticks(y, names)
    ax_t.set_xlabel("seconds (median; whiskers: min-max of the total)")
    ax_t.set_title("time: cold (fresh interpreter, upper bar) and warm (lower bar)" if has_cold else "time (warm)")
    ax_t.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=4, fontsize=8, frameon=False)
    ax_t.set_xlim(0, xmax)

    mem = [r["memory"] for r in recs]
    base = [(_med(m["baseline_bytes"]) or 0) / 1e6 for m in mem]
    added = [max(0.0, (_med(m["peak_bytes"]) or 0) / 1e6 - b) for m, b in zip(mem, base, strict=True)]
    ax_m.barh(y, base, color="#d9d9d9", label="before the run (data in the parent)")
    ax_m.barh(y, added, left=base, color="#fd8d3c", label="added at peak")
    tm = [(_med(r["tracemalloc_peak_bytes"]) or 0) / 1e6 for r in recs]
    ax_m.scatter(tm, y, marker="x", color="black", zorder=3, label="tracemalloc (the original's figure)")
    floor_m = _med(result["floor"]["memory"]["peak_bytes"])
    if floor_m:
        ax_m.axvline(floor_m / 1e6, color="red", ls="--", lw=1, label="floor")
    for yi, b, a in zip(y, base, added, strict=True):
        ax_m.text(b + a, yi, f"  {b + a:,.0f}", va="center", fontsize=8)
    ax_m.set_yticks(y, names)
    ax_m.set_xlabel("MB: peak of Σ PSS (parent + workers) + shared memory, each page once")
    ax_m.set_title("peak memory")
    ax_m.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8, frameon=False)
    ax_m.set_xlim(0, max(b + a for b, a in zip(base, added, strict=True)) * 1.25)
    cfg, data = result["config"], result["data"]
    fig.suptitle(
        f"classic experiment: {data['rows']:,} rows ({format_bytes(data['nbytes'])}), {cfg['workers']} workers, "
        f"{cfg['start_method']}; median of {cfg.get('cold_repeat', 0)} cold and {cfg['repeat']} warm run(s)"
    )
    fig.tight_layout()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(result: dict[str, Any], path: str) -> None:
    """PNG: the four scaling panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    get = result.get("get_latency") or []
    if get:
        ax.loglog([g["nbytes"] / 2**20 for g in get], [g["get_us"]["median"] for g in get], "o-")
        ax.set_ylim(bottom=1)
    ax.set_xlabel("MiB")
    ax.set_ylabel("µs")
    ax.set_title("get() in a worker vs size (must be flat)")
    ax = axes[0][1]
    share = result.get("share_throughput") or []
    if share:
        xs = [s["nbytes"] / 2**20 for s in share]
        ax.semilogx(xs, [s["share_gbps"] for s in share], "o-", label="nocopy.share")
        ax.semilogx(xs, [s["memcpy_shm_gbps"] for s in share], "s--", label="memcpy into fresh shared memory")
        ax.semilogx(xs, [s["pwrite_shm_gbps"] for s in share], "^:", label="pwrite into a fresh memfd")
        if all("fill" in s for s in share):
            k = share[0]["fill_threads"]
            ax.semilogx(xs, [s["fill"]["pwrite"]["gbps_n"] for s in share], "v-.",
                        label=f"fallocate + pwrite, {k} threads")
            ax.semilogx(xs, [s["fill"]["mmap"]["gbps_n"] for s in share], "d-.",
                        label=f"mapping + copy, {k} threads")
        ax.legend(fontsize=8)
    ax.set_xlabel("MiB")
    ax.set_ylabel("GB/s")
    ax.set_title("share() throughput")
    ax = axes[1][0]
    over = result.get("task_overhead") or {}
    if over:
        labels = list(over)
        ax.bar(labels, [over[k]["us_per_task"] for k in labels])
    ax.set_ylabel("µs per task")
    ax.set_title("per-task overhead (tiny tasks, warm pool)")
    ax = axes[1][1]
    wk = result.get("workers") or []
    for method in sorted({w["method"] for w in wk}):
        pts = [w for w in wk if w["method"] == method]
        ax.plot([p["workers"] for p in pts], [p["total_s"]["median"] for p in pts], "o-", label=method)
    if wk:
        ax.legend(fontsize=8)
    ax.set_xlabel("workers")
    ax.set_ylabel("s")
    ax.set_title("classic experiment vs number of workers")
    fig.tight_layout()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
