"""How a pool's workers start: the default start method, the shared forkserver, and what is refused.

Every nocopy pool starts its workers from multiprocessing's forkserver unless
the caller passes a context (what Python 3.14 made the standard library's
default on Linux; spawn on macOS and Windows, as there). Forking a process
that runs threads copies only the calling thread: a library whose thread
pool was running in the caller (Polars' is the common case) waits for ever in
the child. The forkserver is a fresh interpreter that only imports modules,
so its forks are safe, and with the modules preloaded each worker starts warm:

* ``nocopy`` and ``numpy`` always, plus the heavy libraries the caller has
  imported by the time the server starts (`HEAVY_MODULES`): importing them
  starts no compute thread pool (Polars' starts at its first parallel call).
  Only those the server finds in the same files as the caller: it imports
  from its own default path, so one the caller found on a directory it added
  at run time would be another copy (`_found_alike_in_server`).
* never ``__main__`` (multiprocessing's default preload): its top-level code
  would run in the server, and a Polars call there would start the very pool
  that hangs every worker forked from it. Workers import the main module
  themselves, as spawned ones do.
* the numerical libraries' thread variables set to 1 in the server's
  environment, so that its BLAS starts no threads; each worker then gets its
  pool's share (``_worker.worker_init``).

There is one forkserver per process (multiprocessing's), shared by every pool
and by the caller's own forkserver contexts. Its preload list is fixed when it
starts: a library imported later is imported by each worker that needs it,
as a spawned worker would. Restarting the server to add it would break the
pools already running (their workers' exit codes come through the server).

Fork, when asked for, is refused while Polars' thread pool runs
(`check_fork`), and nocopy's own server threads stop across every fork
(``_ipc._perprocess``). A worker that would start a pool while importing the
main module (no ``if __name__ == "__main__":``) exits with
`EXIT_UNGUARDED_MAIN` (`check_not_bootstrapping`), which the caller turns into
`nocopy.errors.StartMethodError` (``_crash``).
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from multiprocessing import forkserver, spawn, util
from multiprocessing.context import BaseContext
from typing import Any

from ..errors import StartMethodError
from ._threads import THREAD_VARS, spawn_environment

__all__ = [
    "ALWAYS_PRELOADED", "EXIT_UNGUARDED_MAIN", "HEAVY_MODULES", "check_fork", "check_not_bootstrapping",
    "default_context", "ensure_forkserver", "pool_context", "unguarded_main_error", "worker_starting",
]

ALWAYS_PRELOADED = ("nocopy", "numpy")
# Preloaded when the caller has imported them: each takes 0.1-1 s to import in every worker.
HEAVY_MODULES = ("pandas", "pyarrow", "polars", "scipy", "sklearn", "torch")
# sysexits' EX_CONFIG: a worker that found its main module starting a pool while it was imported.
EXIT_UNGUARDED_MAIN = 78
# Polars' compute threads ("polars-0", "polars-1", ...), not its spill cleaner ("polars-ooc-clea...").
_POLARS_POOL_THREAD = re.compile(r"^polars-\d+$")

_server_lock = threading.Lock()


def default_context() -> BaseContext:
    """The start method of every nocopy pool not given one: forkserver where it exists, else spawn.

    Examples
    --------
    >>> default_context().get_start_method()   # doctest: +SKIP
    'forkserver'
    """
    if sys.platform != "darwin" and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def pool_context(ctx: BaseContext | None, what: str) -> BaseContext:
    """The context a new pool (named *what* in errors) uses: *ctx*, else the default; checked and warmed.

    Refuses (`nocopy.errors.StartMethodError`) what cannot work: fork while
    Polars' thread pool runs. Starts the forkserver now, so it imports its
    modules while the caller goes on. In a worker still importing its main
    module, ends that worker (see `check_not_bootstrapping`).
    """
    check_not_bootstrapping(what)
    ctx = ctx if ctx is not None else default_context()
    worker_starting(ctx, what)
    return ctx


def worker_starting(ctx: Any, what: str) -> None:
    """Before *ctx* starts a worker: refuse an unsafe fork, make sure the forkserver runs preloaded."""
    method = ctx.get_start_method(allow_none=False)
    if method == "fork":
        check_fork(what)
    elif method == "forkserver":
        ensure_forkserver()


# -- the forkserver ------------------------------------------------------------------
def ensure_forkserver() -> None:
    """Start multiprocessing's forkserver with nocopy's preload, unless it runs already.

    The caller's own preload list (``multiprocessing.set_forkserver_preload``)
    is kept, less ``__main__``.
    """
    server: Any = getattr(forkserver, "_forkserver", None)
    if server is None:  # pragma: no cover - every CPython has it
        return
    with _server_lock:
        if getattr(server, "_forkserver_pid", None) is not None:
            return  # running (or died: multiprocessing restarts it with the list set below)
        preload = [m for m in getattr(server, "_preload_modules", ()) if m != "__main__"]
        wanted = [m for m in (*ALWAYS_PRELOADED, *HEAVY_MODULES) if m in sys.modules and m not in preload]
        preload += _found_alike_in_server(wanted)
        forkserver.set_forkserver_preload(preload)
        # The server's BLAS starts no threads; workers set their own share (worker_init).
        with spawn_environment(dict.fromkeys(THREAD_VARS, "1")):
            forkserver.ensure_running()


def _found_alike_in_server(names: list[str]) -> list[str]:
    """The modules of *names* that the server would import from the same files as this process.

    The server is a new interpreter: it imports from its own default path
    (multiprocessing does not pass it ours), so a module this process found
    on a directory it added at run time (``sys.path.insert``), or another
    copy, would be a different module there -- and every worker would run it.
    One bare interpreter, started with the server's flags, tells (~20 ms, once
    per process); a module it finds elsewhere is not preloaded (each worker
    imports ours, as a spawned worker would).
    """
    ours = {}
    for name in names:
        origin = getattr(getattr(sys.modules.get(name), "__spec__", None), "origin", None)
        if origin:
            ours[name] = os.path.realpath(origin)
    if not ours:
        return []
    probe = "import importlib.util as u, sys; print([getattr(u.find_spec(m), 'origin', None) for m in sys.argv[1:]])"
    exe = spawn.get_executable()
    flags: list[str] = getattr(util, "_args_from_interpreter_flags")()  # noqa: B009 - the server's own flags (untyped)
    try:
        out = subprocess.run(
            [exe, *flags, "-c", probe, *ours],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        theirs = ast.literal_eval(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, SyntaxError, IndexError):
        return []
    return [
        name for name, origin in zip(ours, theirs, strict=False)
        if isinstance(origin, str) and os.path.realpath(origin) == ours[name]
    ]


# -- fork ----------------------------------------------------------------------------
def _thread_names() -> list[str]:
    names: list[str] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:  # pragma: no cover - not Linux
        return names
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue  # the thread ended meanwhile
    return names


def polars_pool_running() -> bool:
    """Whether Polars' thread pool has started in this process (its threads are named polars-N)."""
    if "polars" not in sys.modules:
        return False
    return any(_POLARS_POOL_THREAD.match(name) for name in _thread_names())


def check_fork(what: str) -> None:
    """Refuse to fork *what*'s workers while Polars' thread pool runs here: they would hang."""
    if polars_pool_running():
        raise StartMethodError(
            f"refusing to fork the workers of {what}: Polars' thread pool is running in this process "
            "(threads polars-0, polars-1, ...), and fork copies only the calling thread: a forked worker "
            "would wait for ever in its first Polars call that uses the pool. Fix: use the default start "
            "method (forkserver: pass no mp_context) or mp_context=multiprocessing.get_context('spawn'), "
            "or start the fork pool before any Polars work."
        )


# -- a main module without `if __name__ == "__main__":` ----------------------------------
def _bootstrapping() -> bool:
    # multiprocessing sets it while a spawned or forkserver child imports the main module.
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def check_not_bootstrapping(what: str) -> None:
    """In a worker still importing the caller's main module: say why on stderr and exit.

    That import runs the module's top-level code; when it starts a pool, the
    module lacks ``if __name__ == "__main__":`` and every worker would do the
    same. The worker exits with `EXIT_UNGUARDED_MAIN` (an exception would be
    reported as a plain crash); the caller's pool raises
    `nocopy.errors.StartMethodError` naming the fix.
    """
    if not _bootstrapping():
        return
    try:
        sys.stderr.write(
            f"nocopy: {what} was started while this worker process (pid {os.getpid()}) was importing "
            "the main module: it lacks `if __name__ == \"__main__\":`. The worker stops; the caller "
            "gets StartMethodError.\n"
        )
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    os._exit(EXIT_UNGUARDED_MAIN)


def unguarded_main_error(pid: int) -> StartMethodError:
    """The caller's error for worker *pid*, which exited with `EXIT_UNGUARDED_MAIN`."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or getattr(getattr(main, "__spec__", None), "name", None)
    where = f" ({path})" if path else ""
    return StartMethodError(
        f"worker pid {pid} could not start: it imports the main module{where} again, as forkserver and "
        "spawn workers do, and the module's top-level code starts a nocopy pool there too. Fix: put "
        "the code that starts pools (and everything else the script does) under "
        "`if __name__ == \"__main__\":`, keeping only imports and function definitions at the top level."
    )
