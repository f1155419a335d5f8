"""share() and get() of a large DataFrame against Arrow IPC and pickle, as ratios from one run.

The frame: 10 numeric columns (float64/int64, NaN in some) and 2 string
columns (pandas' default ``str`` and an object column of ``str``), about
1 GB at the default 8.5M rows. For each method:

* **share** -- what the owner pays to make the frame available to others:
  ``nocopy.share(df)``; ``pa.Table.from_pandas(df)`` + an IPC stream written
  to memory; ``pickle.dumps(df, protocol=5)``.
* **get** -- what a *fresh* process pays to have the DataFrame in hand,
  measured inside a spawned worker: ``ref.get()``; opening the IPC stream +
  ``to_pandas()``; ``pickle.loads``. (The worker receives the bytes of the
  IPC stream / pickle beforehand, as if they were already in its memory: the
  transfer itself is not counted, which flatters the baselines.)

Ratios are baseline time / nocopy time from the same run (these machines are
noisy; run it a few times before quoting a number).

    python benchmarks/bench_pandas.py              # ~1 GB
    python benchmarks/bench_pandas.py --rows 200000 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pickle
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

import nocopy

NUMERIC = 10


def make_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {}
    for i in range(NUMERIC):
        if i % 2:
            cols[f"n{i}"] = rng.integers(0, 1 << 40, rows)
        else:
            v = rng.random(rows)
            v[:: 7 + i] = np.nan
            cols[f"n{i}"] = v
    words = np.array([f"word{i}" for i in range(5000)], dtype=object)
    cols["label"] = pd.Series(words[rng.integers(0, len(words), rows)], dtype="str")
    cols["legacy"] = pd.Series(words[rng.integers(0, len(words), rows)], dtype=object)
    return pd.DataFrame(cols)


def frame_bytes(df: pd.DataFrame) -> int:
    """Bytes the frame occupies in this process (Python str objects of the object column included)."""
    return int(df.memory_usage(index=False, deep=True).sum())


def _ipc_bytes(df: pd.DataFrame) -> pa.Buffer:
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def worker_get(method: str, payload: Any) -> dict[str, float]:
    """In a fresh worker: time turning *payload* into a usable DataFrame."""
    t0 = time.perf_counter()
    if method == "nocopy":
        df = payload.get()
    elif method == "arrow":
        df = pa.ipc.open_stream(payload).read_all().to_pandas()
    else:
        df = pickle.loads(payload)
    t1 = time.perf_counter()
    checksum = float(np.nansum(df["n0"].to_numpy()))
    return {"get": t1 - t0, "checksum": checksum, "rows": len(df)}


def run(rows: int) -> dict[str, Any]:
    df = make_frame(rows)
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {"rows": rows, "frame_mb": frame_bytes(df) / 1e6, "methods": {}}

    t0 = time.perf_counter()
    ref = nocopy.share(df)
    share_s = time.perf_counter() - t0
    out["segment_mb"] = ref.nbytes / 1e6

    t0 = time.perf_counter()
    ipc = _ipc_bytes(df)
    arrow_share = time.perf_counter() - t0

    t0 = time.perf_counter()
    pickled = pickle.dumps(df, protocol=5)
    pickle_share = time.perf_counter() - t0

    expected = float(np.nansum(df["n0"].to_numpy()))
    small = df.head(2)
    with ctx.Pool(1) as pool, nocopy.share(small) as small_ref:
        # Warm each method's imports in the worker with a tiny frame first.
        for method, payload in (("nocopy", small_ref), ("arrow", _ipc_bytes(small)), ("pickle", pickle.dumps(small))):
            pool.apply(worker_get, (method, payload))
        gets = {
            "nocopy": pool.apply(worker_get, ("nocopy", ref)),
            "arrow": pool.apply(worker_get, ("arrow", ipc)),
            "pickle": pool.apply(worker_get, ("pickle", pickled)),
        }
    ref.close()
    for name, share_time in (("nocopy", share_s), ("arrow", arrow_share), ("pickle", pickle_share)):
        g = gets[name]
        assert g["rows"] == rows and np.isclose(g["checksum"], expected), (name, g)
        out["methods"][name] = {"share_s": share_time, "get_s": g["get"]}
    base = out["methods"]["nocopy"]
    for name in ("arrow", "pickle"):
        m = out["methods"][name]
        m["share_ratio"] = m["share_s"] / base["share_s"]
        m["get_ratio"] = m["get_s"] / base["get_s"]
    return out


def report(res: dict[str, Any]) -> str:
    lines = [
        f"DataFrame: {res['rows']:,} rows, {NUMERIC} numeric + 2 string columns, "
        f"~{res['frame_mb']:.0f} MB (segment {res['segment_mb']:.0f} MB)",
        f"{'method':<28}{'share':>10}{'get':>12}{'share x':>10}{'get x':>10}",
    ]
    names = {"nocopy": "nocopy share/get", "arrow": "Arrow from_pandas + IPC", "pickle": "pickle protocol 5"}
    for key, m in res["methods"].items():
        sr = f"{m['share_ratio']:.1f}" if "share_ratio" in m else "1.0"
        gr = f"{m['get_ratio']:.0f}" if "get_ratio" in m else "1"
        lines.append(f"{names[key]:<28}{m['share_s'] * 1e3:>8.0f}ms{m['get_s'] * 1e3:>10.2f}ms{sr:>10}{gr:>10}")
    lines.append("(x = baseline time / nocopy time, one run; get is measured in a fresh spawned worker)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8_500_000, help="rows (default 8.5M, about 1 GB)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    res = run(args.rows)
    print(json.dumps(res, indent=2) if args.json else report(res))


if __name__ == "__main__":
    main()
