"""The unix-socket servers (fd server, result inbox) against other users and hostile clients.

Both servers listen on abstract names, which anyone can see and, once the
owner is gone, bind. Each end authenticates the other (SO_PEERCRED), no
single client can stop, stall or fill a server, and a worker whose caller is
gone exits instead of handing its result to whoever holds the name next.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import nocopy
from conftest import Procs, needs_root, run_python
from nocopy._ipc import _fdserver
from nocopy._pool import _results
from nocopy.errors import SegmentAccessError, SegmentNotFoundError

# A listener squatting a nocopy address: reports what a client gave it (as JSON on stdout).
SQUATTER = """
import json, os, socket, sys
prefix, uid, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3] or os.getpid())
if uid != os.getuid():
    os.setgid(uid); os.setuid(uid)
name = f"{prefix}-{pid}-{os.urandom(16).hex()}"
s = socket.socket(socket.AF_UNIX); s.bind("\\0" + name); s.listen(8)
print(name, flush=True)
s.settimeout(60)
c, _ = s.accept(); c.settimeout(10)
got, fds = b"", []
try:
    while True:
        msg, new, _, _ = socket.recv_fds(c, 4096, 4)
        fds += new
        if not msg:
            break
        got += msg
except OSError:
    pass
print(json.dumps({"bytes": got.decode("latin-1"), "fds": len(fds)}), flush=True)
"""


def _squatter(procs: Procs, prefix: str, uid: int, claim_pid: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """A listener bound by uid *uid* at a nocopy-like address naming *claim_pid* (default: its own)."""
    p = procs.python(SQUATTER, prefix, str(uid), str(claim_pid or ""))
    assert p.stdout is not None
    name = p.stdout.readline().decode().strip()
    assert name.startswith(prefix), p.stderr.read() if p.stderr else ""
    return name, p


def _squatter_report(p: subprocess.Popen[bytes]) -> dict[str, object]:
    out, err = p.communicate(timeout=60)
    lines = out.decode().splitlines()
    assert lines, err.decode()
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def _memfd(tag: str) -> int:
    fd = os.memfd_create(tag, os.MFD_CLOEXEC)
    os.write(fd, b"result")
    return fd


def _fds_named(tag: str) -> int:
    """This process's descriptors of the memfds named *tag* (only ones the test made)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == f"/memfd:{tag} (deleted)":
                n += 1
    return n


def _eventually(check: Callable[[], bool]) -> bool:
    """*check* holds, or comes to hold within a generous while (the server thread finishes a connection)."""
    for _ in range(500):
        if check():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def shared() -> Iterator[nocopy.Shared[np.ndarray]]:
    ref = nocopy.share(np.arange(10), backend="memfd")
    try:
        yield ref
    finally:
        ref.close()


def _legit_request(ref: nocopy.Shared[np.ndarray]) -> None:
    fd = _fdserver.request_fd(ref._locator.sock, ref.name, ref._token.hex())
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == f"/memfd:{ref.name} (deleted)"
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# 1. the client authenticates the listener; orphaned workers exit
# ---------------------------------------------------------------------------
@needs_root
@pytest.mark.root
def test_a_worker_hands_no_result_to_a_listener_of_another_user(procs: Procs) -> None:
    name, squatter = _squatter(procs, "nocopy-res", 65534)
    tag = secrets.token_hex(16)
    fd = _memfd(tag)
    try:
        with pytest.raises(SegmentNotFoundError, match="uid 65534"):
            _results.hand_over(name, secrets.token_hex(8), secrets.token_hex(16), fd)
    finally:
        os.close(fd)
    report = _squatter_report(squatter)
    assert report == {"bytes": "", "fds": 0}


def test_a_worker_hands_no_result_to_another_process_holding_the_callers_name(procs: Procs) -> None:
    # Same user, but not the pid the address names: as when the caller died and its name was re-bound.
    name, squatter = _squatter(procs, "nocopy-res", os.getuid(), claim_pid=os.getpid())
    assert name.startswith(f"nocopy-res-{os.getpid()}-")
    tag = secrets.token_hex(16)
    fd = _memfd(tag)
    try:
        with pytest.raises(SegmentNotFoundError, match=f"pid {squatter.pid} of uid {os.getuid()}"):
            _results.hand_over(name, secrets.token_hex(8), secrets.token_hex(16), fd)
    finally:
        os.close(fd)
    assert _squatter_report(squatter) == {"bytes": "", "fds": 0}


@needs_root
@pytest.mark.root
def test_an_attach_asks_nothing_of_a_listener_of_another_user(procs: Procs) -> None:
    name, squatter = _squatter(procs, "nocopy-fds", 65534)
    token = secrets.token_hex(16)
    with pytest.raises(SegmentAccessError, match="uid 65534"):
        _fdserver.request_fd(name, f"nocopy-1-2-{'c' * 32}", token)
    # Not even the token reached it.
    assert _squatter_report(squatter) == {"bytes": "", "fds": 0}


CALLER = """
import os, sys, time, multiprocessing as mp, nocopy
def pid():
    return os.getpid()
def sleep():
    time.sleep(600)
if __name__ == "__main__":
    ex = nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(sys.argv[1]))
    worker = ex.submit(pid).result()
    ex.submit(sleep)
    print(worker, flush=True)
    time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """The process exited (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_worker_exits_when_its_caller_is_killed(procs: Procs, tmp_path: object, method: str) -> None:
    script = os.path.join(str(tmp_path), "caller.py")
    with open(script, "w") as f:
        f.write(CALLER)
    caller = procs.python(f"import runpy, sys; sys.argv = [{script!r}, {method!r}]; runpy.run_path({script!r}, run_name='__main__')")
    assert caller.stdout is not None
    line = caller.stdout.readline()
    assert line.strip(), caller.stderr.read() if caller.stderr else ""
    worker = int(line)
    try:
        assert not _gone(worker)
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait(timeout=30)
        for _ in range(600):  # generous: this is about exiting at all, not about speed
            if _gone(worker):
                break
            time.sleep(0.1)
        assert _gone(worker), f"worker {worker} still runs a minute after its caller was killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


# ---------------------------------------------------------------------------
# 2. a connect() flood from another user loses nothing
# ---------------------------------------------------------------------------
def _flood(addresses: list[str]) -> None:
    """Child: as uid 65534, connect() to *addresses* over and over (until killed)."""
    try:
        os.setgid(65534)
        os.setuid(65534)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            for a in addresses:
                with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
                    s.connect("\0" + a)
    finally:
        os._exit(0)


def _big(i: int) -> np.ndarray:
    return np.full(1 << 18, i, "f8")  # 2 MiB: returned through the inbox


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_a_connect_flood_from_another_user_loses_no_result(shared: nocopy.Shared[np.ndarray]) -> None:
    with nocopy.ProcessPoolExecutor(2) as ex:
        assert ex.submit(_big, 0).result()[0] == 0
        addresses = [_results.get_inbox().address, shared._locator.sock]
        flooders: list[int] = []
        try:
            for _ in range(8):
                pid = os.fork()
                if pid == 0:
                    _flood(addresses)
                flooders.append(pid)
            time.sleep(0.5)
            for i in range(150):
                out = ex.submit(_big, i).result()
                assert out.shape == (1 << 18,) and out[0] == i and out[-1] == i
                if i % 3 == 0:
                    _legit_request(shared)
            # The flood lasted the whole time.
            assert all(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in flooders)
        finally:
            for pid in flooders:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


# ---------------------------------------------------------------------------
# 3. hostile clients of the same user: no crash, no stall, no leak
# ---------------------------------------------------------------------------
def _send(address: str, data: bytes, fds: list[int] | None = None) -> bytes:
    """What a hostile client of this user would do: one raw message; the server's reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect("\0" + address)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if fds:
                socket.send_fds(s, [data], fds)
            else:
                s.sendall(data)
        return s.recv(1)


FD_SERVER_GARBAGE = [
    b"[" * 4000 + b"\n",  # nested JSON: was a RecursionError that ended the server thread
    b'{"name": "a", "token": "b"}\n',
    b"\xff\xfe\n",
    b"x" * 10000,  # no newline, longer than any request
    b"a b\nc d\n",  # two lines
    b"\n",
]


@pytest.mark.parametrize("data", FD_SERVER_GARBAGE, ids=["deepjson", "json", "binary", "long", "twolines", "empty"])
def test_the_fd_server_survives_a_bad_request(shared: nocopy.Shared[np.ndarray], data: bytes) -> None:
    with contextlib.suppress(OSError):
        assert _send(shared._locator.sock, data) != b"K"
    _legit_request(shared)


def test_the_fd_server_closes_descriptors_sent_to_it(shared: nocopy.Shared[np.ndarray]) -> None:
    tag = secrets.token_hex(16)
    fd = _memfd(tag)
    try:
        for _ in range(50):
            _send(shared._locator.sock, f"{shared.name} {shared._token.hex()}\n".encode(), [fd])
    finally:
        os.close(fd)
    assert _eventually(lambda: _fds_named(tag) == 0)
    _legit_request(shared)


def test_idle_connections_stall_neither_server(shared: nocopy.Shared[np.ndarray]) -> None:
    # More than the servers keep at once: the oldest idle ones are dropped for new ones.
    idle = []
    try:
        for address in (shared._locator.sock, _results.get_inbox().address):
            for _ in range(150):
                s = socket.socket(socket.AF_UNIX)
                s.connect("\0" + address)
                idle.append(s)
        _legit_request(shared)
        with nocopy.ProcessPoolExecutor(1) as ex:
            assert ex.submit(_big, 7).result()[0] == 7
    finally:
        for s in idle:
            s.close()


INBOX_GARBAGE = [
    (b"\xff\n", 1),  # non-ASCII: was a UnicodeDecodeError that leaked the descriptor
    (b"%s %s\n", 1),  # well formed but an unknown tag: was kept forever
    (b"%s %s\n", 2),  # two descriptors
    (b"%s %s\n", 0),  # none
    (b"[" * 4000 + b"\n", 1),
    (b"x" * 10000, 1),
]


@pytest.mark.parametrize(("data", "nfds"), INBOX_GARBAGE, ids=["binary", "unknown-tag", "two-fds", "no-fd", "long-line", "no-newline"])
def test_the_inbox_keeps_no_descriptor_from_a_bad_message(data: bytes, nfds: int) -> None:
    inbox = _results.get_inbox()
    tag = secrets.token_hex(16)
    fds = [_memfd(tag) for _ in range(nfds)]
    try:
        for _ in range(20):
            msg = data % (secrets.token_hex(8).encode(), secrets.token_hex(16).encode()) if b"%s" in data else data
            assert _send(inbox.address, msg, fds) != b"K"
    finally:
        for fd in fds:
            os.close(fd)
    assert _eventually(lambda: _fds_named(tag) == 0)
    with nocopy.ProcessPoolExecutor(1) as ex:
        assert ex.submit(_big, 3).result()[0] == 3


def test_the_inbox_forgets_a_released_executors_tag() -> None:
    with nocopy.ProcessPoolExecutor(1) as ex:
        assert ex.submit(_big, 1).result()[0] == 1
        tag = ex._resources.tag
    inbox = _results.get_inbox()
    name = secrets.token_hex(16)
    fd = _memfd(name)
    try:
        assert _send(inbox.address, f"{tag} {secrets.token_hex(16)}\n".encode(), [fd]) != b"K"
    finally:
        os.close(fd)
    assert _eventually(lambda: _fds_named(name) == 0)



class _CountingLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> bool:
        self.taken += 1
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)


def test_every_task_finds_the_inbox_and_its_tag_without_taking_a_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each task asks for the inbox and opens its executor's tag: only the first may lock.
    inbox = _results.get_inbox()
    made, opened = _CountingLock(), _CountingLock()
    monkeypatch.setattr(_results._inbox, "_lock", made)
    monkeypatch.setattr(inbox, "_lock", opened)
    tag = secrets.token_hex(8)
    try:
        assert [_results.get_inbox().open_tag(tag) for _ in range(3)] == [inbox.address] * 3
        assert (made.taken, opened.taken) == (0, 1)
    finally:
        inbox.drop(tag)


@needs_root
@pytest.mark.root
def test_the_inbox_refuses_another_user(procs: Procs) -> None:
    inbox = _results.get_inbox()
    code = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
fd = os.memfd_create(sys.argv[2])
with socket.socket(socket.AF_UNIX) as s:
    s.connect("\\0" + sys.argv[1])
    try:
        socket.send_fds(s, [sys.argv[3].encode() + b"\\n"], [fd])
    except OSError:
        pass
    print(s.recv(1).decode(), flush=True)
"""
    with nocopy.ProcessPoolExecutor(1) as ex:
        assert ex.submit(_big, 1).result()[0] == 1  # its tag is live
        name = secrets.token_hex(16)
        p = procs.python(code, inbox.address, name, f"{ex._resources.tag} {secrets.token_hex(16)}")
        out, err = p.communicate(timeout=60)
        assert out.decode().strip() == "N", err.decode()
        assert _eventually(lambda: _fds_named(name) == 0)


EMFILE = """
import os, resource, socket, sys, threading, time
import numpy as np, nocopy
from nocopy._ipc import _fdserver
ref = nocopy.share(np.arange(10), backend="memfd")
address = ref._locator.sock
legit = f"{ref.name} {ref._token.hex()}\\n".encode()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
busy = socket.socket(socket.AF_UNIX)  # made while a descriptor is still free
hog = []
while True:  # now this process is out of descriptors: the server's accept() meets EMFILE
    try:
        hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
busy.connect("\\0" + address)
busy.sendall(legit)
time.sleep(0.5)
for f in hog:
    os.close(f)
print("thread alive:", any(t.name == "nocopy-fds" for t in threading.enumerate()))
busy.settimeout(10)
print("pending answered:", busy.recv(1))
fd = _fdserver.request_fd(address, ref.name, ref._token.hex())
print("legit:", os.readlink(f"/proc/self/fd/{fd}") == f"/memfd:{ref.name} (deleted)")
"""


def test_the_fd_server_survives_running_out_of_descriptors() -> None:
    proc = run_python(EMFILE, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["thread alive: True", "pending answered: b'K'", "legit: True"], proc.stdout


def test_an_unreachable_owner_is_named_once_not_wrapped(shared: nocopy.Shared[np.ndarray]) -> None:
    gone = f"nocopy-fds-{os.getpid()}-{secrets.token_hex(16)}"
    with pytest.raises(SegmentNotFoundError) as err:
        _fdserver.request_fd(gone, shared.name, shared._token.hex())
    assert "cannot be reached (Connection refused)" in str(err.value)
    assert "None" not in str(err.value)

