"""Results out: the text table, the JSON file and the PNG plot."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .._text import format_bytes, render_table

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


def write_json(result: dict[str, Any], path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_finite(result), f, indent=2, allow_nan=False)
        f.write("\n")


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
    """The seed experiment as a fixed-width text table (medians; total with min-max)."""
    cfg, data = result["config"], result["data"]
    lines = [
        f"nocopy bench seed: {data['rows']:,} rows ({format_bytes(data['nbytes'])}), {cfg['workers']} workers, "
        f"start method {cfg['start_method']}; times: median of {cfg['repeat']} run(s), total with (min-max); "
        f"memory: median of {cfg.get('memory_repeat', cfg['repeat'])} separate run(s)",
        "",
    ]
    header = [
        "method", "total s", "start-up", "work", "teardown", "total/floor", "work/floor",
        "peak memory", "added", "mem/floor", "tracemalloc", "sums",
    ]
    rows = [("floor", result["floor"]), *result["methods"].items()]
    cells = []
    for name, rec in rows:
        t, mem, rat = rec["time"], rec["memory"], rec["ratio_to_floor"]
        sums = "ok" if rec["sums"]["ok"] else "WRONG" if not rec["errors"] else "FAILED"
        cells.append([
            name, _sec(t["total_s"], True), _sec(t["startup_s"]), _sec(t["work_s"]), _sec(t["teardown_s"]),
            _x(rat["total"]), _x(rat["work"]), format_bytes(_med(mem["peak_bytes"])),
            format_bytes(_med(mem["added_bytes"])), _x(rat["memory"]),
            format_bytes(_med(rec["tracemalloc_peak_bytes"])), sums,
        ])
    lines.append(render_table(header, cells, right=range(1, len(header) - 1), rule=True))
    lines.append("")
    notes = []
    ray = result["methods"].get("ray")
    if ray is not None and ray["extra"].get("ray_init_s"):
        notes.append(f"ray: ray.init took {ray['extra']['ray_init_s']['median']:.2f} s of its start-up")
    floor_extra = result["floor"]["extra"]
    if floor_extra.get("memcpy_shm_s"):
        notes.append(
            "floor: copy into fresh shared memory (pwrite into a memfd) "
            f"{floor_extra['memcpy_shm_s']['median']:.3f} s + nansum {floor_extra['nansum_s']['median']:.3f} s; "
            f"for reference, memcpy through a fresh shared mapping {floor_extra['memcpy_shm_mapped_s']['median']:.3f} s, "
            f"into fresh private memory {floor_extra['memcpy_private_s']['median']:.3f} s"
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
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(14, 0.45 * len(names) + 3.0))
    left = [0.0] * len(names)
    for phase, color in (("startup_s", "#9ecae1"), ("work_s", "#3182bd"), ("teardown_s", "#c6dbef")):
        vals = [_med(r["time"][phase]) or 0.0 for r in recs]
        ax_t.barh(y, vals, left=left, color=color, label=phase[:-2].replace("startup", "start-up"))
        left = [a + b for a, b in zip(left, vals, strict=True)]
    totals = [r["time"]["total_s"] for r in recs]
    ax_t.errorbar(
        [t["median"] for t in totals], y,
        xerr=[[t["median"] - t["min"] for t in totals], [t["max"] - t["median"] for t in totals]],
        fmt="none", ecolor="black", capsize=3, lw=1,
    )
    floor_t = _med(result["floor"]["time"]["work_s"])
    if floor_t:
        ax_t.axvline(floor_t, color="red", ls="--", lw=1, label="floor")
    # One slow outlier (Ray's start-up) would squash every other bar: clip it
    # and say so on the bar.
    tops = sorted(t["max"] for t in totals)
    xmax = tops[-1] * 1.25
    if len(tops) > 2 and tops[-1] > 3 * tops[-2]:
        xmax = tops[-2] * 1.6
    for yi, t in zip(y, totals, strict=True):
        clipped = t["max"] > xmax
        ax_t.text(
            min(t["max"], xmax * 0.7), yi, f"  {t['median']:.2f} s" + (" (clipped)" if clipped else ""),
            va="center", fontsize=8, color="white" if clipped else "black",
            fontweight="bold" if clipped else "normal",
        )
    ax_t.set_yticks(y, names)
    ax_t.set_xlabel("seconds (median; whiskers: min-max of the total)")
    ax_t.set_title("end-to-end time")
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
        f"{cfg['start_method']}; median of {cfg['repeat']}"
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
