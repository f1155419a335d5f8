"""Ctrl-C anywhere in share() or close(): KeyboardInterrupt comes out, nothing is left behind.

A KeyboardInterrupt is raised between any two bytecodes of the main thread.
These tests raise one at every line of the functions that create, fill, seal
and release a segment, in turn, and check after each: the interrupt came
out (not an OSError of a descriptor closed twice), no descriptor, mapping or
file of the segment is left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import numpy as np
import pytest

import nocopy
from nocopy import _shared
from nocopy._store import _capacity, _hugepages, _memfd, _posix, _segment

MiB = 1 << 20

# Everything between share()'s first allocation and its return, and what close() releases with.
_CODE = [
    _shared._new_segment.__code__,
    _memfd.MemfdStore.create.__code__,
    _memfd.MemfdStore.seal.__code__,
    _posix.PosixStore.create.__code__,
    _posix.PosixStore.seal.__code__,
    _posix._create_locked.__code__,
    _posix._reopen_locked.__code__,
    _capacity.reserve.__code__,
    _hugepages.collapse.__code__,
    _segment.OwnedSegment.__init__.__code__,
    _segment.OwnedSegment.open_fd.__code__,
    _segment.OwnedSegment.close_fd.__code__,
    _segment.OwnedSegment.release.__code__,
    _segment.OwnedSegment._finish.__code__,
    _segment.OwnedSegment._close_all.__code__,
]
# Not Shared.close: a line event fires again at a ``with`` statement's line
# before its __exit__ call, where a real signal is never handled (the lock
# would stay held); close() only calls OwnedSegment.release under its locks.


def _interrupt_at(n: int, codes: list[CodeType]) -> tuple[Callable[..., Any], list[int]]:
    """A tracer raising KeyboardInterrupt at the *n*-th line run in *codes* (counted in the list)."""
    seen = [0]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            seen[0] += 1
            if seen[0] == n + 1:
                sys.settrace(None)
                frame.f_trace = None
                raise KeyboardInterrupt
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code in codes else None

    return tracer, seen


def _left_behind(shm: Path, before: frozenset[str] = frozenset()) -> list[str]:
    """Descriptors, mappings and files of this process's segments, less those in *before*.

    *before* is what the test found at its start: an earlier test in this process may
    still hold something of its own, and a test judges only what it made.
    """
    mine = f"nocopy-{os.getpid()}-"
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if mine in link or link.startswith(str(shm)):
            out.append(f"fd {fd} -> {link}")
    with open("/proc/self/maps") as f:
        out += [line.strip() for line in f if mine in line or str(shm) in line]
    out += [str(p) for p in shm.rglob(f"{mine}*")]
    return [item for item in out if item not in before]


def _run_interrupted(action: Callable[[], Any], n: int) -> str:
    tracer, seen = _interrupt_at(n, _CODE)
    sys.settrace(tracer)
    try:
        action()
        outcome = "done"
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    except BaseException as exc:  # the interrupt replaced by another error: the finding
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        sys.settrace(None)
    return outcome if seen[0] > n else "done"


def _every_line(action: Callable[[], Any], shm: Path) -> Iterator[tuple[int, str]]:
    n = 0
    while True:
        outcome = _run_interrupted(action, n)
        yield n, outcome
        if outcome == "done":
            return
        n += 1
        assert n < 5000, "share() never finished"


@pytest.mark.parametrize("backend", ["memfd", "posix"])
@pytest.mark.parametrize("nbytes", [4096, 6 * MiB])  # small pages; huge pages where the kernel collapses
def test_ctrl_c_at_any_line_of_share_leaves_nothing_and_comes_out(
    backend: str, nbytes: int, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_hugepages.time, "thread_time", lambda: 0.0)  # never judged slow
    data = np.ones(nbytes, np.uint8)
    refs: list[nocopy.Shared[Any]] = []
    before = frozenset(_left_behind(shm))
    interrupted = 0
    for n, outcome in _every_line(lambda: refs.append(nocopy.share(data, backend=backend)), shm):
        if outcome == "done":
            break
        assert outcome == "KeyboardInterrupt", f"interrupt at line {n}: {outcome}"
        assert _left_behind(shm, before) == [], f"interrupt at line {n} left these behind"
        interrupted += 1
    assert interrupted > 20
    assert len(refs) == 1 and np.array_equal(refs[0].get(), data)
    refs.clear()
    assert _left_behind(shm, before) == []


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_ctrl_c_at_any_line_of_close_leaves_nothing_once_the_handle_is_gone(
    backend: str, shm: Path
) -> None:
    before = frozenset(_left_behind(shm))
    n = 0
    while True:
        ref = nocopy.share(np.ones(4096, np.uint8), backend=backend)
        outcome = _run_interrupted(ref.close, n)
        assert outcome in ("done", "KeyboardInterrupt"), f"interrupt at line {n}: {outcome}"
        del ref
        assert _left_behind(shm, before) == [], f"interrupt at line {n} of close() left these behind"
        if outcome == "done":
            break
        n += 1
    assert n > 5
