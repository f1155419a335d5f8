"""Stands in for CPython's ``test`` package, which this Python may ship without its test modules.

The vendored ``test_concurrent_futures`` imports (and its subprocess scripts
and worker processes unpickle) itself as ``test.test_concurrent_futures``;
everything else it needs (``test.support``...) is this Python's own, found
through the stdlib's ``test`` directory appended to this package's path.
"""

import os
import sysconfig

__path__.append(os.path.join(sysconfig.get_path("stdlib"), "test"))
