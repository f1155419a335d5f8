"""Ray integration: the same data, zero-copy on every node.

:func:`put` encodes an object with nocopy's codec into **one** uint8 buffer and
puts that buffer in Ray's object store; :func:`get` fetches it (Ray maps a
numpy buffer read-only, straight from the store) and rebuilds the object
over it, so every column is a view into the object store -- datetime64
columns, record arrays and strings included, which plain ``ray.get`` copies
into every task.

Example::

    >>> import numpy as np, ray, nocopy.ray
    >>> ref = nocopy.ray.put(np.arange(10))      # a nocopy.ray.Ref  # doctest: +SKIP
    >>> @ray.remote
    ... def total(ref):
    ...     return int(nocopy.ray.get(ref).sum())   # zero-copy view
    >>> ray.get(total.remote(ref))                 # doctest: +SKIP
    45

Why a wrapper (:class:`Ref`) and not the bare ``ObjectRef``: Ray resolves an
``ObjectRef`` passed as a top-level task argument into its value (here the
raw uint8 buffer), while a :class:`Ref` arrives as itself, tells what it
holds (``kind``, ``nbytes``) and keeps the object alive while any task
borrows it (Ray tracks the ``ObjectRef`` inside it). :func:`get` accepts a
:class:`Ref`, its ``object_ref``, or the already-resolved buffer.

Cost of a put: one temporary buffer. Ray's public API has no way to write
into an object-store buffer before it is sealed (``ray.put`` always copies
its argument in), so the layout is written into a private buffer (an
anonymous memfd filled with pwrite, on Linux) that Ray then copies once into
the store; the temporary is freed right after.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import numpy as np

# numpy 2 loads numpy.rec lazily; until it is in sys.modules, cloudpickle
# (which Ray uses for task results) pickles np.recarray *by value*, and a
# decoded record array returned from a task arrives as an impostor class.
import numpy.rec

try:
    import ray
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "nocopy.ray needs Ray, which is not installed. Fix: pip install 'nocopy[ray]'"
    ) from _exc

from ._codec import MAGIC, Plan, decode_buffer, plan
from ._kinds import kind_name, take_rows
from ._map import MapBackend
from ._shared import Shared
from .errors import SegmentCorruptError, WorkerCrashedError

__all__ = ["RayMapBackend", "Ref", "connect_or_start", "get", "put"]

T = TypeVar("T")

logger = logging.getLogger("nocopy.ray")
_init_lock = threading.Lock()


@dataclass(frozen=True)
class Ref(Generic[T]):
    """A nocopy layout in Ray's object store: pass it to tasks, read it with :func:`get`.

    Small to pickle (it carries the ``ObjectRef``, never the data). The data
    stays in the store while the driver holds the :class:`Ref` or any task
    still uses one (Ray's reference counting, borrowers included).

    Attributes: ``object_ref`` (the ``ray.ObjectRef`` of the uint8 buffer),
    ``kind`` (type name of the object), ``nbytes`` (data bytes), ``size``
    (bytes in the store, header included), ``pickled`` (whether parts were
    stored pickled because of ``allow_pickle=True``).

    Example::

        >>> ref = nocopy.ray.put(np.zeros(1000))   # doctest: +SKIP
        >>> ref.kind, ref.nbytes                   # doctest: +SKIP
        ('ndarray', 8000)
        >>> float(ref.get().sum())                 # doctest: +SKIP
        0.0
    """

    object_ref: ray.ObjectRef[Any]
    kind: str
    nbytes: int
    size: int
    pickled: bool = False

    def get(self, *, timeout: float | None = None) -> T:
        """Same as ``nocopy.ray.get(self)``.

        Example::

            >>> nocopy.ray.put({"a": np.arange(3)}).get()["a"]   # doctest: +SKIP
            array([0, 1, 2])
        """
        return get(self, timeout=timeout)

    def __repr__(self) -> str:
        return (
            f"<nocopy.ray.Ref {self.kind} {self.nbytes} bytes "
            f"object {self.object_ref.hex()}>"
        )


def connect_or_start(num_cpus: int | None = None, **init_kwargs: Any) -> str:
    """Make sure this process is connected to Ray; return how.

    * Ray already initialised (always so inside a task): nothing to do,
      returns ``"initialised"``.
    * ``RAY_ADDRESS`` set: connects to that cluster, returns ``"address"``
      (``num_cpus`` is ignored: the cluster has its own).
    * Otherwise: starts a local Ray instance with ``num_cpus`` CPUs (all
      cores if ``None``), dashboard and usage statistics off, logs a warning
      saying so, and returns ``"local"``. The instance lives until this
      process exits (or ``ray.shutdown()``), so later calls reuse it.

    ``init_kwargs`` go to ``ray.init`` when this call initialises Ray.

    Example::

        >>> nocopy.ray.connect_or_start(num_cpus=2)   # doctest: +SKIP
        'local'
    """
    with _init_lock:
        if ray.is_initialized():
            return "initialised"
        # Opt out unless the user opted in explicitly.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, **init_kwargs)
            logger.info("nocopy.ray: connected to the Ray cluster at RAY_ADDRESS=%s", address)
            return "address"
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        kwargs.update(init_kwargs)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
        cpus = num_cpus if num_cpus is not None else os.cpu_count()
        logger.warning(
            "nocopy.ray: no Ray cluster (RAY_ADDRESS is not set and Ray was not initialised): "
            "started a local Ray instance with %s CPUs. To use a cluster, set "
            "RAY_ADDRESS=<head-node>:6379 or call ray.init(...) first.",
            cpus,
        )
        return "local"


def put(obj: T, *, allow_pickle: bool = False) -> Ref[T]:
    """Encode *obj* once into Ray's object store; return a :class:`Ref` to it.

    Accepts everything :func:`nocopy.share` accepts (NumPy arrays of any
    fixed-width dtype, record arrays, pandas and Arrow data, dicts/lists/
    tuples of them). Unsupported data raises
    :class:`~nocopy.errors.UnsupportedTypeError` before anything is put,
    unless ``allow_pickle=True`` (those parts are then unpickled on every
    get). A :class:`nocopy.Shared` puts the object it holds. Starts or
    connects to Ray first if needed (see :func:`connect_or_start`). Works in
    the driver and inside tasks.

    Example::

        >>> ref = nocopy.ray.put(np.rec.fromarrays([np.arange(3)], names="a"))  # doctest: +SKIP
        >>> type(nocopy.ray.get(ref)).__name__                                    # doctest: +SKIP
        'recarray'
    """
    if isinstance(obj, Shared):
        obj = obj.get()  # a Shared lives in this machine's memory: put what it holds
    p = plan(obj, allow_pickle=allow_pickle)
    if not ray.is_initialized():
        connect_or_start()
    # ray.put copies the buffer's bytes into the store once (pickle protocol
    # 5, out of band); the temporary is gone when this function returns.
    with _temporary_layout(p) as mem:
        object_ref = ray.put(mem)
        del mem  # so the temporary can be unmapped on leaving the block
    return Ref(object_ref, kind_name(obj), p.nbytes, p.size, p.pickled)


@contextlib.contextmanager
def _temporary_layout(p: Plan) -> Iterator[np.ndarray]:
    """The encoded layout in a temporary uint8 buffer.

    On Linux, an anonymous memfd filled with pwrite: no page faults in this
    process (a first put of 0.5 GB measured 1.3 s with a fresh numpy buffer,
    0.5 s this way), and its memory is returned the moment it is closed.
    """
    if not hasattr(os, "memfd_create"):
        mem = np.empty(p.size, dtype=np.uint8)
        p.write_into(mem)
        yield mem
        return
    fd = os.memfd_create("nocopy-ray-put", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, p.size)
        p.write_to_fd(fd)
        mm = mmap.mmap(fd, p.size, prot=mmap.PROT_READ)
        try:
            yield np.frombuffer(mm, dtype=np.uint8)
        finally:
            try:
                mm.close()
            except BufferError:  # a view escaped: unmapped when it is collected
                pass
    finally:
        os.close(fd)


@overload
def get(ref: Ref[T], *, timeout: float | None = None) -> T: ...
@overload
def get(ref: ray.ObjectRef[Any] | np.ndarray, *, timeout: float | None = None) -> Any: ...
def get(ref: Any, *, timeout: float | None = None) -> Any:
    """Rebuild the object put by :func:`put`, every array a read-only view into the object store.

    *ref* is a :class:`Ref`, its ``object_ref``, or the uint8 buffer itself
    (what a task receives when an ``ObjectRef`` is passed as a top-level
    argument and Ray resolves it). Writes to the result raise numpy's
    "assignment destination is read-only". The views keep the object
    pinned in this node's store until they are dropped.

    Example::

        >>> recs = np.rec.fromarrays([np.arange(3).astype("M8[s]")], names="t")
        >>> @ray.remote                                   # doctest: +SKIP
        ... def first(ref):
        ...     return nocopy.ray.get(ref)["t"][0]
        >>> ray.get(first.remote(nocopy.ray.put(recs)))   # doctest: +SKIP
        np.datetime64('1970-01-01T00:00:00')
    """
    if isinstance(ref, Ref):
        ref = ref.object_ref
    if isinstance(ref, ray.ObjectRef):
        name = f"ray object {ref.hex()}"
        mem = ray.get(ref, timeout=timeout)
    elif isinstance(ref, np.ndarray):
        name = "ray object buffer"
        mem = ref
    else:
        raise TypeError(
            f"nocopy.ray.get() takes a nocopy.ray.Ref, a ray.ObjectRef or its resolved buffer, "
            f"not {type(ref).__qualname__}. Fix: pass what nocopy.ray.put() returned."
        )
    if not (
        isinstance(mem, np.ndarray)
        and mem.dtype == np.uint8
        and mem.ndim == 1
        and bytes(mem[: len(MAGIC)]) == MAGIC
    ):
        raise SegmentCorruptError(
            f"{name} holds {type(mem).__qualname__}"
            f"{' of dtype ' + str(mem.dtype) if isinstance(mem, np.ndarray) else ''} "
            "without nocopy's magic bytes, "
            "not a nocopy layout: it was not made by nocopy.ray.put(). "
            "Fix: read it with ray.get(), or put it with nocopy.ray.put()."
        )
    if mem.flags.writeable:
        # Small objects come back from Ray's in-process store as writable
        # copies; read-only views everywhere keep the semantics the same.
        mem = mem.view()
        mem.flags.writeable = False
    # trusted: whatever is in Ray's store is already unpickled by ray.get
    # itself, so refusing nocopy's own pickled nodes here would protect nothing.
    return decode_buffer(mem, trusted=True, name=name)


# -- parallel_map(..., backend="ray") -----------------------------------------
@ray.remote(max_retries=0)
def _run_chunk(fn: Any, source: Ref[Any], start: int, stop: int) -> Any:
    return fn(take_rows(get(source), start, stop))


class RayMapBackend(MapBackend):
    """``parallel_map(..., backend="ray")``: one :func:`put`, one Ray task per chunk.

    Connects to the cluster in ``RAY_ADDRESS`` or the Ray already
    initialised; otherwise starts a local instance with ``workers`` CPUs and
    says so (see :func:`connect_or_start`). Every task decodes the same
    object-store buffer zero-copy on its node and calls ``fn`` on its rows.
    A chunk that raises re-raises the original exception in the caller with
    the remote traceback as its ``__cause__`` (as the processes backend
    does); a worker that dies gives :class:`~nocopy.errors.WorkerCrashedError`.
    Chunks are not retried. When a chunk fails or the caller is interrupted
    (Ctrl-C), the call's other chunks are cancelled: pending tasks are dropped
    and running ones are stopped (``ray.cancel(force=True)`` ends their worker
    processes; Ray starts new ones as needed). ``executor`` is not used.

    Example::

        >>> nocopy.parallel_map(np.sum, np.arange(100), chunks=2, backend="ray")  # doctest: +SKIP
        [np.int64(1225), np.int64(3725)]
    """

    name = "ray"

    def __init__(self, *, workers: int, executor: Any = None) -> None:
        super().__init__(workers=workers, executor=executor)
        self._fn: Any = None
        self._fn_ref: Any = None
        self._pending: list[ray.ObjectRef[Any]] = []
        self._lock = threading.Lock()

    def prepare(self, data: Any) -> Ref[Any]:
        connect_or_start(num_cpus=self.workers)
        return put(data)  # a Shared's data too: other nodes need it in the store

    def submit(self, fn: Any, source: Any, index: int, start: int, stop: int) -> Future[Any]:
        with self._lock:
            if fn is not self._fn:
                # Ship fn to the store once, not once per chunk; Ray resolves
                # a top-level ObjectRef argument into fn inside the task.
                self._fn, self._fn_ref = fn, ray.put(fn)
            fn_ref = self._fn_ref
        object_ref = _run_chunk.remote(fn_ref, source, start, stop)
        with self._lock:
            self._pending.append(object_ref)
        out: Future[Any] = Future()
        task = f"chunk {index} (rows {start}:{stop})"

        def settle(done: Future[Any]) -> None:
            if out.cancelled():
                return
            try:
                result = done.result()
            except BaseException as exc:  # every failure goes to the caller
                try:
                    local = _local_exception(exc, task)
                except Exception:  # never leave the caller waiting on an unsettled future
                    local = exc
                with contextlib.suppress(InvalidStateError):
                    out.set_exception(local)
            else:
                with contextlib.suppress(InvalidStateError):
                    out.set_result(result)

        def cancel_task(fut: Future[Any]) -> None:
            # parallel_map cancels the other chunks when one fails or on
            # Ctrl-C. force=True: a plain cancel cannot stop a task blocked in
            # C code (time.sleep, I/O), and Ray ignores a later forced cancel
            # of the same task, so abort() could no longer stop it.
            if fut.cancelled():
                with contextlib.suppress(Exception):
                    ray.cancel(object_ref, force=True)

        out.add_done_callback(cancel_task)
        object_ref.future().add_done_callback(settle)
        return out

    def release(self, source: Any) -> None:
        # Dropping the last references frees the buffer and fn in the store.
        with self._lock:
            self._fn = self._fn_ref = None
            self._pending = []

    def abort(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for object_ref in pending:
            try:
                ray.cancel(object_ref, force=True)
            except Exception:  # abort never raises; finished tasks refuse
                pass


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _RemoteTraceback(Exception):
    """Carries a worker's formatted traceback (as concurrent.futures does)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _local_exception(exc: BaseException, task: str) -> BaseException:
    """A Ray failure as the processes backend reports it: the original error, remote traceback as cause."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
            # str() of a RayTaskError is the worker's traceback, headed by
            # "ray::fn() (pid=..., ip=...)" in terminal colours.
            remote = _ANSI.sub("", str(exc)).strip()
            cause.__cause__ = _RemoteTraceback(f'\n"""\n{remote}\n({task})\n"""')
            return cause
        return exc
    if isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.OutOfMemoryError):
        crashed = WorkerCrashedError(
            f"a Ray worker died while running {task}: {exc}. The data and the caller are "
            "intact. Fix: look for a segfault, os._exit or out-of-memory kill in fn.",
            task=task,
        )
        crashed.__cause__ = exc
        return crashed
    return exc
