"""Running the code blocks of Markdown files (test_readme.py, test_docs.py), and commands in a session of their own.

A ```` ```python ```` block runs as a script in a fresh interpreter, in its own
session, from a scratch directory, with ``NOCOPY_SHM_DIR`` a directory of its
own; a block holding ``>>>`` prompts runs as a doctest, so its printed output
must match too.
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
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

# A fence at the start of a line (indented inside admonitions), its info string, its body.
_FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    heading: str  # the last heading above it
    info: str  # the fence's info string: "python", "{.python .norun}", "sh", ...
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}:line{self.line}-{self.heading}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of *path*, in order."""
    text = path.read_text()
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()]
        # Comments in earlier code blocks are not headings.
        headings = re.findall(r"^#+ (.+)$", _FENCE.sub("", before), re.M)
        indent = len(m["indent"])
        code = "".join(line[indent:] for line in m["body"].splitlines(keepends=True))
        out.append(Block(path, before.count("\n") + 1, headings[-1] if headings else "",
                         m["info"].strip(), code))
    return out


def uses_ray(code: str) -> bool:
    return re.search(r"\bray\b", code) is not None


def param(block: Block) -> object:
    """A pytest param for *block*: slow (and skipped without Ray) when it uses Ray."""
    marks: list[pytest.MarkDecorator] = []
    if uses_ray(block.code):
        marks.append(pytest.mark.slow)
        if importlib.util.find_spec("ray") is None:
            marks.append(pytest.mark.skip(reason="ray is not installed"))
    return pytest.param(block, id=block.id, marks=marks)


def reader_env(shm: Path) -> dict[str, str]:
    """A reader's fresh shell: no Ray cluster to join; nocopy's posix segments in *shm*."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # The cleanup examples reclaim dead owners' posix segments: only in a directory of their own.
    env["NOCOPY_SHM_DIR"] = str(shm)
    return env


def kill_session(sid: int) -> None:
    """SIGKILL whatever still runs in session *sid* (daemons an example left behind, e.g. Ray's)."""
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                proc.kill()
        except (OSError, psutil.Error):
            pass


def run_in_session(
    args: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run *args* in a session of their own; the test fails on timeout, and whatever is left
    running in that session afterwards (Ray's daemons) is killed.

    The returned object's ``args`` is ``(pid, args)``.
    """
    p = subprocess.Popen(args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(args)} timed out after {timeout} s\n{out}\n{err}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        kill_session(p.pid)
    return subprocess.CompletedProcess((p.pid, args), p.returncode, out, err)


def run_script(code: str, cwd: Path, shm: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(code)
    return run_in_session([sys.executable, str(script)], timeout, env=reader_env(shm), cwd=cwd)


def run_block(block: Block, tmp_path: Path, timeout: float = 240) -> None:
    """Run *block* as a doctest (``>>>``) or as a script; fail the test if it fails."""
    if ">>>" in block.code:
        test = doctest.DocTestParser().get_doctest(block.code, {}, block.id, str(block.path), 0)
        report = io.StringIO()
        runner = doctest.DocTestRunner()
        runner.run(test, out=report.write)
        assert runner.failures == 0, report.getvalue()
        assert runner.tries > 0
        return
    shm = Path(tempfile.mkdtemp(prefix="nocopytest-", dir="/dev/shm"))
    try:
        proc = run_script(block.code, tmp_path, shm, timeout=timeout)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
