"""A daemon thread answering this user's processes on a UNIX socket in a private directory.

Both descriptor exchanges nocopy does between processes use one: the owner's
fd server (SCM_RIGHTS fallback for attach) and the executor's result inbox.

The socket is a file in a directory of mode 0700 (``_sockdir``): the kernel
refuses another user's connect(), so no other user can fill its backlog. Both
ends still authenticate each other with SO_PEERCRED: the server answers only
its own uid, and a client talks only to a listener of its own uid *and* of
the pid the address names. The server must survive any client of its own
user too: messages are one short line (at most one descriptor, which must
come with the line), every connection has a deadline, all connections are
served at once by one non-blocking loop (an idle client stalls nobody), a
full server makes room by dropping an idle connection of the peer process
holding the most (never one whose request has arrived; one process holds at
most `UnixServer.MAX_PER_PEER`), and running out of descriptors pauses
accepting instead of ending the thread. Clients retry a connection that was
dropped or reset before its answer: a request is idempotent.
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
from multiprocessing.util import Finalize

from . import _sockdir

__all__ = ["BUSY", "ForeignListenerError", "UnixServer", "peer_credentials", "request", "socket_path"]

_CREDS = struct.Struct("3i")
# Answered when the server could not take a descriptor (out of fds): try again.
BUSY = b"E"
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the other end of a connected UNIX socket, as the kernel recorded them."""
    pid, uid, _gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    return pid, uid


class ForeignListenerError(ConnectionError):
    """The address is served by a process other than the one it names, or its directory is another user's."""

    def __init__(self, address: str, pid: int | None, uid: int) -> None:
        self.holder = f"pid {pid} of uid {uid}" if pid is not None else f"a directory of uid {uid}"
        super().__init__(f"{address} is held by {self.holder}")
        self.pid = pid
        self.uid = uid


def socket_path(address: str) -> str:
    """The socket file of the server at *address* (its directory checked: this user's, private).

    ConnectionRefusedError when no such server exists, ForeignListenerError
    when the directory is not this user's private one.
    """
    try:
        return _sockdir.path_of(address)
    except _sockdir.ForeignDirectoryError as exc:
        raise ForeignListenerError(address, None, exc.uid) from None


class _Client:
    __slots__ = ("data", "deadline", "fds", "pid")

    def __init__(self, deadline: float, pid: int) -> None:
        self.deadline = deadline
        self.pid = pid
        self.data = b""
        self.fds: list[int] = []


class UnixServer:
    """Serve this user's processes; peers of another uid get ``REFUSED`` and nothing else.

    Subclasses implement `answer`, which gets one request line. The
    address names the listening pid, is unguessable and names the server's
    private directory (see ``_sockdir``), removed when this process exits.
    """

    REFUSED = b"A"
    BAD = b"C"
    # Answered when a descriptor sent could not be received here (out of descriptors).
    NO_ROOM = BUSY
    # A legitimate client sends its whole line right after connecting.
    TIMEOUT = 5.0
    MAX_LINE = 512
    MAX_FDS = 1
    # Connections being read at once; beyond it an idle one is dropped (see _make_room).
    MAX_CLIENTS = 128
    # Connections of one peer process; beyond it that peer's oldest idle one is dropped.
    MAX_PER_PEER = 16
    # Connections waiting to be accepted. Short: a client queued behind a flood of connections
    # waits for all of them to be accepted; one that finds the queue full waits in connect() for
    # room and is woken as the server accepts. (Other users cannot connect at all.)
    BACKLOG = 256

    def __init__(self, prefix: str) -> None:
        # Here, not in the thread: the sweep's descriptors come and go before this server serves.
        with contextlib.suppress(OSError):
            _sockdir.sweep()  # directories of this user's servers that were killed
        self.address, self._path = _sockdir.make(prefix)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, _Client] = {}
        # The same connections by peer pid, oldest first (dicts keep insertion order).
        self._by_peer: dict[int, dict[socket.socket, None]] = {}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(self._path)
            self._sock.listen(self.BACKLOG)
        except BaseException:
            self._sock.close()
            _sockdir.remove(self._path)
            raise
        # multiprocessing's exit step runs its finalizers in the main process (atexit) and in a
        # pool's forked workers too, which leave through os._exit and skip atexit.
        Finalize(None, self._remove_path, exitpriority=0)
        self._sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        # Wakes the loop so that it stops before a fork (pause()); resume() starts it again.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pausing = False
        self._name = prefix
        # Started by resume() (``_perprocess``), not here: a thread that cannot start must
        # not leave a half-made server behind a RuntimeError.
        self._thread: threading.Thread | None = None

    def answer(self, line: bytes, fds: list[int]) -> tuple[bytes, int | None]:
        """Reply (one byte) and a descriptor to send with it, for one request *line*.

        *fds* are the descriptors that came with it: remove the ones kept, the
        rest are closed afterwards. A descriptor returned is closed once sent.
        """
        raise NotImplementedError

    def _remove_path(self) -> None:
        # Only the process that made it: a forked child inherits this handler with the object.
        if os.getpid() == self._pid:
            _sockdir.remove(self._path)

    # -- stopping across fork ----------------------------------------------
    def pause(self) -> None:
        """Stop the serving thread and wait until it is gone (before a fork; see ``_perprocess``).

        A fork copies only the forking thread: the child must not inherit a
        lock this thread holds, and Python 3.12+ warns about forking a
        multi-threaded process. Clients meanwhile wait in the listen backlog.
        """
        thread = self._thread
        if thread is None or thread is threading.current_thread() or not thread.is_alive():
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
        """Start serving: the first time, or again after `pause`.

        RuntimeError if no thread can start now (the interpreter is finalizing,
        or the process is out of threads): the caller tries again later.
        """
        self._pausing = False
        thread = self._thread
        if thread is not None and thread.is_alive():
            return  # it did not stop within pause()'s wait: it serves on
        thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        thread.start()
        self._thread = thread

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
        # Requests that have arrived first: making room for new connections must not drop them.
        accept = False
        for key, _ in events:
            sock = key.fileobj
            if sock == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
                return True  # pause(): the loop checks the flag
            assert isinstance(sock, socket.socket)
            if sock is self._sock:
                accept = True
            else:
                self._read(sock)
        if accept and not self._accept():
            return False
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
                pid, uid = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            if uid != os.geteuid():
                # Refused before reading a byte; one byte into an empty buffer cannot block.
                with contextlib.suppress(OSError):
                    conn.send(self.REFUSED)
                conn.close()
                continue
            self._make_room(pid)
            self._clients[conn] = _Client(time.monotonic() + self.TIMEOUT, pid)
            self._by_peer.setdefault(pid, {})[conn] = None
            try:
                self._selector.register(conn, selectors.EVENT_READ)
            except (OSError, ValueError):
                self._drop(conn)
        return True

    def _make_room(self, pid: int) -> None:
        """Room for one more connection of peer *pid*: drop idle ones of the peer holding the most.

        A flooding process hits its own cap (`MAX_PER_PEER`) and loses its
        own oldest idle connections; honest clients of other processes keep
        theirs. A connection whose request has come is answered, never dropped.
        """
        while True:
            mine = self._by_peer.get(pid)
            if mine is not None and len(mine) >= self.MAX_PER_PEER:
                victims = list(mine)
            elif len(self._clients) >= self.MAX_CLIENTS:
                biggest = max(self._by_peer, key=lambda peer: len(self._by_peer[peer]))
                victims = list(self._by_peer[biggest])
            else:
                return
            self._drop_idle(victims)

    def _drop_idle(self, victims: list[socket.socket]) -> None:
        """Free one of *victims* (oldest first): drop one that has sent nothing, else one with a partial line.

        A victim whose request turns out to have come meanwhile is answered
        (which frees it too). A legitimate client sends its line whole, so
        one holding part of a line goes only when none has sent nothing.
        """
        for conn in victims:
            client = self._clients.get(conn)
            if client is None or client.data:
                continue
            if self._has_input(conn):
                self._read(conn)  # its request has come: answered (or refused) now, which frees it
                if conn in self._clients and not self._clients[conn].data:
                    self._drop(conn)  # nothing came after all (a spurious wake-up)
            else:
                self._drop(conn)
            if conn not in self._clients:
                return
        for conn in victims:
            if conn in self._clients:
                self._drop(conn)
                return

    @staticmethod
    def _has_input(conn: socket.socket) -> bool:
        try:
            conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # reading it will tell (and drop it)
        return True  # data, or the end of the stream

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
                self._reply(conn, self.NO_ROOM if self.MAX_FDS and not client.fds else self.BAD, None)
                return
            if not data:
                self._drop(conn)
                return
            client.data += data
            end = client.data.find(b"\n")
            if end < 0:
                # A descriptor comes with its line, in one message: one sent ahead of the line's
                # end would be held for a while, and many connections could hoard them.
                if len(client.data) > self.MAX_LINE or client.fds:
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
        if client is not None:
            peer = self._by_peer.get(client.pid)
            if peer is not None:
                peer.pop(conn, None)
                if not peer:
                    del self._by_peer[client.pid]
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
        self._by_peer = {}
        with contextlib.suppress(OSError):
            self._selector.close()
        with contextlib.suppress(OSError):
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# How long one connect() waits in the kernel for room in a full backlog (woken as the server accepts).
_CONNECT_WAIT = 0.25


def request(address: str, line: bytes, fd: int | None, timeout: float) -> tuple[bytes, list[int]]:
    """Send one request *line* (and *fd*) to the nocopy server at *address*; its reply and fds.

    The server's directory must be this user's private one and the listener
    of this uid and the pid the address names, or ForeignListenerError is
    raised before anything is sent. A full backlog (another process flooding
    connect), a server out of descriptors (``BUSY``) or a connection dropped
    or reset before its answer is retried with backoff until *timeout*; then
    TimeoutError. Any other OSError (no listener: ECONNREFUSED) is raised as it is.
    """
    deadline = time.monotonic() + timeout
    path = socket_path(address)
    expected_pid = int(address.rsplit("-", 2)[-2])
    delay = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A blocking connect() with a send timeout waits in the kernel's queue for room in a
            # full backlog (and is woken as the server accepts) instead of failing at once.
            wait = max(min(_CONNECT_WAIT, deadline - time.monotonic()), 0.001)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(wait), int(wait % 1 * 1e6))
            )
            try:
                sock.connect(path)
            except (BlockingIOError, InterruptedError):
                reply, fds = BUSY, list[int]()  # backlog full
            else:
                pid, uid = peer_credentials(sock)
                if uid != os.geteuid() or pid != expected_pid:
                    raise ForeignListenerError(address, pid, uid)
                reply, fds = _exchange(sock, line, fd, deadline)
        finally:
            sock.close()
        # No reply at all: dropped unanswered (deadline, or an idle connection of a full
        # server): asking again is safe, a request is idempotent.
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
    try:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    except (BrokenPipeError, ConnectionResetError):
        return b"", []  # dropped before its line was read: the caller asks again
    return msg[:1], fds
