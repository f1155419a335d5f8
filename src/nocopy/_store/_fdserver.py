"""SCM_RIGHTS fallback for handing a memfd to another process.

Opening /proc/<pid>/fd/<n> is the fast path (~4 us) but needs ptrace read
access, which hardened kernels and some container profiles refuse even to the
same user. Then the owner's fd server passes the descriptor over an abstract
UNIX socket, after checking the peer's uid with SO_PEERCRED.
"""

from __future__ import annotations

import json
import os
import secrets
import socket

from ..errors import SegmentAccessError, SegmentNotFoundError
from ._perprocess import PerProcess
from ._unixserver import UnixServer

__all__ = ["FdServer", "request_fd", "server"]

_MAX_REQUEST = 4096


class FdServer(UnixServer):
    """Hands this process's memfds to same-user processes that know name and token."""

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, str]] = {}
        super().__init__("nocopy-fds")

    def register(self, name: str, fd: int, token: str) -> None:
        with self._lock:
            self._fds[name] = (fd, token)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._fds.pop(name, None)

    def answer(self, conn: socket.socket) -> None:
        data = b""
        while not data.endswith(b"\n") and len(data) < _MAX_REQUEST:
            chunk = conn.recv(_MAX_REQUEST)
            if not chunk:
                return
            data += chunk
        try:
            req = json.loads(data)
            name, token = str(req["name"]), str(req["token"])
        except (ValueError, KeyError, TypeError):
            conn.sendall(b"C")
            return
        with self._lock:
            entry = self._fds.get(name)
            dup = os.dup(entry[0]) if entry is not None and secrets.compare_digest(entry[1], token) else -1
        if dup < 0:
            conn.sendall(b"N")
            return
        try:
            socket.send_fds(conn, [b"K"], [dup])
        finally:
            os.close(dup)


_server: PerProcess[FdServer] = PerProcess(FdServer)


def server() -> FdServer:
    """This process's fd server, started on first use."""
    return _server.get()


def request_fd(address: str, name: str, token: str) -> int:
    """Ask the owner's fd server for the memfd *name*; returns a new fd."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        try:
            sock.connect("\0" + address)
        except OSError as exc:
            raise SegmentNotFoundError(
                f"segment {name}: its owner cannot be reached ({exc.strerror}); the owner "
                "process has exited or closed it. Fix: keep the owner's Shared open while "
                "other processes attach."
            ) from None
        try:
            sock.sendall(json.dumps({"name": name, "token": token}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # a refusing server answers and closes before reading: its answer is queued
        msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    except TimeoutError:
        raise SegmentNotFoundError(f"segment {name}: its owner did not answer within 5 s") from None
    except OSError as exc:
        raise SegmentNotFoundError(
            f"segment {name}: the owner's fd server failed ({exc.strerror}). Fix: keep the "
            "owner's Shared open while other processes attach."
        ) from None
    finally:
        sock.close()
    if msg == b"K" and fds:
        for extra in fds[1:]:
            os.close(extra)
        return fds[0]
    for fd in fds:
        os.close(fd)
    if msg == b"A":
        raise SegmentAccessError(
            f"segment {name} belongs to another user (uid check by its owner refused uid "
            f"{os.geteuid()}). Fix: attach from a process running as the owner's user."
        )
    if msg == b"N":
        raise SegmentNotFoundError(
            f"segment {name} is closed or its token does not match. Fix: keep the owner's "
            "Shared open while other processes attach, and use its current uri."
        )
    raise SegmentNotFoundError(f"segment {name}: owner's fd server gave no descriptor ({msg!r})")
