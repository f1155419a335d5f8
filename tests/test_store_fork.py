"""A process forked from an owner inherits nothing that keeps the owner's segments alive.

A fork-context pool worker (or any os.fork) gets a copy of every descriptor
and mapping of its parent. Kept, they would hold each segment's memory for
the child's life, whatever the parent's close() does. The views a child
already holds stay valid: they are the child's own.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import nocopy
from conftest import segment_holders


def _fork(child: Callable[[], None]) -> tuple[int, int]:
    """Fork a child that runs *child*, writes one byte to say so, then waits to be killed: (pid, read end)."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork of a threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            child()
            os.write(w, b"1")
        except BaseException:
            code = 1
        finally:
            if code:
                os.write(w, b"0")
            time.sleep(60)
            os._exit(code)
    os.close(w)
    return pid, r


@pytest.fixture
def children() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def _holders_in(pid: int, name: str) -> list[str]:
    return [h for h in segment_holders({name}) if h.startswith(f"{pid}/")]


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_a_forked_child_holds_no_descriptor_and_the_owners_close_frees_the_segment(
    backend: str, shm: Path, children: list[int]
) -> None:
    ref = nocopy.share(np.arange(1 << 16), backend=backend)
    name = ref.name

    def child() -> None:
        # Not the owner, yet attaches through the parent like any process.
        assert not ref.is_owner
        assert int(ref.get(private=True)[-1]) == (1 << 16) - 1  # not cached: nothing kept

    pid, r = _fork(child)
    children.append(pid)
    assert os.read(r, 1) == b"1"
    os.close(r)
    assert _holders_in(pid, name) == [], "the child kept the owner's descriptor"
    ref.close()
    assert segment_holders({name}) == [], "the segment outlived its owner's close()"
    assert not list(shm.rglob(name))


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_a_forked_child_keeps_its_views_but_not_the_handles_cached_mapping(
    backend: str, shm: Path, children: list[int]
) -> None:
    kept = nocopy.share(np.full(1 << 16, 7), backend=backend)
    cached = nocopy.share(np.full(1 << 16, 9), backend=backend)
    views = [kept.get()]  # a view the child inherits: must stay valid there
    cached.get()  # only the handle's mapping is left after this

    def child() -> None:
        assert int(views[0].sum()) == 7 << 16

    pid, r = _fork(child)
    children.append(pid)
    assert os.read(r, 1) == b"1"
    os.close(r)
    assert _holders_in(pid, kept.name), "the child's view lost its mapping"
    assert _holders_in(pid, cached.name) == [], "the child kept a handle's cached mapping"
    cached.close()
    assert segment_holders({cached.name}) == []
    views.clear()
    kept.close()
    assert segment_holders({kept.name}) == [_holders_in(pid, kept.name)[0]]  # only the child's view


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_equal_handles_each_drop_their_cached_mapping_in_a_forked_child(
    backend: str, shm: Path, children: list[int]
) -> None:
    """Handles to one segment compare equal: the fork hook must still find every one of them."""
    import pickle

    ref = nocopy.share(np.full(1 << 16, 5), backend=backend)
    copy = pickle.loads(pickle.dumps(ref))  # another handle to the same segment, same mapping
    assert copy == ref and copy is not ref
    ref.get()
    copy.get()  # both handles keep the mapping; no view is left

    pid, r = _fork(lambda: None)
    children.append(pid)
    assert os.read(r, 1) == b"1"
    os.close(r)
    assert _holders_in(pid, ref.name) == [], "the child kept an equal handle's cached mapping"
    copy.close()
    ref.close()
    assert segment_holders({ref.name}) == []
