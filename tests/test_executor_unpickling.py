"""nocopy.ProcessPoolExecutor: data that fails to unpickle fails its task only, and never ends the caller."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
from typing import Any

import pytest

import nocopy
from nocopy.errors import NocopyError, TaskUnpicklingError

METHODS = ["spawn", "forkserver", "fork"]


def interrupt() -> None:
    raise KeyboardInterrupt


class StopsWhenUnpickled:
    """Unpickling it calls *stop*: ``sys.exit(3)`` or a function raising KeyboardInterrupt."""

    def __init__(self, stop: str) -> None:
        self.stop = stop

    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.exit, (3,)) if self.stop == "exit" else (interrupt, ())


class FailsWhenUnpickled:
    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (b"not a pickle",))


def identity(x: Any) -> Any:
    return x


def make(stop: str) -> StopsWhenUnpickled:
    return StopsWhenUnpickled(stop)


def raised_by(fut: Any) -> BaseException:
    try:
        fut.result()
    except BaseException as exc:  # a bare SystemExit must be seen here, not end the test run
        return exc
    raise AssertionError("the task did not fail")


@pytest.mark.parametrize("stop", ["exit", "interrupt"])
@pytest.mark.parametrize("method", METHODS)
def test_an_argument_that_exits_while_unpickled_fails_its_task_with_a_nocopy_error(method: str, stop: str) -> None:
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
        exc = raised_by(ex.submit(identity, StopsWhenUnpickled(stop)))
        assert type(exc) is TaskUnpicklingError
        assert isinstance(exc, (NocopyError, pickle.UnpicklingError))
        assert exc.raised == ("SystemExit" if stop == "exit" else "KeyboardInterrupt")
        assert exc.task is not None and "the arguments of task #1" in exc.task and "identity" in exc.task
        assert "worker pid" in str(exc) and exc.raised in str(exc)
        # Only that task failed: the same worker goes on.
        assert ex.submit(os.getpid).result() > 0


@pytest.mark.parametrize("stop", ["exit", "interrupt"])
def test_a_result_that_exits_while_unpickled_fails_its_task_with_a_nocopy_error(stop: str) -> None:
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as ex:
        exc = raised_by(ex.submit(make, stop))
        assert type(exc) is TaskUnpicklingError
        assert exc.task is not None and exc.task.startswith("the result of task #1") and "make" in exc.task
        assert "the caller" in str(exc)
        assert type(exc.__cause__) is (SystemExit if stop == "exit" else KeyboardInterrupt)
        assert ex.submit(identity, 5).result() == 5


def test_an_ordinary_unpickling_error_comes_through_as_it_is_with_a_note() -> None:
    with nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as ex:
        exc = raised_by(ex.submit(identity, FailsWhenUnpickled()))
        assert type(exc) is pickle.UnpicklingError
        assert any("while unpickling the arguments of task #1" in n for n in getattr(exc, "__notes__", []))
        assert ex.submit(identity, 5).result() == 5


def test_the_error_survives_pickling() -> None:
    exc = TaskUnpicklingError("m", task="the result of task #2 (f)", raised="SystemExit")
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), back.args, back.task, back.raised) == (TaskUnpicklingError, ("m",), exc.task, "SystemExit")
