"""Run CPython's own ProcessPoolExecutor tests on nocopy's executor (or the stdlib's, to compare).

Usage: ``python run_process_pool_tests.py {nocopy,stdlib} OUT.json [SUBSTRING]``

Runs every ProcessPool{Fork,Forkserver,Spawn}* class of the vendored
``test/test_concurrent_futures.py`` under unittest and writes
``{test id: "ok" | "fail: Exc" | "error: Exc" | "skip: reason" | "expected failure" | "unexpected success"}``
to OUT.json (``Exc``: the type of the exception that failed the test).
With ``nocopy``, ``concurrent.futures.ProcessPoolExecutor`` (and
``concurrent.futures.process.ProcessPoolExecutor``) are nocopy's before the
test module is imported, so every test class builds nocopy's executor. The
few tests that run a script in a fresh interpreter (``assert_python_ok``,
isolated mode: no PYTHONPATH) get the same set-up prepended to the script,
so they exercise nocopy too.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unittest
from types import ModuleType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = re.compile(r"^ProcessPool(Fork|Forkserver|Spawn)[A-Z]")


NOCOPY_SETUP = (
    "import concurrent.futures, concurrent.futures.process, nocopy",
    "concurrent.futures.ProcessPoolExecutor = nocopy.ProcessPoolExecutor",
    "concurrent.futures.process.ProcessPoolExecutor = nocopy.ProcessPoolExecutor",
)


def prelude(which: str, setup: tuple[str, ...]) -> str:
    """The lines that make a fresh interpreter import this directory's ``test`` (and, with
    ``nocopy``, this nocopy with *setup* run)."""
    lines = [f"import sys; sys.path.insert(0, {HERE!r})"]
    if which == "nocopy":
        import nocopy

        src = os.path.dirname(os.path.dirname(os.path.abspath(nocopy.__file__)))
        lines += [f"sys.path.insert(0, {src!r})", *setup]
    return "\n".join(lines) + "\n"


class _Recorder(unittest.TextTestResult):
    outcome: dict[str, str]

    def _set(self, test: Any, what: str) -> None:
        self.outcome[test.id()] = what

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._set(test, "ok")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._set(test, f"fail: {err[0].__name__}")

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        # setUpModule/setUpClass errors come as a pseudo-test: recorded under its description.
        self._set(test, f"error: {err[0].__name__}")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._set(test, f"skip: {reason}")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._set(test, "expected failure")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._set(test, "unexpected success")


def start(setup: tuple[str, ...]) -> tuple[str, str, str]:
    """Read ``{nocopy,stdlib} OUT.json [SUBSTRING]``; make this process and every script
    the tests run in a fresh interpreter import this directory's ``test`` and, with
    ``nocopy``, run *setup* first. Before any test module is imported."""
    which, out = sys.argv[1], sys.argv[2]
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    if which not in ("nocopy", "stdlib"):
        raise SystemExit(f"first argument: nocopy or stdlib, not {which!r}")
    if "test" in sys.modules:
        raise SystemExit("the 'test' package was imported before this runner could put its own first")
    code = prelude(which, setup)
    exec(code, {})  # here: exactly the set-up the scripts get

    from test.support import script_helper

    def in_the_same_setup(run: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if len(args) >= 2 and args[0] == "-c":
                args = ("-c", code + args[1], *args[2:])
            return run(*args, **kwargs)

        return wrapped

    script_helper.assert_python_ok = in_the_same_setup(script_helper.assert_python_ok)
    script_helper.assert_python_failure = in_the_same_setup(script_helper.assert_python_failure)
    return which, out, only


def tests_of(modules: list[ModuleType], classes: re.Pattern[str], only: str) -> unittest.TestSuite:
    """The tests of *modules*' TestCase classes named like *classes* whose id contains *only*."""
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for module in modules:
        for name in sorted(vars(module)):
            cls = getattr(module, name)
            if classes.match(name) and isinstance(cls, type) and issubclass(cls, unittest.TestCase):
                for test in loader.loadTestsFromTestCase(cls):
                    if only in test.id():
                        suite.addTest(test)
    return suite


def record(suite: unittest.TestSuite, out: str) -> int:
    """Run *suite* and write each test's outcome to *out*."""
    outcome: dict[str, str] = {}

    class Recorder(_Recorder):
        pass

    Recorder.outcome = outcome
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Recorder)
    runner.run(suite)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(outcome, f, indent=1, sort_keys=True)
    return 0


def main() -> int:
    which, out, only = start(NOCOPY_SETUP)
    import test.test_concurrent_futures as module

    if which == "nocopy":
        import nocopy

        assert module.futures.ProcessPoolExecutor is nocopy.ProcessPoolExecutor
    return record(tests_of([module], CLASSES, only), out)


if __name__ == "__main__":
    sys.exit(main())
