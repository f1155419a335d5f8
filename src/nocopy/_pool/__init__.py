"""The pools: drop-ins for ``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing.Pool``
that share big arguments and results.

How a task travels (caller -> worker -> caller), module by module:

* ``_executor``: ``submit`` has ``_task.prepare`` walk the arguments
  (``_walk``: top level and inside list/tuple/dict/partial). Every NumPy,
  pandas, Arrow or Polars object of at least ``share_threshold`` bytes is shared once per executor
  (``_cache``: by identity while the object lives) and replaced by a small
  marker holding its `nocopy.Shared` handle.
* ``_task``: the callable and the marked arguments are pickled as one payload;
  the worker unpickles it inside the task, so an argument that fails to
  unpickle fails that task only, and turns every marker into a private
  copy-on-write view (``Shared.get(private=True)``): the task may mutate it
  like a pickled copy, the caller never sees it.
* ``_results``: big results are shared by the worker, whose descriptor is
  handed to the caller over a UNIX socket (SCM_RIGHTS) *before* the task
  returns, so a worker that dies afterwards loses nothing.
* ``_crash``: each task writes (task id, pid, state) into a small shared
  table, so when a worker dies the caller's
  `nocopy.errors.WorkerCrashedError` names the exit code or signal
  *and* the task (``_future`` builds the caller's future around this).
* ``_worker``: what runs in each worker besides tasks (SIGINT ignored, exit
  when the caller is gone, warm mappings of explicit ``Shared`` arguments).
* ``_resources``: the table and the shared arguments belong to the pool's
  manager thread, not to the executor object: like the stdlib's, an executor
  collected with work pending finishes that work, and the thread frees the
  segments when it exits.

``_mppool`` builds `Pool` (``multiprocessing.Pool``'s drop-in) from the
same pieces: its tasks are made by the same ``_task.prepare``, its results
come back through ``_results``, its workers start with ``_worker``.

``_start`` decides how workers start: from a forkserver preloaded with
nocopy, numpy and the caller's heavy libraries unless the caller passes a
context; a fork is refused while Polars' thread pool runs; a main module
that starts a pool at import time gets ``StartMethodError``.

Besides the executor, the layer offers `submit_labelled`, `start_workers`, `abort`
and `usable` (what ``parallel_map`` needs beyond the stdlib's methods),
`default_context` and `fn_name`.
"""

from ._executor import (
    DEFAULT_SHARE_THRESHOLD,
    ProcessPoolExecutor,
    abort,
    start_workers,
    submit_labelled,
    usable,
)
from ._mppool import Pool
from ._start import default_context
from ._task import fn_name

__all__ = [
    "DEFAULT_SHARE_THRESHOLD", "Pool", "ProcessPoolExecutor", "abort", "default_context", "fn_name", "start_workers",
    "submit_labelled", "usable",
]
