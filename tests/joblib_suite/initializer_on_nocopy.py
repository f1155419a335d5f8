"""joblib's initializer tests with the nocopy backend (run by tests/test_joblib_suite.py).

joblib parametrizes ``test_initializer_context`` and ``test_initializer_parallel`` with its own
process backends only (``["multiprocessing", "loky"]``): these call joblib's own test functions
with ``"nocopy"``, with joblib's parameters otherwise.
"""

from __future__ import annotations

import joblib
import pytest
from joblib.test import test_parallel as joblib_tests


@pytest.mark.parametrize("n_jobs", [2, 4])
@pytest.mark.parametrize("context", ["parallel_config", "parallel_backend"])
def test_initializer_context_on_nocopy(n_jobs: int, context: str) -> None:
    joblib_tests.test_initializer_context(n_jobs, "nocopy", getattr(joblib, context))


@pytest.mark.parametrize("n_jobs", [2, 4])
def test_initializer_parallel_on_nocopy(n_jobs: int) -> None:
    joblib_tests.test_initializer_parallel(n_jobs, "nocopy")
