"""Run CPython's own multiprocessing Pool tests on nocopy.Pool (or the stdlib's, to compare).

Usage: ``python run_mp_pool_tests.py {nocopy,stdlib} OUT.json [SUBSTRING]``

Runs the ``WithProcessesTestPool``, ``WithProcessesTestPoolWorkerErrors`` and
``WithProcessesTestPoolWorkerLifetime`` classes (the processes flavour of
``_TestPool``, ``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime``) that the
vendored ``test/test_multiprocessing_{fork,forkserver,spawn}.py`` build from
``test/_test_multiprocessing.py``, and writes each test's outcome to OUT.json
as ``run_process_pool_tests.py`` does. With ``nocopy``,
``multiprocessing.pool.Pool`` is nocopy's before the test modules are
imported: ``multiprocessing.Pool()`` and every context's ``.Pool()`` import it
from there when called, so every pool the tests build is nocopy's. The test
that runs a script in a fresh interpreter gets the same set-up prepended.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unittest
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ("test.test_multiprocessing_fork", "test.test_multiprocessing_forkserver", "test.test_multiprocessing_spawn")
CLASSES = re.compile(r"^WithProcessesTestPool(WorkerErrors|WorkerLifetime)?$")


def _prelude(which: str) -> str:
    lines = [f"import sys; sys.path.insert(0, {HERE!r})"]
    if which == "nocopy":
        import nocopy

        src = os.path.dirname(os.path.dirname(os.path.abspath(nocopy.__file__)))
        lines += [
            f"sys.path.insert(0, {src!r})",
            "import multiprocessing.pool, nocopy",
            "multiprocessing.pool.Pool = nocopy.Pool",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    which, out = sys.argv[1], sys.argv[2]
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    if which not in ("nocopy", "stdlib"):
        raise SystemExit(f"first argument: nocopy or stdlib, not {which!r}")
    if "test" in sys.modules:
        raise SystemExit("the 'test' package was imported before this runner could put its own first")
    sys.path.insert(0, HERE)
    # Python 3.11's forkserver ignores the caller's sys.path: it preloads (and
    # its workers unpickle the test classes from) test.test_multiprocessing_forkserver,
    # which only this directory's stand-in ``test`` package holds.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    from run_process_pool_tests import _Recorder

    prelude = _prelude(which)
    if which == "nocopy":
        import multiprocessing.pool

        import nocopy

        multiprocessing.pool.Pool = nocopy.Pool  # type: ignore[misc]

    from test.support import script_helper

    def in_the_same_setup(run: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if len(args) >= 2 and args[0] == "-c":
                args = ("-c", prelude + args[1], *args[2:])
            return run(*args, **kwargs)

        return wrapped

    script_helper.assert_python_ok = in_the_same_setup(script_helper.assert_python_ok)
    script_helper.assert_python_failure = in_the_same_setup(script_helper.assert_python_failure)

    import importlib
    import multiprocessing

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in sorted(vars(module)):
            cls = getattr(module, name)
            if CLASSES.match(name) and isinstance(cls, type) and issubclass(cls, unittest.TestCase):
                for test in loader.loadTestsFromTestCase(cls):
                    if only in test.id():
                        suite.addTest(test)
    if which == "nocopy":
        import nocopy

        probe = multiprocessing.Pool(1)
        try:
            assert type(probe) is nocopy.Pool, type(probe)
        finally:
            probe.terminate()
            probe.join()
    outcome: dict[str, str] = {}

    class Recorder(_Recorder):
        pass

    Recorder.outcome = outcome
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Recorder)
    runner.run(suite)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(outcome, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
