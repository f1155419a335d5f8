"""Security of the store: reclaim across pid namespaces, writability granted by the owner only,
readers that hold no descriptor per view, odd files at a segment's name, hard links in ls/gc,
and what doctor says about truncation."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nocopy
from conftest import needs_root, run_python
from nocopy._store import _names
from nocopy.errors import SegmentAccessError, SegmentNotFoundError

# -- gc in another pid namespace -------------------------------------------------------------

GC_LOOP = """
import json, os, sys
from nocopy._store import _orphans
directory, stop = sys.argv[1], sys.argv[2]
removed, passes = [], 0
while True:
    last = os.path.exists(stop)  # one more full pass after the owner has finished
    removed += [f.name for f in _orphans.reclaim(directory)]
    passes += 1
    if passes == 1:
        print("ready", flush=True)
    if last:
        break
print(json.dumps({"removed": removed, "passes": passes, "pid": os.getpid()}), flush=True)
"""


@pytest.fixture
def slow_owner_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shared lock (the owner's) is taken 2 ms late: a window between a visible name and
    the lock, if there is one, is wide enough for a reclaim loop to find it every time."""
    real = fcntl.flock

    def late(fd: int, op: int) -> None:
        if op == fcntl.LOCK_SH:
            time.sleep(0.002)
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", late)


@needs_root
@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_gc_in_another_pid_namespace_never_unlinks_a_live_segment(shm: Path, slow_owner_lock: None) -> None:
    # A container sharing /dev/shm: there the owner's pid means nothing (it looks dead),
    # so only the owner's lock protects its segments. It must hold from the moment the
    # name exists.
    stop = shm.parent / f"{shm.name}.stop"
    gc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
         sys.executable, "-c", textwrap.dedent(GC_LOOP), str(shm), str(stop)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    refs: list[nocopy.Shared[Any]] = []
    try:
        assert gc.stdout is not None
        assert gc.stdout.readline().strip() == "ready", gc.stderr.read() if gc.stderr else ""
        for _ in range(150):
            refs.append(nocopy.share(np.arange(8), backend="posix"))
        stop.touch()
        out, err = gc.communicate(timeout=120)
        assert gc.returncode == 0, err
        report = json.loads(out)
        # The loop really ran in another pid namespace, where our pid is not a live process.
        assert report["pid"] == 1
        assert report["passes"] > 1
        unlinked = [r.name for r in refs if os.fstat(r._owner.fd).st_nlink == 0]  # type: ignore[union-attr]
        assert report["removed"] == [] and unlinked == [], (len(report["removed"]), len(unlinked))
        for r in refs:
            assert nocopy.attach(r.uri).get().tolist() == list(range(8))
    finally:
        if gc.poll() is None:
            os.kill(gc.pid, signal.SIGKILL)  # --kill-child takes the loop with it
            gc.wait(timeout=30)
        for r in refs:
            r.close()
        stop.unlink(missing_ok=True)


def test_a_new_posix_segments_name_appears_only_with_the_owners_lock_held(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same property, seen from inside: when the owner takes its (first) lock, no name
    # in the directory refers to the file yet.
    real = fcntl.flock
    seen: list[list[str]] = []

    def spy(fd: int, op: int) -> None:
        if op == fcntl.LOCK_SH:
            st = os.fstat(fd)
            seen.append([e.name for e in os.scandir(shm) if e.inode() == st.st_ino])
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", spy)
    with nocopy.share(np.arange(4), backend="posix") as ref:
        assert seen and seen[0] == []
        assert os.path.exists(shm / ref.name)


# -- writability comes from the owner ------------------------------------------------------------


def _forged(uri: str) -> str:
    assert "&w=0&" in uri
    return uri.replace("&w=0&", "&w=1&")


@pytest.mark.parametrize("backend", ["posix", "memfd"])
def test_a_forged_writable_uri_is_refused_and_cannot_reach_honest_handles(shm: Path, backend: str) -> None:
    ref = nocopy.share(np.zeros(4), backend=backend)
    try:
        out = run_python(f"""
            import nocopy
            from nocopy.errors import SegmentAccessError
            uri = {ref.uri!r}
            try:
                v = nocopy.attach({_forged(ref.uri)!r}).get()
                v[0] = 42
                print("WROTE")
            except SegmentAccessError as exc:
                print("REFUSED", exc)
            honest = nocopy.attach(uri).get()
            print("HONEST WRITEABLE", honest.flags.writeable)
        """)
        assert out.returncode == 0, out.stderr
        assert "REFUSED" in out.stdout and "read-only" in out.stdout and "empty()/zeros()" in out.stdout
        assert "HONEST WRITEABLE False" in out.stdout
        assert ref.get()[0] == 0.0
        # In the owner's own process too (its handle maps through its own fd).
        with pytest.raises(SegmentAccessError, match="read-only"):
            nocopy.attach(_forged(ref.uri))
        assert not ref.get().flags.writeable
    finally:
        ref.close()


@needs_root
@pytest.mark.root
def test_a_forged_writable_uri_is_refused_for_a_non_root_owner_too(shm: Path) -> None:
    # Not root: opening the 0400 file read-write fails in the kernel; the error must
    # still say why (read-only), not blame the user.
    out = run_python("""
        import hmac, json, os  # hmac: imported lazily by the header check; /root is closed to uid 65534
        import numpy as np, nocopy
        from nocopy.errors import SegmentAccessError
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        ref = nocopy.share(np.zeros(4), backend="posix")
        try:
            nocopy.attach(ref.uri.replace("&w=0&", "&w=1&"))
            print("ATTACHED")
        except SegmentAccessError as exc:
            print("REFUSED", exc)
        print("OK", nocopy.attach(ref.uri).get().sum())
    """)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "is read-only" in out.stdout and "OK 0.0" in out.stdout


@pytest.mark.parametrize("backend", ["posix", "memfd"])
def test_a_read_only_handle_of_an_output_never_gets_the_cached_writable_mapping(shm: Path, backend: str) -> None:
    out = nocopy.empty(4, "f8", backend=backend)
    try:
        writable = out.get()  # the writable mapping, cached in this process
        assert writable.flags.writeable
        if backend == "memfd":
            # A handle of read-only data needs a memfd sealed against writes: an
            # output's URI altered to w=0 is refused (its data, and the header a
            # w=0 handle would read, can change under it).
            with pytest.raises(SegmentAccessError, match="not sealed against writes"):
                nocopy.attach(out.uri.replace("&w=1&", "&w=0&"))
            nocopy.attach(out.uri).get()[1] = 8.0
            assert writable[1] == 8.0
            return
        ro = nocopy.attach(out.uri.replace("&w=1&", "&w=0&")).get()
        assert not ro.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            ro[0] = 1.0
        writable[0] = 7.0  # still the same shared pages
        assert ro[0] == 7.0
        # And an honest writable attach of the output works.
        nocopy.attach(out.uri).get()[1] = 8.0
        assert writable[1] == 8.0
    finally:
        out.close()


# -- readers hold no descriptor per view ------------------------------------------------------


@pytest.mark.parametrize("backend", ["posix", "memfd"])
def test_a_reader_with_ulimit_64_holds_200_live_views(shm: Path, backend: str) -> None:
    refs = [nocopy.share(np.full(3, i), backend=backend) for i in range(200)]
    try:
        out = run_python("""
            import json, os, resource, sys, nocopy
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            before = len(os.listdir("/proc/self/fd"))
            views = [nocopy.attach(u).get() for u in json.loads(sys.argv[1])]
            after = len(os.listdir("/proc/self/fd"))
            print("SUM", sum(int(v.sum()) for v in views), "FDS", after - before)
        """, json.dumps([r.uri for r in refs]))
        assert out.returncode == 0, out.stderr
        assert f"SUM {3 * sum(range(200))} FDS 0" in out.stdout
    finally:
        for r in refs:
            r.close()


@pytest.mark.parametrize("backend", ["posix", "memfd"])
def test_a_reader_out_of_descriptors_gets_a_note_saying_why(shm: Path, backend: str) -> None:
    with nocopy.share(np.arange(3), backend=backend) as ref:
        out = run_python("""
            import errno, os, resource, sys, nocopy
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            held = []
            try:
                while True:
                    held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            try:
                nocopy.attach(sys.argv[1])
                print("ATTACHED")
            except OSError as exc:
                print("ERRNO", exc.errno == errno.EMFILE, type(exc).__name__)
                print("NOTE", " ".join(getattr(exc, "__notes__", [])))
            os.close(held.pop())
            print("OK", int(nocopy.attach(sys.argv[1]).get().sum()))
        """, ref.uri)
        assert out.returncode == 0, out.stderr
        assert "ERRNO True" in out.stdout, out.stdout
        assert "NOTE nocopy: attaching a segment needs one file descriptor" in out.stdout
        assert "ulimit -n" in out.stdout and "OK 3" in out.stdout


def test_views_keep_the_mapping_until_the_last_one_is_dropped(shm: Path) -> None:
    ref = nocopy.share(np.arange(1000), backend="posix")
    view = ref.get()[10:20]
    name = ref.name
    ref.close()
    assert name in Path("/proc/self/maps").read_text()
    assert view.tolist() == list(range(10, 20))
    del view
    assert name not in Path("/proc/self/maps").read_text()


# -- odd files at a segment's name ------------------------------------------------------------


@pytest.fixture
def dead_uri(shm: Path) -> Iterator[tuple[str, Path]]:
    """The URI of a posix segment whose owner closed it, and the path its name had."""
    ref = nocopy.share(np.arange(3), backend="posix")
    uri, path = ref.uri, shm / ref.name
    ref.close()
    yield uri, path


def test_a_symlink_at_a_segments_name_is_a_clear_error(shm: Path, dead_uri: tuple[str, Path]) -> None:
    uri, path = dead_uri
    with nocopy.share(np.arange(3), backend="posix") as other:
        os.symlink(shm / other.name, path)
        with pytest.raises(SegmentNotFoundError, match=r"symbolic link") as info:
            nocopy.attach(uri)
        assert str(path) in str(info.value)


def test_a_socket_at_a_segments_name_is_a_clear_error(dead_uri: tuple[str, Path]) -> None:
    uri, path = dead_uri
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        with pytest.raises(SegmentNotFoundError, match=r"a socket") as info:
            nocopy.attach(uri)
        assert str(path) in str(info.value)


# -- hard links in ls and gc ------------------------------------------------------------------


def _dead_pid_and_start() -> tuple[int, int]:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = _names.process_start_time(p.pid) or 1
    p.wait(timeout=30)
    return p.pid, start


def _dead_name() -> str:
    pid, start = _dead_pid_and_start()
    return f"nocopy-{pid}-{start}-{secrets.token_hex(16)}"


def test_a_hard_link_to_a_live_segment_is_listed_alive_and_never_reclaimed(shm: Path) -> None:
    with nocopy.share(np.arange(100), backend="posix") as ref:
        alias = shm / _dead_name()
        os.link(shm / ref.name, alias)
        listed = {s.name: s for s in nocopy.segments()}
        assert listed[alias.name].owner_alive and not listed[alias.name].orphaned
        assert nocopy.cleanup(dry_run=True) == [] and nocopy.cleanup() == []
        assert alias.exists()


def test_gc_counts_the_bytes_of_a_hard_linked_file_once_and_only_when_freed(shm: Path) -> None:
    size = 1 << 16
    one, two, lone = shm / _dead_name(), shm / _dead_name(), shm / _dead_name()
    for p in (one, lone):
        with open(p, "wb") as f:
            f.truncate(size)
        os.chmod(p, 0o600)
    os.link(one, two)  # two dead names, one file: size bytes to free, once
    keep = shm / "keep-me"
    os.link(lone, keep)  # a dead name whose file someone else keeps: nothing to free
    dry = nocopy.cleanup(dry_run=True)
    assert sorted(s.name for s in dry) == sorted([one.name, two.name, lone.name])
    assert sum(s.size for s in dry) == size
    done = nocopy.cleanup()
    assert sorted(s.name for s in done) == sorted(s.name for s in dry)
    assert sum(s.size for s in done) == size
    assert {s.name: s.size for s in done}[lone.name] == 0
    assert keep.exists() and os.stat(keep).st_size == size
    assert not one.exists() and not two.exists() and not lone.exists()


# -- what doctor says about truncation ------------------------------------------------------------


def test_doctor_says_posix_segments_can_be_truncated_and_memfd_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._cli import _doctor

    report = _doctor.collect()
    text = _doctor.render(report)
    assert "posix segments are named files" in text and "truncate" in text and "SIGBUS" in text
    assert "memfd segments are sealed" in text and "prefer memfd" in text
    assert report["isolation"]["posix_named_after_lock"] is True
    monkeypatch.setenv("NOCOPY_BACKEND", "posix")
    posix = _doctor.collect()
    assert any("posix backend is in use" in w["message"] and "SIGBUS" in w["message"] for w in posix["warnings"])


def test_a_truncated_posix_segment_is_refused_at_attach_not_a_sigbus(shm: Path) -> None:
    # The honest limit: a reader that mapped before the truncation dies with SIGBUS (see
    # README); one that attaches after it gets an error.
    with nocopy.share(np.arange(1000), backend="posix") as ref:
        os.truncate(shm / ref.name, 64)
        out = run_python("""
            import sys, nocopy
            try:
                nocopy.attach(sys.argv[1]).get()
            except nocopy.errors.SegmentCorruptError as exc:
                print("REFUSED", exc)
        """, ref.uri)
        assert out.returncode == 0, out.stderr
        assert "REFUSED" in out.stdout and "truncated" in out.stdout


# -- each user's posix segments in a private directory ------------------------------------------


def test_posix_segments_live_in_a_0700_directory_of_their_user(shm: Path) -> None:
    shutil.rmtree(shm)  # made by nocopy itself this time
    with nocopy.share(np.arange(10), backend="posix") as ref:
        st = os.lstat(shm)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert (shm / ref.name).is_file()
        assert not (shm.parent / ref.name).exists()
        assert {s.name: s.path for s in nocopy.segments()}[ref.name] == str(shm / ref.name)


@pytest.mark.parametrize("squat", ["symlink", "open mode", "a file", "other owner"])
def test_a_squatted_segment_directory_is_refused(shm: Path, squat: str) -> None:
    shutil.rmtree(shm)
    elsewhere = shm.parent / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if squat == "symlink":
        shm.symlink_to(elsewhere)
    elif squat == "a file":
        shm.write_bytes(b"")
    else:
        shm.mkdir(mode=0o700)
        if squat == "open mode":
            os.chmod(shm, 0o755)
        elif os.geteuid() == 0:
            os.chown(shm, 65534, 65534)
        else:
            pytest.skip("needs root to give the directory to another user")
    with pytest.raises(SegmentAccessError, match=r"cannot make a posix segment.*Fix:"):
        nocopy.share(np.arange(10), backend="posix")
    assert os.listdir(elsewhere) == []


def test_a_world_writable_shm_directory_that_is_not_sticky_is_refused(shm: Path) -> None:
    os.chmod(shm.parent, 0o777)  # others could rename this user's directory away and put theirs
    try:
        with pytest.raises(SegmentAccessError, match=r"not sticky"):
            nocopy.share(np.arange(10), backend="posix")
    finally:
        os.chmod(shm.parent, 0o1777)


def test_segments_of_nocopy_0_2_in_the_shm_directory_are_still_listed_and_reclaimed(shm: Path) -> None:
    old = shm.parent / _dead_name()
    old.write_bytes(b"\0" * 4096)
    os.chmod(old, 0o600)
    assert old.name in {s.name for s in nocopy.segments()}
    assert [s.name for s in nocopy.cleanup()] == [old.name]
    assert not old.exists()


@needs_root
@pytest.mark.root
def test_another_user_can_neither_open_nor_hard_link_a_posix_segment(shm: Path) -> None:
    # Where fs.protected_hardlinks=0, a link in the shared sticky /dev/shm
    # would pin the owner's memory after close(); the private directory
    # refuses the path itself, whatever that setting.
    with nocopy.share(np.arange(1 << 14), backend="posix") as ref:
        path = shm / ref.name
        assert path.is_file()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                os.setgid(65534)
                os.setuid(65534)
                for attempt in (lambda: os.link(path, shm.parent / "pinned"), lambda: os.open(path, os.O_RDONLY)):
                    try:
                        attempt()
                        code = 1
                    except PermissionError:
                        pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "uid 65534 linked or opened the segment"
        assert not (shm.parent / "pinned").exists()
