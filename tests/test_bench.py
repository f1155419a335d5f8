"""nocopy bench: the data, the memory sampler's accounting, the seed, scaling, pandas and ray commands."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nocopy
from _mdexamples import run_in_session
from conftest import Procs
from nocopy._bench._data import expected_sum, make_records, make_records_literally
from nocopy._bench._methods import METHODS, Method
from nocopy._bench._startup import BASELINE as STARTUP_BASELINE
from nocopy._bench._startup import METHODS as STARTUP_METHODS
from nocopy._bench.cli import QUICK_SKIPS, parse_size

MiB = 1 << 20
BIN = Path(sys.executable).parent


# -- the data ------------------------------------------------------------


@pytest.mark.parametrize("rows", [2, 10, 11])
def test_records_equal_the_original_construction(rows: int) -> None:
    stamps = (datetime(2024, 5, 1, 12, 0, 0, 1), datetime(2024, 5, 1, 12, 0, 0, 2))
    fast = make_records(rows, stamps=stamps)
    slow = make_records_literally(rows, stamps=stamps)
    assert type(fast) is np.recarray and type(slow) is np.recarray
    assert fast.dtype == slow.dtype
    assert fast.dtype.names == ("date_col", "float_col", "character_col")
    assert fast.dtype["character_col"] == np.dtype("S6")
    for field in fast.dtype.names:  # field by field: NaN == NaN there
        np.testing.assert_array_equal(fast[field], slow[field])
    assert expected_sum(fast) == (rows + 1) // 2


def test_parse_size() -> None:
    assert parse_size("1MB") == MiB
    assert parse_size("4GB") == 4 << 30
    assert parse_size("256mib") == 256 * MiB
    assert parse_size("1000") == 1000


# -- the memory sampler ----------------------------------------------------

_CHILD = """
import sys, numpy as np, nocopy
mode, uri, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "attach":
    view = nocopy.attach(uri).get()
    assert int(view.sum()) == n   # every page read: mapped in this process
elif mode == "private":
    own = np.ones(n, np.uint8)
print("ready", flush=True)
sys.stdin.read()
"""


# The sampler measures the process tree under the process that runs it. Run in
# pytest, that tree holds whatever session fixtures started (a Ray instance,
# warm pools) and their memory moves on its own; so each check runs in a fresh
# interpreter whose tree is only what the check starts.
_SHARED_PAGES = """
import json, subprocess, sys
import numpy as np, nocopy
from nocopy._bench._monitor import MemoryMonitor
CHILD, n = sys.argv[1], int(sys.argv[2])

def children_sample(mon, mode, uri):
    kids = [subprocess.Popen([sys.executable, "-c", CHILD, mode, uri, str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for k in kids:
            assert k.stdout.readline().strip() == b"ready"
        return mon.sample().total
    finally:
        for k in kids:
            k.stdin.close()  # EOF: the child exits
            k.wait(timeout=30)
            k.stdout.close()

with MemoryMonitor() as mon:
    base = mon.sample()
    ref = nocopy.share(np.ones(n, np.uint8))
    held = mon.sample()
    out = {"held_shm": held.shm_bytes - base.shm_bytes, "held_total": held.total - base.total}
    for mode in ("idle", "attach", "private"):
        out[mode] = children_sample(mon, mode, ref.uri)
    ref.close()
print(json.dumps(out))
"""


def test_monitor_counts_each_shared_page_once() -> None:
    n = 64 * MiB
    proc = run_in_session([sys.executable, "-c", _SHARED_PAGES, _CHILD, str(n)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    # Held by a file descriptor only, mapped by nobody: PSS cannot see
    # it, the sampler must.
    assert r["held_shm"] >= n
    assert n * 0.9 <= r["held_total"] <= n * 1.3
    # Two processes mapping and reading every shared page add (almost) nothing:
    # the pages are already counted once. Σ RSS would add 2n here.
    assert abs(r["attach"] - r["idle"]) < 0.15 * n, (r["attach"] - r["idle"]) / n
    # Private memory in descendants is counted: two children, n bytes each.
    assert 1.7 * n < r["private"] - r["idle"] < 2.4 * n, (r["private"] - r["idle"]) / n


_UNMAPPED_FILE = """
import json, os, sys, time
from nocopy._bench._monitor import MemoryMonitor
n, where = int(sys.argv[1]), sys.argv[2]
path = f"{where}/nocopybench-{os.getpid()}-test.arrow"
pattern = f"{where}/nocopybench-{os.getpid()}-*.arrow"
try:
    with open(path, "wb") as f:
        f.write(b"\\x01" * n)
    with MemoryMonitor() as mon:
        unseen = mon.sample()
        seen = mon.sample([pattern])
        mon.start([pattern])
        time.sleep(0.05)
        peak = mon.stop()
finally:
    os.unlink(path)
print(json.dumps({"seen_shm": seen.shm_bytes - unseen.shm_bytes,
                  "peak_total": peak.peak.total - unseen.total, "samples": peak.samples}))
"""


def test_monitor_counts_unmapped_shm_files_it_is_told_about() -> None:
    n = 32 * MiB
    # A private directory on the same tmpfs: removed by this test even if the
    # child is killed before its own cleanup runs.
    where = tempfile.mkdtemp(dir="/dev/shm", prefix="nocopybench-test-")
    try:
        proc = run_in_session([sys.executable, "-c", _UNMAPPED_FILE, str(n), where], timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        r = json.loads(proc.stdout)
        assert r["seen_shm"] >= n
        assert r["peak_total"] >= n * 0.95
        assert r["samples"] >= 2
        pid = proc.args[0]
        assert not os.path.exists(f"{where}/nocopybench-{pid}-test.arrow")
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_stale_arrow_files_of_dead_benchmarks_are_removed(procs: Procs) -> None:
    from nocopy._bench._methods import remove_stale_arrow_files

    dead = procs.python("pass")
    dead.wait(timeout=30)
    stale = f"/dev/shm/nocopybench-{dead.pid}-00ff.arrow"
    alive = f"/dev/shm/nocopybench-{os.getpid()}-00ff.arrow"
    for path in (stale, alive):
        Path(path).write_bytes(b"x")
    try:
        removed = remove_stale_arrow_files()
        assert stale in removed and not os.path.exists(stale)
        assert os.path.exists(alive)  # its process (this one) is alive
    finally:
        for path in (stale, alive):
            if os.path.exists(path):
                os.unlink(path)


# -- the seed experiment ---------------------------------------------------

TIME_FIELDS = ("total_s", "startup_s", "work_s", "teardown_s")


def _check_method_record(name: str, rec: dict[str, Any], expected: float, workers: int) -> None:
    for key in TIME_FIELDS:
        stats = rec["time"][key]
        assert stats is not None, (name, key)
        assert 0 <= stats["min"] <= stats["median"] <= stats["max"], (name, key, stats)
    t = rec["time"]
    parts = t["startup_s"]["median"] + t["work_s"]["median"] + t["teardown_s"]["median"]
    assert parts <= t["total_s"]["max"] * 1.05 + 0.01, (name, parts, t["total_s"])
    mem = rec["memory"]
    assert mem["peak_bytes"] is not None and mem["peak_bytes"]["median"] > 0, name
    assert mem["peak_bytes"]["median"] >= mem["baseline_bytes"]["median"], name
    assert mem["samples"]["min"] >= 2, name
    assert rec["tracemalloc_peak_bytes"] is not None and rec["tracemalloc_peak_bytes"]["median"] >= 0, name
    for key in ("total", "work", "memory"):
        assert rec["ratio_to_floor"][key] is not None and rec["ratio_to_floor"][key] > 0, (name, key)
    sums = rec["sums"]
    assert sums["ok"] is True, (name, sums)
    assert sums["expected"] == expected
    if rec["whole_column"]:
        assert sums["last"] == [expected] * workers, (name, sums)
    else:
        assert sum(sums["last"]) == expected, (name, sums)
    assert rec["errors"] == []


COLD_FIELDS = ("end_to_end_s", "total_s", "startup_s", "work_s", "teardown_s", "exit_s", "launch_s", "load_s")


def _check_cold_record(name: str, rec: dict[str, Any], runs: int) -> None:
    cold = rec["cold"]
    assert cold["errors"] == [] and cold["sums_ok"] is True, (name, cold["errors"])
    assert len(cold["runs"]) == runs and [r["kind"] for r in cold["runs"]] == ["cold"] * runs
    for key in COLD_FIELDS:
        stats = cold["time"][key]
        assert stats is not None and 0 <= stats["min"] <= stats["median"] <= stats["max"], (name, key)
    for r in cold["runs"]:
        assert r["end_to_end_s"] == pytest.approx(r["total_s"] + r["exit_s"])
    assert rec["ratio_to_floor"]["cold"] > 0 and rec["cold_over_warm"] > 0, name


def test_seed_cold_runs_each_method_once_per_fresh_interpreter_round_robin(tmp_path: Path) -> None:
    from nocopy._bench import _seed
    from nocopy._bench._report import plot_seed, seed_table

    lines: list[str] = []
    cfg = _seed.SeedConfig(rows=2000, workers=2, repeat=1, cold_repeat=2, methods=["stdlib", "threads"])
    result = _seed.run_seed(cfg, log=lines.append)
    assert result["failed"] == {} and result["config"]["cold_repeat"] == 2
    recs = {"floor": result["floor"], **result["methods"]}
    for name, rec in recs.items():
        _check_cold_record(name, rec, runs=2)
        # The warm runs are still there, beside the cold ones.
        assert [r["kind"] for r in rec["runs"]] == ["time", "memory"]
    pids = [r["pid"] for rec in recs.values() for r in rec["cold"]["runs"]]
    assert len(set(pids)) == len(pids) == 6 and os.getpid() not in pids
    # Rounds: every method once per round (in a shuffled order), every first run before any second.
    cold_lines = [line.split()[2:4] for line in lines if " cold " in line]
    assert [r for _, r in cold_lines] == ["#1"] * 3 + ["#2"] * 3
    for rnd in (cold_lines[:3], cold_lines[3:]):
        assert sorted(m for m, _ in rnd) == ["floor", "stdlib", "threads"]
    table = seed_table(result)
    assert "cold s" in table and "warm s" in table and "cold/warm" in table
    plot_seed(result, str(tmp_path / "cold.png"))
    assert (tmp_path / "cold.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_without_warm_up_runs_no_warm_up_task(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._bench import _methods, _seed
    from nocopy._bench._report import seed_table

    def no_barrier(self: Any) -> str:
        raise AssertionError("a warm-up ran although warm_up is off")

    monkeypatch.setattr(_methods.RunContext, "barrier", no_barrier)
    cfg = _seed.SeedConfig(rows=2000, workers=2, repeat=1, cold_repeat=0, methods=["stdlib", "nocopy-executor"], warm_up=False)
    result = _seed.run_seed(cfg, log=lambda s: None)
    assert result["failed"] == {} and result["config"]["warm_up"] is False
    assert "no warm-up" in seed_table(result)


def test_seed_cold_repeat_zero_is_warm_only() -> None:
    from nocopy._bench import _seed
    from nocopy._bench._report import seed_table

    cfg = _seed.SeedConfig(rows=2000, workers=2, repeat=1, cold_repeat=0, methods=["threads"])
    result = _seed.run_seed(cfg, log=lambda s: None)
    assert result["failed"] == {}
    assert result["methods"]["threads"]["cold"]["runs"] == []
    assert result["methods"]["threads"]["ratio_to_floor"]["cold"] is None
    assert "threads" in seed_table(result)


@pytest.mark.slow
def test_seed_quick_runs_every_installed_method_but_ray(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    proc = run_in_session(
        [str(BIN / "nocopy"), "bench", "seed", "--quick", "--json-out", str(out), "--plot", str(png)],
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["data"]["rows"] == 1_000_000
    expected = 500_000.0
    assert result["data"]["expected_sum"] == expected
    workers = result["config"]["workers"]
    assert workers == os.cpu_count()
    # Quick means quick: Ray (seconds to start) only when --methods asks for it.
    chosen = [m.name for m in METHODS if m.name not in QUICK_SKIPS]
    installed = [m.name for m in METHODS if m.available() is None and m.name in chosen]
    assert "ray" not in result["methods"] and "ray" not in result["skipped"]
    assert sorted(result["methods"]) == sorted(installed)
    assert sorted(result["skipped"]) == sorted(m for m in chosen if m not in installed)
    assert result["failed"] == {}
    for name, rec in result["methods"].items():
        _check_method_record(name, rec, expected, workers)
        assert [r["kind"] for r in rec["runs"]] == ["time", "memory"]
        _check_cold_record(name, rec, runs=1)
    floor = result["floor"]
    assert floor["sums"]["ok"] and floor["time"]["work_s"]["median"] > 0
    assert floor["ratio_to_floor"]["work"] == pytest.approx(1.0)
    if "ray" in result["methods"]:
        assert result["methods"]["ray"]["extra"]["ray_init_s"]["median"] > 0
    # The data crossed into every worker: what they hold beyond the parent
    # shows in the peak (each worker holds at least numpy).
    assert result["methods"]["pickle"]["memory"]["added_bytes"]["median"] > 0
    # The table is printed, and the PNG written.
    assert "nocopy-executor" in proc.stdout and "floor" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The arrow method removed its file from /dev/shm.
    pid = proc.args[0]
    assert [f for f in os.listdir("/dev/shm") if f.startswith(f"nocopybench-{pid}-")] == []


@pytest.mark.slow
def test_seed_methods_subset_with_repeats(tmp_path: Path) -> None:
    out = tmp_path / "sub.json"
    proc = run_in_session(
        [
            sys.executable, "-m", "nocopy._bench", "seed", "--rows", "200000", "--repeat", "2", "--memory-repeat", "2",
            "--methods", "stdlib,nocopy-executor,threads", "--json-out", str(out), "--quiet",
        ],
        timeout=200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # --quiet
    result = json.loads(out.read_text())
    assert list(result["methods"]) == ["stdlib", "nocopy-executor", "threads"]
    for name, rec in result["methods"].items():
        _check_method_record(name, rec, 100_000.0, result["config"]["workers"])
        assert sorted(r["kind"] for r in rec["runs"]) == ["memory", "memory", "time", "time"]
        assert sorted(r["repeat"] for r in rec["runs"]) == [0, 0, 1, 1]
    # nocopy's executor shares the array (4.4 MB, above its 1 MiB threshold)
    # once: the parent never pickles it (a pickle would be traced in full).
    nc = result["methods"]["nocopy-executor"]["tracemalloc_peak_bytes"]["median"]
    assert nc < result["data"]["nbytes"] / 2


def test_seed_unknown_method_is_a_clear_error() -> None:
    proc = run_in_session([sys.executable, "-m", "nocopy._bench", "seed", "--rows", "100", "--methods", "carrier-pigeon"], timeout=60)
    assert proc.returncode == 2
    assert "carrier-pigeon" in proc.stderr and "nocopy-executor" in proc.stderr


def test_wrong_sums_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._bench import _seed

    liar = Method("liar", "returns a wrong sum", lambda ctx: [1.0] * ctx.workers)
    monkeypatch.setattr(_seed, "select_methods", lambda names: [liar])
    # Warm only: the stand-in methods exist in this process, not in a fresh interpreter.
    result = _seed.run_seed(_seed.SeedConfig(rows=1000, workers=2, repeat=1, cold_repeat=0), log=lambda s: None)
    assert result["methods"]["liar"]["sums"]["ok"] is False
    assert "liar" in result["failed"]
    from nocopy._bench._report import seed_table

    assert "WRONG" in seed_table(result)


def test_a_failing_method_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nocopy._bench import _seed
    from nocopy._bench._methods import by_name
    from nocopy._bench._report import plot_seed, seed_table, write_json

    def broken(ctx: Any) -> list[float]:
        with ctx.phase("startup"):
            raise RuntimeError("the pool would not start")

    monkeypatch.setattr(
        _seed, "select_methods", lambda names: [Method("broken", "always fails", broken), by_name("threads")]
    )
    # Warm only: the stand-in methods exist in this process, not in a fresh interpreter.
    result = _seed.run_seed(_seed.SeedConfig(rows=1000, workers=2, repeat=1, cold_repeat=0), log=lambda s: None)
    assert result["failed"]["broken"] == ["RuntimeError: the pool would not start"] * 2
    assert result["methods"]["broken"]["time"]["total_s"] is None
    assert result["methods"]["threads"]["sums"]["ok"] is True
    table = seed_table(result)
    assert "FAILED broken" in table
    write_json(result, str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["failed"]["broken"]
    plot_seed(result, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_packages_and_features_are_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from nocopy._bench import _seed

    monkeypatch.delattr(nocopy, "ProcessPoolExecutor")
    monkeypatch.delattr(nocopy, "parallel_map")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "joblib" else real_find_spec(name, *a)
    )
    cfg = _seed.SeedConfig(rows=1000, workers=2, repeat=1, methods=["nocopy-executor", "nocopy-map", "threads", "joblib"])
    result = _seed.run_seed(cfg, log=lambda s: None)
    assert list(result["methods"]) == ["threads"]
    assert "nocopy.ProcessPoolExecutor" in result["skipped"]["nocopy-executor"]
    assert "nocopy.parallel_map" in result["skipped"]["nocopy-map"]
    assert "pip install 'nocopy[bench]'" in result["skipped"]["joblib"]
    assert result["failed"] == {}
    from nocopy._bench._report import seed_table

    table = seed_table(result)
    assert "skipped nocopy-executor" in table and "skipped joblib" in table


# -- scaling ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["pwrite", "mmap"])
def test_parallel_fill_writes_every_range(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures as cf

    from nocopy._bench import _scaling

    src = np.random.default_rng(3).integers(0, 255, 5 * MiB + 123, dtype=np.uint8)
    created: list[int] = []
    real_memfd = os.memfd_create

    def spy(name: str, flags: int = 0) -> int:
        created.append(os.dup(fd := real_memfd(name, flags)))
        return fd

    monkeypatch.setattr(os, "memfd_create", spy)
    with cf.ThreadPoolExecutor(3) as pool:
        assert _scaling.time_parallel_fill(src, pool, 3, how) > 0
    (fd,) = created
    try:
        assert os.fstat(fd).st_size == src.nbytes
        assert os.pread(fd, src.nbytes + 1, 0) == src.tobytes()
    finally:
        os.close(fd)
    # Three disjoint ranges on 2 MiB boundaries cover the whole source.
    assert _scaling._ranges(src.nbytes, 3) == [(0, 2 * MiB), (2 * MiB, 4 * MiB), (4 * MiB, src.nbytes)]


def test_task_overhead_times_map_and_submit_on_both_pools_interleaved(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._bench import _scaling

    timed: list[tuple[str, str]] = []
    real = _scaling._time_tasks

    def spy(ex: Any, how: str, n: int) -> tuple[float, list[Any]]:
        timed.append(("nocopy" if isinstance(ex, nocopy.ProcessPoolExecutor) else "concurrent.futures", how))
        return real(ex, how, n)

    monkeypatch.setattr(_scaling, "_time_tasks", spy)
    cfg = _scaling.ScalingConfig(tasks=30, repeat=2, parts=["overhead"])
    out = _scaling._task_overhead(cfg, lambda s: None)
    # The second round runs the pools in the other order.
    std = [("concurrent.futures", "map"), ("concurrent.futures", "submit")]
    ours = [("nocopy", "map"), ("nocopy", "submit")]
    assert timed == std + ours + ours + std
    for p in out.values():
        assert p["tasks"] == 30 and p["us_per_task"] > 0 and p["submit_us_per_task"] > 0
    assert out["nocopy"]["map_over_stdlib"] == pytest.approx(
        out["nocopy"]["us_per_task"] / out["concurrent.futures"]["us_per_task"]
    )
    assert out["nocopy"]["submit_over_stdlib"] == pytest.approx(
        out["nocopy"]["submit_us_per_task"] / out["concurrent.futures"]["submit_us_per_task"]
    )
    assert "vs concurrent.futures: map" in _scaling.scaling_table({"config": {}, "task_overhead": out})


@pytest.mark.slow
def test_scaling_small(tmp_path: Path) -> None:
    out, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    proc = run_in_session(
        [
            sys.executable, "-m", "nocopy._bench", "scaling", "--max-size", "4MB", "--rows", "20000",
            "--workers", "1,2", "--tasks", "50", "--repeat", "1", "--json-out", str(out), "--plot", str(png),
        ],
        timeout=250,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert [p["nbytes"] for p in result["get_latency"]] == [MiB, 4 * MiB]
    assert all(p["get_us"]["median"] > 0 for p in result["get_latency"])
    assert result["get_flatness"] > 0
    assert [p["nbytes"] for p in result["share_throughput"]] == [MiB, 4 * MiB]
    assert all(
        p["share_gbps"] > 0 and p["memcpy_shm_gbps"] > 0 and p["pwrite_shm_gbps"] > 0 for p in result["share_throughput"]
    )
    for p in result["share_throughput"]:
        assert set(p["share_modes"]) == {"4k_1", "huge_1", "default"}
        for mode in p["share_modes"].values():
            assert mode["gbps"] > 0 and mode["over_4k_1"] > 0
        assert p["fill_threads"] == os.cpu_count()
        for how in ("pwrite", "mmap"):
            f = p["fill"][how]
            assert f["gbps_1"] > 0 and f["gbps_n"] > 0 and f["speedup"] == pytest.approx(f["gbps_n"] / f["gbps_1"])
    assert "filling one memfd: pwrite fill 1 thread" in proc.stdout
    assert "share() / share() with 4 KiB pages from one thread" in proc.stdout
    assert set(result["task_overhead"]) == {"concurrent.futures", "nocopy"}
    sweep = {(p["method"], p["workers"]) for p in result["workers"]}
    assert sweep == {(m, w) for m in ("pickle", "stdlib", "nocopy-executor", "threads") for w in (1, 2)}
    assert all(p["sums_ok"] for p in result["workers"])
    # Start-up per start method: every row measured cold, in a fresh interpreter each.
    startup = result["startup"]["methods"]
    assert set(startup) == {name for name, _, _ in STARTUP_METHODS}
    assert result["startup"]["config"]["workers"] == 2
    assert startup[STARTUP_BASELINE]["vs_stdlib_spawn"] == 1.0
    for row in startup.values():
        assert 0 < row["startup_s"]["median"] < row["script_s"]["median"]
        assert row["vs_stdlib_spawn"] == pytest.approx(row["startup_s"]["median"] / startup[STARTUP_BASELINE]["startup_s"]["median"])
    assert "Pool start-up, cold" in proc.stdout
    assert result["failed"] == {}
    assert png.read_bytes()[:4] == b"\x89PNG"


# -- pandas and ray ----------------------------------------------------------


@pytest.mark.slow
def test_pandas_small(tmp_path: Path) -> None:
    out = tmp_path / "pandas.json"
    proc = run_in_session([str(BIN / "nocopy"), "bench", "pandas", "--rows", "3000", "--json-out", str(out)], timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "pandas" and result["rows"] == 3000
    assert result["failed"] == {}
    assert list(result["methods"]) == ["nocopy", "arrow", "pickle"]
    assert all(m["share_s"] > 0 and m["get_s"] > 0 for m in result["methods"].values())
    assert {"share_ratio", "get_ratio"} <= set(result["methods"]["pickle"])
    assert result["segment_bytes"] > 0 and result["frame_bytes"] > 0
    assert "pickle protocol 5" in proc.stdout and f"wrote {out}" in proc.stdout


def test_polars_small(tmp_path: Path) -> None:
    pytest.importorskip("polars")
    out = tmp_path / "polars.json"
    proc = run_in_session(
        [str(BIN / "nocopy"), "bench", "polars", "--rows", "3000", "--workers", "2", "--repeat", "1", "--json-out", str(out)],
        timeout=200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "polars" and result["rows"] == 3000 and result["config"]["workers"] == 2
    assert result["failed"] == {}
    assert list(result["methods"]) == ["pickle", "nocopy"]
    for m in result["methods"].values():
        assert m["time_s"] > 0 and len(m["times_s"]) == 1
        assert m["peak_bytes"] > m["baseline_bytes"] > 0 and m["added_bytes"] == m["peak_bytes"] - m["baseline_bytes"]
        assert m["processes_at_peak"] >= 3  # the parent and both workers, all holding the frame
    assert result["methods"]["nocopy"]["shm_bytes_at_peak"] >= result["segment_bytes"] > 0
    assert set(result["ratios"]) == {"time", "memory"} and all(r > 0 for r in result["ratios"].values())
    assert "ratios pickle / nocopy" in proc.stdout and f"wrote {out}" in proc.stdout


@pytest.mark.slow
def test_ray_small(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "ray.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance of its own
    proc = run_in_session(
        [
            sys.executable, "-m", "nocopy._bench", "ray", "--gb", "0.01", "--rows", "20000", "--repeat", "1",
            "--json-out", str(out),
        ],
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratios plain/nocopy" in proc.stdout and "ratio ray / ray+nocopy" in proc.stdout
    result = json.loads(out.read_text())
    assert result["failed"] == {}
    frame = result["frame"]
    assert frame["rows"] == 10_000_000 // 32
    assert frame["nocopy"]["get_s"] > 0 and frame["ray"]["get_s"] > 0
    assert set(frame["ratios"]) == {"get_time", "put_time", "task_uss_growth"}
    assert result["classic"]["rows"] == 20000 and set(result["classic"]["work_s"]) == {"ray", "ray+nocopy"}


@pytest.mark.slow
def test_joblib_small(tmp_path: Path) -> None:
    pytest.importorskip("joblib")
    pytest.importorskip("pyarrow")
    out = tmp_path / "joblib.json"
    proc = run_in_session(
        [
            sys.executable, "-m", "nocopy._bench", "joblib", "--rows", "100000", "--frame-rows", "20000",
            "--sparse-rows", "20000", "--workers", "2", "--repeat", "1", "--start-method", "fork",
            "--calls", "3", "--sklearn-rows", "4000", "--json-out", str(out),
        ],
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "joblib" and result["failed"] == {}
    rep = result["repeated"]
    assert rep["calls"] == 3 and rep["tasks"] == 4
    for kind in ("cold", "warm"):
        assert set(rep[f"{kind}_s"]) == {"loky", "nocopy"} and rep[f"{kind}_ratio"] > 0
    assert "3 calls of 4 tiny tasks, warm" in proc.stdout
    assert list(result["datasets"]) == ["classic", "strings", "sparse"] and result["skipped"] == {}
    for d in result["datasets"].values():
        assert set(d["time_s"]) == set(d["added_bytes"]) == {"loky", "nocopy"}
        assert all(t > 0 for t in d["time_s"].values())
        assert d["time_ratio"] > 0 and d["memory_ratio"] > 0
    assert "classic: loky / nocopy time" in proc.stdout and "strings: loky / nocopy time" in proc.stdout
    assert "sparse: loky / nocopy time" in proc.stdout
    # scikit-learn's own n_jobs calls, each with the same answer on both backends (else "failed").
    assert len(result["sklearn"]) == 5
    for d in result["sklearn"].values():
        for kind in ("cold", "warm"):
            assert set(d[f"{kind}_s"]) == {"loky", "nocopy"} and d[f"{kind}_ratio"] > 0
    assert "random forest fit" in proc.stdout and "cross-validation, " in proc.stdout


@pytest.mark.slow  # ~15 s: three datasets, DataLoader workers started per epoch
def test_dataloader_quick(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "dataloader.json"
    proc = run_in_session(
        [sys.executable, "-m", "nocopy._bench", "dataloader", "--quick", "--rows", "3000", "--json-out", str(out)],
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "dataloader" and result["failed"] == {}
    assert result["config"]["workers"] == [1, 2] and result["data_bytes"] == 3000 * (16 * 4 + 8)
    assert list(result["datasets"]) == ["objects", "share_memory", "nocopy"]
    for d in result["datasets"].values():
        assert set(d["points"]) == {"1", "2"}
        assert all(p["ok"] and p["time_s"] > 0 and p["peak_bytes"] > 0 for p in d["points"].values())
        assert d["per_worker_growth"] is not None
    assert "nocopy: memory per added worker" in proc.stdout


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [("pandas", "pyarrow", "pandas"), ("polars", "polars", "polars"), ("ray", "ray", "ray"), ("joblib", "joblib", "joblib"),
     ("dataloader", "torch", "torch")],
)
def test_a_missing_package_is_named_with_its_extra(
    command: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from nocopy._bench.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real_find_spec(name, *a))
    assert main([command]) == 2
    assert f"nocopy bench {command} needs {module}: pip install 'nocopy[{extra}]'" in capsys.readouterr().err


def test_benchmarks_time_nocopy_with_its_bytecode_written(tmp_path: Path) -> None:
    # A stale .pyc would be recompiled by every spawned worker, inside the timings.
    import importlib.util

    from nocopy._bench import cli
    from nocopy._store import _mapping

    src = Path(_mapping.__file__)
    pyc = Path(importlib.util.cache_from_source(str(src)))
    if not os.access(src.parent, os.W_OK):
        pytest.skip("nocopy is installed read-only here")
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # now newer than its .pyc
    try:
        cli._compile_nocopy()
        header = pyc.read_bytes()[:16]
        assert int.from_bytes(header[8:12], "little") == int(src.stat().st_mtime)
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        cli._compile_nocopy()


def test_the_sampler_reports_the_lowest_point_so_a_run_is_not_charged_for_memory_freed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A finished run's pages released during the next one made "added" negative
    # (peak below the baseline sampled just before): the lowest sample bounds it.
    from nocopy._bench import _monitor

    sampler = _monitor._Sampler(os.getpid(), 0.01)
    totals = iter([300, 120, 200, 150])
    monkeypatch.setattr(sampler, "take", lambda globs=None: _monitor.Sample(total=next(totals)))
    sampler.command("start", "[]")
    sampler.command("mark", "")
    sampler.command("mark", "")
    sampler.command("mark", "")
    answer = sampler.command("stop", "")
    assert answer["peak"]["total"] == 300 and answer["low"] == 120
