"""Running the code blocks of Markdown files (test_readme.py, test_docs.py), and commands in a session of their own.

A ```` ```python ```` block runs as a script in a fresh interpreter, in its own
session, from a scratch directory, with ``NOCOPY_SHM_DIR`` a directory of its
own -- once under each start method (fork, spawn, forkserver): the script is a
real file run as ``__main__`` after ``multiprocessing.set_start_method``, so an
example without ``if __name__ == "__main__":`` or with a worker function a
child cannot import fails here as it fails on macOS (spawn) or Python 3.14
(forkserver). A block holding ``>>>`` prompts runs as a doctest, so its printed
output must match too.
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


# Every start method a reader's machine may default to: fork (Linux before 3.14),
# spawn (macOS, Windows), forkserver (Linux from 3.14, and nocopy's pools).
START_METHODS = ("fork", "spawn", "forkserver")


def uses_torch(code: str) -> bool:
    return re.search(r"^\s*(import|from)\s.*\btorch\b", code, re.M) is not None


def param(block: Block, start_method: str | None = None) -> object:
    """A pytest param for *block* (under *start_method*): slow (and skipped without Ray) when it uses
    Ray; skipped without torch when it imports torch (the extra nocopy[torch] is not installed on
    every Python)."""
    marks: list[pytest.MarkDecorator] = []
    if uses_torch(block.code) and importlib.util.find_spec("torch") is None:
        marks.append(pytest.mark.skip(reason="torch is not installed"))
    if uses_ray(block.code):
        marks.append(pytest.mark.slow)
        if importlib.util.find_spec("ray") is None:
            marks.append(pytest.mark.skip(reason="ray is not installed"))
    if start_method is None:
        return pytest.param(block, id=block.id, marks=marks)
    return pytest.param(block, start_method, id=f"{block.id}-{start_method}", marks=marks)


def params(examples: list[Block]) -> list[object]:
    """(block, start method) params: a doctest once (it runs in the test's process), a Ray
    example once under the default (Ray starts its workers its own way), every other
    script under each start method."""
    out = []
    for b in examples:
        if ">>>" in b.code or uses_ray(b.code):
            out.append(param(b, "default"))
        else:
            out.extend(param(b, m) for m in START_METHODS)
    return out


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


def script_command(script: Path, start_method: str = "default") -> list[str]:
    """``python script`` with *start_method* made the default of multiprocessing first.

    runpy runs the file as ``__main__`` with its ``__file__``, as ``python script`` does, so a
    spawned or forkserver child re-imports it as ``__mp_main__`` exactly as it would a reader's.
    """
    if start_method == "default":
        return [sys.executable, str(script)]
    if start_method not in START_METHODS:
        raise ValueError(f"unknown start method {start_method!r}")
    wrapper = (f"import multiprocessing, runpy, sys; multiprocessing.set_start_method({start_method!r}); "
               f"sys.argv = [{str(script)!r}]; runpy.run_path({str(script)!r}, run_name='__main__')")
    return [sys.executable, "-c", wrapper]


def run_script(code: str, cwd: Path, shm: Path, timeout: float,
               start_method: str = "default") -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(code)
    return run_in_session(script_command(script, start_method), timeout, env=reader_env(shm), cwd=cwd)


def run_block(block: Block, tmp_path: Path, timeout: float = 240, start_method: str = "default") -> None:
    """Run *block* as a doctest (``>>>``) or as a script under *start_method*; fail the test
    if it fails."""
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
        proc = run_script(block.code, tmp_path, shm, timeout=timeout, start_method=start_method)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    assert proc.returncode == 0, (f"under start method {start_method}:\n"
                                  + proc.stdout[-2000:] + proc.stderr[-3000:])
    # A warning the page does not show (pandas' ChainedAssignmentError, a DeprecationWarning)
    # is what a reader who types the example sees first. Ray's daemons log their own noise.
    # warnings.showwarning's format: "<file>:<line>: <Category>: <message>".
    if not uses_ray(block.code):
        warned = re.search(r"^\S.*:\d+: [A-Z]\w*: ", proc.stderr, re.M)
        assert warned is None, f"under start method {start_method}:\n{proc.stderr[-3000:]}"
