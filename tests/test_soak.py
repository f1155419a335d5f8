"""Soak: 20,000 share/attach/close cycles across 4 processes keep fd and mapping counts flat
and leave no segment behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import nocopy

CYCLES = 5_000  # per process; 4 processes
WORKER = r"""
import json, os, sys
import numpy as np, nocopy

anchor_uri, cycles = sys.argv[1], int(sys.argv[2])
me = f"nocopy-{os.getpid()}-"

def counts():
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    return fds, len(maps), sum(1 for line in maps if "nocopy-" in line)

data = np.arange(4096, dtype="i8")
samples = []
for i in range(cycles):
    backend = "posix" if i % 2 else "memfd"
    ref = nocopy.share(data, backend=backend)  # create
    other = nocopy.attach(ref.uri)  # attach by URI, as an unrelated process would
    view = other.get()
    assert view[4095] == 4095
    anchor = nocopy.attach(anchor_uri)  # another process's segment, every cycle
    assert anchor.get()[7] == 7.0
    del view
    other.close()
    anchor.close()
    ref.close()
    if i % 500 == 499:
        samples.append(counts())

own_fds = [l for l in (os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                       if os.path.exists(f"/proc/self/fd/{fd}")) if me in l]
with open("/proc/self/maps") as f:
    own_maps = [l for l in f if me in l]
mine = os.path.join(os.environ["NOCOPY_SHM_DIR"], "nocopy-%d" % os.geteuid())
own_files = [n for n in (os.listdir(mine) if os.path.isdir(mine) else []) if n.startswith(me)]
print(json.dumps({"samples": samples, "own_fds": own_fds, "own_maps": own_maps, "own_files": own_files}))
"""


@pytest.mark.slow
def test_twenty_thousand_cycles_keep_fds_and_mappings_flat(monkeypatch: pytest.MonkeyPatch) -> None:
    shm = Path(tempfile.mkdtemp(prefix="nocopytest-", dir="/dev/shm"))
    monkeypatch.setenv("NOCOPY_SHM_DIR", str(shm))
    anchor = nocopy.share(np.arange(1000, dtype="f8"))  # memfd of this process
    workers: list[subprocess.Popen[str]] = []
    t0 = time.monotonic()
    try:
        for _ in range(4):
            workers.append(subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(WORKER), anchor.uri, str(CYCLES)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        results = []
        pids = [w.pid for w in workers]
        for w in workers:
            out, err = w.communicate(timeout=280)
            assert w.returncode == 0, err[-3000:]
            results.append(json.loads(out))
        elapsed = time.monotonic() - t0
        for r in results:
            fds = [s[0] for s in r["samples"]]
            maps = [s[1] for s in r["samples"]]
            seg_maps = [s[2] for s in r["samples"]]
            assert len(fds) == CYCLES // 500
            # Flat: one leaked fd or mapping per cycle would add 500 between samples.
            assert max(fds) - min(fds) <= 2, fds
            assert max(maps) - min(maps) <= 8, maps
            assert max(seg_maps) == 0, seg_maps  # no nocopy mapping survives its cycle
            assert r["own_fds"] == [] and r["own_maps"] == [] and r["own_files"] == []
        assert os.listdir(shm) in ([], [f"nocopy-{os.geteuid()}"]) and not list(shm.rglob("nocopy-*-*"))
        assert not [s for s in nocopy.segments() if s.owner_pid in pids]
        print(f"{4 * CYCLES} cycles in 4 processes: {elapsed:.1f} s")
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        anchor.close()
        shutil.rmtree(shm, ignore_errors=True)
