"""Run CPython's own multiprocessing Pool tests on nocopy.Pool (or the stdlib's, to compare).

Usage: ``python run_mp_pool_tests.py {nocopy,stdlib} OUT.json [SUBSTRING] [--timeout S]``

Runs the ``WithProcessesTestPool``, ``WithProcessesTestPoolWorkerErrors`` and
``WithProcessesTestPoolWorkerLifetime`` classes (the processes flavour of
``_TestPool``, ``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime`` of this
Python's own ``test/_test_multiprocessing.py``, or the vendored 3.11 one where
it ships none) under each start method: in
``test.test_multiprocessing_{fork,forkserver,spawn}.test_processes`` where the
interpreter ships those packages (3.13), else in the vendored
``test/test_multiprocessing_{fork,forkserver,spawn}.py`` wrappers. Writes each
test's outcome to OUT.json and watches for hangs as
``run_process_pool_tests.py`` does. With ``nocopy``,
``multiprocessing.pool.Pool`` is nocopy's before the test modules are
imported: ``multiprocessing.Pool()`` and every context's ``.Pool()`` import it
from there when called, so every pool the tests build is nocopy's. The test
that runs a script in a fresh interpreter gets the same set-up prepended.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from run_process_pool_tests import STDLIB_TESTS, run_child, start, supervise, tests_of

METHODS = ("fork", "forkserver", "spawn")
CLASSES = re.compile(r"^WithProcessesTestPool(WorkerErrors|WorkerLifetime)?$")
NOCOPY_SETUP = ("import multiprocessing.pool, nocopy", "multiprocessing.pool.Pool = nocopy.Pool")


def pool_modules() -> list[str]:
    """Per start method, the module that builds the processes test classes."""
    names = []
    for method in METHODS:
        package = os.path.join(STDLIB_TESTS, f"test_multiprocessing_{method}")
        if os.path.isfile(os.path.join(package, "test_processes.py")):
            names.append(f"test.test_multiprocessing_{method}.test_processes")
        else:
            names.append(f"test.test_multiprocessing_{method}")
    return names


def main() -> int:
    args = start(NOCOPY_SETUP)
    if args.child is None:
        return supervise(__file__, args)
    modules = [importlib.import_module(m) for m in pool_modules()]
    suite = tests_of(modules, CLASSES, args.only)
    if args.which == "nocopy":
        import multiprocessing

        import nocopy

        probe = multiprocessing.Pool(1)
        try:
            assert type(probe) is nocopy.Pool, type(probe)
        finally:
            probe.terminate()
            probe.join()
    return run_child(args, [*modules, sys.modules["test._test_multiprocessing"]], suite)


if __name__ == "__main__":
    sys.exit(main())
