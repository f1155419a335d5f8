"""``nocopy bench pandas``: share() and get() of a large DataFrame against Arrow IPC and pickle.

The frame (`._data.mixed_frame`): 10 numeric columns (float64/int64,
NaN in some) and 2 string columns (pandas' default ``str`` and an object
column of ``str``), about 1 GB at the default 8.5M rows. For each method:

- **share**: what the owner pays to make the frame available to others:
  ``nocopy.share(df)``; ``pa.Table.from_pandas(df)`` + an IPC stream written
  to memory; ``pickle.dumps(df, protocol=5)``.
- **get**: what a *fresh* process pays to have the DataFrame in hand,
  measured inside a spawned worker: ``ref.get()``; opening the IPC stream +
  ``to_pandas()``; ``pickle.loads``. (The worker receives the IPC stream's or
  the pickle's bytes beforehand, as if they were already in its memory: the
  transfer itself is not counted, which flatters the baselines.)

Ratios are baseline time / nocopy time from the same run (one run: these
machines are noisy, run it a few times before quoting a number).
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .._text import format_bytes, render_table
from . import _tasks
from ._data import MIXED_NUMERIC, mixed_frame

__all__ = ["PandasConfig", "pandas_table", "run_pandas"]

Log = Callable[[str], None]
LABELS = {"nocopy": "nocopy share/get", "arrow": "Arrow from_pandas + IPC", "pickle": "pickle protocol 5"}


@dataclass
class PandasConfig:
    rows: int = 8_500_000


def _ipc_bytes(df: Any) -> Any:
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def _gets_in_a_fresh_worker(df: Any, payloads: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each method's get, in one spawned worker that has already done each once on a tiny frame."""
    import nocopy

    small = df.head(2)
    with multiprocessing.get_context("spawn").Pool(1) as pool, nocopy.share(small) as small_ref:
        # The first get of each kind imports its modules: not what is measured.
        for method, payload in (("nocopy", small_ref), ("arrow", _ipc_bytes(small)), ("pickle", pickle.dumps(small))):
            pool.apply(_tasks.frame_get, (method, payload))
        return {method: pool.apply(_tasks.frame_get, (method, payload)) for method, payload in payloads.items()}


def run_pandas(cfg: PandasConfig, log: Log = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Share the frame each way, get it in a fresh worker each way; return the JSON-able result."""
    import nocopy

    if cfg.rows < 1:
        raise ValueError(f"--rows must be at least 1, not {cfg.rows}")
    log(f"building a frame of {cfg.rows:,} rows ...")
    df = mixed_frame(cfg.rows)
    ref, share_s = _timed(lambda: nocopy.share(df))
    ipc, arrow_s = _timed(lambda: _ipc_bytes(df))
    pickled, pickle_s = _timed(lambda: pickle.dumps(df, protocol=5))
    log("getting it in a fresh worker ...")
    try:
        gets = _gets_in_a_fresh_worker(df, {"nocopy": ref, "arrow": ipc, "pickle": pickled})
        segment = ref.nbytes
    finally:
        ref.close()
    expected = float(np.nansum(df["n0"].to_numpy()))
    methods: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, share_time in (("nocopy", share_s), ("arrow", arrow_s), ("pickle", pickle_s)):
        got = gets[name]
        if got["rows"] != cfg.rows or not np.isclose(got["checksum"], expected):
            failed[name] = f"the worker's frame differs: {got['rows']} rows, checksum {got['checksum']} (want {expected})"
        methods[name] = {"share_s": share_time, "get_s": got["get"]}
    for name in ("arrow", "pickle"):
        methods[name]["share_ratio"] = methods[name]["share_s"] / methods["nocopy"]["share_s"]
        methods[name]["get_ratio"] = methods[name]["get_s"] / methods["nocopy"]["get_s"]
    return {
        "benchmark": "pandas",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"rows": cfg.rows},
        "rows": cfg.rows,
        "frame_bytes": int(df.memory_usage(index=False, deep=True).sum()),  # the object column's str objects too
        "segment_bytes": segment,
        "methods": methods,
        "failed": failed,
    }


def pandas_table(result: dict[str, Any]) -> str:
    """The result as text: times and ratios per method."""
    rows = []
    for key, m in result["methods"].items():
        rows.append([
            LABELS[key], f"{m['share_s'] * 1e3:.0f} ms", f"{m['get_s'] * 1e3:.2f} ms",
            f"{m.get('share_ratio', 1.0):.1f}", f"{m.get('get_ratio', 1.0):.0f}",
        ])
    lines = [
        f"DataFrame: {result['rows']:,} rows, {MIXED_NUMERIC} numeric + 2 string columns, "
        f"~{format_bytes(result['frame_bytes'])} (segment {format_bytes(result['segment_bytes'])})",
        render_table(["method", "share", "get", "share x", "get x"], rows, right={1, 2, 3, 4}),
        "(x = baseline time / nocopy time, one run; get is measured in a fresh spawned worker)",
    ]
    lines += [f"FAILED {name}: {why}" for name, why in result["failed"].items()]
    return "\n".join(lines)
