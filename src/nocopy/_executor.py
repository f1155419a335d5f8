"""A drop-in ``concurrent.futures.ProcessPoolExecutor`` that shares big arguments and results.

How a task travels (parent -> worker -> parent):

* ``submit`` walks the arguments (top level and inside list/tuple/dict). Every
  NumPy array, pandas or Arrow object of at least ``share_threshold`` bytes is
  shared once per executor (cached by identity while the object lives) and
  replaced by a small marker holding its :class:`~nocopy.Shared` handle.
* The callable and the marked arguments are pickled as one payload inside a
  ``_Call``. The worker unpickles that payload inside the task, so an argument
  that fails to unpickle fails that task only (the stdlib would lose the
  worker and break the pool), and turns every marker into a private
  copy-on-write view (``Shared.get(private=True)``): the task may mutate it
  like a pickled copy, the caller never sees it.
* Big results are shared by the worker, whose descriptor is handed to the
  parent over a UNIX socket (SCM_RIGHTS) *before* the task returns: the parent
  holds the memory, so a worker that exits (or is killed) right after
  returning loses nothing, and a worker killed earlier leaves nothing behind
  (memfd dies with it; posix files of dead workers are reclaimed).
* Each task writes (task id, pid, state) into a small shared table, so when a
  worker dies the caller's :class:`~nocopy.errors.WorkerCrashedError` names
  the exit code or signal *and* the task it was running.
* The table and the shared arguments belong to the pool's manager thread, not
  to the executor object: like the stdlib's, an executor collected with work
  pending (no ``with``, no ``shutdown()``) finishes that work, and the thread
  frees the segments when it exits.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import io
import itertools
import os
import pickle
import re
import secrets
import select
import signal
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import ProcessPoolExecutor as _StdProcessPoolExecutor
from concurrent.futures.process import (
    BrokenProcessPool,
    _ExecutorManagerThread,
    _process_chunk,
    _threads_wakeups,
)
from multiprocessing.connection import wait as _wait_sentinels
from multiprocessing.context import BaseContext
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal, ParamSpec, TypeVar, cast

import numpy as np

from ._ipc import _unixserver
from ._ipc._perprocess import PerProcess
from ._ipc._unixserver import UnixServer
from ._shared import Shared, share, zeros
from ._store import Locator, OwnedSegment, shm_dir
from ._store._names import memfd_link, process_start_time
from .errors import (
    NocopyError,
    SegmentNotFoundError,
    TaskUnpicklingError,
    UnsupportedTypeError,
    WorkerCrashedError,
)

__all__ = ["DEFAULT_SHARE_THRESHOLD", "ProcessPoolExecutor"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_SHARE_THRESHOLD = 1 << 20
# Rows of the crash-attribution table; a task is attributed while fewer than
# this many later tasks have started meanwhile.
_RING = 4096
_STARTED, _FINISHED = 1, 2
_ATOMIC = (type(None), bool, int, float, complex, str, bytes)
_MAX_DEPTH = 4
# Python 3.14 added map(buffersize=) and terminate_workers()/kill_workers(): used where they exist.
_STDLIB_HAS_BUFFERSIZE = "buffersize" in inspect.signature(_StdProcessPoolExecutor.map).parameters
_STDLIB_HAS_TERMINATE_WORKERS = hasattr(_StdProcessPoolExecutor, "terminate_workers")


# ---------------------------------------------------------------------------
# what gets shared
# ---------------------------------------------------------------------------
def _data_nbytes(value: Any) -> int | None:
    """Bytes of a shareable data object, or None if *value* is not one."""
    t = type(value)
    if t is np.ndarray or t is np.recarray or t is np.memmap:  # share() takes all three
        return None if value.dtype.hasobject else int(value.nbytes)
    module = t.__module__ or ""
    if module.startswith("pandas"):
        name = t.__name__
        try:
            if name == "DataFrame":
                return int(value.memory_usage(index=True, deep=False).sum())
            if name == "Series":
                return int(value.memory_usage(index=True, deep=False))
            if name.endswith("Index"):
                return int(value.memory_usage(deep=False))
        except (TypeError, ValueError, AttributeError):
            return None
        return None
    if module.startswith("pyarrow") and (t.__name__ in ("Table", "RecordBatch") or t.__name__.endswith("Array")):
        nbytes = getattr(value, "nbytes", None)
        return int(nbytes) if isinstance(nbytes, int) else None
    return None


def _converted_columns(value: Any) -> tuple[tuple[int, Any], ...]:
    """(position, dtype) of the columns share() converts (object of str, string[python]).

    get() returns those as Arrow-backed strings; the executor turns them back,
    so a task (or the caller, for results) sees the dtype a pickled copy has.
    Position -1 stands for a Series' own values.
    """
    t = type(value)
    if not (t.__module__ or "").startswith("pandas") or t.__name__ not in ("DataFrame", "Series"):
        return ()

    def converted(dt: Any) -> bool:
        return (isinstance(dt, np.dtype) and dt.kind == "O") or (type(dt).__name__ == "StringDtype" and dt.storage == "python")

    if t.__name__ == "Series":
        return ((-1, value.dtype),) if converted(value.dtype) else ()
    return tuple((i, dt) for i, dt in enumerate(value.dtypes) if converted(dt))


def _restore_columns(value: Any, columns: tuple[tuple[int, Any], ...]) -> Any:
    for position, dtype in columns:
        if position < 0:
            return value.astype(dtype)
        value.isetitem(position, value.iloc[:, position].astype(dtype))
    return value


def _preload_in_forkserver(ctx: BaseContext | None) -> None:
    """Have a forkserver that is not running yet import numpy and nocopy once.

    Every worker it forks then starts with both imported: starting 4 workers
    takes tens of milliseconds instead of a second (each would import them).
    The user's own preload list (``__main__`` by default) is kept.
    """
    import multiprocessing
    from multiprocessing import forkserver

    method = (ctx or multiprocessing.get_context()).get_start_method()
    server = getattr(forkserver, "_forkserver", None)
    if method != "forkserver" or server is None or getattr(server, "_forkserver_pid", 1) is not None:
        return
    preload = list(getattr(server, "_preload_modules", ["__main__"]))
    missing = [m for m in ("numpy", "nocopy") if m not in preload]
    if missing:
        forkserver.set_forkserver_preload(preload + missing)


class _AutoArg:
    """Marks an auto-shared argument: the worker gets ``shared.get(private=True)``."""

    __slots__ = ("columns", "shared")

    def __init__(self, shared: Shared[Any], columns: tuple[tuple[int, Any], ...] = ()) -> None:
        self.shared = shared
        self.columns = columns

    def __reduce__(self) -> tuple[Any, ...]:
        return (_AutoArg, (self.shared, self.columns))


class _ShareCache:
    """Per-executor: data object (by identity, while it lives) -> its Shared, or None if unshareable."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, Shared[Any] | None]] = {}
        # Reentrant: a garbage collection during share() may run _forget here.
        self._lock = threading.RLock()
        self._warned = False

    def cached(self, value: Any) -> tuple[bool, Shared[Any] | None]:
        """(known?, its Shared or None): a repeat argument skips even measuring its size."""
        with self._lock:
            entry = self._entries.get(id(value))
        if entry is not None:
            ref, shared = entry
            held = ref() if isinstance(ref, weakref.ref) else ref
            if held is value:
                return True, shared
        return False, None

    def lookup(self, value: Any) -> Shared[Any] | None:
        key = id(value)
        with self._lock:
            known, shared = self.cached(value)
            if known:
                return shared
            shared = self._share(value)
            try:
                ref = weakref.ref(value, functools.partial(self._forget, key))
            except TypeError:
                ref = value  # not weak-referenceable: keep it (and its id) until shutdown
            self._entries[key] = (ref, shared)
            return shared

    def _share(self, value: Any) -> Shared[Any] | None:
        try:
            return share(value)
        except (UnsupportedTypeError, ImportError):
            return None  # not zero-copy shareable: it travels pickled, as with the stdlib
        except MemoryError as exc:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"nocopy.ProcessPoolExecutor: no room to share a {type(value).__name__} "
                    f"argument, it is pickled instead ({exc})",
                    RuntimeWarning,
                    stacklevel=5,
                )
            return None

    def _forget(self, key: int, ref: Any) -> None:
        # The object died: drop the cache's hold. Tasks still in flight keep
        # their own reference to the Shared, so its segment lives until they end.
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

    def clear(self, *, close: bool) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        if close:
            for _, shared in entries:
                if shared is not None:
                    shared.close()


# ---------------------------------------------------------------------------
# results: worker -> parent, handed over before the task returns
# ---------------------------------------------------------------------------
# "<executor tag> <result key>" with one descriptor: fixed format, checked before use.
_HANDOVER = re.compile(rb"^([0-9a-f]{16}) ([0-9a-f]{32})$")
_HAND_OVER_TIMEOUT = 60.0


class _Inbox(UnixServer):
    """Receives result segments' descriptors from workers (SCM_RIGHTS), one per process.

    Only results for the tags of this process's live executors are taken (a
    descriptor sent with any other tag is closed at once), so nothing but a
    worker of ours can make the inbox hold a descriptor; an executor's
    unclaimed results are closed when it releases its resources.
    """

    REFUSED = b"N"

    def __init__(self) -> None:
        self._fds: dict[str, tuple[int, str]] = {}
        self._tags: set[str] = set()
        super().__init__("nocopy-res")

    def open_tag(self, tag: str) -> str:
        """Take results for executor *tag* from now until ``drop(tag)``; the address to send them to."""
        with self._lock:
            self._tags.add(tag)
        return self.address

    def answer(self, line: bytes, fds: list[int]) -> tuple[bytes, int | None]:
        match = _HANDOVER.match(line)
        if match is None or len(fds) != 1:
            return self.BAD, None
        tag, key = match.group(1).decode("ascii"), match.group(2).decode("ascii")
        with self._lock:
            if tag not in self._tags:
                return b"N", None
            # A repeat is our worker again after losing the reply: keep the newer descriptor.
            old = self._fds.pop(key, None)
            self._fds[key] = (fds.pop(), tag)
        if old is not None:
            os.close(old[0])
        return b"K", None

    def claim(self, key: str) -> int | None:
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


_inbox: PerProcess[_Inbox] = PerProcess(_Inbox)


def _get_inbox() -> _Inbox:
    return _inbox.get()


def _hand_over(address: str, tag: str, key: str, fd: int) -> None:
    """Worker side: give the parent its own descriptor of a result segment; wait until it has it.

    The listener must be the parent itself (its uid and the pid in the
    address): when the parent has died, anyone may have bound its address.
    """
    try:
        ack, fds = _unixserver.request(address, f"{tag} {key}".encode("ascii"), fd, _HAND_OVER_TIMEOUT)
    except _unixserver.ForeignListenerError as exc:
        raise SegmentNotFoundError(
            f"refused to hand a result back: the parent's socket is held by pid {exc.pid} of uid "
            f"{exc.uid}, not by the parent. The parent has exited; nothing was sent."
        ) from None
    except OSError as exc:
        raise SegmentNotFoundError(
            f"cannot hand a result back to the parent process ({exc}): it has exited or "
            "stopped listening. Fix: keep the executor open until its futures are done."
        ) from None
    for extra in fds:
        os.close(extra)
    if ack != b"K":
        raise SegmentNotFoundError(f"the parent refused a result segment ({ack!r})")


def _claim_result(
    address: str, key: str, store: str, name: str, token: bytes, size: int, nbytes: int, kind: str,
    columns: tuple[tuple[int, Any], ...] = (),
) -> Any:
    """Parent side (runs while the reply is unpickled): a private view of a worker's result."""
    inbox = _inbox.peek()
    fd = inbox.claim(key) if inbox is not None and inbox.address == address else None
    if fd is None:
        raise SegmentNotFoundError(
            f"the {kind} result segment {name} was not handed over to this process "
            "(was the executor shut down while the task ran?)"
        )
    seg = OwnedSegment(Locator(store, name, os.getpid(), fd, ""), fd, size, None)
    handle: Shared[Any] = Shared(
        seg.locator, token=token, size=size, nbytes=nbytes, kind=kind, owner=seg
    )
    try:
        # Copy-on-write, like a result that was pickled: the caller may write to it.
        return _restore_columns(handle.get(private=True), columns)
    finally:
        handle.close()


class _ResultRef:
    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_claim_result, self.args)


def _share_result(value: Any, threshold: int, address: str, tag: str) -> Any:
    """Worker side: big data leaves of a result go through shared memory."""
    t = type(value)
    if t in _ATOMIC:
        return value
    return _walk_result(value, threshold, address, tag, 0)


def _walk_result(value: Any, threshold: int, address: str, tag: str, depth: int) -> Any:
    t = type(value)
    if t in _ATOMIC:
        return value
    if depth < _MAX_DEPTH and (t is list or t is tuple):
        items = [_walk_result(v, threshold, address, tag, depth + 1) for v in value]
        return items if t is list else tuple(items)
    if depth < _MAX_DEPTH and t is dict:
        return {k: _walk_result(v, threshold, address, tag, depth + 1) for k, v in value.items()}
    nbytes = _data_nbytes(value)
    if nbytes is None or nbytes < threshold:
        return value
    try:
        handle = share(value)
    except (UnsupportedTypeError, ImportError, MemoryError):
        return value
    try:
        owner = handle._owner
        assert owner is not None
        key = secrets.token_hex(16)
        _hand_over(address, tag, key, owner.fd)
        loc = handle._locator
        return _ResultRef(
            address, key, loc.store, loc.name, handle._token, handle.size, handle.nbytes, handle.kind,
            _converted_columns(value),
        )
    finally:
        handle.close()


class _Reply:
    """What a task sends back: its result pickled by the worker (big leaves as _ResultRef)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Reply, (self.data,))


# ---------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------
_table: np.ndarray | None = None
_table_handle: Shared[np.ndarray] | None = None
# Explicit Shared arguments keep their read-only mapping warm across tasks
# (no remap, no re-faulting pages); dropped once their owner closes them.
_WARM_MAX = 8
_warm: OrderedDict[tuple[str, bytes], Shared[Any]] = OrderedDict()
_warm_lock = threading.Lock()
_reaper: threading.Thread | None = None


def _caller() -> tuple[int, int]:
    """(pid, start time) of this process: identifies it for good, even once its pid is reused."""
    pid = os.getpid()
    return pid, process_start_time(pid) or 0


def _caller_gone(pid: int, start: int) -> bool:
    now = process_start_time(pid)
    if now is not None:
        return bool(start) and now != start
    try:  # /proc hidden (hidepid): only existence can be told
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def _watch_caller(pid: int, start: int) -> None:
    """Worker: exit as soon as the caller is gone.

    Nobody can use an orphan's work, and its next hand-over would go to
    whoever binds the caller's vanished socket name. A pidfd makes this a
    thread blocked in poll; without one (old kernel, seccomp) it polls the
    caller's start time each second. getppid() would not do: a forkserver's
    workers are not the caller's children.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):
        pidfd = -1
    # Opened by pid: make sure it is still our caller and not a process that got its pid since.
    if _caller_gone(pid, start):
        os._exit(1)
    if pidfd >= 0:
        poller = select.poll()  # not select(): a forked worker's fd numbers may pass FD_SETSIZE
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
        os._exit(1)
    while not _caller_gone(pid, start):
        time.sleep(1.0)
    os._exit(1)


def _worker_init(
    table: Shared[np.ndarray], initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
    caller: tuple[int, int] | None = None,
) -> None:
    global _table, _table_handle, _reaper
    # Ctrl-C goes to the whole foreground process group: the caller handles it
    # (cancels, stops the workers); workers must not die mid-queue-operation.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if caller is not None:
        threading.Thread(target=_watch_caller, args=caller, name="nocopy-caller-watch", daemon=True).start()
    _table_handle = table
    _table = table.get()
    with _warm_lock:
        _warm.clear()
    _reaper = None
    if initializer is not None:
        initializer(*initargs)


def _segment_alive(handle: Shared[Any]) -> bool:
    loc = handle._locator
    if loc.store == "memfd":
        try:
            return os.readlink(f"/proc/{loc.pid}/fd/{loc.fd}") == memfd_link(loc.name)
        except OSError:
            return False
    return os.path.exists(os.path.join(shm_dir(), loc.name))


def _evict_dead() -> None:
    with _warm_lock:
        dead = [k for k, h in _warm.items() if not _segment_alive(h)]
        for k in dead:
            del _warm[k]


def _reap_forever() -> None:
    while True:
        time.sleep(1.0)
        _evict_dead()


def _keep_warm(handle: Shared[Any]) -> None:
    global _reaper
    key = (handle._locator.name, handle._token)
    with _warm_lock:
        if key in _warm:
            _warm.move_to_end(key)
            return
    try:
        handle._shared_base()
    except (NocopyError, OSError, ValueError):
        return  # the task itself will meet (and report) the problem if it uses the handle
    with _warm_lock:
        _warm[key] = handle
        while len(_warm) > _WARM_MAX:
            _warm.popitem(last=False)
        if _reaper is None:
            _reaper = threading.Thread(target=_reap_forever, name="nocopy-warm-reaper", daemon=True)
            _reaper.start()


def _unwrap(value: Any, depth: int) -> Any:
    t = type(value)
    if t is _AutoArg:
        return _restore_columns(value.shared.get(private=True), value.columns)
    if t is Shared:
        _keep_warm(value)
        return value
    if depth < _MAX_DEPTH and (t is list or t is tuple):
        items = [_unwrap(v, depth + 1) for v in value]
        return items if t is list else tuple(items)
    if depth < _MAX_DEPTH and t is dict:
        return {k: _unwrap(v, depth + 1) for k, v in value.items()}
    if depth < _MAX_DEPTH and t is functools.partial:
        return functools.partial(
            _unwrap(value.func, depth + 1), *_unwrap(value.args, depth + 1), **_unwrap(value.keywords, depth + 1)
        )
    return value


class _WorkerCall:
    """The callable the stdlib worker runs: unpickle, unwrap, call, send big results back."""

    __slots__ = ("address", "has_handles", "name", "payload", "tag", "task_id", "threshold")

    def __init__(
        self, payload: bytes, task_id: int, name: str, threshold: int, address: str, tag: str,
        has_handles: bool,
    ) -> None:
        self.payload = payload
        self.task_id = task_id
        self.name = name
        self.threshold = threshold
        self.address = address
        self.tag = tag
        self.has_handles = has_handles

    def __call__(self) -> _Reply:
        table = _table
        row = self.task_id % _RING
        if table is not None:
            table[row] = (self.task_id, os.getpid(), _STARTED)
        try:
            try:
                fn, args, kwargs = pickle.loads(self.payload)
            except Exception as exc:
                exc.add_note(
                    f"nocopy: while unpickling the arguments of task #{self.task_id} "
                    f"({self.name}) in worker pid {os.getpid()}"
                )
                raise
            except BaseException as exc:
                # Sent back as it is, a SystemExit would end the caller's program.
                raise _unpickling_stopped(
                    exc, f"the arguments of task #{self.task_id} ({self.name})", f"worker pid {os.getpid()}"
                ) from None
            if self.has_handles:
                if type(fn) is functools.partial:
                    fn = _unwrap(fn, 0)
                args = _unwrap(args, 0)
                kwargs = _unwrap(kwargs, 0)
            result = fn(*args, **kwargs)
            del args, kwargs
            result = _share_result(result, self.threshold, self.address, self.tag)
            try:
                data = ForkingPickler.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as exc:
                exc.add_note(
                    f"nocopy: while pickling the result of task #{self.task_id} ({self.name}), "
                    f"a {type(result).__qualname__}, to send it back to the caller"
                )
                raise
            return _Reply(bytes(data))
        finally:
            if table is not None:
                table[row, 2] = _FINISHED


def _unpickling_stopped(exc: BaseException, what: str, where: str) -> TaskUnpicklingError:
    return TaskUnpicklingError(
        f"{exc!r} was raised while unpickling {what} in {where}; it fails that task only and is "
        f"reported as this error, so that it cannot stop the caller's program. Fix: find why "
        f"unpickling that object raises {type(exc).__name__} (its __reduce__ or __setstate__), "
        "or pass it in a form that unpickles.",
        task=what,
        raised=type(exc).__name__,
    )


def _rebuild_worker_call(*args: Any) -> _WorkerCall:
    return _WorkerCall(*args)


# ---------------------------------------------------------------------------
# the parent side
# ---------------------------------------------------------------------------
def _fn_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        inner = fn.func
        if getattr(inner, "__name__", "") == "_process_chunk" and fn.args:
            return f"map({_fn_name(fn.args[0])})"
        return f"partial({_fn_name(inner)})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in ("builtins", "__main__") else str(name)


class _Call:
    """Parent side of one task; pickles (in the queue feeder thread) into a _WorkerCall."""

    __slots__ = ("address", "args", "fn", "has_handles", "kwargs", "name", "tag", "task_id", "threshold")

    def __init__(
        self, fn: Any, args: Any, kwargs: Any, task_id: int, threshold: int, address: str, tag: str,
        has_handles: bool, name: str | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.task_id = task_id
        self.threshold = threshold
        self.address = address
        self.tag = tag
        self.has_handles = has_handles

    def fn_name(self) -> str:
        return self.name if self.name is not None else _fn_name(self.fn)

    def __reduce__(self) -> tuple[Any, ...]:
        buf = io.BytesIO()
        try:
            ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump((self.fn, self.args, self.kwargs))
        except BaseException as exc:
            exc.add_note(
                f"nocopy: while pickling task #{self.task_id} ({self.fn_name()}) to send it to "
                "a worker. The function must be importable by the workers (defined at module "
                "level: not a lambda, closure or method of a local class) and every argument "
                "picklable or shareable."
            )
            raise
        return (
            _rebuild_worker_call,
            (buf.getvalue(), self.task_id, self.fn_name(), self.threshold, self.address,
             self.tag, self.has_handles),
        )


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _describe_exit(pid: int, code: int | None) -> str:
    if code is None:
        return f"worker pid {pid} stopped responding"
    if code < 0:
        name = _signal_name(code)
        why = ""
        if -code == signal.SIGKILL:
            why = " (killed from outside: often the kernel's OOM killer -- check memory limits and dmesg)"
        elif -code == signal.SIGSEGV:
            why = " (a segmentation fault in native code)"
        elif -code == signal.SIGBUS:
            why = " (a bus error: often a shared-memory file that ran out of room)"
        return f"worker pid {pid} was killed by {name}{why}"
    return f"worker pid {pid} exited with code {code}"


class _TaskFuture(Future[Any]):
    """The future the caller gets: mirrors the stdlib's, with results opened and crashes named."""

    def __init__(self, pool: _PoolResources, call: _Call, label: str | None) -> None:
        super().__init__()
        # The pool's resources, not the executor: a future outlives a collected
        # executor and must still name the worker that died under its task.
        self._pool = pool
        self._call: _Call | None = call
        self._task_id = call.task_id
        self._label = label
        self._inner: Future[Any] | None = None

    def _attach(self, inner: Future[Any]) -> None:
        self._inner = inner
        inner.add_done_callback(self._inner_done)

    def label(self) -> str:
        if self._label is not None:
            return self._label
        call = self._call
        return f"task #{self._task_id} ({call.fn_name() if call is not None else '?'})"

    def cancel(self) -> bool:
        inner = self._inner
        if inner is not None and inner.cancel():
            return True
        return self.cancelled()

    def running(self) -> bool:
        inner = self._inner
        return bool(inner is not None and inner.running() and not self.done())

    def _inner_done(self, inner: Future[Any]) -> None:
        if self.done():
            return
        try:
            if inner.cancelled():
                if Future.cancel(self):
                    self.set_running_or_notify_cancel()
                return
            exc = inner.exception()
            if exc is not None:
                self.set_exception(self._translate(exc))
                return
            reply = inner.result()
            try:
                value = pickle.loads(reply.data) if type(reply) is _Reply else reply
            except Exception as err:
                err.add_note(f"nocopy: while unpickling the result of {self.label()} in the caller")
                self.set_exception(err)
                return
            except BaseException as err:
                # result() would raise it in the caller: a SystemExit would end its program.
                wrapped = _unpickling_stopped(err, f"the result of {self.label()}", "the caller")
                wrapped.__cause__ = err
                self.set_exception(wrapped)
                return
            self.set_result(value)
        except BaseException as err:  # pragma: no cover - a callback must never leave it pending
            if not self.done():
                self.set_exception(err)
        finally:
            self._call = None

    def _translate(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, BrokenProcessPool) or isinstance(exc, WorkerCrashedError):
            return exc
        if self._pool.aborting:
            err: BaseException = CancelledError(
                f"{self.label()} was stopped: the caller was interrupted and stopped the workers"
            )
        else:
            err = self._pool.crash_error(self._task_id, self.label())
        err.__cause__ = exc.__cause__ or exc
        return err


class _PoolResources:
    """What an executor's workers, manager thread and futures need, for as long as they need it.

    The standard library lets an executor be collected with work pending (no
    ``with``, no ``shutdown()``): its manager thread holds only a weak reference
    to the executor, finishes the pending work, stops the workers and exits.
    Workers started meanwhile open the task table, and queued tasks map their
    shared arguments, so those segments cannot belong to the executor object.
    They belong here: the manager thread (and every future, to name crashes)
    holds this, and it is freed when that thread exits -- or when
    ``shutdown(wait=True)`` has waited for it, or at once if no task was ever
    submitted.
    """

    def __init__(self) -> None:
        self.tag = secrets.token_hex(8)
        self.cache = _ShareCache()
        self.task_table: Shared[np.ndarray] = zeros((_RING, 3), "i8")
        # The executor's pid -> process dict, which the stdlib drops at shutdown:
        # crash reports still need to know which processes there were.
        self.procs: MutableMapping[int, Any] = {}
        self.aborting = False
        # Once a manager thread has started, it alone frees these, on its way out.
        self.managed = False
        self._table_view: np.ndarray | None = None
        self._crash: tuple[list[tuple[int, int | None]], dict[int, int]] | None = None
        self._crash_lock = threading.Lock()
        # The manager thread, shutdown() and an abort may all release at once.
        self._release_lock = threading.Lock()
        self._released = False

    def table(self) -> np.ndarray | None:
        """The crash-attribution table as the workers write it, or None once it is freed."""
        if self._table_view is None:
            with contextlib.suppress(NocopyError, OSError):
                self._table_view = self.task_table.get()
        return self._table_view

    def crash_info(self) -> tuple[list[tuple[int, int | None]], dict[int, int]]:
        """(dead workers as (pid, exit code), task id -> pid that was running it)."""
        with self._crash_lock:
            if self._crash is not None:
                return self._crash
            dead: list[tuple[int, int | None]] = []
            for pid, proc in list(self.procs.items()):
                code = proc.exitcode
                if code is None and _wait_sentinels([proc.sentinel], 0):
                    proc.join(2.0)  # its pipe closed a moment before it became reapable
                    code = proc.exitcode
                if code is not None:
                    dead.append((pid, code))
            running: dict[int, int] = {}
            table = self.table()
            if table is not None and dead:
                for pid, _ in dead:
                    rows = table[(table[:, 1] == pid) & (table[:, 2] == _STARTED)]
                    if len(rows):
                        running[int(rows[:, 0].max())] = pid
            self._crash = (dead, running)
            return self._crash

    def crash_error(self, task_id: int | None, label: str | None) -> WorkerCrashedError:
        """The error for task *task_id* (None: for the pool) of a pool whose worker died."""
        dead, running = self.crash_info()
        exitcode = dead[0][1] if dead else None
        if not dead:
            what = "a worker process terminated abruptly"
        else:
            what = "; ".join(_describe_exit(pid, code) for pid, code in dead)
        culprit = [tid for tid, pid in running.items()]
        crashed_task: str | None = None
        if task_id is not None and task_id in running:
            pid = running[task_id]
            exitcode = dict(dead).get(pid, exitcode)
            crashed_task = label
            msg = f"{_describe_exit(pid, exitcode)} while running {label}"
        elif task_id is not None:
            where = (
                f" (it was running task{'s' if len(culprit) > 1 else ''} "
                f"#{', #'.join(map(str, sorted(culprit)))})" if culprit else ""
            )
            msg = f"{label} was lost: {what}{where}, which broke the pool"
            crashed_task = None
        else:
            msg = f"the pool is broken: {what}"
        msg += (
            ". The data and the caller are fine; this executor cannot run tasks any more. "
            "Fix: start a new executor (and find out why the worker died)."
        )
        return WorkerCrashedError(msg, exitcode=exitcode, task=crashed_task)

    def release(self, *, reclaim: bool) -> None:
        """Free the segments; idempotent. *reclaim*: a worker died, sweep posix orphans too."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
        if reclaim:
            self.crash_info()  # while the table and the processes are here: later reports reuse it
        # Futures hold this object long after: not the workers' Process objects (and their fds).
        self.procs = {}
        self.cache.clear(close=True)
        self._table_view = None
        self.task_table.close()
        inbox = _inbox.peek()
        if inbox is not None:
            inbox.drop(self.tag)
        if reclaim:
            _reclaim_posix()


class _ManagerThread(_ExecutorManagerThread):
    """The stdlib's executor manager thread, also keeping the pool's resources until it exits.

    It holds the executor only weakly and outlives it while work is pending,
    exactly as the stdlib's does; the segments that work needs live as long as
    this thread, not as long as the executor object.
    """

    def __init__(self, executor: ProcessPoolExecutor, resources: _PoolResources) -> None:
        super().__init__(executor)
        self.resources = resources
        self.broke = False

    def terminate_broken(self, cause: Any) -> None:
        self.broke = True
        super().terminate_broken(cause)

    def run(self) -> None:
        try:
            super().run()
        finally:
            # Every future is settled by now (results are claimed in its done
            # callbacks, which run in this thread) and every worker is joined.
            self.resources.release(reclaim=self.broke)


class ProcessPoolExecutor(_StdProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` that hands big data over shared memory.

    Same constructor and behaviour as the standard library's, plus
    ``share_threshold`` (bytes, default 1 MiB): NumPy arrays, pandas and Arrow
    objects at least that big -- passed directly or inside a list, tuple or
    dict -- are copied into shared memory once per executor (cached by
    identity while the object lives) and every task gets a private
    copy-on-write view: it may read and even modify its argument exactly as
    if it had been pickled, and the caller's object never changes. Results
    that big come back through shared memory too. ``nocopy.Shared`` arguments
    arrive as they are (call ``.get()`` in the task).

    An argument is taken as it is at its first ``submit``: modifying the same
    object in place afterwards is not seen by later tasks (pass a new object,
    or share it yourself and pass the ``Shared``).

    A worker that dies raises :class:`~nocopy.errors.WorkerCrashedError` (a
    ``BrokenProcessPool``) naming the exit code or signal and the task.
    Ctrl-C inside ``with`` stops the workers at once and frees every segment.
    Workers ignore SIGINT: the caller handles it.

    Example::

        >>> import numpy as np, nocopy
        >>> big = np.ones(1_000_000)                         # 8 MB: shared, not pickled
        >>> with nocopy.ProcessPoolExecutor(2) as ex:        # doctest: +SKIP
        ...     list(ex.map(np.sum, [big] * 4))
        [np.float64(1000000.0), np.float64(1000000.0), np.float64(1000000.0), np.float64(1000000.0)]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        share_threshold: int = DEFAULT_SHARE_THRESHOLD,
    ) -> None:
        if isinstance(share_threshold, bool) or not isinstance(share_threshold, int) or share_threshold < 0:
            raise ValueError(f"share_threshold must be a number of bytes >= 0, not {share_threshold!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._share_threshold = share_threshold
        self._task_ids = itertools.count(1)
        self._resources = _PoolResources()
        _preload_in_forkserver(mp_context)
        try:
            super().__init__(
                max_workers,
                mp_context,
                _worker_init,
                (self._resources.task_table, initializer, tuple(initargs), _caller()),
                max_tasks_per_child=max_tasks_per_child,
            )
        except BaseException:
            self._resources.release(reclaim=False)
            raise
        self._resources.procs = self._processes
        self._procs: MutableMapping[int, Any] = self._processes

    @property
    def share_threshold(self) -> int:
        """Arguments and results of at least this many bytes go through shared memory."""
        return self._share_threshold

    # -- submitting -----------------------------------------------------
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Like the stdlib's ``submit``; big data arguments are shared once, not pickled.

        Example::

            >>> fut = ex.submit(np.sum, big)     # doctest: +SKIP
            >>> fut.result()                     # doctest: +SKIP
        """
        return self._submit(None, fn, args, kwargs)

    def _submit(
        self, label: str | None, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
        name: str | None = None,
    ) -> Future[Any]:
        if self._broken:
            raise self._resources.crash_error(None, None)
        found = [False]
        args2 = self._prepare(args, 0, found) if args else args
        kwargs2 = self._prepare(kwargs, 0, found) if kwargs else kwargs
        # Data bound into a partial (ex.map(partial(f, big), items)) is shared too.
        fn2 = self._prepare(fn, 0, found) if type(fn) is functools.partial else fn
        call = _Call(
            fn2, args2, kwargs2, next(self._task_ids), self._share_threshold,
            _get_inbox().open_tag(self._resources.tag), self._resources.tag, found[0], name,
        )
        future = _TaskFuture(self._resources, call, label)
        try:
            inner: Future[Any] = super().submit(cast(Callable[[], Any], call))
        except BrokenProcessPool:
            raise self._resources.crash_error(None, None) from None
        future._attach(inner)
        return future

    def _prepare(self, value: Any, depth: int, found: list[bool]) -> Any:
        t = type(value)
        if t in _ATOMIC:
            return value
        if t is Shared:
            found[0] = True
            return value
        if depth < _MAX_DEPTH and (t is list or t is tuple):
            items = [self._prepare(v, depth + 1, found) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items if t is list else tuple(items)
        if depth < _MAX_DEPTH and t is dict:
            new = {k: self._prepare(v, depth + 1, found) for k, v in value.items()}
            if all(new[k] is v for k, v in value.items()):
                return value
            return new
        if depth < _MAX_DEPTH and t is functools.partial:
            func = self._prepare(value.func, depth + 1, found)
            pargs = self._prepare(value.args, depth + 1, found)
            pkw = self._prepare(value.keywords, depth + 1, found)
            if func is value.func and pargs is value.args and pkw is value.keywords:
                return value
            return functools.partial(func, *pargs, **pkw)
        known, shared = self._resources.cache.cached(value)
        if not known:
            nbytes = _data_nbytes(value)
            if nbytes is None or nbytes < self._share_threshold:
                return value
            shared = self._resources.cache.lookup(value)
        if shared is None:
            return value
        found[0] = True
        return _AutoArg(shared, _converted_columns(value))

    # -- Python 3.14's API on every Python ----------------------------------
    def map(
        self, fn: Callable[..., R], *iterables: Any, timeout: float | None = None, chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        """Like the stdlib's ``map``, with Python 3.14's ``buffersize`` on every Python.

        ``buffersize=N`` (an int >= 1) reads the iterables lazily and keeps at
        most N tasks (chunks of ``chunksize`` items) submitted and not yet
        yielded, so an endless or huge input never piles up as pending tasks.

        Example::

            >>> it = ex.map(np.sum, frames_from_disk(), buffersize=4)   # doctest: +SKIP
            >>> next(it)                                                 # doctest: +SKIP
        """
        if buffersize is not None and (
            isinstance(buffersize, bool) or not isinstance(buffersize, int) or buffersize < 1
        ):
            raise ValueError(f"buffersize must be None or an int >= 1, not {buffersize!r}")
        if buffersize is None:
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        if _STDLIB_HAS_BUFFERSIZE:
            std: Any = super()
            return cast(Iterator[R], std.map(fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize))
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        items = zip(*iterables, strict=False)
        chunks = iter(lambda: tuple(itertools.islice(items, chunksize)), ())
        call = functools.partial(_process_chunk, fn)
        deadline = None if timeout is None else time.monotonic() + timeout
        # The first tasks go in now, as with the stdlib's map: before the first next().
        in_flight = collections.deque(self.submit(call, chunk) for chunk in itertools.islice(chunks, buffersize))
        return self._buffered(in_flight, chunks, call, deadline)

    def _buffered(
        self, in_flight: collections.deque[Future[Any]], chunks: Iterator[tuple[Any, ...]],
        call: Callable[..., Any], deadline: float | None,
    ) -> Iterator[Any]:
        # Holds the executor (self), unlike 3.14's map: an executor collected
        # mid-way would otherwise end the results early without a word.
        try:
            while in_flight:
                oldest = in_flight.popleft()
                try:
                    results = oldest.result(None if deadline is None else deadline - time.monotonic())
                finally:
                    del oldest
                # Only now the next task: at most buffersize are ever in flight.
                chunk = next(chunks, None)
                if chunk is not None:
                    in_flight.append(self.submit(call, chunk))
                yield from results
                del results
        finally:
            for future in in_flight:
                future.cancel()

    if not _STDLIB_HAS_TERMINATE_WORKERS:

        def terminate_workers(self) -> None:
            """Python 3.14's: shut down without waiting and send SIGTERM to every worker still alive.

            Pending tasks are cancelled; running ones fail with
            :class:`~nocopy.errors.WorkerCrashedError` naming the signal. The pool
            is broken afterwards; its segments are freed once its manager thread
            has reaped the workers.

            Example::

                >>> ex.terminate_workers()   # doctest: +SKIP
            """
            self._signal_workers(kill=False)

        def kill_workers(self) -> None:
            """Python 3.14's: like :meth:`terminate_workers`, with SIGKILL.

            Example::

                >>> ex.kill_workers()   # doctest: +SKIP
            """
            self._signal_workers(kill=True)

    def _signal_workers(self, *, kill: bool) -> None:
        # shutdown() drops the executor's process dict: take it first. Not
        # waiting: a worker that ignores the signal must not hang the caller.
        processes = list((self._processes or {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            with contextlib.suppress(ProcessLookupError, ValueError):  # it ended meanwhile
                if p.is_alive():
                    if kill:
                        p.kill()
                    else:
                        p.terminate()

    # -- the manager thread ---------------------------------------------
    def _start_executor_manager_thread(self) -> None:
        # The stdlib's, starting a manager thread that also owns this pool's
        # resources (see _PoolResources). typeshed types the attribute as a
        # _ThreadWakeup; it holds the thread.
        std: Any = self
        if std._executor_manager_thread is None:
            # fork: all workers before any thread (3.11.2+; before, workers came with each submit)
            if not getattr(std, "_safe_to_dynamically_spawn_children", True):
                std._launch_processes()
            thread = _ManagerThread(self, self._resources)
            self._resources.managed = True
            std._executor_manager_thread = thread
            thread.start()
            _threads_wakeups[thread] = self._executor_manager_thread_wakeup

    # -- shutting down --------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Like the stdlib's; also frees the segments of the shared arguments.

        Example::

            >>> ex.shutdown()       # doctest: +SKIP
        """
        broken = bool(self._broken)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if not self._resources.managed:
            self._resources.release(reclaim=broken)  # no task ever: nobody else will
        elif not wait:
            # The manager thread frees the segments when it exits, after the
            # tasks still queued (with wait=True it has exited by now, unless
            # an earlier shutdown(wait=False) let it go on: then it still
            # frees them, and this does not wait, as the stdlib does not).
            # Meanwhile each shared argument goes with the last task using it.
            self._resources.cache.clear(close=False)

    def _abort(self) -> None:
        """Stop at once (Ctrl-C): cancel pending tasks, stop the workers, free everything."""
        self._resources.aborting = True
        procs = list(self._procs.values())
        manager: Any = getattr(self, "_executor_manager_thread", None)
        with contextlib.suppress(Exception):
            super().shutdown(wait=False, cancel_futures=True)
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        if manager is not None:
            manager.join(10)
        self._resources.release(reclaim=True)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._abort()
            return False
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            self._abort()
            raise
        return False


def _reclaim_posix() -> None:
    """Remove posix segments of workers that died mid-result (dead owner, nobody holds them)."""
    from ._store import _orphans

    with contextlib.suppress(OSError):
        _orphans.reclaim(shm_dir())

