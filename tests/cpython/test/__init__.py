"""Stands in for CPython's ``test`` package, whose test modules this Python may not ship.

This Python's own ``test`` directory comes first on this package's path, so
``test.support`` and every test module the interpreter ships are its own (its
own tests judge its own standard library). The modules vendored here are found
only where the interpreter ships none of that name: CPython 3.11's
``test_concurrent_futures`` and the ``test_multiprocessing_{fork,forkserver,spawn}``
wrappers (see ../README.md). Worker processes and the scripts the tests run in
a fresh interpreter import them under the same names.
"""

import os
import sysconfig

__path__.insert(0, os.path.join(sysconfig.get_path("stdlib"), "test"))
