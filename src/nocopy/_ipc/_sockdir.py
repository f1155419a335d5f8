"""Where a nocopy server's UNIX socket lives: a private directory of its own, one per server.

An abstract socket name is open to every user of the network namespace
(anyone may connect and fill its backlog). A pathname socket inside a
directory of mode 0700 is not: the kernel refuses another user's
``connect()`` (EACCES) before the server sees it. Each server makes a fresh
directory ``<base>/<address>`` (the address ends in 128 random bits, so
nobody can make it first) and binds ``s`` in it. A client finds the
directory from the address alone and connects only if it is a real
directory (not a symlink) of its own uid that no one else may enter;
``SO_PEERCRED`` is checked after that as well (``_unixserver``).

The directory is removed when the server's process exits normally. One
left by a process that was killed (or a forked worker, which leaves
through ``os._exit``) holds a socket nobody listens on: connecting to it is
refused, and `sweep` removes such directories of this user.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import time

__all__ = ["ADDRESS_RE", "BASES", "make", "path_of", "remove", "sweep"]

# Searched in this order by servers and clients alike (no environment variable: two processes of
# one user must agree whatever their environments say). /dev/shm: where /tmp is missing or read-only.
BASES = ("/tmp", "/dev/shm")
ADDRESS_RE = re.compile(r"^nocopy-[a-z]{3}-([0-9]{1,10})-[0-9a-f]{32}$")
_SOCKET = "s"
# sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
# A directory younger than this may belong to a server between mkdir() and listen().
_SWEEP_MIN_AGE = 60.0


class ForeignDirectoryError(PermissionError):
    """The address's directory exists but is not this user's private directory."""

    def __init__(self, path: str, uid: int) -> None:
        super().__init__(errno.EACCES, f"{path} is not a private directory of this user (owner uid {uid})")
        self.uid = uid


def make(prefix: str) -> tuple[str, str]:
    """A fresh private directory for a server: (address, socket path). OSError if no base will do."""
    error: OSError | None = None
    for base in BASES:
        address = f"{prefix}-{os.getpid()}-{os.urandom(16).hex()}"
        directory = os.path.join(base, address)
        path = os.path.join(directory, _SOCKET)
        if len(path.encode()) > _SUN_PATH_MAX:
            continue
        try:
            # 0700 at most (the umask can only take bits away); mkdir never follows or reuses a name.
            os.mkdir(directory, 0o700)
        except OSError as exc:
            error = exc
            continue
        return address, path
    raise error or OSError(errno.ENAMETOOLONG, f"no directory for a nocopy socket in {', '.join(BASES)}")


def path_of(address: str) -> str:
    """Client side: the socket path of *address*, after checking its directory is this user's own.

    ConnectionRefusedError if no server directory has that address (the
    server has exited), ForeignDirectoryError if the directory is someone
    else's or open to others.
    """
    if ADDRESS_RE.fullmatch(address) is None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"not a nocopy server address: {address!r}")
    for base in BASES:
        directory = os.path.join(base, address)
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ForeignDirectoryError(directory, st.st_uid)
        return os.path.join(directory, _SOCKET)
    # As connecting to a socket nobody listens on: the server has exited.
    raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))


def remove(path: str) -> None:
    """Remove a server's socket and its directory (the server is closed)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


def sweep() -> int:
    """Remove this user's server directories nobody listens in any more; how many were removed."""
    removed = 0
    for base in BASES:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            match = ADDRESS_RE.fullmatch(name)
            if match is None or _alive(int(match.group(1))):
                continue
            directory = os.path.join(base, name)
            if _stale(directory):
                remove(os.path.join(directory, _SOCKET))
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    # Only a shortcut: a pid of another pid namespace may be absent here and alive; _stale decides.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stale(directory: str) -> bool:
    """*directory* is this user's, old enough, and nobody listens on its socket."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return False
    if time.time() - st.st_mtime < _SWEEP_MIN_AGE:
        return False
    path = os.path.join(directory, _SOCKET)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return True  # a socket file with no listener, or none at all
        except OSError:
            return False  # EAGAIN (a full backlog: alive), or anything unclear
    return False
