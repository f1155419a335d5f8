"""Memory limits: a small /dev/shm and a memory cgroup give InsufficientMemoryError, the process
survives, and nothing is left behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import needs_root
from nocopy._store import _capacity

IN_SMALL_SHM = r"""
import json, os
import numpy as np, nocopy
from nocopy.errors import InsufficientMemoryError

def left():
    mine = "/dev/shm/nocopy-%d" % os.geteuid()
    names = os.listdir("/dev/shm") + (os.listdir(mine) if os.path.isdir(mine) else [])
    return sorted(n for n in names if n.startswith("nocopy-") and n != os.path.basename(mine))

def refused(make):
    try:
        ref = make()
    except InsufficientMemoryError as exc:
        assert isinstance(exc, MemoryError)
        return {"limit": exc.limit, "requested": exc.requested, "available": exc.available,
                "message": str(exc), "left": left()}
    ref.close()
    return None

st = os.statvfs("/dev/shm")
out = {"tmpfs_size": st.f_blocks * st.f_frsize}
# One request larger than the whole tmpfs.
out["too_big"] = refused(lambda: nocopy.empty((100 << 20,), "u1", backend="posix"))
# Room is what is free, not the tmpfs size: 40 MB fit once, not twice.
first = nocopy.share(np.full((40 << 20) // 8, 3.0), backend="posix")
out["second"] = refused(lambda: nocopy.share(np.full((40 << 20) // 8, 4.0), backend="posix"))
out["first_intact"] = bool((first.get() == 3.0).all())
first.close()
# A memfd is not bounded by the tmpfs size (only by memory and the cgroup).
m = nocopy.empty((100 << 20,), "u1", backend="memfd")
m.get()[::4096] = 1
out["memfd_100MB"] = int(m.get()[::4096].sum())
m.close()
out["left"] = left()
st = os.statvfs("/dev/shm")
out["free_after"] = st.f_bavail * st.f_frsize
print(json.dumps(out))
"""


@needs_root
@pytest.mark.root
def test_a_64mb_dev_shm_refuses_what_does_not_fit_and_keeps_nothing() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    script = 'set -e; mount -t tmpfs -o size=64m tmpfs /dev/shm; exec "$0" -c "$1"'
    env = {k: v for k, v in os.environ.items() if k not in ("NOCOPY_SHM_DIR", "NOCOPY_BACKEND")}
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable, textwrap.dedent(IN_SMALL_SHM)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    if proc.returncode != 0 and ("unshare failed" in proc.stderr or "mount:" in proc.stderr):
        pytest.skip(f"cannot mount a private /dev/shm here: {proc.stderr.strip()}")
    # 135 would be SIGBUS, 137 an OOM kill: the process must survive.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["tmpfs_size"] == 64 << 20
    for key in ("too_big", "second"):
        err = out[key]
        assert err is not None, f"{key}: no InsufficientMemoryError"
        assert err["limit"] == "tmpfs /dev/shm"
        assert err["requested"] > err["available"]
        assert "--shm-size" in err["message"] and "emptyDir" in err["message"]
    assert out["too_big"]["left"] == []  # the refused segment left no file
    assert out["second"]["left"] != [] and len(out["second"]["left"]) == 1  # only the first one
    assert out["first_intact"] is True
    assert out["memfd_100MB"] == (100 << 20) // 4096
    assert out["left"] == []
    assert out["free_after"] == 64 << 20


# -- a memory cgroup -------------------------------------------------------------------------

IN_CGROUP = r"""
import os, sys, json
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))  # from here on every page this process touches is charged there
import numpy as np, nocopy
from nocopy.errors import InsufficientMemoryError
from nocopy._store import _capacity

def attempt(make):
    try:
        ref = make()
    except InsufficientMemoryError as exc:
        return {"limit": exc.limit, "requested": exc.requested, "available": exc.available,
                "message": str(exc)}
    ref.close()
    return None

lim = _capacity.cgroup_memory()
out = {"seen": None if lim is None else [lim.name, lim.total, lim.available]}
data = np.ones((160 << 20) // 8)  # 160 MB of the 256 MB are now this array
for backend in ("memfd", "posix"):
    out[backend] = {
        "output_300MB": attempt(lambda: nocopy.empty((300 << 20,), "u1", backend=backend)),
        "share_160MB": attempt(lambda: nocopy.share(data, backend=backend)),
    }
    small = nocopy.share(data[: (8 << 20) // 8], backend=backend)  # what fits still works
    out[backend]["small_ok"] = float(small.get().sum()) == (8 << 20) // 8
    small.close()
out["memfds"] = [l for l in (os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                             if os.path.exists(f"/proc/self/fd/{fd}")) if "nocopy-" in l]
mine = os.path.join(os.environ["NOCOPY_SHM_DIR"], "nocopy-%d" % os.geteuid())
out["posix_left"] = os.listdir(mine) if os.path.isdir(mine) else []
print(json.dumps(out))
"""


def _memory_cgroup(limit: int) -> tuple[Path | None, str]:
    """Create a child memory cgroup of ours with *limit*; (its path, "") or (None, why not)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup: {exc}"
    name = f"nocopy-test-{secrets.token_hex(4)}"
    for line in lines:
        _hid, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            parent = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
            limit_file = "memory.limit_in_bytes"
            break
    else:  # cgroup v2: needs the memory controller enabled for our children
        rel = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), "")
        root = Path("/sys/fs/cgroup")
        try:
            controllers = (root / "cgroup.controllers").read_text().split()
        except OSError:
            controllers = []
        if not rel or "memory" not in controllers:
            return None, "neither a cgroup v1 memory hierarchy nor a cgroup v2 memory controller here"
        parent = root / rel.lstrip("/")
        limit_file = "memory.max"
        try:
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            return None, f"cannot enable the memory controller below {parent} (cgroup v2): {exc}"
    path = parent / name
    try:
        path.mkdir()
    except OSError as exc:
        return None, f"cannot create a cgroup under {parent}: {exc}"
    try:
        (path / limit_file).write_text(str(limit))
    except OSError as exc:
        path.rmdir()
        return None, f"cannot set {limit_file} in {path}: {exc}"
    return path, ""


@pytest.fixture
def private_shm() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="nocopytest-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_root
@pytest.mark.root
def test_a_256mb_memory_cgroup_refuses_what_does_not_fit(private_shm: Path) -> None:
    limit = 256 << 20
    cg, why = _memory_cgroup(limit)
    if cg is None:
        print(f"skipped: {why}")
        pytest.skip(why)
    try:
        env = dict(os.environ, NOCOPY_SHM_DIR=str(private_shm))
        env.pop("NOCOPY_BACKEND", None)
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(IN_CGROUP), str(cg)],
                              capture_output=True, text=True, timeout=120, env=env)
        # 137 would be the OOM killer: the check must come first.
        assert proc.returncode == 0, (proc.returncode, proc.stdout + proc.stderr)
        out = json.loads(proc.stdout)
    finally:
        cg.rmdir()
    assert out["seen"] is not None and out["seen"][1] == limit, out["seen"]
    assert str(cg) in out["seen"][0]
    for backend in ("memfd", "posix"):
        for what in ("output_300MB", "share_160MB"):
            err = out[backend][what]
            assert err is not None, f"{backend} {what}: no InsufficientMemoryError"
            assert "cgroup" in err["limit"], err
            assert err["requested"] > err["available"]
            assert "--memory" in err["message"] or "limits.memory" in err["message"]
        assert out[backend]["small_ok"] is True
    assert out["memfds"] == []  # nothing remains: no memfd...
    assert out["posix_left"] == []  # ...and no file


def test_room_check_compares_every_limit(monkeypatch: pytest.MonkeyPatch, private_shm: Path) -> None:
    # The tightest of tmpfs, cgroup and MemAvailable decides, for posix; memfd ignores the tmpfs.
    from nocopy.errors import InsufficientMemoryError

    fake = {
        "cgroup": _capacity.Limit("cgroup v1 memory.limit_in_bytes (/x)", 1 << 30, 100 << 20),
        "mem": _capacity.Limit("MemAvailable (/proc/meminfo)", 8 << 30, 200 << 20),
    }
    monkeypatch.setattr(_capacity, "cgroup_memory", lambda: fake["cgroup"])
    monkeypatch.setattr(_capacity, "mem_available", lambda: fake["mem"])
    _capacity.check_room("x", 99 << 20)
    with pytest.raises(InsufficientMemoryError, match="cgroup") as info:
        _capacity.check_room("x", 101 << 20)
    assert info.value.available == 100 << 20
    fake["cgroup"] = _capacity.Limit("cgroup v2 memory.max (/y)", 1 << 40, 1 << 40)
    with pytest.raises(InsufficientMemoryError, match="MemAvailable"):
        _capacity.check_room("x", 201 << 20)
    free = _capacity.tmpfs_room(str(private_shm)).available
    fake["mem"] = _capacity.Limit("MemAvailable (/proc/meminfo)", 1 << 50, 1 << 50)
    with pytest.raises(InsufficientMemoryError, match="tmpfs"):
        _capacity.check_room("x", free + (1 << 30), shm_dir=str(private_shm))
    _capacity.check_room("x", free + (1 << 30))  # memfd: no tmpfs bound


# -- cgroup v1 and v2 as the kernel shows them (a fake tree: this machine has only one kind) --


def _fake_cgroups(tmp: Path, version: int) -> None:
    if version == 1:
        (tmp / "proc").write_text("4:memory:/pods/job\n3:cpuset:/\n0::/\n")
        top = tmp / "fs" / "memory" / "pods"
        (top / "job").mkdir(parents=True)
        (top / "memory.limit_in_bytes").write_text(str(512 << 20))  # the ancestor is tighter
        (top / "memory.usage_in_bytes").write_text(str(300 << 20))
        (top / "memory.stat").write_text(f"cache 0\ntotal_inactive_file {50 << 20}\n")
        (top / "job" / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "no limit"
        (top / "job" / "memory.usage_in_bytes").write_text(str(100 << 20))
        (top / "job" / "memory.stat").write_text("total_inactive_file 0\n")
    else:
        (tmp / "proc").write_text("0::/pods/job\n")
        root = tmp / "fs"
        (root / "pods" / "job").mkdir(parents=True)
        (root / "cgroup.controllers").write_text("cpu io memory pids\n")
        (root / "pods" / "memory.max").write_text("max\n")
        (root / "pods" / "memory.current").write_text(str(900 << 20))
        (root / "pods" / "job" / "memory.max").write_text(str(256 << 20))
        (root / "pods" / "job" / "memory.current").write_text(str(200 << 20))
        (root / "pods" / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {40 << 20}\n")


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_limits_are_read_for_v1_and_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    from nocopy._cli import _doctor
    from nocopy.errors import InsufficientMemoryError

    _fake_cgroups(tmp_path, version)
    monkeypatch.setattr(_capacity, "_PROC_CGROUP", tmp_path / "proc")
    monkeypatch.setattr(_capacity, "_CGROUP_FS", tmp_path / "fs")
    lim = _capacity.cgroup_memory()
    assert lim is not None
    if version == 1:
        # 512 MB limit on the ancestor, 300 MB used of which 50 MB reclaimable cache.
        assert (lim.total, lim.available) == (512 << 20, (512 - 250) << 20)
        assert "cgroup v1 memory.limit_in_bytes" in lim.name and lim.name.endswith("pods)")
    else:
        assert (lim.total, lim.available) == (256 << 20, (256 - 160) << 20)
        assert "cgroup v2 memory.max" in lim.name and lim.name.endswith("job)")
    monkeypatch.setattr(_capacity, "mem_available", lambda: None)
    with pytest.raises(InsufficientMemoryError, match="cgroup") as info:
        _capacity.check_room("an array", lim.available + 1)
    assert info.value.available == lim.available
    _capacity.check_room("an array", lim.available)

    # nocopy doctor shows this process's own cgroup, with its usage.
    (own,) = _doctor._cgroups()
    assert own["version"] == version and own["path"].endswith("job")
    assert own["limit"] == (None if version == 1 else 256 << 20)
    assert own["usage"] == (100 << 20 if version == 1 else 200 << 20)
