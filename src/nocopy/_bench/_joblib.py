"""``nocopy bench joblib``: joblib's default backend (loky) against ``backend="nocopy"``.

Two data sets, each handed to ``--workers`` tasks of one ``Parallel`` call
(``delayed(task)(data)`` per task, ``n_jobs=--workers``):

1. **classic**: the classic experiment's record array (`._data.make_records`,
   10M rows, datetime / float with NaN / 6-byte string); each task
   ``np.nansum``s the float field (the experiment's task). joblib pickles the
   ``np.recarray`` subclass into every task.
2. **strings**: a frame with string columns (`._data.mixed_frame`, 10
   numeric columns, a pandas ``str`` and an object string column); each task
   ``np.nansum``s a numeric column and counts the rows.
3. **sparse** (where scipy and scikit-learn are installed): a CSR matrix of
   ``--sparse-rows`` x 1,000 features, 1 % stored (`._data.sparse_features`);
   each task runs scikit-learn's column means (``mean_variance_axis``).

4. **scikit-learn** (where it is installed): estimators' own ``n_jobs`` calls
   under ``parallel_config(backend=...)``, the same seeds on both backends
   (the results must be equal): a random forest, k-neighbours, cross-validation
   and permutation importance on a small data set, and cross-validation on a
   ``--sklearn-rows`` x 64 float64 matrix; cold (no workers kept) and warm.
5. **repeated**: ``--calls`` (20) ``Parallel`` calls in a row, each of 4 tiny
   tasks, as scikit-learn makes them inside ``fit``: *cold* from no workers
   (both backends then keep theirs for the next calls), *warm* with the
   workers already running from an earlier call.

Each run of 1. and 2. is one whole ``Parallel`` call from fresh workers (both
backends' kept workers are stopped between runs): start-up,
getting the data to the workers, the tasks, and shutting down. Time: median
of ``--repeat`` runs. Memory: one more run per backend, the peak of Σ PSS of
this process and all its workers plus shared memory, each page once
(``_monitor``), above the baseline before the run. Ratios loky / nocopy come
from the same run of the command.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .._text import format_bytes, render_table
from . import _tasks
from ._data import expected_sum, make_records, mixed_frame, sparse_features
from ._methods import joblib_memmap_globs
from ._monitor import MemoryMonitor
from ._stats import ratio

__all__ = ["BACKENDS", "JoblibConfig", "joblib_table", "run_joblib"]

Log = Callable[[str], None]
BACKENDS = ("loky", "nocopy")
DATASETS = ("classic", "strings", "sparse")


@dataclass
class JoblibConfig:
    rows: int = 10_000_000  # the classic record array
    frame_rows: int = 2_000_000  # the string frame (~250 MB)
    sparse_rows: int = 1_000_000  # the sparse matrix (~120 MB)
    workers: int = 2
    start_method: str = "spawn"  # nocopy's workers (loky starts its own its way)
    repeat: int = 3
    interval: float = 0.01  # memory sampling period, seconds
    calls: int = 20  # the repeated case: Parallel calls in a row
    sklearn_rows: int = 500_000  # the large scikit-learn workload's rows (x 64 float64: ~256 MB)
    tiny_tasks: int = 4  # ... of this many tiny tasks each


def _stop_loky() -> None:
    # loky keeps its workers for the next call: stop them, so every run starts
    # from fresh workers as nocopy's does and their memory is not counted again.
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def _stop_kept(backend: str) -> None:
    if backend == "loky":
        _stop_loky()
    else:
        import nocopy.joblib

        nocopy.joblib.shutdown()


def _repeated_calls(backend: str, cfg: JoblibConfig, *, warm: bool) -> float:
    """Seconds for ``cfg.calls`` Parallel calls of ``cfg.tiny_tasks`` tiny tasks (after one untimed call if *warm*)."""
    import joblib

    import nocopy.joblib

    nocopy.joblib.register()
    params = {"mp_context": cfg.start_method} if backend == "nocopy" else {}
    _stop_kept(backend)
    try:
        with joblib.parallel_config(backend=backend, n_jobs=cfg.workers, **params):
            if warm:
                joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(cfg.tiny_tasks))
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(cfg.calls):
                out = joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(cfg.tiny_tasks))
                if out != list(range(cfg.tiny_tasks)):
                    raise AssertionError(f"{backend}: wrong results {out}")
            return time.perf_counter() - t0
    finally:
        _stop_kept(backend)


def _measure_repeated(cfg: JoblibConfig, log: Log) -> dict[str, Any]:
    runs: dict[str, dict[str, list[float]]] = {kind: {b: [] for b in BACKENDS} for kind in ("cold", "warm")}
    for i in range(cfg.repeat):
        for kind in ("cold", "warm"):
            for backend in BACKENDS:
                log(f"repeated ({kind}): {backend}, run {i + 1} of {cfg.repeat} ...")
                runs[kind][backend].append(_repeated_calls(backend, cfg, warm=kind == "warm"))
    out: dict[str, Any] = {"calls": cfg.calls, "tasks": cfg.tiny_tasks, "runs_s": runs}
    for kind, times in runs.items():
        med = {b: statistics.median(v) for b, v in times.items()}
        out[f"{kind}_s"] = med
        out[f"{kind}_ratio"] = ratio(med["loky"], med["nocopy"])
    return out


SKLEARN_FEATURES = 64


def _sklearn_workloads(cfg: JoblibConfig) -> list[tuple[str, Callable[[], Any]]]:
    """(name, run) for each scikit-learn workload: *run* makes the estimator's own
    ``n_jobs=cfg.workers`` calls in whatever backend ``parallel_config`` set."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    n = cfg.workers
    x, y = make_classification(n_samples=2_000, n_features=20, random_state=0)
    rng = np.random.default_rng(0)
    big_x = rng.standard_normal((cfg.sklearn_rows, SKLEARN_FEATURES))
    big_y = big_x @ rng.standard_normal(SKLEARN_FEATURES)
    fitted = LogisticRegression(max_iter=500).fit(x, y)
    return [
        ("random forest fit", lambda: RandomForestClassifier(
            n_estimators=40, n_jobs=n, random_state=0).fit(x, y).predict_proba(x)),
        ("k-neighbours predict", lambda: KNeighborsClassifier(n_jobs=n).fit(x, y).predict(x)),
        ("cross-validation", lambda: cross_val_score(LogisticRegression(max_iter=500), x, y, cv=4, n_jobs=n)),
        ("permutation importance", lambda: permutation_importance(
            fitted, x, y, n_repeats=4, n_jobs=n, random_state=0).importances_mean),
        (f"cross-validation, {format_bytes(int(big_x.nbytes))} X", lambda: cross_val_score(
            Ridge(), big_x, big_y, cv=4, n_jobs=n)),
    ]


def _sklearn_run(backend: str, run: Callable[[], Any], cfg: JoblibConfig, *, warm: bool) -> tuple[Any, float]:
    import joblib

    import nocopy.joblib

    nocopy.joblib.register()
    params = {"mp_context": cfg.start_method} if backend == "nocopy" else {}
    _stop_kept(backend)
    try:
        with joblib.parallel_config(backend=backend, **params):
            if warm:
                run()
            gc.collect()
            t0 = time.perf_counter()
            out = run()
            return out, time.perf_counter() - t0
    finally:
        _stop_kept(backend)


def _measure_sklearn(cfg: JoblibConfig, log: Log) -> tuple[dict[str, Any], dict[str, str]]:
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, run in _sklearn_workloads(cfg):
        runs: dict[str, dict[str, list[float]]] = {kind: {b: [] for b in BACKENDS} for kind in ("cold", "warm")}
        outs: dict[str, Any] = {}
        for i in range(cfg.repeat):
            for kind in ("cold", "warm"):
                for backend in BACKENDS:
                    log(f"scikit-learn {name} ({kind}): {backend}, run {i + 1} of {cfg.repeat} ...")
                    outs[backend], seconds = _sklearn_run(backend, run, cfg, warm=kind == "warm")
                    runs[kind][backend].append(seconds)
        # Same seeds, same estimator: the backend must not change the answer.
        if not np.array_equal(np.asarray(outs["loky"]), np.asarray(outs["nocopy"])):
            failed[f"scikit-learn {name}"] = "the backends' results differ"
        rec: dict[str, Any] = {"runs_s": runs}
        for kind, times in runs.items():
            med = {b: statistics.median(v) for b, v in times.items()}
            rec[f"{kind}_s"] = med
            rec[f"{kind}_ratio"] = ratio(med["loky"], med["nocopy"])
        results[name] = rec
    return results, failed


def _call(backend: str, task: Callable[[Any], Any], data: Any, cfg: JoblibConfig) -> tuple[list[Any], float]:
    import joblib

    import nocopy.joblib

    nocopy.joblib.register()
    params = {"mp_context": cfg.start_method} if backend == "nocopy" else {}
    gc.collect()
    t0 = time.perf_counter()
    try:
        with joblib.parallel_config(backend=backend, n_jobs=cfg.workers, **params):
            out = joblib.Parallel()(joblib.delayed(task)(data) for _ in range(cfg.workers))
    finally:
        _stop_kept(backend)
    return list(out), time.perf_counter() - t0


def _measure(
    name: str, task: Callable[[Any], Any], data: Any, check: Callable[[Any], bool], cfg: JoblibConfig,
    monitor: MemoryMonitor, log: Log,
) -> tuple[dict[str, Any], dict[str, str]]:
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    failed: dict[str, str] = {}
    for i in range(cfg.repeat):
        for backend in BACKENDS:
            log(f"{name}: {backend}, run {i + 1} of {cfg.repeat} ...")
            out, seconds = _call(backend, task, data, cfg)
            times[backend].append(seconds)
            if not all(check(r) for r in out) or len(out) != cfg.workers:
                failed[f"{name}/{backend}"] = f"wrong results: {out[:4]}"
    added: dict[str, int] = {}
    for backend in BACKENDS:
        log(f"{name}: {backend}, memory run ...")
        globs = joblib_memmap_globs() if backend == "loky" else []
        baseline = monitor.sample(globs).total
        monitor.start(globs)
        try:
            _call(backend, task, data, cfg)
        finally:
            added[backend] = monitor.stop().peak.total - baseline
    med = {b: statistics.median(v) for b, v in times.items()}
    result = {
        "time_s": med,
        "time_runs_s": times,
        "added_bytes": added,
        "time_ratio": ratio(med["loky"], med["nocopy"]),
        "memory_ratio": ratio(float(added["loky"]), float(max(added["nocopy"], 1))),
    }
    return result, failed


def run_joblib(cfg: JoblibConfig, log: Log = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Both data sets through both backends; return the JSON-able result."""
    if (cfg.rows < 2 or cfg.frame_rows < 1 or cfg.sparse_rows < 1 or cfg.workers < 1 or cfg.repeat < 1
            or cfg.calls < 1):
        raise ValueError(
            "need --rows >= 2, --frame-rows >= 1, --sparse-rows >= 1, --workers >= 1, --repeat >= 1, "
            f"--calls >= 1; got {cfg}"
        )
    log(f"building the record array ({cfg.rows:,} rows) and the string frame ({cfg.frame_rows:,} rows) ...")
    records = make_records(cfg.rows)
    want = expected_sum(records)
    frame = mixed_frame(cfg.frame_rows)
    frame_want = (float(np.nansum(frame["n0"].to_numpy())), cfg.frame_rows)
    cases: list[tuple[str, Callable[[Any], Any], Any, Callable[[Any], bool], int]] = [
        ("classic", _tasks.nansum_records, records, lambda s: bool(np.isclose(s, want)), int(records.nbytes)),
        ("strings", _tasks.frame_checksum, frame, lambda r: r == frame_want,
         int(frame.memory_usage(index=False, deep=True).sum())),
    ]
    skipped: dict[str, str] = {}
    try:
        import scipy.sparse  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        skipped["sparse"] = f"needs scipy and scikit-learn ({exc})"
    else:
        sparse = sparse_features(cfg.sparse_rows)
        sparse_want = _tasks.sparse_column_means(sparse)
        cases.append((
            "sparse", _tasks.sparse_column_means, sparse,
            lambda r: bool(np.isclose(r[0], sparse_want[0])) and r[1] == sparse_want[1],
            int(sparse.data.nbytes + sparse.indices.nbytes + sparse.indptr.nbytes),
        ))
    datasets: dict[str, Any] = {}
    failed: dict[str, str] = {}
    sklearn_results: dict[str, Any] = {}
    with MemoryMonitor(cfg.interval) as monitor:
        for name, task, data, check, nbytes in cases:
            result, bad = _measure(name, task, data, check, cfg, monitor, log)
            result["bytes"] = nbytes
            datasets[name] = result
            failed.update(bad)
    if "sparse" not in skipped:  # scikit-learn is installed
        sklearn_results, bad = _measure_sklearn(cfg, log)
        failed.update(bad)
    else:
        skipped["scikit-learn"] = skipped["sparse"]
    try:
        repeated = _measure_repeated(cfg, log)
    except AssertionError as exc:
        repeated, failed["repeated"] = {}, str(exc)
    return {
        "benchmark": "joblib",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "rows": cfg.rows, "frame_rows": cfg.frame_rows, "sparse_rows": cfg.sparse_rows, "workers": cfg.workers,
            "start_method": cfg.start_method, "repeat": cfg.repeat, "calls": cfg.calls,
            "sklearn_rows": cfg.sklearn_rows,
        },
        "datasets": datasets,
        "sklearn": sklearn_results,
        "repeated": repeated,
        "failed": failed,
        "skipped": skipped,
    }


def joblib_table(result: dict[str, Any]) -> str:
    """The result as text: per data set, time and memory per backend, and the ratios."""
    cfg = result["config"]
    rows = []
    for name, d in result["datasets"].items():
        for backend in BACKENDS:
            rows.append([
                f"{name} ({format_bytes(d['bytes'])})", backend, f"{d['time_s'][backend]:.2f}",
                format_bytes(d["added_bytes"][backend]),
            ])
    lines = [
        f"joblib.Parallel, {cfg['workers']} tasks on {cfg['workers']} workers, each gets the whole data "
        f"(classic: {cfg['rows']:,} rows; strings: {cfg['frame_rows']:,} rows; sparse: "
        f"{cfg.get('sparse_rows', 0):,} rows x 1,000); nocopy workers: {cfg['start_method']}",
        render_table(["data", "backend", "time s", "memory +"], rows, right={2, 3}),
    ]
    for name, d in result["datasets"].items():
        t, m = d["time_ratio"], d["memory_ratio"]
        lines.append(
            f"{name}: loky / nocopy time {t:.2f}x, memory {m:.2f}x" if t and m else f"{name}: no ratio"
        )
    lines.append(f"(time: median of {cfg['repeat']} whole Parallel calls from fresh workers; "
                 "memory: peak Σ PSS + shared memory above the baseline, one run)")
    sk = result.get("sklearn") or {}
    if sk:
        lines.append(render_table(
            ["scikit-learn (n_jobs)", "kind", "loky s", "nocopy s", "loky / nocopy"],
            [[name, kind, f"{d[f'{kind}_s']['loky']:.2f}", f"{d[f'{kind}_s']['nocopy']:.2f}",
              f"{d[f'{kind}_ratio']:.2f}x" if d[f"{kind}_ratio"] else "-"]
             for name, d in sk.items() for kind in ("cold", "warm")],
            right={2, 3, 4},
        ))
        lines.append("(scikit-learn: medians; cold: no workers kept before the call; warm: after one call)")
    rep = result.get("repeated") or {}
    if rep:
        lines.append(render_table(
            ["repeated calls", "loky s", "nocopy s", "loky / nocopy"],
            [[f"{rep['calls']} calls of {rep['tasks']} tiny tasks, {kind}", f"{rep[f'{kind}_s']['loky']:.2f}",
              f"{rep[f'{kind}_s']['nocopy']:.2f}", f"{rep[f'{kind}_ratio']:.2f}x" if rep[f"{kind}_ratio"] else "-"]
             for kind in ("cold", "warm")],
            right={1, 2, 3},
        ))
        lines.append("(cold: from no workers; warm: workers running from an earlier call; medians)")
    lines += [f"FAILED {name}: {why}" for name, why in result["failed"].items()]
    lines += [f"skipped {name}: {why}" for name, why in result.get("skipped", {}).items()]
    return "\n".join(lines)
