"""SCM_RIGHTS fallback for handing a memfd to another process.

Opening /proc/<pid>/fd/<n> is the fast path (~4 us) but needs ptrace read
access, which hardened kernels and some container profiles refuse even to the
same user. Then the owner's fd server passes the descriptor over a UNIX
socket in a private directory (other users cannot connect). Each end also
checks the other with SO_PEERCRED: the server answers only its own uid, the
client asks only a listener of its uid and of the pid the address names.
"""

from __future__ import annotations

import os
import re

from ..errors import SegmentAccessError, SegmentNotFoundError
from . import _unixserver
from ._perprocess import PerProcess
from ._unixserver import UnixServer

__all__ = ["FdServer", "request_fd", "server"]

# A request is one line "<name> <token>": fixed format, checked before use (no parser to attack).
_REQUEST = re.compile(rb"^([A-Za-z0-9_.-]{1,128}) ([A-Za-z0-9]{1,128})$")
_TIMEOUT = 5.0


class FdServer(UnixServer):
    """Hands this process's memfds to same-user processes that know name and token."""

    MAX_FDS = 0

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, str]] = {}
        super().__init__("nocopy-fds")

    def register(self, name: str, fd: int, token: str) -> None:
        with self._lock:
            self._fds[name] = (fd, token)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._fds.pop(name, None)

    def answer(self, line: bytes, fds: list[int]) -> tuple[bytes, int | None]:
        match = _REQUEST.match(line)
        if match is None or fds:
            return self.BAD, None
        name, token = match.group(1).decode("ascii"), match.group(2).decode("ascii")
        import hmac  # here, not at the top: workers that never serve a descriptor skip importing it

        with self._lock:
            entry = self._fds.get(name)
            if entry is None or not hmac.compare_digest(entry[1], token):
                return b"N", None
            return b"K", os.dup(entry[0])


_server: PerProcess[FdServer] = PerProcess(FdServer)


def server() -> FdServer:
    """This process's fd server, started on first use."""
    return _server.get()


def request_fd(address: str, name: str, token: str) -> int:
    """Ask the owner's fd server for the memfd *name*; returns a new fd."""
    line = f"{name} {token}".encode("ascii", "replace")
    if _REQUEST.match(line) is None:
        raise SegmentNotFoundError(
            f"segment {name!r}: not a segment name and token nocopy makes. "
            "Fix: use the uri of a live Shared, as it was given."
        )
    try:
        msg, fds = _unixserver.request(address, line, None, _TIMEOUT)
    except _unixserver.ForeignListenerError as exc:
        if exc.pid is None and exc.uid != os.geteuid():
            raise SegmentAccessError(
                f"segment {name}: its owner's socket directory belongs to uid {exc.uid}, not to this "
                f"process's uid {os.geteuid()}; nothing was asked of it. Fix: attach from a process "
                "running as the owner's user."
            ) from None
        raise SegmentAccessError(
            f"segment {name}: its owner's socket is now held by {exc.holder}, "
            "not by the owner; nothing was asked of it. The owner has exited. Fix: keep the "
            "owner's Shared open while other processes attach."
        ) from None
    except TimeoutError:
        raise SegmentNotFoundError(
            f"segment {name}: its owner did not answer within {_TIMEOUT:g} s (it is stopped, "
            "or too busy to serve). Fix: keep the owner running and its Shared open while "
            "other processes attach."
        ) from None
    except OSError as exc:
        raise SegmentNotFoundError(
            f"segment {name}: its owner cannot be reached ({exc.strerror or exc}); the owner "
            "process has exited or closed it. Fix: keep the owner's Shared open while "
            "other processes attach."
        ) from None
    if msg == b"K" and fds:
        for extra in fds[1:]:
            os.close(extra)
        return fds[0]
    for fd in fds:
        os.close(fd)
    if msg == FdServer.REFUSED:
        raise SegmentAccessError(
            f"segment {name} belongs to another user (uid check by its owner refused uid "
            f"{os.geteuid()}). Fix: attach from a process running as the owner's user."
        )
    if msg == b"N":
        raise SegmentNotFoundError(
            f"segment {name} is closed or its token does not match. Fix: keep the owner's "
            "Shared open while other processes attach, and use its current uri."
        )
    raise SegmentNotFoundError(
        f"segment {name}: owner's fd server gave no descriptor ({msg!r:.40}). "
        "Fix: use the same nocopy version in the owner and here."
    )
