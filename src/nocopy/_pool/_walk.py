"""The one walk over a task's arguments and results, and what it does to their data leaves.

Big data travels through shared memory wherever it sits at the top level of
the arguments or the result, or inside a list, tuple, dict or
``functools.partial`` (up to `MAX_DEPTH` levels). `walk` finds
those leaves; each direction says what happens to a leaf:

* arguments, in the caller (`ArgumentSharer`): a big NumPy, pandas,
  Arrow or Polars object becomes an `AutoArg` marker holding its
  `nocopy.Shared` (shared once per executor, see ``_cache``);
* arguments, in the worker (`unwrap`): a marker becomes a private
  copy-on-write view, as a pickled copy would be;
* results, in the worker (`ResultSharer`): a big leaf is shared and
  handed to the caller (``_results``), which turns it back into a view.

Sizes and the columns ``share()`` converts come from ``_kinds``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

from .. import _kinds
from .._shared import Shared, share
from ..errors import UnsupportedTypeError
from ._cache import PartShared, ShareCache

__all__ = [
    "ATOMIC", "MAX_DEPTH", "POPULATE_MAX", "ArgumentSharer", "AutoArg", "PartArg", "ResultSharer", "unwrap", "walk",
]

ATOMIC = (type(None), bool, int, float, complex, str, bytes)
# Callables, never data: the function of every task skips the cache and the size check.
_CODE = (
    types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodDescriptorType,
    types.WrapperDescriptorType, type,
)
# What no leaf function changes: the walk passes it by without calling one.
_SKIP = frozenset(ATOMIC + _CODE)
# Containers deeper than this travel as they are (pickled), as with the stdlib.
MAX_DEPTH = 4
# Arguments up to this size arrive with every page mapped (Shared.get's
# populate): the stdlib would have handed the task a whole copy, so it likely
# reads all of it. Bigger ones are faulted in as the task reads them: a task
# reading a little of a huge argument must not pay for mapping all of it
# (about 15 ms per 220 MB here, ~70 ms at this cap).
POPULATE_MAX = 1 << 30


def walk(value: Any, leaf: Callable[[Any], Any], depth: int = 0) -> Any:
    """*value* with ``leaf(x)`` in place of each leaf; a container nothing changed in is kept as is."""
    t = type(value)
    if t in _SKIP:
        return value
    if depth >= MAX_DEPTH:
        return leaf(value)
    if t is list or t is tuple:
        return _walk_sequence(value, leaf, depth)
    if t is dict:
        return _walk_dict(value, leaf, depth)
    if t is functools.partial:
        func = walk(value.func, leaf, depth + 1)
        args = walk(value.args, leaf, depth + 1) if value.args else value.args
        keywords = walk(value.keywords, leaf, depth + 1) if value.keywords else value.keywords
        if func is value.func and args is value.args and keywords is value.keywords:
            return value
        return functools.partial(func, *args, **keywords)
    return leaf(value)


def _child(v: Any, leaf: Callable[[Any], Any], depth: int) -> Any:
    """An item of a list, tuple or dict walked; a list or tuple of str or bytes goes to a
    leaf that takes them whole (`ArgumentSharer`: shared as data, a SharedSequence in the worker).

    Only items: the arguments' own tuple, or a ``functools.partial``'s, is never one leaf.
    """
    t = type(v)
    if t in _SKIP:
        return v
    if (t is list or t is tuple) and getattr(leaf, "takes_sequences", False) and _kinds.data_nbytes(v) is not None:
        return leaf(v)
    return walk(v, leaf, depth + 1)


def _walk_sequence(value: list[Any] | tuple[Any, ...], leaf: Callable[[Any], Any], depth: int) -> Any:
    # Most arguments change nowhere: copy only from the first item that did.
    items: list[Any] | None = None
    for i, v in enumerate(value):
        w = _child(v, leaf, depth)
        if items is None:
            if w is v:
                continue
            items = list(value[:i])
        items.append(w)
    if items is None:
        return value
    return items if type(value) is list else tuple(items)


def _walk_dict(value: dict[Any, Any], leaf: Callable[[Any], Any], depth: int) -> Any:
    changed: dict[Any, Any] | None = None
    for k, v in value.items():
        w = _child(v, leaf, depth)
        if w is not v:
            if changed is None:
                changed = {}
            changed[k] = w
    if changed is None:
        return value
    return {k: changed.get(k, v) for k, v in value.items()}


class AutoArg:
    """Marks an auto-shared argument: the worker gets ``shared.get(private=True)``."""

    __slots__ = ("columns", "shared")

    def __init__(self, shared: Shared[Any], columns: _kinds.Converted = ()) -> None:
        self.shared = shared
        self.columns = columns

    def __reduce__(self) -> tuple[Any, ...]:
        return (AutoArg, (self.shared, self.columns))


class PartArg:
    """Marks a DataFrame shared but for some columns: the worker joins the view and *taken* (pickled)."""

    __slots__ = ("columns", "converted", "shared", "taken")

    def __init__(
        self, shared: Shared[Any], converted: _kinds.Converted, taken: tuple[tuple[int, Any], ...], columns: Any,
    ) -> None:
        self.shared = shared
        self.converted = converted
        self.taken = taken
        self.columns = columns

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartArg, (self.shared, self.converted, self.taken, self.columns))

    def view(self, populate: bool) -> Any:
        """The frame as the caller gave it: a private view of the shared columns, the others unpickled."""
        rest = _kinds.restore_columns(self.shared.get(private=True, populate=populate), self.converted)
        return _kinds.join_columns(rest, self.taken, self.columns)


class ArgumentSharer:
    """Caller side: big data leaves -> `AutoArg` (through the executor's cache).

    ``found`` tells whether the arguments hold any handle at all (a marker or
    a ``Shared`` passed by the caller): the worker walks them only then.
    """

    # Big lists and tuples of str or bytes are data too: the worker gets a read-only
    # nocopy.SharedSequence over shared memory instead of its own copy (see _child).
    takes_sequences = True

    def __init__(self, cache: ShareCache, threshold: int) -> None:
        self.cache = cache
        self.threshold = threshold
        self.found = False

    def __call__(self, value: Any) -> Any:
        t = type(value)
        if t is Shared:
            self.found = True
            return value
        if t in _CODE:
            return value
        known, shared = self.cache.cached(value)
        if not known:
            nbytes = _kinds.data_nbytes(value)
            if nbytes is None or nbytes < self.threshold:
                return value
            shared = self.cache.lookup(value)
        if shared is None:
            return value
        self.found = True
        if type(shared) is PartShared:
            taken = zip(shared.positions, _kinds.column_arrays(value, shared.positions), strict=True)
            return PartArg(shared.shared, shared.converted, tuple(taken), value.columns)
        assert type(shared) is Shared
        return AutoArg(shared, _kinds.converted_columns(value))


def unwrap(value: Any, keep_warm: Callable[[Shared[Any]], None]) -> Any:
    """Worker side: every marker in *value* -> a private view; ``keep_warm`` each explicit handle."""

    def leaf(x: Any) -> Any:
        t = type(x)
        if t is AutoArg:
            populate = x.shared.nbytes <= POPULATE_MAX
            return _kinds.restore_columns(x.shared.get(private=True, populate=populate), x.columns)
        if t is PartArg:
            return x.view(x.shared.nbytes <= POPULATE_MAX)
        if t is Shared:
            keep_warm(x)
        return x

    return walk(value, leaf)


class ResultSharer:
    """Worker side: big data leaves of a result -> shared, then ``send(handle, columns)``'s marker.

    *send* hands the segment to the caller and returns what travels instead
    of the leaf; the worker's handle is closed right after (the caller holds
    the segment by then). When *send* returns None (the caller takes no more
    descriptors now), that leaf and the rest of the result travel by value.
    """

    def __init__(self, threshold: int, send: Callable[[Shared[Any], _kinds.Converted], Any]) -> None:
        self.threshold = threshold
        self.send = send
        self.by_value = False

    def __call__(self, value: Any) -> Any:
        if self.by_value:
            return value
        nbytes = _kinds.data_nbytes(value)
        if nbytes is None or nbytes < self.threshold:
            return value
        try:
            handle = share(value)
        except (UnsupportedTypeError, ImportError, MemoryError):
            return value
        try:
            marker = self.send(handle, _kinds.converted_columns(value))
        finally:
            handle.close()
        if marker is None:
            self.by_value = True
            return value
        return marker
