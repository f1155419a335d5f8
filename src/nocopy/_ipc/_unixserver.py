"""A daemon thread answering this user's processes on an abstract UNIX socket.

Both descriptor exchanges nocopy does between processes use one: the owner's
fd server (SCM_RIGHTS fallback for attach) and the executor's result inbox.

Abstract names have no file permissions and every user sees them in
/proc/net/unix, so both ends authenticate each other with SO_PEERCRED: the
server answers only its own uid, and a client talks only to a listener of its
own uid *and* of the pid the address names (a name left free by a dead process
may be bound by anyone). The server must survive any single client of its own
user too: messages are one short line (at most one descriptor), every
connection has a deadline, all connections are served at once by one
non-blocking loop (an idle client stalls nobody), and running out of
descriptors pauses accepting instead of ending the thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import struct
import threading
import time

__all__ = ["BUSY", "ForeignListenerError", "UnixServer", "peer_credentials", "request"]

_CREDS = struct.Struct("3i")
# Answered when the server could not take a descriptor (out of fds): try again.
BUSY = b"E"
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the other end of a connected UNIX socket, as the kernel recorded them."""
    pid, uid, _gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    return pid, uid


class ForeignListenerError(ConnectionError):
    """The name is bound by a process other than the one the address names (or of another user)."""

    def __init__(self, address: str, pid: int, uid: int) -> None:
        super().__init__(f"{address} is served by pid {pid} of uid {uid}")
        self.pid = pid
        self.uid = uid


class _Client:
    __slots__ = ("data", "deadline", "fds")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.data = b""
        self.fds: list[int] = []


class UnixServer:
    """Serve this user's processes; peers of another uid get ``REFUSED`` and nothing else.

    Subclasses implement `answer`, which gets one request line. The
    address is in the abstract namespace (nothing on disk to clean up), names
    the listening pid and is unguessable.
    """

    REFUSED = b"A"
    BAD = b"C"
    # A legitimate client sends its whole line right after connecting.
    TIMEOUT = 5.0
    MAX_LINE = 512
    MAX_FDS = 1
    # Connections being read at once; beyond it the oldest is dropped.
    MAX_CLIENTS = 128

    def __init__(self, prefix: str) -> None:
        self.address = f"{prefix}-{os.getpid()}-{os.urandom(16).hex()}"
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, _Client] = {}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind("\0" + self.address)
        self._sock.listen(socket.SOMAXCONN)
        self._sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        # Wakes the loop so that it stops before a fork (pause()); resume() starts it again.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pausing = False
        self._name = prefix
        self._thread = threading.Thread(target=self._serve, name=prefix, daemon=True)
        self._thread.start()

    def answer(self, line: bytes, fds: list[int]) -> tuple[bytes, int | None]:
        """Reply (one byte) and a descriptor to send with it, for one request *line*.

        *fds* are the descriptors that came with it: remove the ones kept, the
        rest are closed afterwards. A descriptor returned is closed once sent.
        """
        raise NotImplementedError

    # -- stopping across fork ----------------------------------------------
    def pause(self) -> None:
        """Stop the serving thread and wait until it is gone (before a fork; see ``_perprocess``).

        A fork copies only the forking thread: the child must not inherit a
        lock this thread holds, and Python 3.12+ warns about forking a
        multi-threaded process. Clients meanwhile wait in the listen backlog.
        """
        thread = self._thread
        if thread is threading.current_thread() or not thread.is_alive():
            return
        self._pausing = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        thread.join(5.0)
        # join() returns when the thread's Python state is gone, a moment before the OS
        # thread is: the kernel's count (which 3.12's fork warning reads) must not see it.
        deadline = time.monotonic() + 1.0
        while os.path.exists(f"/proc/self/task/{thread.native_id}") and time.monotonic() < deadline:
            time.sleep(0.0001)

    def resume(self) -> None:
        """Serve again after `pause` (in the parent, after the fork)."""
        if not self._pausing:
            return
        self._pausing = False
        if self._thread.is_alive():
            return  # it did not stop within pause()'s wait: it serves on
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()

    # -- the loop ---------------------------------------------------------
    def _serve(self) -> None:
        while not self._pausing:
            try:
                if not self._serve_once():
                    return
            except Exception:  # pragma: no cover - a bug here must not end the server for good
                time.sleep(0.05)

    def _serve_once(self) -> bool:
        now = time.monotonic()
        timeout = min((c.deadline for c in self._clients.values()), default=now + 60.0) - now
        try:
            events = self._selector.select(max(timeout, 0.0))
        except OSError:
            return False  # the selector was closed (fork child): nothing to serve
        for key, _ in events:
            sock = key.fileobj
            if sock == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
                return True  # pause(): the loop checks the flag
            assert isinstance(sock, socket.socket)
            if sock is self._sock:
                if not self._accept():
                    return False
            else:
                self._read(sock)
        now = time.monotonic()
        for sock in [s for s, c in self._clients.items() if c.deadline <= now]:
            self._drop(sock)
        return True

    def _accept(self) -> bool:
        # Drain a burst (a flood is refused at the cost of one accept each).
        for _ in range(256):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    # Out of descriptors: clients wait in the backlog until some are freed.
                    time.sleep(0.05)
                    return True
                if exc.errno == errno.ECONNABORTED:
                    continue
                return False  # the listening socket is gone
            try:
                conn.setblocking(False)
                _pid, uid = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            if uid != os.geteuid():
                # Refused before reading a byte; one byte into an empty buffer cannot block.
                with contextlib.suppress(OSError):
                    conn.send(self.REFUSED)
                conn.close()
                continue
            if len(self._clients) >= self.MAX_CLIENTS:
                self._drop(next(iter(self._clients)))
            self._clients[conn] = _Client(time.monotonic() + self.TIMEOUT)
            try:
                self._selector.register(conn, selectors.EVENT_READ)
            except (OSError, ValueError):
                self._drop(conn)
        return True

    def _read(self, conn: socket.socket) -> None:
        client = self._clients.get(conn)
        if client is None:
            return
        try:
            room = self.MAX_LINE + 1 - len(client.data)
            data, fds, flags, _addr = socket.recv_fds(conn, room, self.MAX_FDS)
            client.fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                # Descriptors were dropped: too many sent, or none left here (EMFILE).
                self._reply(conn, BUSY if self.MAX_FDS and not client.fds else self.BAD, None)
                return
            if not data:
                self._drop(conn)
                return
            client.data += data
            end = client.data.find(b"\n")
            if end < 0:
                if len(client.data) > self.MAX_LINE:
                    self._reply(conn, self.BAD, None)
                return
            if end != len(client.data) - 1 or len(client.fds) > self.MAX_FDS:
                self._reply(conn, self.BAD, None)
                return
            try:
                reply, fd = self.answer(client.data[:end], client.fds)
            except OSError as exc:
                reply, fd = (BUSY if exc.errno in _RESOURCE_ERRORS else self.BAD), None
            except Exception:
                reply, fd = self.BAD, None
            self._reply(conn, reply, fd)
        except (BlockingIOError, InterruptedError):
            return
        except Exception:
            self._drop(conn)

    def _reply(self, conn: socket.socket, reply: bytes, fd: int | None) -> None:
        try:
            with contextlib.suppress(OSError):
                if fd is None:
                    conn.send(reply)
                else:
                    socket.send_fds(conn, [reply], [fd])
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        client = self._clients.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn)
        conn.close()
        if client is not None:
            for fd in client.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            client.fds.clear()

    def close_in_child(self) -> None:
        # After fork the thread is gone; the inherited sockets must not be served.
        for conn, client in list(self._clients.items()):
            with contextlib.suppress(OSError):
                conn.close()
            for fd in client.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._clients = {}
        with contextlib.suppress(OSError):
            self._selector.close()
        with contextlib.suppress(OSError):
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def request(address: str, line: bytes, fd: int | None, timeout: float) -> tuple[bytes, list[int]]:
    """Send one request *line* (and *fd*) to the nocopy server at *address*; its reply and fds.

    The listener must be of this uid and be the pid the address names, or
    ForeignListenerError is raised before anything is sent. A full backlog
    (another process flooding connect) or a server out of descriptors
    (``BUSY``) or a connection dropped unanswered is retried with backoff
    until *timeout*; then TimeoutError.
    Any other OSError (no listener: ECONNREFUSED) is raised as it is.
    """
    deadline = time.monotonic() + timeout
    try:
        expected_pid = int(address.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"not a nocopy server address: {address!r}") from None
    delay = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                sock.connect("\0" + address)
            except (BlockingIOError, InterruptedError):
                reply, fds = BUSY, list[int]()  # backlog full
            else:
                pid, uid = peer_credentials(sock)
                if uid != os.geteuid() or pid != expected_pid:
                    raise ForeignListenerError(address, pid, uid)
                reply, fds = _exchange(sock, line, fd, deadline)
        finally:
            sock.close()
        # No reply at all: dropped unanswered (deadline, or the oldest of too many
        # connections): asking again is safe, a request is idempotent.
        if reply not in (BUSY, b""):
            return reply, fds
        for extra in fds:
            os.close(extra)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{address} stayed busy for {timeout:g} s")
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def _exchange(sock: socket.socket, line: bytes, fd: int | None, deadline: float) -> tuple[bytes, list[int]]:
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        if fd is None:
            sock.sendall(line + b"\n")
        else:
            socket.send_fds(sock, [line + b"\n"], [fd])
    except (BrokenPipeError, ConnectionResetError):
        pass  # a refusing server answers and closes before reading: its answer is queued
    msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    return msg[:1], fds
