"""Results, worker -> caller: each big result segment is handed over before the task returns.

The worker shares a big result leaf and sends its descriptor, with the
handle's URI, to the caller's `Inbox` over a UNIX socket
(SCM_RIGHTS), and waits until the caller has it. So the caller holds the
memory before the task's reply is even sent: a worker that exits (or is
killed) right after returning loses nothing, and a worker killed earlier
leaves nothing behind (memfd dies with it; posix files of dead workers are
reclaimed). When the reply is unpickled in the caller, each `ResultRef`
claims its descriptor and becomes a private view; whatever the reply did
not claim (its unpickling failed, or the worker failed after handing some
leaves over) is closed at once, not kept until the executor ends.

The caller's inbox holds at most a quarter of its descriptor limit (see
`Inbox.MAX_HELD_SHARE`): beyond it, or when the caller is out of
descriptors, it answers "by value" and the worker pickles the rest of that
result into its reply instead, so a result with many big leaves never
exhausts the caller's descriptors nor waits for them.

This is the pool's one door to the socket servers (``UnixServer``,
``request``, ``PerProcess``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import resource
from typing import Any

from .. import _kinds
from .._ipc import _unixserver
from .._ipc._perprocess import PerProcess
from .._shared import Shared, adopt, owner_fd
from ..errors import SegmentNotFoundError

__all__ = ["Inbox", "Reply", "ResultRef", "Sender", "drop_tag", "get_inbox", "hand_over", "release"]

# "<executor tag> <result key>" with one descriptor: fixed format, checked before use.
_HANDOVER = re.compile(rb"^([0-9a-f]{16}) ([0-9a-f]{32})$")
_HAND_OVER_TIMEOUT = 60.0
# Taking back what a failed task handed over is a courtesy (the executor's end closes it anyway).
_WITHDRAW_TIMEOUT = 5.0
# The inbox's answer when it takes no descriptor now: send that result by value.
BY_VALUE = b"V"


class Inbox(_unixserver.UnixServer):
    """Receives result segments' descriptors from workers (SCM_RIGHTS), one per process.

    Only results for the tags of this process's live executors are taken (a
    descriptor sent with any other tag is closed at once), so nothing but a
    worker of ours can make the inbox hold a descriptor; an executor's
    unclaimed results are closed when it releases its resources. A line with
    a live tag and no descriptor withdraws that key (a worker whose task
    failed after handing it over).
    """

    REFUSED = b"N"
    # Out of descriptors: the worker sends that result by value instead of waiting.
    NO_ROOM = BY_VALUE
    # Descriptors held for results not yet claimed: at most this share of RLIMIT_NOFILE.
    MAX_HELD_SHARE = 4
    MIN_HELD = 8

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, str]] = {}
        self._tags: set[str] = set()
        super().__init__("nocopy-res")

    def open_tag(self, tag: str) -> str:
        """Take results for executor *tag* from now until ``drop(tag)``; the address to send them to."""
        if tag in self._tags:  # every task of the executor asks: only the first one needs the lock
            return self.address
        with self._lock:
            self._tags.add(tag)
        return self.address

    def max_held(self) -> int:
        """How many handed-over descriptors may wait to be claimed (the caller needs the rest)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return max(self.MIN_HELD, soft // self.MAX_HELD_SHARE)

    def answer(self, line: bytes, fds: list[int]) -> tuple[bytes, int | None]:
        match = _HANDOVER.match(line)
        if match is None or len(fds) > 1:
            return self.BAD, None
        tag, key = match.group(1).decode("ascii"), match.group(2).decode("ascii")
        limit = self.max_held() if fds else 0
        with self._lock:
            if tag not in self._tags:
                return b"N", None
            # A repeat is our worker again after losing the reply: keep the newer descriptor.
            old = self._fds.pop(key, None)
            if fds:
                if len(self._fds) >= limit:
                    reply = BY_VALUE
                else:
                    self._fds[key] = (fds.pop(), tag)
                    reply = b"K"
            else:
                reply = b"K"  # withdrawn
        if old is not None:
            os.close(old[0])
        return reply, None

    def claim(self, key: str) -> int | None:
        """The descriptor handed over under *key*, now the caller's to close (None: never came)."""
        with self._lock:
            entry = self._fds.pop(key, None)
        return None if entry is None else entry[0]

    def drop(self, tag: str) -> None:
        """Stop taking results for *tag*; close those it will never claim (its workers died)."""
        with self._lock:
            self._tags.discard(tag)
            keys = [k for k, (_, t) in self._fds.items() if t == tag]
            fds = [self._fds.pop(k)[0] for k in keys]
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_in_child(self) -> None:
        super().close_in_child()
        for fd, _ in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._tags.clear()


_inbox: PerProcess[Inbox] = PerProcess(Inbox)


def get_inbox() -> Inbox:
    """This process's inbox, started on first use."""
    return _inbox.get()


def drop_tag(tag: str) -> None:
    """Executor *tag* is done: its results are no longer taken (a no-op if no inbox was started)."""
    inbox = _inbox.peek()
    if inbox is not None:
        inbox.drop(tag)


def release(keys: tuple[str, ...]) -> None:
    """Caller side: close what was handed over under *keys* and not claimed (a no-op for claimed keys)."""
    inbox = _inbox.peek()
    if inbox is None:
        return
    for key in keys:
        fd = inbox.claim(key)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def hand_over(address: str, tag: str, key: str, fd: int) -> bool:
    """Worker side: give the parent its own descriptor of a result segment; wait until it has it.

    False: the parent takes no descriptor now (it holds its share of them,
    or is out of them): send the result by value. The listener must be the
    parent itself (its uid and the pid in the address).
    """
    try:
        ack, fds = _unixserver.request(address, f"{tag} {key}".encode("ascii"), fd, _HAND_OVER_TIMEOUT)
    except _unixserver.ForeignListenerError as exc:
        raise SegmentNotFoundError(
            f"refused to hand a result back: the parent's socket is held by {exc.holder}, not by "
            "the parent. The parent has exited; nothing was sent. Fix: keep the executor open "
            "until its futures are done."
        ) from None
    except TimeoutError:
        raise SegmentNotFoundError(
            f"the parent process did not take a result segment within {_HAND_OVER_TIMEOUT:g} s: its "
            "result inbox stayed busy (flooded with connections by a process of this user, or the "
            "parent could not accept one). Fix: find what floods the parent's sockets, or what "
            "holds all its file descriptors (`ulimit -n`)."
        ) from None
    except OSError as exc:
        raise SegmentNotFoundError(
            f"cannot hand a result back to the parent process ({exc}): it has exited or "
            "stopped listening. Fix: keep the executor open until its futures are done."
        ) from None
    for extra in fds:
        os.close(extra)
    if ack == BY_VALUE:
        return False
    if ack != b"K":
        raise SegmentNotFoundError(
            f"the parent refused a result segment ({ack!r:.40}). "
            "Fix: use the same nocopy version in the workers and the parent."
        )
    return True


def claim_result(
    address: str, key: str, uri: str, kind: str, name: str, columns: _kinds.Converted = ()
) -> Any:
    """Parent side (runs while the reply is unpickled): a private view of a worker's result.

    *uri* is the worker's handle's; *kind* and *name* only name it in errors.
    """
    inbox = _inbox.peek()
    fd = inbox.claim(key) if inbox is not None and inbox.address == address else None
    if fd is None:
        raise SegmentNotFoundError(
            f"the {kind} result segment {name} was not handed over to this process "
            "(was the executor shut down while the task ran?). Fix: keep the executor open "
            "until its futures are done."
        )
    handle: Shared[Any] = adopt(fd, uri)
    try:
        # Copy-on-write, like a result that was pickled: the caller may write to it.
        return _kinds.restore_columns(handle.get(private=True), columns)
    finally:
        handle.close()


class ResultRef:
    """Stands for a result leaf handed over to the caller; unpickles into a private view there."""

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (claim_result, self.args)


class Sender:
    """Worker side, one per task: the ``send(handle, columns)`` of ``_walk.ResultSharer``.

    Hands each big leaf to the caller at *address* and remembers its key:
    the `Reply` names them all, so the caller closes what it does not claim,
    and `withdraw` takes them back if the task fails before replying.
    """

    __slots__ = ("address", "keys", "tag")

    def __init__(self, address: str, tag: str) -> None:
        self.address = address
        self.tag = tag
        self.keys: list[str] = []

    def __call__(self, handle: Shared[Any], columns: _kinds.Converted) -> ResultRef | None:
        """The leaf's marker; None when the caller takes no more descriptors (send it by value)."""
        key = os.urandom(16).hex()
        if not hand_over(self.address, self.tag, key, owner_fd(handle)):
            return None
        self.keys.append(key)
        return ResultRef(self.address, key, handle.uri, handle.kind, handle.name, columns)

    def withdraw(self) -> None:
        """The task fails after handing leaves over: have the caller close them now (best effort)."""
        for key in self.keys:
            with contextlib.suppress(OSError):
                _unixserver.request(self.address, f"{self.tag} {key}".encode("ascii"), None, _WITHDRAW_TIMEOUT)
        self.keys.clear()


class Reply:
    """What a task sends back: its result pickled by the worker (big leaves as ResultRef).

    *keys* name every leaf handed over for it: `load` closes those its
    unpickling did not claim.
    """

    __slots__ = ("data", "keys")

    def __init__(self, data: bytes, keys: tuple[str, ...] = ()) -> None:
        self.data = data
        self.keys = keys

    def __reduce__(self) -> tuple[Any, ...]:
        return (Reply, (self.data, self.keys))

    def load(self) -> Any:
        """Caller side: the result (every big leaf claimed as a private view); nothing kept if it fails."""
        try:
            return pickle.loads(self.data)
        finally:
            if self.keys:
                release(self.keys)
