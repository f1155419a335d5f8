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

import importlib
import os
import re
import sys

from run_process_pool_tests import HERE, record, start, tests_of

MODULES = ("test.test_multiprocessing_fork", "test.test_multiprocessing_forkserver", "test.test_multiprocessing_spawn")
CLASSES = re.compile(r"^WithProcessesTestPool(WorkerErrors|WorkerLifetime)?$")
NOCOPY_SETUP = ("import multiprocessing.pool, nocopy", "multiprocessing.pool.Pool = nocopy.Pool")


def main() -> int:
    which, out, only = start(NOCOPY_SETUP)
    # Python 3.11's forkserver ignores the caller's sys.path: it preloads (and
    # its workers unpickle the test classes from) test.test_multiprocessing_forkserver,
    # which only this directory's stand-in ``test`` package holds.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    suite = tests_of([importlib.import_module(m) for m in MODULES], CLASSES, only)
    if which == "nocopy":
        import multiprocessing

        import nocopy

        probe = multiprocessing.Pool(1)
        try:
            assert type(probe) is nocopy.Pool, type(probe)
        finally:
            probe.terminate()
            probe.join()
    return record(suite, out)


if __name__ == "__main__":
    sys.exit(main())
