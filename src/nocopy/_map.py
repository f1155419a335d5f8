"""parallel_map: split data into row chunks, run fn on each chunk in parallel, in order.

Backend interface (for the "processes", "threads" and "ray" backends)
=====================================================================

A backend is a small class that runs chunk tasks; :func:`parallel_map` does
everything else (validation, chunking, ordering, progress bar, re-raising the
first failure, cancelling on error or Ctrl-C). A backend subclasses
:class:`MapBackend` and implements three methods::

    class MyBackend(MapBackend):
        name = "mine"

        def prepare(self, data):          # once per call, in the caller
            # Make *data* reachable by the workers without copying per chunk
            # (share it, put it in an object store...). Return a "source".
            ...

        def submit(self, fn, source, index, start, stop):
            # Start fn(rows start:stop of the data) somewhere; return a
            # concurrent.futures.Future (Ray: ObjectRef.future()).
            # Worker side, rebuild the data from the source, then call
            # fn(take_rows(data, start, stop)).
            ...

        def release(self, source):        # once per call, always (finally)
            # Free what prepare() allocated. Never raises.
            ...

        def abort(self):                  # optional: Ctrl-C / caller interrupted
            # Stop the workers so no process is left running the chunks.
            ...

Backends are constructed as ``cls(workers=int, executor=Executor | None)``
(``self.workers``, ``self.executor``). Register with
:func:`register_backend` ("name" -> class), or lazily by module path in
``_LAZY_BACKENDS`` (``"ray": ("nocopy.ray", "RayMapBackend")``): the module is
imported the first time the backend is asked for, and must define that class.
:func:`take_rows` (rows start:stop of an ndarray, DataFrame, Series or Arrow
table, zero-copy) is the helper every backend's worker side uses.

Example::

    >>> import numpy as np, nocopy
    >>> nocopy.parallel_map(lambda rows: int(rows.sum()), np.arange(100),
    ...                     chunks=4, backend="threads")
    [300, 925, 1550, 2175]
"""

from __future__ import annotations

import importlib
from concurrent.futures import Executor, Future
from typing import Any, ClassVar

from ._shared import Shared

__all__ = ["MapBackend", "parallel_map", "register_backend", "take_rows"]


class MapBackend:
    """Runs the chunk tasks of one :func:`parallel_map` call (see the module docstring)."""

    name: ClassVar[str] = ""

    def __init__(self, *, workers: int, executor: Executor | None = None) -> None:
        self.workers = workers
        self.executor = executor

    def prepare(self, data: Any) -> Any:
        raise NotImplementedError

    def submit(self, fn: Any, source: Any, index: int, start: int, stop: int) -> Future[Any]:
        raise NotImplementedError

    def release(self, source: Any) -> None:
        """Free what :meth:`prepare` allocated; never raises."""

    def abort(self) -> None:
        """Stop running chunks (caller interrupted); never raises."""


_BACKENDS: dict[str, type[MapBackend]] = {}
_LAZY_BACKENDS: dict[str, tuple[str, str]] = {"ray": ("nocopy.ray", "RayMapBackend")}


def register_backend(cls: type[MapBackend]) -> type[MapBackend]:
    """Make *cls* available as ``parallel_map(..., backend=cls.name)``; usable as a decorator."""
    _BACKENDS[cls.name] = cls
    return cls


def _backend_class(name: str) -> type[MapBackend]:
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name in _LAZY_BACKENDS:
        module, attr = _LAZY_BACKENDS[name]
        mod = importlib.import_module(module)
        cls = getattr(mod, attr, None)
        if cls is None:
            raise ValueError(f"backend={name!r} is not available in this version of nocopy")
        _BACKENDS[name] = cls
        return cls  # type: ignore[no-any-return]
    raise ValueError(f"unknown backend {name!r}")


def take_rows(data: Any, start: int, stop: int) -> Any:
    """Rows start:stop of *data* without copying."""
    raise NotImplementedError


def parallel_map(fn: Any, data: Any, **kw: Any) -> list[Any]:
    raise NotImplementedError


_ = Shared
