"""Ray integration: the same data, zero-copy on every node.

`put` plans an object with nocopy's codec and puts its header and
buffers in Ray's object store as one object; `get` fetches it (Ray maps
the buffers read-only, straight from the store) and rebuilds the object over
them, so every column is a view into the object store -- datetime64
columns, record arrays and strings included, which plain ``ray.get`` copies
into every task.

Examples
--------
>>> import numpy as np, ray, nocopy.ray
>>> ref = nocopy.ray.put(np.arange(10))      # a nocopy.ray.Ref  # doctest: +SKIP
>>> @ray.remote
... def total(ref):
...     return int(nocopy.ray.get(ref).sum())   # zero-copy view
>>> ray.get(total.remote(ref))                 # doctest: +SKIP
45

Why a wrapper (`Ref`) and not the bare ``ObjectRef``: Ray resolves an
``ObjectRef`` passed as a top-level task argument into its value (here the
object's buffers, not yet decoded), while a `Ref` arrives as itself, tells what it
holds (``kind``, ``nbytes``) and keeps the object alive while any task
borrows it (Ray tracks the ``ObjectRef`` inside it). `get` accepts a
`Ref`, its ``object_ref``, or that resolved value.

Cost of a put: one copy, by Ray. The object is pickled with protocol 5, the
header in band and each buffer out of band, so Ray copies every column
straight from the caller's arrays into the store: no temporary layout in the
caller (only non-contiguous arrays and Arrow IPC streams are materialised
once, as ``share()`` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
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

from ._codec import MAGIC, decode_buffer, decode_parts, plan
from ._kinds import describe, is_items, kind_name, take_rows
from ._map import MapBackend, chunk_label
from ._shared import Shared
from ._text import format_handle
from .errors import SegmentCorruptError, WorkerCrashedError

__all__ = ["RayMapBackend", "Ref", "connect_or_start", "get", "put"]

T = TypeVar("T")

logger = logging.getLogger("nocopy.ray")
_init_lock = threading.Lock()


# What to do with a Ref that reached ray.get: Ray's own errors quote the Ref's type (one Ref)
# or the Ref itself (a list), so both carry it. Ray cannot decode a nocopy layout itself.
_RAY_GET_FIX = "a nocopy.ray.Ref: read it with nocopy.ray.get(ref), which also takes a list; ray.get cannot decode it"


class _RefType(type):
    """Ref's class: its repr names the fix, which ``ray.get(ref)``'s ValueError quotes."""

    def __repr__(cls) -> str:
        return f"<class '{cls.__module__}.{cls.__qualname__}'> ({_RAY_GET_FIX})"


@dataclass(frozen=True)
class Ref(Generic[T], metaclass=_RefType):
    """A nocopy layout in Ray's object store: pass it to tasks, read it with `get`.

    Small to pickle (it carries the ``ObjectRef``, never the data). The data
    stays in the store while the driver holds the `Ref` or any task
    still uses one (Ray's reference counting, borrowers included).

    Attributes: ``object_ref`` (the ``ray.ObjectRef`` of the uint8 buffer),
    ``kind`` (type name of the object), ``nbytes`` (data bytes), ``size``
    (bytes in the store, header included), ``pickled`` (whether parts were
    stored pickled because of ``allow_pickle=True``), ``about`` (its dtype
    and shape, rows x columns or length, as the repr shows them).

    Refs compare equal (and hash alike) when they hold the same object
    (``object_ref``) with the same ``pickled`` permission, as
    `nocopy.Shared` handles do for a segment.

    Examples
    --------
    >>> ref = nocopy.ray.put(np.zeros(1000))   # doctest: +SKIP
    >>> ref                                    # doctest: +SKIP
    <nocopy.ray.Ref ndarray float64 (1000,) 7.8 KiB at ray:00ffff...>
    >>> ref.kind, ref.nbytes                   # doctest: +SKIP
    ('ndarray', 8000)
    >>> float(ref.get().sum())                 # doctest: +SKIP
    0.0
    """

    object_ref: ray.ObjectRef[Any]
    # What the object is follows from object_ref: only it (and the permission) decides equality.
    kind: str = field(compare=False)
    nbytes: int = field(compare=False)
    size: int = field(compare=False)
    pickled: bool = False
    about: str = field(default="", compare=False)

    def get(self, *, timeout: float | None = None) -> T:
        """Same as ``nocopy.ray.get(self)``.

        Examples
        --------
        >>> nocopy.ray.put({"a": np.arange(3)}).get()["a"]   # doctest: +SKIP
        array([0, 1, 2])
        """
        return get(self, timeout=timeout)

    def __repr__(self) -> str:
        return format_handle("nocopy.ray.Ref", self.kind, self.about, self.nbytes, f"ray:{self.object_ref.hex()}")

    def __str__(self) -> str:
        # ray.get([ref]) raises a TypeError quoting str(ref): it then says what to do.
        return f"{self!r} ({_RAY_GET_FIX})"


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

    Examples
    --------
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
    """Encode *obj* once into Ray's object store; return a `Ref` to it.

    Accepts everything `nocopy.share` accepts (NumPy arrays of any
    fixed-width dtype, record arrays, pandas and Arrow data, dicts/lists/
    tuples of them). Unsupported data raises
    `nocopy.errors.UnsupportedTypeError` before anything is put,
    unless ``allow_pickle=True`` (those parts are then unpickled on every
    get). A `nocopy.Shared` puts the object it holds. Starts or
    connects to Ray first if needed (see `connect_or_start`). Works in
    the driver and inside tasks.

    Examples
    --------
    >>> recs = np.rec.fromarrays([np.arange(3)], names="a")
    >>> ref = nocopy.ray.put(recs)                 # doctest: +SKIP
    >>> type(nocopy.ray.get(ref)).__name__         # doctest: +SKIP
    'recarray'
    """
    if isinstance(obj, Shared):
        obj = obj.get()  # a Shared lives in this machine's memory: put what it holds
    p = plan(obj, allow_pickle=allow_pickle)
    if not ray.is_initialized():
        connect_or_start()
    head, parts = p.parts()
    # Ray pickles the _Layout with protocol 5 and copies each out-of-band
    # buffer straight from its source (the caller's columns) into the store.
    object_ref = ray.put(_Layout(head, parts))
    del parts
    return Ref(object_ref, kind_name(obj), p.nbytes, p.size, p.pickled, describe(obj))


# Ray aligns an out-of-band buffer of more than 2 KiB to 64 bytes in its
# object, smaller ones only to 8: buffers below this size travel packed, each
# 64-byte aligned, in one block at least this large.
_PACKED_BELOW = 4096
_ALIGN = 64


class _Layout:
    """A layout's prefix and header plus its buffers, each apart: what a nocopy Ray object holds.

    Pickled (protocol 5) as the header in band and the buffers out of band,
    so Ray copies each one once from its source into the object store, and
    unpickled over views of the store. What a task receives when Ray
    resolves a top-level ``ObjectRef``; `get` decodes it.
    """

    __slots__ = ("head", "parts")

    def __init__(self, head: bytes, parts: list[Any]) -> None:
        self.head = head
        self.parts = parts

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        sizes = [memoryview(part).nbytes for part in self.parts]
        packed: dict[int, int] = {}
        end = 0
        for i, n in enumerate(sizes):
            if n < _PACKED_BELOW:
                packed[i] = end
                end += -(-n // _ALIGN) * _ALIGN
        block = np.zeros(max(end, _PACKED_BELOW) if packed else 0, dtype=np.uint8)
        for i, off in packed.items():
            block[off : off + sizes[i]] = np.frombuffer(self.parts[i], dtype=np.uint8)
        apart = [part for i, part in enumerate(self.parts) if i not in packed]
        if int(protocol) >= 5:
            block_arg: Any = pickle.PickleBuffer(block.data)
            apart = [pickle.PickleBuffer(part) for part in apart]
        else:  # pragma: no cover - Ray pickles with protocol 5
            block_arg, apart = block, [bytes(part) for part in apart]
        placement = [(packed[i], n) if i in packed else (-1, n) for i, n in enumerate(sizes)]
        return (_unpack_layout, (self.head, placement, block_arg, *apart))


def _unpack_layout(head: bytes, placement: list[tuple[int, int]], block: Any, *apart: Any) -> _Layout:
    """Rebuild a `_Layout` over the buffers unpickling gave (views of Ray's store)."""
    whole = np.frombuffer(block, dtype=np.uint8)
    rest = iter(apart)
    parts: list[Any] = []
    for off, n in placement:
        parts.append(np.frombuffer(next(rest), dtype=np.uint8) if off < 0 else whole[off : off + n])
    return _Layout(head, parts)


def _aligned_read_only(part: np.ndarray) -> np.ndarray:
    """*part* as a read-only uint8 array, 64-byte aligned (a copy only where Ray did not align it)."""
    if part.__array_interface__["data"][0] % _ALIGN and part.nbytes:
        # A Ray that aligns differently: numpy and Arrow need aligned buffers, so the
        # few small packed or odd buffers are copied rather than decoded misaligned.
        raw = np.empty(part.nbytes + _ALIGN, dtype=np.uint8)
        start = -raw.__array_interface__["data"][0] % _ALIGN
        copy = raw[start : start + part.nbytes]
        copy[:] = part
        part = copy
    if part.flags.writeable:
        # Small objects come back from Ray's in-process store as writable
        # copies; read-only views everywhere keep the semantics the same.
        part = part.view()
        part.flags.writeable = False
    return part


@overload
def get(ref: Ref[T], *, timeout: float | None = None) -> T: ...
@overload
def get(ref: list[Ref[T]], *, timeout: float | None = None) -> list[T]: ...
@overload
def get(ref: ray.ObjectRef[Any] | np.ndarray | list[Any], *, timeout: float | None = None) -> Any: ...
def get(ref: Any, *, timeout: float | None = None) -> Any:
    """Rebuild the object put by `put`, every array a read-only view into the object store.

    *ref* is a `Ref`, its ``object_ref``, or what a task receives
    when an ``ObjectRef`` is passed as a top-level argument and Ray resolves
    it (the object's buffers, not yet decoded) -- or a list of them, as
    ``ray.get`` takes: the objects are fetched together (*timeout* is for
    all of them) and a list comes back. Writes to the result raise numpy's
    "assignment destination is read-only". The views keep the object
    pinned in this node's store until they are dropped. (Plain ``ray.get``
    cannot decode a `Ref`; its error says to call this.)

    Examples
    --------
    >>> recs = np.rec.fromarrays([np.arange(3).astype("M8[s]")], names="t")
    >>> @ray.remote                                   # doctest: +SKIP
    ... def first(ref):
    ...     return nocopy.ray.get(ref)["t"][0]
    >>> ray.get(first.remote(nocopy.ray.put(recs)))   # doctest: +SKIP
    np.datetime64('1970-01-01T00:00:00')
    >>> refs = [nocopy.ray.put(recs), nocopy.ray.put(recs)]   # doctest: +SKIP
    >>> a, b = nocopy.ray.get(refs)                           # doctest: +SKIP
    """
    if isinstance(ref, list):
        refs = [r.object_ref if isinstance(r, Ref) else r for r in ref]
        for r in refs:
            _check_gettable(r)
        # One ray.get for every ObjectRef: Ray fetches them together, within one timeout.
        fetch = [r for r in refs if isinstance(r, ray.ObjectRef)]
        fetched = iter(ray.get(fetch, timeout=timeout) if fetch else [])
        return [
            _decode(next(fetched), f"ray object {r.hex()}") if isinstance(r, ray.ObjectRef)
            else _decode(r, "ray object buffer")
            for r in refs
        ]
    if isinstance(ref, Ref):
        ref = ref.object_ref
    _check_gettable(ref)
    if isinstance(ref, ray.ObjectRef):
        return _decode(ray.get(ref, timeout=timeout), f"ray object {ref.hex()}")
    return _decode(ref, "ray object buffer")


def _check_gettable(ref: Any) -> None:
    if not isinstance(ref, ray.ObjectRef | _Layout | np.ndarray):
        raise TypeError(
            f"nocopy.ray.get() takes a nocopy.ray.Ref, a ray.ObjectRef or what Ray resolved it into "
            f"(or a list of them), not {type(ref).__qualname__}. Fix: pass what nocopy.ray.put() returned."
        )


def _decode(mem: Any, name: str) -> Any:
    """The object a nocopy layout (fetched from the store, or resolved by Ray) holds."""
    # trusted, pickles allowed: whatever is in Ray's (immutable) store is already
    # unpickled by ray.get itself, so refusing nocopy's own pickled nodes here
    # would protect nothing. (The header's flag must still say so.)
    if isinstance(mem, _Layout):
        parts = [_aligned_read_only(np.asarray(part)) for part in mem.parts]
        return decode_parts(mem.head, parts, trusted=True, allow_pickle=True, name=name)
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
    # A whole layout in one buffer (nocopy 0.1's put, or a buffer written with Plan.write_into).
    return decode_buffer(_aligned_read_only(mem), trusted=True, allow_pickle=True, name=name)


# -- parallel_map(..., backend="ray") -----------------------------------------
@ray.remote(max_retries=0)
def _run_chunk(fn: Any, source: Any, start: int, stop: int) -> Any:
    # Plain items (a list, tuple or range) come as the chunk itself, not through the store.
    return fn(take_rows(source if is_items(source) else get(source), start, stop))


class RayMapBackend(MapBackend):
    """``parallel_map(..., backend="ray")``: one `put`, one Ray task per chunk.

    Connects to the cluster in ``RAY_ADDRESS`` or the Ray already
    initialised; otherwise starts a local instance with ``workers`` CPUs and
    says so (see `connect_or_start`). Every task decodes the same
    object-store buffer zero-copy on its node and calls ``fn`` on its rows.
    A chunk that raises re-raises the original exception in the caller with
    the remote traceback as its ``__cause__`` (as the processes backend
    does); a worker that dies gives `nocopy.errors.WorkerCrashedError`.
    Chunks are not retried. When a chunk fails or the caller is interrupted
    (Ctrl-C), the call's other chunks are cancelled: pending tasks are dropped
    and running ones are stopped (``ray.cancel(force=True)`` ends their worker
    processes; Ray starts new ones as needed). ``executor`` is not used.

    Examples
    --------
    >>> nocopy.parallel_map(np.sum, np.arange(100), chunks=2,
    ...                     backend="ray")         # doctest: +SKIP
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
        task = chunk_label(index, source, start, stop)

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
