"""Owner crashes and a full tmpfs: memory comes back, errors instead of SIGBUS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import nocopy
from conftest import Procs, needs_root, segment_holders

OWNER = """
import sys, numpy as np, nocopy
ref = nocopy.share(np.full(256 * 2**20 // 8, 7.0), backend=sys.argv[1])
print(ref.name, flush=True)
sys.stdin.read()
"""


def _shmem_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem in /proc/meminfo")


def _start_owner(procs: Procs, backend: str) -> tuple[subprocess.Popen[bytes], str]:
    p = procs.python(OWNER, backend, stdin=subprocess.PIPE)
    assert p.stdout is not None
    name = p.stdout.readline().decode().strip()
    assert name.startswith("nocopy-"), p.stderr.read() if p.stderr else ""
    return p, name


@pytest.mark.slow
def test_sigkill_of_memfd_owner_returns_the_memory(procs: Procs) -> None:
    p, name = _start_owner(procs, "memfd")
    fds = [h for h in segment_holders({name}) if "/fd/" in h]
    assert fds and fds[0].startswith(f"{p.pid}/")
    # The 256 MB really are allocated (charged to Shmem): counted on the segment
    # itself, not as a difference of the machine-wide Shmem, which other processes move.
    assert os.stat(f"/proc/{fds[0].split(' -> ')[0]}").st_blocks * 512 >= 256 * 2**20
    during = _shmem_bytes()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    deadline = time.monotonic() + 10
    while segment_holders({name}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert segment_holders({name}) == []
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"nocopy-{p.pid}-")]
    # Shmem falls back by the segment's size (tolerance for whatever else
    # allocates shared memory on the machine meanwhile).
    while during - _shmem_bytes() < 192 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert during - _shmem_bytes() >= 192 * 2**20


@pytest.mark.slow
def test_sigkill_of_posix_owner_leaves_a_reclaimable_segment(procs: Procs, shm: Path) -> None:
    # A private shm directory (inherited by the owner): any other nocopy
    # process creating its first posix segment in /dev/shm would reclaim this
    # orphan before the test looks, and cleanup() here touches nobody else's.
    p, name = _start_owner(procs, "posix")
    path = shm / name
    assert path.stat().st_size > 256 * 2**20 - 1
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert path.exists()  # a named segment outlives a SIGKILLed owner...
    reclaimed = nocopy.cleanup()
    assert [seg.name for seg in reclaimed] == [name]
    assert not path.exists()  # ...until cleanup reclaims it
    assert os.listdir(shm) == []
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"nocopy-{p.pid}-")]


SMALL_TMPFS = """
set -e
mount -t tmpfs -o size=64m tmpfs /dev/shm
{python} - <<'PY'
{code}
PY
"""

IN_SMALL_TMPFS = """
import os, numpy as np, nocopy
from nocopy.errors import InsufficientMemoryError
data = np.ones(128 * 2**20 // 8)
try:
    nocopy.share(data, backend="posix")
except InsufficientMemoryError as exc:
    assert isinstance(exc, MemoryError)
    assert exc.requested > 128 * 2**20 and exc.available <= 64 * 2**20, exc
    assert "tmpfs /dev/shm" in str(exc) and "--shm-size" in str(exc), exc
    print("refused:", exc.limit)
else:
    raise SystemExit("no error")
if {bypass}:
    # Second line of defence: even when the room check is fooled, fallocate
    # turns the shortage into the same error instead of a SIGBUS.
    from nocopy._store import _capacity
    _capacity.check_room = lambda *a, **k: None
    try:
        nocopy.share(data, backend="posix")
    except InsufficientMemoryError as exc:
        print("fallocate refused:", exc.limit)
    else:
        raise SystemExit("no error from fallocate")
small = nocopy.share(np.ones(1000), backend="posix")  # the process survives and works
assert small.get().sum() == 1000
small.close()
mine = "/dev/shm/nocopy-%d" % os.geteuid()
print("left:", sorted(n for d in ("/dev/shm", mine) for n in os.listdir(d) if n.startswith("nocopy-") and n != os.path.basename(mine)))
"""


@needs_root
@pytest.mark.root
@pytest.mark.parametrize("bypass", [False, True], ids=["room-check", "fallocate"])
def test_small_tmpfs_gives_insufficient_memory_not_sigbus(bypass: bool) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    script = SMALL_TMPFS.format(python=sys.executable, code=textwrap.dedent(IN_SMALL_TMPFS).format(bypass=bypass))
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"cannot create a mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # 135 would be SIGBUS
    assert "refused: tmpfs /dev/shm" in proc.stdout
    if bypass:
        assert "fallocate refused: tmpfs /dev/shm" in proc.stdout
    assert "left: []" in proc.stdout


def test_memfd_is_not_bounded_by_the_tmpfs_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shm directory reports 64 KiB free: a posix segment of 2 MB is refused by the
    # tmpfs check, a memfd of the same size is not (only memory and the cgroup bound it).
    from nocopy._store import _capacity

    full = _capacity.Limit("tmpfs /dev/shm", 64 << 20, 64 << 10)
    monkeypatch.setattr(_capacity, "tmpfs_room", lambda path: full)
    data = np.arange(2 << 20, dtype="u1")
    with pytest.raises(nocopy.errors.InsufficientMemoryError, match="tmpfs") as info:
        nocopy.share(data, backend="posix")
    assert info.value.available == 64 << 10
    with nocopy.share(data, backend="memfd") as ref:
        np.testing.assert_array_equal(ref.get(), data)


def test_request_beyond_memory_is_refused_before_allocating() -> None:
    with pytest.raises(nocopy.errors.InsufficientMemoryError) as info:
        nocopy.empty((1 << 50,), "u1")
    assert info.value.requested >= 1 << 50
    assert "MemAvailable" in info.value.limit or "cgroup" in info.value.limit
    # Picklable, as every nocopy error: it crosses process boundaries.
    import pickle

    again = pickle.loads(pickle.dumps(info.value))
    assert again.limit == info.value.limit and str(again) == str(info.value)
