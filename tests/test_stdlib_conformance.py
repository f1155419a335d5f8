"""nocopy's pools pass CPython's own pool tests, except documented deviations.

Each Python runs its own tests where its install ships them, else the vendored
CPython 3.11 ones (tests/cpython/README.md says which, and how long each run takes):

* nocopy.ProcessPoolExecutor: the ProcessPool{Fork,Forkserver,Spawn}* classes of
  ``test_concurrent_futures``: 3.13's own package; on 3.11 and 3.12 (whose
  installs here ship none) the vendored 3.11 module, which the standard
  library's executor passes on 3.12.1 as on 3.11 (168 passed, 9 skipped).
* nocopy.Pool: the processes flavour of _TestPool, _TestPoolWorkerErrors and
  _TestPoolWorkerLifetime of ``_test_multiprocessing`` (each Python's own),
  under fork, forkserver and spawn.

The runners (tests/cpython/) run them with nocopy's class in place of the
standard library's, in a watched subprocess that records a test with no
outcome within its timeout as a hang and goes on. Every test must pass, but:
the documented deviations below; the skips CPython makes itself (for the
standard library too); and, on the Pythons with CPython's own shutdown
deadlock gh-125451, a hang that the thread stacks show to be that deadlock,
in the tests where the standard library's own executor was seen to hang so.
MEASURED holds the standard library's figures on this machine's Pythons; the
counts are checked against them where the Python is one of those.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).resolve().parent / "cpython" / "run_process_pool_tests.py"
MP_POOL_RUNNER = Path(__file__).resolve().parent / "cpython" / "run_mp_pool_tests.py"
METHODS = ("Fork", "Forkserver", "Spawn")
PYTHON = ".".join(map(str, sys.version_info[:3]))

# Differences by design, per start method: nocopy unpickles a task's arguments
# inside the task (in the worker) and its result in the caller, so data that
# fails to unpickle fails that task only, and the pool goes on. The standard
# library breaks the whole pool (BrokenProcessPool), which is what these
# tests expect. Value: the exception the test then meets instead.
DEVIATIONS = {
    # ExitAtUnpickle argument: sys.exit() while unpickling in the worker. The
    # task fails with TaskUnpicklingError; a bare SystemExit would end the caller.
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": "error: TaskUnpicklingError",
    # ErrorAtUnpickle argument: the task fails with the UnpicklingError itself.
    "ExecutorDeadlockTest.test_error_at_task_unpickle": "error: UnpicklingError",
    # ErrorAtUnpickle result: unpickled in the caller, the task fails with it.
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": "error: UnpicklingError",
    # ExitAtUnpickle result: TaskUnpicklingError, as for an argument.
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": "error: TaskUnpicklingError",
}

# Skipped by CPython itself, for the standard library's executor too (3.11's and 3.13's tests).
SKIPPED_BY_CPYTHON = {
    "ProcessPoolExecutorTest.test_max_workers_too_large": "Windows-only process limit",
    "ProcessPoolShutdownTest.test_hang_gh83386": "Hangs, see https://github.com/python/cpython/issues/83386",
}
SKIPPED_UNDER_FORK = (
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple",
    "ProcessPoolExecutorTest.test_idle_process_reuse_one",
    "ProcessPoolExecutorTest.test_max_tasks_early_shutdown",
)

# CPython's own deadlock gh-125451 (fixed in 3.12.8 and 3.13.1; 3.11's executor has the
# same code): a task that fails to pickle while the executor shuts down leaves the
# queue's feeder thread waiting for the shutdown lock that the manager thread holds
# while it joins that feeder thread. nocopy's executor is the standard library's
# underneath, so it hangs the same way, at random. The runner recognises it by the
# thread stacks and records "hang (gh-125451)". Tolerated only in these tests, where
# the standard library's own executor was seen to hang so on this machine:
# test_processes_terminate on 3.13.0 (3 of 180 runs of the test),
# test_shutdown_deadlock_pickle on 3.12.1 (3 of 75; also nocopy once in a full run).
# Not seen on 3.11.7 (0 of 105 runs of the two tests).
GH125451_TESTS = (
    "ProcessPoolShutdownTest.test_processes_terminate",
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle",
)
GH125451 = "hang (gh-125451)"
HAS_GH125451 = sys.version_info[:3] < (3, 12, 8) or (3, 13) <= sys.version_info[:3] < (3, 13, 1)

# The standard library's figures, measured with `run_*_tests.py stdlib OUT.json` on this
# machine's Pythons: (tests run, tests passed). The rest were CPython's own skips.
MEASURED = {
    "executor": {"3.11.7": (177, 168), "3.12.1": (177, 168), "3.13.0": (189, 180)},
    "pool": {"3.11.7": (93, 93), "3.12.1": (93, 93), "3.13.0": (93, 93)},
}


def method_and_key(test_id: str) -> tuple[str, str]:
    """(start method, "Family.test_name") of an executor test id."""
    cls, name = test_id.split(".")[-2:]
    method = next(m for m in sorted(METHODS, key=len, reverse=True) if cls.startswith(f"ProcessPool{m}"))
    return method, f"{cls.removeprefix(f'ProcessPool{method}')}.{name}"


def expected_outcome(test_id: str) -> set[str]:
    """The outcomes nocopy may give for *test_id* of the executor tests."""
    method, key = method_and_key(test_id)
    if key in DEVIATIONS:
        return {DEVIATIONS[key]}
    if key in SKIPPED_BY_CPYTHON:
        return {f"skip: {SKIPPED_BY_CPYTHON[key]}"}
    if method == "Fork" and key in SKIPPED_UNDER_FORK:
        return {"skip: Incompatible with the fork start method."}
    if HAS_GH125451 and key in GH125451_TESTS:
        return {"ok", GH125451}
    return {"ok"}


def _ships(name: str) -> bool:
    """Whether this Python's install ships test/*name* (else the vendored copy runs, if any)."""
    return (Path(sysconfig.get_path("stdlib")) / "test" / name).exists()


def _check_run(result: dict[str, Any], text: str) -> None:
    """A hang between tests or at exit, or a child that died: the run itself failed.

    (On 3.13.0 the runner's final ``multiprocessing.util._cleanup_tests()`` once waited for
    ever for the forkserver, kept alive by fork workers that CPython's
    test_python_finalization_error left running: fixed, see tests/cpython/README.md.)
    """
    run_failures = {t: v for t, v in result["outcome"].items() if t.startswith("(run)")}
    assert run_failures == {}, text[-20000:]


def _run_on_nocopy(runner: Path, out: Path) -> tuple[int | None, str, dict[str, Any]]:
    """Run *runner* against nocopy in a subprocess writing *out*: (exit code, its log, its result).

    The caller checks every test's outcome, then `_check_run`."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    # A session of its own: whatever the tests leave running is stopped with it.
    p = subprocess.Popen(
        [sys.executable, str(runner), "nocopy", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        # A guard only: the runner itself stops a hung test after 120 s and goes on.
        log, _ = p.communicate(timeout=1700)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    text = log.decode(errors="replace")
    assert p.returncode == 0, text[-5000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["python"] == PYTHON
    return p.returncode, text, result


def _check_counts(family: str, outcome: dict[str, str], tolerated: int, deviations: int) -> None:
    """Against the standard library's figures measured on this Python, where there are some."""
    if PYTHON in MEASURED[family]:
        total, stdlib_passed = MEASURED[family][PYTHON]
        assert len(outcome) == total
        assert sum(v == "ok" for v in outcome.values()) == stdlib_passed - deviations - tolerated


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~3-6 min on this machine (README); a hang costs the runner's 120 s
def test_cpythons_process_pool_tests_pass_on_nocopy_except_documented_deviations(tmp_path: Path) -> None:
    own = _ships("test_concurrent_futures") or _ships("test_concurrent_futures.py")
    if not own and sys.version_info >= (3, 13):
        pytest.skip(f"Python {PYTHON}'s install ships no test_concurrent_futures, and the vendored 3.11 "
                    "module was checked against the standard library on 3.11 and 3.12 only")
    _, text, result = _run_on_nocopy(RUNNER, tmp_path / "outcome.json")
    outcome: dict[str, str] = {t: v for t, v in result["outcome"].items() if not t.startswith("(run)")}
    assert result["vendored"] == (not own), result["files"]
    wrong = {t: (got, expected_outcome(t)) for t, got in outcome.items() if got not in expected_outcome(t)}
    assert wrong == {}, text[-20000:]
    # The same tests under each start method, and some of every family.
    by_method: dict[str, set[str]] = {m: set() for m in METHODS}
    for t in outcome:
        method, key = method_and_key(t)
        by_method[method].add(key)
    assert by_method["Fork"] == by_method["Forkserver"] == by_method["Spawn"], by_method
    families = {t.split(".")[0] for t in by_method["Spawn"]}
    assert {"ProcessPoolExecutorTest", "ProcessPoolShutdownTest", "ExecutorDeadlockTest", "WaitTest",
            "AsCompletedTest", "InitializerTest", "FailingInitializerTest"} <= families, families
    # Each deviation is really met, and every other test the stdlib passes passes.
    tolerated = sum(v == GH125451 for v in outcome.values())
    errors = sum(v.startswith(("error", "fail")) for v in outcome.values())
    assert errors == len(DEVIATIONS) * len(METHODS)
    _check_counts("executor", outcome, tolerated, len(DEVIATIONS) * len(METHODS))
    _check_run(result, text)


# -- nocopy.Pool -------------------------------------------------------------------
MP_POOL_CLASSES = ("WithProcessesTestPool", "WithProcessesTestPoolWorkerErrors", "WithProcessesTestPoolWorkerLifetime")

# Differences by design that these tests meet: none. nocopy.Pool differs from
# the stdlib's Pool where no test of this file looks (docs/how-to/executor.md):
# - workers ignore SIGINT (the caller handles Ctrl-C; with/terminate() stops them);
# - workers exit as soon as the caller process is gone;
# - an argument that fails to unpickle in the worker, or a result that fails to
#   unpickle in the caller, fails that task only (the stdlib loses the worker
#   or its result handler thread, and the pool's map() or get() hangs).
MP_POOL_DEVIATIONS: dict[str, str] = {}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2-4 min on this machine (README)
def test_cpythons_multiprocessing_pool_tests_pass_on_nocopy_pool_except_documented_deviations(tmp_path: Path) -> None:
    if not _ships("_test_multiprocessing.py") and sys.version_info >= (3, 12):
        pytest.skip(f"Python {PYTHON}'s install ships no _test_multiprocessing.py, and the vendored "
                    "one is CPython 3.11's")
    _, text, result = _run_on_nocopy(MP_POOL_RUNNER, tmp_path / "outcome.json")
    outcome: dict[str, str] = {t: v for t, v in result["outcome"].items() if not t.startswith("(run)")}
    methods = {t.split(".")[1].removeprefix("test_multiprocessing_") for t in outcome}
    assert methods == {"fork", "forkserver", "spawn"}
    assert {t.split(".")[-2] for t in outcome} == set(MP_POOL_CLASSES)
    by_method = {m: {".".join(t.split(".")[-2:]) for t in outcome if f".test_multiprocessing_{m}." in t} for m in methods}
    assert by_method["fork"] == by_method["forkserver"] == by_method["spawn"], by_method
    expected = {t: MP_POOL_DEVIATIONS.get(".".join(t.split(".")[-2:]), "ok") for t in outcome}
    wrong = {t: (got, expected[t]) for t, got in outcome.items() if got != expected[t]}
    assert wrong == {}, text[-20000:]
    _check_counts("pool", outcome, 0, 0)
    _check_run(result, text)
