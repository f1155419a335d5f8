"""Lifetime: segments(), cleanup(), automatic reclaim, and SIGKILL of owners and process groups.

Every test works in a private shm directory (``$NOCOPY_SHM_DIR`` under
/dev/shm) so other tests running at the same time neither see nor reclaim
its segments, and it never touches theirs.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
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
from conftest import Procs, segment_holders
from nocopy._store import _names

OWNER = """
import json, os, subprocess, sys, time
import numpy as np, nocopy
from nocopy import _store
from nocopy._store import _posix
backend, nworkers, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if os.environ.get("NOCOPY_TEST_NO_AUTO_RECLAIM"):
    # The test measures `nocopy gc`, so this owner must not reclaim the
    # previous iterations' orphans itself (test_first_posix_segment_reclaims checks that).
    _posix._gc_done.add(_store.shm_dir())
ref = nocopy.share(np.full(size // 8, 7.0), backend=backend)
workers = [
    subprocess.Popen([sys.executable, "-c", sys.argv[4], ref.uri], stdout=subprocess.PIPE)
    for _ in range(nworkers)
]
for w in workers:
    assert w.stdout.readline().strip() == b"ready"
info = {"name": ref.name, "uri": ref.uri, "size": ref.size, "workers": [w.pid for w in workers]}
print(json.dumps(info), flush=True)
sys.stdin.read()
"""

WORKER = """
import sys, time, nocopy
ref = nocopy.attach(sys.argv[1])
view = ref.get()
assert float(view[:10].sum()) == 70.0
print("ready", flush=True)
time.sleep(600)  # only SIGKILL ends it: EOF on a pipe would be a gentler death
"""


def wait_until(cond: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(cond())  # type: ignore[operator]


def gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] in (b"Z", b"X")


def dead_pid_and_start() -> tuple[int, int]:
    """A pid and start time of a process that has exited (and was reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start = _names.process_start_time(p.pid)
    assert start is not None
    assert p.stdin is not None
    p.stdin.close()
    p.wait(timeout=30)
    return p.pid, start


def fake_segment(directory: Path, pid: int, start: int, size: int = 4096) -> Path:
    path = directory / f"nocopy-{pid}-{start}-{secrets.token_hex(16)}"
    with open(path, "wb") as f:
        f.truncate(size)
    os.chmod(path, 0o600)
    return path


class Owner:
    """An owner process (its own process group) sharing one segment, optionally with workers."""

    def __init__(self, procs: Procs, backend: str, workers: int = 0, size: int = 8 << 20, *, wait: bool = True) -> None:
        self.popen = procs.python(
            OWNER, backend, str(workers), str(size), textwrap.dedent(WORKER),
            stdin=subprocess.PIPE, start_new_session=True,
        )
        self.workers: list[int] = []
        self.worker_starts: dict[int, int | None] = {}
        if wait:
            self.ready()

    def ready(self) -> Owner:
        """Wait until the segment is shared and every worker has attached."""
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            err = self.popen.stderr.read().decode() if self.popen.stderr else ""
            raise AssertionError(f"owner died before sharing: {err}")
        info = json.loads(line)
        self.name: str = info["name"]
        self.uri: str = info["uri"]
        self.size: int = info["size"]
        self.workers = info["workers"]
        self.worker_starts = {w: _names.process_start_time(w) for w in self.workers}
        return self

    def sigkill(self, group: bool) -> None:
        if group:
            os.killpg(self.popen.pid, signal.SIGKILL)
        else:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        assert self.popen.returncode == -signal.SIGKILL
        # The workers were reparented when the owner died; they are gone
        # (or zombies, which hold no memory) once the group kill landed.
        assert wait_until(lambda: all(gone_or_zombie(w) for w in self.workers)), self.workers

    def reap_workers(self) -> None:
        # Safety net for a failed test: kill the workers it started, by pid and start time.
        for w, start in self.worker_starts.items():
            if start is not None and _names.process_start_time(w) == start:
                os.kill(w, signal.SIGKILL)


# -- segments() ------------------------------------------------------------------------------


def test_segments_lists_this_process_memfd_and_posix(shm: Path) -> None:
    a = nocopy.share(np.arange(100_000), backend="memfd")
    b = nocopy.share(np.ones((300, 7)), backend="posix")
    try:
        by_name = {s.name: s for s in nocopy.segments()}
        for ref in (a, b):
            seg = by_name[ref.name]
            assert seg.backend == ref.backend
            assert seg.size == ref.size
            assert seg.owner_pid == os.getpid()
            assert seg.owner_alive and not seg.orphaned
            assert os.getpid() in seg.holders
            assert 0 <= seg.age < 120
            assert isinstance(seg.to_dict()["size"], int)
        assert by_name[b.name].path == str(shm / b.name)
        assert by_name[a.name].path == ""
        with pytest.raises(AttributeError):
            by_name[a.name].size = 0  # type: ignore[misc]  # frozen
    finally:
        a.close()
        b.close()
    names = {s.name for s in nocopy.segments()}
    assert a.name not in names and b.name not in names


def test_segments_sees_other_processes_and_who_holds_a_dead_owners_memfd(procs: Procs, shm: Path) -> None:
    owner = Owner(procs, "memfd", size=1 << 20)
    seg = {s.name: s for s in nocopy.segments()}[owner.name]
    assert (seg.owner_pid, seg.owner_alive, seg.backend) == (owner.popen.pid, True, "memfd")
    assert seg.size == owner.size
    assert owner.popen.pid in seg.holders and os.getpid() not in seg.holders

    # Attach from this process: we become a holder (a mapping, no fd).
    handle = nocopy.attach(owner.uri)
    view = handle.get()
    seg = {s.name: s for s in nocopy.segments()}[owner.name]
    assert os.getpid() in seg.holders

    owner.sigkill(group=True)
    # The owner is gone but our mapping keeps the memory: listed, owner dead, held by us only.
    seg = {s.name: s for s in nocopy.segments()}[owner.name]
    assert not seg.owner_alive and seg.holders == (os.getpid(),)
    assert seg.size == owner.size
    assert float(view[:10].sum()) == 70.0
    del view
    handle.close()
    assert wait_until(lambda: owner.name not in {s.name for s in nocopy.segments()})


# -- cleanup() ----------------------------------------------------------------------------


def test_cleanup_reclaims_dead_owners_only_and_never_foreign_files(procs: Procs, shm: Path) -> None:
    # This process's first posix segment here (its automatic reclaim finds nothing yet).
    live = nocopy.share(np.arange(1000), backend="posix")
    dead = Owner(procs, "posix", size=1 << 20)
    dead.sigkill(group=False)
    dead_path = shm / dead.name
    assert dead_path.exists()  # a named segment outlives a SIGKILLed owner
    gone_pid, gone_start = dead_pid_and_start()
    recycled = fake_segment(shm, os.getpid(), (_names.process_start_time(os.getpid()) or 0) + 1)
    # ^ our pid but another start time: the process that made it is gone, the pid was reused.
    orphan = fake_segment(shm, gone_pid, gone_start, size=12345)
    untouchable = {
        "foreign uid": fake_segment(shm, gone_pid, gone_start),
        "live owner (pid and start match)": fake_segment(shm, os.getpid(), _names.process_start_time(os.getpid()) or 0),
        "not a nocopy name": shm / "nocopy-notes.txt",
        "name with a newline": shm / f"nocopy-{gone_pid}-{gone_start}-{secrets.token_hex(16)}\n",
        "directory": shm / f"nocopy-{gone_pid}-{gone_start}-{secrets.token_hex(16)}",
        "symlink": shm / f"nocopy-{gone_pid}-{gone_start}-{secrets.token_hex(16)}",
        "fifo": shm / f"nocopy-{gone_pid}-{gone_start}-{secrets.token_hex(16)}",
    }
    os.chown(untouchable["foreign uid"], 65534, 65534) if os.geteuid() == 0 else untouchable.pop("foreign uid")
    untouchable["not a nocopy name"].write_bytes(b"x")
    untouchable["name with a newline"].write_bytes(b"x")
    untouchable["directory"].mkdir()
    target = shm / "symlink-target"
    target.write_bytes(b"keep me")
    untouchable["symlink"].symlink_to(target)
    os.mkfifo(untouchable["fifo"])

    expected = {dead.name: dead_path.stat().st_size, recycled.name: 4096, orphan.name: 12345}
    try:
        would = nocopy.cleanup(dry_run=True)
        assert {s.name: s.size for s in would} == expected
        assert all(p.exists() for p in (dead_path, recycled, orphan))  # dry run removes nothing
        assert all(not s.owner_alive and s.backend == "posix" for s in would)

        done = nocopy.cleanup()
        assert {s.name: s.size for s in done} == expected
        assert {s.path for s in done} == {str(dead_path), str(recycled), str(orphan)}
        assert not any(p.exists() for p in (dead_path, recycled, orphan))
        for what, path in untouchable.items():
            assert os.path.lexists(path), what
        assert target.read_bytes() == b"keep me"
        assert (shm / live.name).exists()
        assert live.get().tolist() == list(range(1000))
        assert nocopy.cleanup() == []  # nothing left to do
    finally:
        live.close()


def test_a_held_owner_lock_protects_a_segment_whose_pid_looks_dead(shm: Path) -> None:
    # In another pid namespace (containers sharing /dev/shm) the pid in a name
    # may mean nothing here; the owner's lock still says "in use".
    pid, start = dead_pid_and_start()
    path = fake_segment(shm, pid, start)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert nocopy.cleanup() == []
        assert path.exists()
    finally:
        os.close(fd)
    assert [s.name for s in nocopy.cleanup()] == [path.name]
    assert not path.exists()


def test_first_posix_segment_of_a_process_reclaims_orphans(procs: Procs, shm: Path) -> None:
    dead = Owner(procs, "posix", size=1 << 20)
    dead.sigkill(group=False)
    alive = Owner(procs, "posix", size=1 << 20)  # its own first create reclaimed `dead`...
    assert not (shm / dead.name).exists()
    assert (shm / alive.name).exists()
    again = Owner(procs, "posix", size=1 << 20)  # ...and nobody reclaims a live owner's segment
    assert (shm / alive.name).exists() and (shm / again.name).exists()


# -- SIGKILL, 20 times -------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_of_memfd_owners_and_process_groups_leaves_nothing(procs: Procs, shm: Path) -> None:
    names: set[str] = set()
    owners: list[Owner] = []
    try:
        for i in range(20):
            # Each round: an owner alone, and an owner whose two workers have attached,
            # killed with its whole process group. Started together, killed together.
            size = (8 + 8 * (i % 3)) << 20
            pair = [Owner(procs, "memfd", 0, size, wait=False), Owner(procs, "memfd", 2, size, wait=False)]
            for o in pair:
                owners.append(o.ready())
                names.add(o.name)
                assert segment_holders({o.name}), "the segment should exist while its owner lives"
            pair[0].sigkill(group=False)
            pair[1].sigkill(group=True)
            assert wait_until(lambda p=pair: not segment_holders({p[0].name, p[1].name}))
        # 0 bytes remain: no process on the machine holds an fd or a mapping of any of them,
        # and nothing ever appeared in the shm directory.
        assert segment_holders(names) == []
        assert not [n for n in os.listdir(shm) if n.startswith("nocopy-")]
        assert not names & {s.name for s in nocopy.segments()}
    finally:
        for o in owners:
            o.reap_workers()


@pytest.mark.slow
def test_gc_reclaims_all_and_only_dead_posix_owners_after_20_sigkills(
    procs: Procs, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    survivor = Owner(procs, "posix", size=4 << 20)  # alive through the whole run
    mine = nocopy.share(np.arange(10_000), backend="posix")
    dead: dict[str, int] = {}
    owners: list[Owner] = []
    try:
        with monkeypatch.context() as m:
            m.setenv("NOCOPY_TEST_NO_AUTO_RECLAIM", "1")
            for i in range(20):
                size = (8 + 8 * (i % 3)) << 20
                pair = [Owner(procs, "posix", 0, size, wait=False), Owner(procs, "posix", 2, size, wait=False)]
                for o in pair:
                    owners.append(o.ready())
                pair[0].sigkill(group=False)
                pair[1].sigkill(group=True)
                for o in pair:
                    dead[o.name] = o.size
                    assert (shm / o.name).exists()
        assert set(dead) <= set(os.listdir(shm))

        script = shutil.which("nocopy") or str(Path(sys.executable).with_name("nocopy"))
        out = subprocess.run([script, "gc", "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert {s["name"]: s["size"] for s in report["reclaimed"]} == dead
        assert report["bytes"] == sum(dead.values()) >= 40 * (8 << 20)
        assert sorted(os.listdir(shm)) == sorted([survivor.name, mine.name])
        # The live owners' segments still work, and no process maps a reclaimed one.
        assert nocopy.attach(survivor.uri).get()[:10].sum() == 70.0
        assert mine.get()[-1] == 9999
        assert segment_holders(set(dead)) == []
    finally:
        mine.close()
        for o in owners:
            o.reap_workers()

