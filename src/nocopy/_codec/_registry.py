"""The codec's core: the Encoder that plans, the Decoder that builds views, and the tables
that route an object to its codec module and a tree node to its decoder.

Encoding is two passes: ``Encoder.encode`` walks the object and records which
buffers to copy and a JSON-able tree that says how to rebuild it (no bytes
move); the Plan (``_plan.py``) then copies each buffer once into the segment.
So the exact size is known before the segment is allocated, and ``explain()``
can describe a share without doing it.

This module imports no codec module. A codec module exports ``encode(enc, obj,
path)`` and ``DECODERS`` (node kind -> decoder, one function per kind); the
package's ``__init__`` registers each one, by the name ``_kinds`` gives its
family (``Family.codec``), eagerly or on first use.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .._kinds import family_of
from ..errors import NocopyError, SegmentAccessError, SegmentCorruptError, UnsupportedTypeError
from ._layout import FLAG_PICKLE, Header, align

__all__ = [
    "PYTHON",
    "UNWRITTEN",
    "DecodeFn",
    "Decoder",
    "EncodeFn",
    "Encoder",
    "Note",
    "register",
    "register_lazy",
]

# A planned buffer left as the kernel gives it: fresh segment pages are zero.
UNWRITTEN: Any = object()

# The one budget of a decode, in bytes: whatever decoding a segment allocates
# (data that cannot stay a view: codes pandas narrows, ranges pandas
# materialises) or scans beyond reading each byte once (validating Arrow data,
# hashing dict keys that collide) is charged to it before it happens, and the
# segment is refused once the total passes SPEND_FACTOR times its size plus
# SPEND_FLOOR. Honest segments spend at most about their size (Arrow data is
# validated once); a forged one is refused early instead of costing more.
SPEND_FACTOR = 2
SPEND_FLOOR = 1 << 20
# What one equality test between dict keys of equal hash is charged (bytes).
_COLLISION_COST = 64

# Containers nested deeper than this are refused at share: decoding recurses
# (about four frames a level), and a deeper tree would share fine but then
# fail on every get() with a RecursionError.
MAX_DEPTH = 100

#: The codec of objects no family claims (plain Python values and containers).
PYTHON = "python"

EncodeFn = Callable[["Encoder", Any, str], Any]
DecodeFn = Callable[["Decoder", dict[str, Any]], Any]

_ENCODERS: dict[str, EncodeFn] = {}
_DECODERS: dict[str, DecodeFn] = {}
# Codecs imported on first use (so importing nocopy imports none of pandas,
# pyarrow, polars): module name by codec name, codec name by the prefix of its node kinds.
_LAZY_BY_CODEC: dict[str, str] = {}
_LAZY_BY_PREFIX: dict[str, str] = {}


def register(codec: str, module: ModuleType) -> None:
    """Route objects of codec *codec* to ``module.encode`` and its node kinds to ``module.DECODERS``."""
    _ENCODERS[codec] = module.encode
    decoders: Mapping[str, DecodeFn] = module.DECODERS
    _DECODERS.update(decoders)


def register_lazy(codec: str, module: str, prefix: str) -> None:
    """Like `register`, importing *module* only when an object of *codec*, or a
    node whose kind starts with *prefix*, is met."""
    _LAZY_BY_CODEC[codec] = module
    _LAZY_BY_PREFIX[prefix] = codec


def _load(codec: str) -> None:
    register(codec, importlib.import_module(_LAZY_BY_CODEC[codec]))


def _encoder(codec: str) -> EncodeFn | None:
    if codec not in _ENCODERS and codec in _LAZY_BY_CODEC:
        _load(codec)
    return _ENCODERS.get(codec)


def _decoder(kind: str) -> DecodeFn | None:
    if kind not in _DECODERS:
        for prefix, codec in _LAZY_BY_PREFIX.items():
            if kind.startswith(prefix):
                _load(codec)
    return _DECODERS.get(kind)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _raised_in_nocopy(exc: BaseException) -> bool:
    """True if the innermost Python frame of *exc*'s traceback is nocopy's code.

    A TypeError from a C function (``int(None)``, ``hash([])``) counts as raised
    where nocopy called it: a header value nocopy failed to check.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE)


@dataclass(frozen=True)
class Note:
    """What explain() reports for one column/field/leaf."""

    path: str
    dtype: str
    status: str  # "zero-copy" | "converted" | "pickled" | "unsupported"
    detail: str


class Encoder:
    """Plans an encoding: buffers to copy plus the tree that rebuilds the object."""

    def __init__(self, *, allow_pickle: bool = False, explain: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self.explaining = explain
        self.sources: list[Any] = []
        self.table: list[tuple[int, int]] = []
        self.data_size = 0
        self.pickled = False
        self.notes: list[Note] = []
        self._depth = 0
        # (id, nbytes) of each ndarray planned: the same array met twice (``[a, a]``)
        # is stored once, as pickle would. ``sources`` keeps them alive, so ids are not reused.
        self._planned: dict[tuple[int, int], int] = {}

    def add(self, src: Any, nbytes: int) -> int:
        """Reserve an aligned slot for *src*; return its index.

        *src* is an ndarray, a bytes-like object, a callable ``src(dst)``
        that writes exactly *nbytes* into ``dst`` (a uint8 view of the slot),
        or ``UNWRITTEN`` (left zero).
        """
        if isinstance(src, np.ndarray):
            known = self._planned.get((id(src), nbytes))
            if known is not None:
                return known
        off = self.data_size
        self.table.append((off, nbytes))
        self.sources.append(src)
        self.data_size = align(off + nbytes)
        if isinstance(src, np.ndarray):
            self._planned[(id(src), nbytes)] = len(self.table) - 1
        return len(self.table) - 1

    def release(self) -> None:
        """Drop the planned sources once written (they may be large)."""
        self.sources.clear()
        self._planned.clear()

    def note(self, path: str, dtype: str, status: str, detail: str = "") -> None:
        self.notes.append(Note(path or "<root>", dtype, status, detail))

    def encode(self, obj: Any, path: str = "") -> Any:
        if self._depth >= MAX_DEPTH:
            return self.unsupported(obj, path, f"data nested deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return self._encode(obj, path)
        finally:
            self._depth -= 1

    def _encode(self, obj: Any, path: str) -> Any:
        family = family_of(obj)
        codec = PYTHON if family is None else family.codec
        encode = _encoder(codec)
        node = None if encode is None else encode(self, obj, path)
        if node is None:
            return self.unsupported(obj, path, f"objects of type {type(obj).__qualname__}")
        return node

    def unsupported(self, obj: Any, path: str, what: str, *, dtype: str = "") -> Any:
        # "column 'meta' ... at ['meta']" would name the column twice.
        where = f" at {path}" if path and path.strip("[]") not in what else ""
        if self.allow_pickle:
            return self.pickle(obj, path, dtype or type(obj).__name__, f"{what} (pickled: allow_pickle=True)")
        if self.explaining:
            self.note(path, dtype or type(obj).__name__, "unsupported", f"{what} cannot be shared zero-copy")
            return {"k": "py", "v": None}
        fix = _conversion_hint(what)
        # Only offer pickling where it would work: a generator, a lock or a memoryview would
        # then fail again with "cannot even be pickled".
        if _picklable(obj):
            fix += f", or {PICKLE_FIX.get()}"
        raise UnsupportedTypeError(
            f"cannot share {what}{where}: nocopy shares NumPy arrays of fixed-width dtypes, "
            f"pandas objects, Arrow data and dicts/lists/tuples of them. Fix: {fix}."
        )

    def pickle(self, obj: Any, path: str, dtype: str, detail: str) -> Any:
        if self.explaining:
            # explain() only describes: pickling for real would copy the data to report it.
            self.note(path, dtype, "pickled", detail)
            return {"k": "py", "v": None}
        try:
            data = pickle.dumps(obj, protocol=5)
        except Exception as exc:
            raise UnsupportedTypeError(
                f"cannot share {type(obj).__qualname__} at {path or '<root>'}: it cannot even be "
                f"pickled ({exc}). Fix: convert it to supported data."
            ) from exc
        self.pickled = True
        self.note(path, dtype, "pickled", detail)
        return {"k": "pickle", "b": self.add(data, len(data))}


# How the caller at hand turns pickling on, for the "Fix:" of UnsupportedTypeError: share()'s
# own keyword by default; parallel_map, which has no such keyword, sets the way that works
# with it (share first, pass the handle).
PICKLE_FIX: ContextVar[str] = ContextVar(
    "nocopy_pickle_fix",
    default="pass allow_pickle=True to store it pickled (copied on every get, refused by "
    "attach() unless trusted=True)",
)


def _conversion_hint(what: str) -> str:
    """How to turn the unsupported part *what* into something nocopy shares."""
    if "holding dict" in what:
        return "convert it, e.g. the dicts to one column per key (pandas.json_normalize)"
    if "dtype object" in what:
        return "convert it to a fixed-width dtype, or to str or bytes"
    return "convert it to one of those"


def _picklable(obj: Any) -> bool:
    """Whether pickling *obj* works (only asked on the way to an error)."""
    try:
        pickle.dumps(obj, protocol=5)
    except Exception:  # whatever the object's __reduce__ raises
        return False
    return True


class Decoder:
    """Builds views over one mapping from a validated header."""

    def __init__(
        self,
        base: np.ndarray,
        header: Header,
        *,
        name: str,
        trusted: bool,
        allow_pickle: bool,
        parts: Sequence[np.ndarray] | None = None,
        reopen: Callable[[], AbstractContextManager[str]] | None = None,
        remap: Callable[[], np.ndarray] | None = None,
        private_map: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.base = base
        self._reopen = reopen
        # Given when the segment's bytes may change after they were checked (a posix
        # file): maps it copy-on-write, see `frozen_buffer`.
        self._remap = remap
        self._cow: np.ndarray | None = None
        # Maps the segment copy-on-write anew, for this decode alone: see `private_buffer`.
        self._private_map = private_map
        self._private: np.ndarray | None = None
        self._arrow_file: Any = None
        # Set while a Polars object is decoded: see arrow_buffer.
        self.arrow_owned = False
        # Each buffer held apart (uint8, in the table's order) instead of at its offset in *base*.
        self.parts = parts
        self.header = header
        self.name = name
        self.trusted = trusted
        # Whether the handle says its segment may hold pickled parts (set by
        # share(..., allow_pickle=True) alone, and carried by the handle): never
        # inferred from the segment's own bytes, which anyone able to write them controls.
        self.allow_pickle = allow_pickle
        # Buffers read by a node that copies, scans or owns them (anything but a
        # plain array view): each at most once, and never also as an array
        # view. The encoder only ever shares a buffer between array nodes (the
        # same ndarray met twice), so a buffer copied many times -- get()
        # allocating gigabytes from a small segment -- is always forged.
        self._owned: set[int] = set()
        self._viewed: set[int] = set()
        self._spent = 0

    def corrupt(self, why: str) -> SegmentCorruptError:
        return SegmentCorruptError(
            f"segment {self.name} has a corrupt header: {why}. Fix: share the data again."
        )

    def buffer(self, index: Any, *, owned: bool = True) -> np.ndarray:
        """The uint8 view of buffer *index* (bounds already checked at parse).

        ``owned=False`` only for plain array views, which may share a buffer;
        any other reader owns its buffer (see ``_owned``).
        """
        if type(index) is not int or not 0 <= index < len(self.header.buffers):
            raise self.corrupt(f"buffer index {index!r:.40} is out of range")
        if index in self._owned or (owned and index in self._viewed):
            raise self.corrupt(f"buffer {index} is referenced more than once")
        (self._owned if owned else self._viewed).add(index)
        off, n = self.header.buffers[index]
        if self.parts is not None:
            return self.parts[index]
        start = self.header.data_offset + off
        view: np.ndarray = self.base[start : start + n]
        return view

    def frozen_buffer(self, index: Any) -> np.ndarray | None:
        """Buffer *index* (already taken with `buffer`) in a copy-on-write mapping of the segment,
        or None when its bytes cannot change after they are checked (a sealed segment, a layout
        held in memory).

        The view is writable: writing a byte of a page gives this process its own
        copy of that page, which no other process can change any more. A reader
        freezes what it is about to check this way, then reads through the same
        view, so what it checked is exactly what it uses (`_arrow` does so for
        the metadata of Arrow IPC streams).
        """
        if self._remap is None or self.parts is not None:
            return None
        if self._cow is None:
            self._cow = self._remap()
        return self._slot(self._cow, index)

    def _slot(self, mapping: np.ndarray, index: int) -> np.ndarray:
        """Buffer *index* in another mapping of the whole segment (same offsets as `base`)."""
        off, n = self.header.buffers[index]
        start = self.header.data_offset + off
        view: np.ndarray = mapping[start : start + n]
        return view

    def private_buffer(self, index: Any, view: np.ndarray) -> np.ndarray:
        """Buffer *index* (whose bytes *view* is, from `buffer`) writable and private to this decode.

        For data that cannot be read-only: PyTorch has no read-only tensors, and a
        tensor over read-only pages kills the process (SIGSEGV) on its first write.
        *view* itself when it is writable (a copy-on-write mapping, private
        memory); else the same bytes in a copy-on-write mapping of the segment
        made for this decode (reads still share the pages; a write copies only
        its page, for this process); else (a layout held in read-only memory
        that cannot be mapped again) a private copy, charged to the budget.
        """
        if view.flags.writeable:
            return view
        if self._private_map is not None and self.parts is None:
            if self._private is None:
                self._private = self._private_map()
            return self._slot(self._private, index)
        self.spend(view.nbytes, "a copy of read-only bytes that must be writable")
        return view.copy()

    def arrow_buffer(self, index: Any, view: np.ndarray) -> Any:
        """Buffer *index* (whose bytes *view* is, from `buffer`) as a pyarrow Buffer, without copying.

        A buffer over *view* (``pa.py_buffer``) is owned by a Python object, so
        whichever thread drops the last reference to it takes the GIL: Polars
        does so in its own worker threads (rechunking a frame inside
        ``serialize()``, which holds the GIL while it waits for them), and
        deadlocks. So while `arrow_owned` is set (Polars data) and the segment
        file can be opened again, the bytes come from a second mapping of it
        that Arrow itself owns and unmaps, in C++, once its last buffer is
        gone. Else (Arrow and pandas data, which keep to the one mapping of
        the segment per process; a layout held in memory; a file this process
        cannot open again) from *view*.
        """
        pa = importlib.import_module("pyarrow")
        mm = self._arrow_mapping(pa) if self.arrow_owned else None
        if mm is None:
            return pa.py_buffer(view)
        off, n = self.header.buffers[index]
        mm.seek(self.header.data_offset + off)
        buf = mm.read_buffer(n)
        if buf.size != n:
            raise self.corrupt(f"buffer {index} lies beyond the end of the segment file")
        return buf

    def _arrow_mapping(self, pa: Any) -> Any:
        if self._arrow_file is None and self._reopen is not None and self.parts is None:
            reopen, self._reopen = self._reopen, None  # one attempt per decode
            try:
                with reopen() as path:
                    self._arrow_file = pa.memory_map(path, "r")
            except (NocopyError, OSError, pa.ArrowException):
                return None
        return self._arrow_file

    def close(self) -> None:
        """Close the file behind `arrow_buffer`; the buffers read keep its mapping alive."""
        if self._arrow_file is not None:
            self._arrow_file.close()
            self._arrow_file = None

    def spend(self, nbytes: int, what: str) -> None:
        """Charge *nbytes* of work to this decode before doing it: memory allocated
        (not a view of the segment) or bytes scanned beyond one pass.

        Refuses the segment once the total exceeds ``SPEND_FACTOR`` times its
        size plus ``SPEND_FLOOR``: every materialisation calls this first.
        """
        self._spent += nbytes
        limit = SPEND_FACTOR * self.header.payload_size + SPEND_FLOOR
        if self._spent > limit:
            raise self.corrupt(
                f"decoding it would allocate or scan more than {limit} bytes ({what}), "
                f"{SPEND_FACTOR} times the segment's size"
            )

    def decode(self, node: Any) -> Any:
        try:
            return self._decode(node)
        except NocopyError:
            raise
        except ImportError:
            raise
        except (ValueError, RecursionError, OverflowError) as exc:
            # What NumPy, pandas and the checks here raise for values they refuse
            # (a bad dtype string, an impossible shape, nesting too deep). A
            # KeyError, IndexError or AttributeError is a bug in nocopy, not a
            # corrupt segment: it propagates with its traceback.
            raise self.corrupt(f"{type(exc).__name__}: {exc}"[:300]) from None
        except TypeError as exc:
            # pandas refuses some forged values with a TypeError (an interval of
            # strings...): corrupt. Raised by nocopy's own code, it is a bug (the
            # header values nocopy reads are checked before use): it propagates.
            if _raised_in_nocopy(exc):
                raise
            raise self.corrupt(f"{type(exc).__name__}: {exc}"[:300]) from None

    def hashable(self, value: Any, what: str) -> Any:
        """*value* if it can be a label or a dict key (pandas and dicts need a hash), else corrupt."""
        try:
            hash(value)
        except TypeError:
            raise self.corrupt(f"{what} of type {type(value).__name__} is not hashable") from None
        return value

    def keys(self, values: Sequence[Any], what: str, *, unhashable_ok: bool = False) -> None:
        """Charge the hashing of *values* (dict keys or labels) before a dict or hash table is built.

        Values of equal hash cost one equality test per pair (a header can
        choose ints that all hash alike: quadratic); each group of them is
        charged that first, so a forged one is refused before it is built.
        Honest keys hardly ever collide (a dict holds no equal keys). An
        unhashable value is corrupt, unless *unhashable_ok* (pandas labels may
        be anything: it hashes them only when asked to).
        """
        groups: dict[int, int] = {}
        for v in values:
            try:
                h = hash(v)
            except TypeError:
                if unhashable_ok:
                    continue
                raise self.corrupt(f"{what} of type {type(v).__name__} is not hashable") from None
            groups[h] = groups.get(h, 0) + 1  # hashes are ints: their own hash spreads them
        pairs = sum(m * (m - 1) // 2 for m in groups.values() if m > 1)
        if pairs:
            self.spend(pairs * _COLLISION_COST, f"{what}s whose hashes collide")

    def _decode(self, node: Any) -> Any:
        if not isinstance(node, dict):
            raise self.corrupt(f"tree node is {type(node).__name__}, not an object")
        kind = node.get("k")
        if not isinstance(kind, str):
            raise self.corrupt("tree node without a kind")
        fn = _decoder(kind)
        if fn is None:
            raise self.corrupt(f"unknown node kind {kind!r:.40}")
        return fn(self, node)

    def unpickle(self, node: dict[str, Any]) -> Any:
        # Both the handle and the header must say so: a pickle node in a segment whose
        # handle was not made by share(..., allow_pickle=True) was written by someone
        # else (a rewritten posix file, a writer of an output), never by nocopy.
        if not self.allow_pickle or not self.header.flags & FLAG_PICKLE:
            raise self.corrupt(
                "it holds a pickled part, but its handle was not made by share(..., "
                "allow_pickle=True) (or its header does not say so): nocopy never wrote it, so "
                "the segment was rewritten by another process. Nothing was unpickled"
            )
        if not self.trusted:
            raise SegmentAccessError(
                f"segment {self.name} holds pickled data and was attached from a URI: nocopy "
                "refuses to unpickle it (unpickling runs code). Fix: nocopy.attach(uri, "
                "trusted=True) if you trust whoever created it."
            )
        # Only when the handle allows it and the caller trusts it.
        return pickle.loads(self.buffer(node.get("b")).tobytes())
