"""``nocopy bench dataloader``: a PyTorch DataLoader over three datasets of the same samples.

Each sample is ``--features`` float32 values and an int64 label; an epoch
reads every sample once through ``DataLoader(batch_size=256,
num_workers=N)``, for each N of ``--workers``:

1. **objects**: the samples as Python objects (a list of ``(tuple of floats,
   label)``), the Dataset pytorch/pytorch#13246 is about: under fork, reading
   an object writes its reference count, so every worker copies the pages it
   reads; under spawn and forkserver the Dataset is pickled to every worker.
2. **share_memory**: two tensors moved to shared memory with
   ``Tensor.share_memory_()``, the way PyTorch suggests (numbers only).
3. **nocopy**: `nocopy.torch.SharedDataset` of the same two tensors.

Time: median of ``--repeat`` epochs, each from fresh workers (workers are
started per epoch, DataLoader's default). Memory: one more epoch per point,
the peak of Σ PSS of this process and every worker plus shared memory, each
page once (``_monitor``), and its growth above the N=1 point of the same
dataset, per added worker, as a share of the data's size.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .._text import format_bytes, render_table
from ._monitor import MemoryMonitor

__all__ = ["DATASETS", "DataLoaderConfig", "dataloader_table", "run_dataloader"]

Log = Callable[[str], None]
DATASETS = ("objects", "share_memory", "nocopy")
BATCH = 256


@dataclass
class DataLoaderConfig:
    rows: int = 2_000_000
    features: int = 16
    workers: list[int] = field(default_factory=lambda: [1, 2, 4])
    start_method: str = "fork"  # DataLoader's default on Linux before Python 3.14
    repeat: int = 3
    interval: float = 0.01  # memory sampling period, seconds


class ObjectDataset:
    """Samples kept as Python objects (a list of tuples): what most Datasets hold."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.samples = [(tuple(row), int(label)) for row, label in zip(x.tolist(), y.tolist(), strict=True)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch

        row, label = self.samples[index]
        return torch.tensor(row, dtype=torch.float32), label


class TensorPairDataset:
    """Two tensors, moved to shared memory with ``share_memory_()``."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x.share_memory_(), y.share_memory_()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.x[index], self.y[index]


def _make(name: str, x: np.ndarray, y: np.ndarray) -> Any:
    import torch

    import nocopy.torch

    if name == "objects":
        return ObjectDataset(x, y)
    if name == "share_memory":
        return TensorPairDataset(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()))
    return nocopy.torch.SharedDataset((torch.from_numpy(x), torch.from_numpy(y)))


def _epoch(ds: Any, workers: int, start_method: str) -> tuple[float, int]:
    from torch.utils.data import DataLoader

    gc.collect()
    t0 = time.perf_counter()
    loader = DataLoader(ds, batch_size=BATCH, num_workers=workers, multiprocessing_context=start_method)
    total = 0
    for _, labels in loader:
        total += int(labels.sum())
    return time.perf_counter() - t0, total


def _point(ds: Any, workers: int, cfg: DataLoaderConfig, monitor: MemoryMonitor, want: int) -> dict[str, Any]:
    times = []
    ok = True
    for _ in range(cfg.repeat):
        seconds, total = _epoch(ds, workers, cfg.start_method)
        times.append(seconds)
        ok = ok and total == want
    baseline = monitor.sample().total
    monitor.start()
    try:
        _, total = _epoch(ds, workers, cfg.start_method)
    finally:
        peak = monitor.stop().peak.total
    return {
        "time_s": statistics.median(times), "time_runs_s": times, "peak_bytes": peak,
        "baseline_bytes": baseline, "ok": ok and total == want,
    }


def run_dataloader(cfg: DataLoaderConfig, log: Log = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Every dataset at every worker count; return the JSON-able result."""
    if cfg.rows < 1 or cfg.features < 1 or cfg.repeat < 1 or not cfg.workers or min(cfg.workers) < 1:
        raise ValueError(f"need --rows, --features, --repeat and every --workers at least 1; got {cfg}")
    rng = np.random.default_rng(0)
    x = rng.random((cfg.rows, cfg.features), dtype=np.float32)
    y = np.arange(cfg.rows, dtype=np.int64)
    want = int(y.sum())
    nbytes = int(x.nbytes + y.nbytes)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with MemoryMonitor(cfg.interval) as monitor:
        for name in DATASETS:
            log(f"{name}: building the dataset ({cfg.rows:,} samples) ...")
            ds = _make(name, x, y)
            points: dict[str, Any] = {}
            for n in cfg.workers:
                log(f"{name}: {n} worker(s), {cfg.start_method} ...")
                points[str(n)] = _point(ds, n, cfg, monitor, want)
                if not points[str(n)]["ok"]:
                    failed[f"{name}/{n}"] = "the labels of an epoch did not add up"
            if hasattr(ds, "close"):
                ds.close()
            del ds
            results[name] = {"points": points, "per_worker_growth": _growth(points, cfg.workers, nbytes)}
    return {
        "benchmark": "dataloader",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "rows": cfg.rows, "features": cfg.features, "workers": cfg.workers,
            "start_method": cfg.start_method, "repeat": cfg.repeat, "batch_size": BATCH,
        },
        "data_bytes": nbytes,
        "datasets": results,
        "failed": failed,
    }


def _growth(points: dict[str, Any], workers: list[int], nbytes: int) -> float | None:
    """Peak memory added per added worker, from the fewest to the most workers, as a share of the data."""
    lo, hi = min(workers), max(workers)
    if lo == hi:
        return None
    added = points[str(hi)]["peak_bytes"] - points[str(lo)]["peak_bytes"]
    return float(added) / (hi - lo) / nbytes


def dataloader_table(result: dict[str, Any]) -> str:
    """The result as text: per dataset and worker count, time per epoch and peak memory."""
    cfg = result["config"]
    rows = []
    for name, d in result["datasets"].items():
        for n, p in d["points"].items():
            rows.append([name, n, f"{p['time_s']:.2f}", format_bytes(p["peak_bytes"])])
    lines = [
        f"DataLoader epochs over {cfg['rows']:,} samples of {cfg['features']} float32 + an int64 label "
        f"({format_bytes(result['data_bytes'])}), batch {cfg['batch_size']}, workers by {cfg['start_method']}",
        render_table(["dataset", "workers", "s / epoch", "peak Σ PSS + shm"], rows, right={1, 2, 3}),
    ]
    for name, d in result["datasets"].items():
        g = d["per_worker_growth"]
        if g is not None:
            lines.append(f"{name}: memory per added worker {100 * g:.0f}% of the data")
    lines.append(f"(time: median of {cfg['repeat']} epochs from fresh workers; memory: one more epoch)")
    lines += [f"FAILED {name}: {why}" for name, why in result["failed"].items()]
    return "\n".join(lines)
