"""A daemon thread answering this user's processes on an abstract UNIX socket.

Both descriptor exchanges nocopy does between processes use one: the owner's
fd server (SCM_RIGHTS fallback for attach) and the executor's result inbox.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import threading

__all__ = ["UnixServer"]


class UnixServer:
    """Serve connections one at a time; peers of another uid get ``REFUSED``.

    Subclasses implement :meth:`answer`. The address is in the abstract
    namespace (nothing on disk to clean up) and unguessable.
    """

    REFUSED = b"A"
    TIMEOUT = 5.0

    def __init__(self, prefix: str) -> None:
        self.address = f"{prefix}-{os.getpid()}-{secrets.token_hex(16)}"
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind("\0" + self.address)
        self._sock.listen(64)
        self._thread = threading.Thread(target=self._serve, name=prefix, daemon=True)
        self._thread.start()

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ValueError):
                conn.settimeout(self.TIMEOUT)
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", creds)
                if uid != os.geteuid():
                    conn.sendall(self.REFUSED)
                else:
                    self.answer(conn)

    def close_in_child(self) -> None:
        # After fork the thread is gone; the inherited socket must not be served.
        with contextlib.suppress(OSError):
            self._sock.close()
