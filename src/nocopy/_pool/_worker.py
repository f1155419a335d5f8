"""The worker process's side of the pool: its start, its watch on the caller, warm handles, its exit.

``worker_init`` runs first in every worker (the stdlib's initializer slot):
it ignores SIGINT (the caller handles Ctrl-C), starts a thread that ends the
worker as soon as the caller is gone, opens the crash-attribution table, then
runs the user's initializer. Explicit ``Shared`` arguments keep their mapping
warm across tasks (`keep_warm`).
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from multiprocessing import util as mp_util
from multiprocessing.context import SpawnProcess
from typing import Any

import numpy as np

from .._process import process_start_time
from .._shared import Shared, is_alive, map_now
from ..errors import NocopyError
from ._results import restart_after_fork
from ._start import worker_starting
from ._threads import limit_loaded_libraries, spawn_environment

__all__ = ["caller", "keep_warm", "quick_exit_process", "run_then_exit", "task_table", "worker_init"]

_table: np.ndarray | None = None
# Whether this process is a fork (of the caller, or of the forkserver).
_forked = False


def _note_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)
_table_handle: Shared[np.ndarray] | None = None
# Explicit Shared arguments keep their read-only mapping warm across tasks
# (no remap, no re-faulting pages); dropped once their owner closes them.
_WARM_MAX = 8
_warm: OrderedDict[str, Shared[Any]] = OrderedDict()
_warm_lock = threading.Lock()
_reaper: threading.Thread | None = None


def task_table() -> np.ndarray | None:
    """The crash-attribution table in this worker (None outside a pool's worker)."""
    return _table


# -- the caller ------------------------------------------------------------------
def caller() -> tuple[int, int]:
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


def worker_init(
    table: Shared[np.ndarray], initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
    caller: tuple[int, int] | None = None, threads: dict[str, str] | None = None,
) -> None:
    """The first thing every worker runs: see the module docstring.

    *threads*: the numerical libraries' thread variables of a forkserver
    worker (a spawned one has them in its environment from the start).
    """
    global _table, _table_handle, _reaper
    if threads:
        _take_thread_share(threads)
    if _forked and caller is not None and os.getppid() == caller[0] and "torch" in sys.modules:
        # Forked from the caller itself: torch's intra-op threads (OpenMP) did not come along,
        # and the first parallel op would wait for them for ever. One thread, as
        # DataLoader's forked workers do. (A forkserver worker is a fork of the server, which
        # ran no parallel op: it keeps its share of threads.)
        sys.modules["torch"].set_num_threads(1)
    # Ctrl-C goes to the whole foreground process group: the caller handles it
    # (cancels, stops the workers); workers must not die mid-queue-operation.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if caller is not None:
        watch = threading.Thread(target=_watch_caller, args=caller, name="nocopy-caller-watch", daemon=True)
        try:
            watch.start()
        except RuntimeError:
            # No thread can start here (a fork child of a finalizing interpreter): work as the
            # standard library's workers do, which end when the caller's queues break.
            pass
    _table_handle = table
    _table = table.get()
    with _warm_lock:
        _warm.clear()
    _reaper = None
    # Before multiprocessing's exit joins this worker's own children: see _stop_nested_pools.
    mp_util.Finalize(None, _stop_nested_pools, exitpriority=_BEFORE_EVERY_FINALIZER)
    if initializer is not None:
        initializer(*initargs)


# Run first among multiprocessing's exit finalizers (they run highest priority first).
_BEFORE_EVERY_FINALIZER = 1 << 30


def _stop_nested_pools() -> None:
    """Worker exit: stop the pools a task left running here (joblib's loky executor...), first.

    A forked worker's exit (multiprocessing's ``_bootstrap``) joins every child
    process before the threading exit hooks run, and those hooks are what
    stops an executor left open (the stdlib's, and loky's reusable one, whose
    idle workers wait 300 s for work): the worker would wait for its pool's
    workers while they wait for work, forever. Run those hooks now, once.
    """
    hooks: list[Callable[[], object]] = getattr(threading, "_threading_atexits", [])
    pending = list(hooks)
    hooks.clear()
    for hook in reversed(pending):
        try:
            hook()
        except Exception as exc:  # one pool's failure must not keep the others running
            print(f"nocopy worker {os.getpid()}: stopping a pool at exit failed: {exc!r}", file=sys.stderr)


def _take_thread_share(threads: dict[str, str]) -> None:
    # The forkserver imported numpy (and the caller's heavy libraries) with these
    # variables at 1; a library the task imports reads the pool's share from the
    # environment, those loaded already are set to it (threadpoolctl).
    stale = any(os.environ.get(var) != value for var, value in threads.items())
    os.environ.update(threads)
    if stale:
        limit_loaded_libraries(int(next(iter(threads.values()))))


# -- warm handles ------------------------------------------------------------------
def _evict_dead() -> None:
    with _warm_lock:
        dead = [k for k, h in _warm.items() if not is_alive(h)]
        for k in dead:
            del _warm[k]


def _reap_forever() -> None:
    while True:
        time.sleep(1.0)
        _evict_dead()


def keep_warm(handle: Shared[Any]) -> None:
    """Map *handle*'s segment now and keep it mapped for the next tasks (the last few handles)."""
    global _reaper
    key = handle.uri
    with _warm_lock:
        if key in _warm:
            _warm.move_to_end(key)
            return
    try:
        map_now(handle)
    except (NocopyError, OSError, ValueError):
        return  # the task itself will meet (and report) the problem if it uses the handle
    with _warm_lock:
        _warm[key] = handle
        while len(_warm) > _WARM_MAX:
            _warm.popitem(last=False)
        if _reaper is None:
            reaper = threading.Thread(target=_reap_forever, name="nocopy-warm-reaper", daemon=True)
            try:
                reaper.start()
            except RuntimeError:
                return  # no thread can start now: handles are evicted by count only; tried again next time
            _reaper = reaper


# -- the exit ----------------------------------------------------------------------
def run_then_exit(target: Callable[..., object], *args: Any) -> None:
    """The worker process's main: the stdlib's worker loop, then a quick, complete exit.

    After a clean end of the loop (shutdown, or max_tasks_per_child), do what
    anyone could observe of an interpreter's exit -- wait for the task's
    non-daemon threads, run the atexit handlers (multiprocessing's
    finalizers, ``weakref.finalize``, coverage's) and flush the standard
    streams -- then leave with ``os._exit(0)``, skipping only the teardown of
    module globals: 15-20 ms of a worker's CPU that ``shutdown(wait=True)``
    would wait for, per worker. A loop that raises exits as usual.
    """
    target(*args)
    _stop_nested_pools()  # before joining threads: a pool's manager thread may wait for its workers
    me = threading.current_thread()
    for t in threading.enumerate():
        if t is not me and not t.daemon:
            t.join()
    # What Py_FinalizeEx runs first (CPython has no public name for it); the rest frees memory.
    atexit._run_exitfuncs()  # noqa: SLF001 - the interpreter's own exit step
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


class _SpawnProcess(SpawnProcess):
    """A spawned worker started with numerical libraries' thread limits in its environment."""

    def __init__(self, *args: Any, child_env: dict[str, str], **kwds: Any) -> None:
        super().__init__(*args, **kwds)
        self._child_env = child_env

    def start(self) -> None:
        with spawn_environment(self._child_env):
            super().start()


def _restarting_servers_after_start(process: Any) -> Any:
    """*process*, whose ``start()`` (a fork) restarts nocopy's servers once ``os.fork()`` has returned.

    Not in the after-fork hook: Python 3.13 counts threads after it, and would
    warn about every worker (``_results.restart_after_fork``).
    """
    start = process.start

    def start_then_serve() -> None:
        with restart_after_fork():
            start()

    process.start = start_then_serve
    return process


def quick_exit_process(
    ctx: Any, *args: Any, child_env: dict[str, str] | None = None, what: str = "Pool", **kwds: Any
) -> Any:
    """``ctx.Process(...)``, but a spawned worker ends through `run_then_exit`
    and starts with *child_env* added to its environment (see ``_threads``).

    Forked workers (fork, forkserver) already leave with ``os._exit`` and must
    not run the atexit handlers they inherited: they keep their target; and
    they inherit the libraries already loaded, so *child_env* would come too late
    (forkserver workers get it in ``worker_init``). A fork is refused while
    Polars' thread pool runs, and the forkserver is started preloaded
    (``_start``; *what* names the pool in errors).
    """
    worker_starting(ctx, what)
    method = ctx.get_start_method(allow_none=False)
    if method == "fork":
        return _restarting_servers_after_start(ctx.Process(*args, **kwds))
    if method != "spawn":
        return ctx.Process(*args, **kwds)
    if "target" in kwds:
        kwds["args"] = (kwds["target"], *kwds.get("args", ()))
        kwds["target"] = run_then_exit
    if child_env and ctx.Process is SpawnProcess:
        return _SpawnProcess(*args, child_env=child_env, **kwds)
    return ctx.Process(*args, **kwds)
