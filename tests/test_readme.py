"""Every Python example in README.md runs as written (the quick start: test_public_api.py).

Each block runs as a script in a fresh interpreter, in its own session, from a
scratch directory; ``>>>`` blocks are run as doctests, so their printed output
must match too. The Ray examples start their own local Ray instance, as a
reader's would.
"""

from __future__ import annotations

import doctest
import importlib.util
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[tuple[str, int, str]]:
    """(section heading, line number, code) of every ```python block."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        before = text[: m.start()]
        headings = re.findall(r"^#+ (.+)$", before, re.M)
        out.append((headings[-1] if headings else "", before.count("\n") + 1, m.group(1)))
    return out


BLOCKS = _blocks()
# A block without an import (and not a doctest) is a signature, not an example:
# only parallel_map's is allowed, so a new snippet that cannot run fails here.
SIGNATURES = [b for b in BLOCKS if "import " not in b[2] and ">>>" not in b[2]]
EXAMPLES = [b for b in BLOCKS if b not in SIGNATURES and b[0] != "Quick start"]


def test_only_the_parallel_map_signature_is_not_runnable() -> None:
    assert [code.split("(")[0] for _, _, code in SIGNATURES] == ["results = nocopy.parallel_map"]
    assert len(EXAMPLES) >= 5


def _run_script(code: str, cwd: Path, shm: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a reader's fresh shell
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # The cleanup example reclaims dead owners' posix segments: only in a directory of its own.
    env["NOCOPY_SHM_DIR"] = str(shm)
    script = cwd / "example.py"
    script.write_text(code)
    p = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"README example timed out after {timeout} s\n{out}\n{err}")
    finally:
        # Whatever the example started in its session (Ray's daemons) goes with it.
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == p.pid:
                    proc.kill()
            except (OSError, psutil.Error):
                pass
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _params() -> list[object]:
    params = []
    for heading, line, code in EXAMPLES:
        uses_ray = "ray" in code
        marks = [pytest.mark.slow] if uses_ray else []
        if uses_ray and importlib.util.find_spec("ray") is None:
            marks.append(pytest.mark.skip(reason="ray is not installed"))
        params.append(pytest.param(code, id=f"line{line}-{heading}", marks=marks))
    return params


@pytest.mark.parametrize("code", _params())
def test_readme_example_runs(code: str, tmp_path: Path) -> None:
    if ">>>" in code:
        test = doctest.DocTestParser().get_doctest(code, {}, "README", str(README), 0)
        report = io.StringIO()
        runner = doctest.DocTestRunner()
        runner.run(test, out=report.write)
        assert runner.failures == 0, report.getvalue()
        assert runner.tries > 0
        return
    shm = Path(tempfile.mkdtemp(prefix="nocopytest-", dir="/dev/shm"))
    try:
        proc = _run_script(code, tmp_path, shm, timeout=240)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
