# Vendored verbatim (below this header) from CPython 3.11's Lib/test/test_multiprocessing_forkserver.py,
# as shipped in Debian's libpython3.11-testsuite 3.11.2-6+deb12u8.
# Copyright (c) 2001-2023 Python Software Foundation; All Rights Reserved.
# Licensed under the PSF License Agreement (Python Software Foundation License
# Version 2): see ../LICENSE-PSF. Not modified; see ../README.md
# for how nocopy runs its Pool tests against nocopy.Pool.
import unittest
import test._test_multiprocessing

import sys
from test import support

if support.PGO:
    raise unittest.SkipTest("test is not helpful for PGO")

if sys.platform == "win32":
    raise unittest.SkipTest("forkserver is not available on Windows")

test._test_multiprocessing.install_tests_in_module_dict(globals(), 'forkserver')

if __name__ == '__main__':
    unittest.main()
