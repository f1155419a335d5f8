"""joblib 1.6's own tests pass with nocopy as joblib's default backend.

As tests/test_stdlib_conformance.py runs CPython's pool tests, this runs the tests joblib
ships in its package (``joblib/test/``: every module that runs ``Parallel``, dask's aside) in
subprocesses, with nocopy made
joblib's default backend the way joblib's CI switches it (``JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND``,
applied by the plugin tests/joblib_suite/nocopy_default_backend.py in place of joblib's
unshipped conftest.py). The plugin selects the fair subset; tests/joblib_suite/README.md lists
and classifies the rest. Every fair test must pass (joblib's own skips aside).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

joblib = pytest.importorskip("joblib")

SUITE = Path(__file__).resolve().parent / "joblib_suite"
SRC = Path(__file__).resolve().parent.parent / "src"
# joblib's own skips in this selection: a test for machines without multiprocessing, one
# needing joblib's compiled OpenMP helper, and parametrizations its own code cannot pickle.
# Two runs, each well under the per-test timeout: (modules, minimum passed: joblib 1.6.0 here
# passes 224 and 162; a much smaller count means tests went missing).
RUNS = {
    # With joblib's initializer tests called with "nocopy" (joblib_suite/initializer_on_nocopy.py).
    "parallel": (["joblib.test.test_parallel", str(SUITE / "initializer_on_nocopy.py")], 200),
    "memory-config-memmapping": (
        [f"joblib.test.{m}" for m in (
            "test_memory", "test_config", "test_memmapping", "test_func_inspect", "test_backports",
            "test_store_backends", "test_missing_multiprocessing",
        )],
        150,
    ),
}
MAX_SKIPPED = 12


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_joblibs_own_tests_pass_on_nocopy(tmp_path: Path, run: str) -> None:
    modules, min_passed = RUNS[run]
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # joblib's tests, not this project's settings
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(SUITE), os.environ.get("PYTHONPATH", "")]),
        "JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND": "nocopy",
    }
    cmd = [
        sys.executable, "-m", "pytest", "--pyargs", *modules, "-p", "nocopy_default_backend",
        # This empty ini, whatever the paths: not this project's pyproject.toml (filterwarnings=error).
        "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
        "-p", "no:cacheprovider", "-q", "-rfE", "--timeout", "120",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", summary)}
    assert out.returncode == 0 and not counts.get("failed") and not counts.get("error"), (
        f"{summary}\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
    )
    assert counts.get("passed", 0) >= min_passed, summary
    assert counts.get("skipped", 0) <= MAX_SKIPPED, summary

