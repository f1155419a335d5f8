"""The documentation site (docs/): every example runs, and the Ray cluster recipe works as written.

* Every ```` ```python ```` block on every page runs as a script under each
  start method, fork, spawn and forkserver (``>>>`` blocks as doctests), with
  the machinery of test_readme.py (_mdexamples.py).
  ```` ```{.python .norun title="..."} ```` blocks are not run: API that has not
  landed yet, and signatures. Any other spelling of a Python fence fails here,
  so no example stops running unnoticed.
* The build's hook (docs/_hooks.py) that makes ``mkdocs build --strict`` fail
  on an undocumented or unrendered public name is checked against a tree
  missing one of each.
* The Ray cluster recipe (docs/how-to/ray-cluster.md) runs command by command
  on one machine: a head and a second node on 127.0.0.1, each with its own
  home directory (so the token really travels from one to the other), private
  ports and a private Ray temp directory. Both nodes are stopped by the pids
  this test started, never with ``ray stop`` (which stops every Ray on the
  machine).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from _mdexamples import Block, blocks, kill_session, params, run_block

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
NORUN = re.compile(r"^\{\s*\.python\s+\.norun(\s+title=\"[^\"]+\")?\s*\}$")
EXAMPLES = [b for b in ALL_BLOCKS if b.info == "python"]
NOT_RUN = [b for b in ALL_BLOCKS if NORUN.match(b.info)]


def test_every_python_block_either_runs_or_is_marked_norun_with_a_reason() -> None:
    odd = [(b.id, b.info) for b in ALL_BLOCKS
           if "py" in b.info.lower() and b not in EXAMPLES and b not in NOT_RUN]
    assert odd == []
    assert [b.id for b in NOT_RUN if "title=" not in b.info] == []
    assert len(PAGES) >= 20 and len(EXAMPLES) >= 20


@pytest.mark.parametrize(("block", "start_method"), params(EXAMPLES))
def test_docs_example_runs(block: Block, start_method: str, tmp_path: Path) -> None:
    run_block(block, tmp_path, start_method=start_method)


# --- the build's hook ---------------------------------------------------------------------------


def _hooks() -> Any:
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    spec = importlib.util.spec_from_file_location("nocopy_docs_hooks", DOCS / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hook_warnings(hooks: Any, docs_dir: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.nocopy"):
        hooks.on_pre_build({"docs_dir": str(docs_dir)})
    return [r.getMessage() for r in caplog.records]


def test_hook_accepts_the_site_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    assert _hook_warnings(_hooks(), DOCS, caplog) == []


def test_hook_fails_the_build_on_a_public_name_missing_from_the_reference(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hooks = _hooks()
    shutil.copytree(DOCS / "reference", tmp_path / "reference")
    page = tmp_path / "reference" / "nocopy.md"
    page.write_text(page.read_text().replace("::: nocopy.zeros\n", ""))
    assert _hook_warnings(hooks, tmp_path, caplog) == [
        "public name nocopy.zeros is not on any API reference page (docs/reference/*.md)"]


def test_hook_fails_the_build_on_a_public_name_without_a_docstring(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = _hooks()
    shutil.copytree(ROOT / "src" / "nocopy", tmp_path / "src" / "nocopy")
    # Wherever the package keeps it.
    [source] = [f for f in (tmp_path / "src").rglob("*.py") if "\ndef cleanup(" in f.read_text()]
    text = source.read_text()
    start = text.index("def cleanup(")
    doc = text.index('"""', start)
    end = text.index('"""', doc + 3) + 3
    source.write_text(text[:doc] + "pass" + text[end:])
    monkeypatch.setattr(hooks, "ROOT", tmp_path)
    [warning] = _hook_warnings(hooks, DOCS, caplog)
    assert warning.startswith("public name nocopy.cleanup has no docstring")


# --- the Ray cluster recipe ---------------------------------------------------------------------

RECIPE = DOCS / "how-to" / "ray-cluster.md"


def _recipe() -> tuple[list[str], str]:
    """The recipe's shell commands (comments dropped) and my_job.py."""
    page = blocks(RECIPE)
    [sh] = [b for b in page if b.info == "sh" and "ray start --head" in b.code]
    [job] = [b for b in page if b.info == "python" and b.code.startswith("# my_job.py\n")]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in sh.code.splitlines()]
    return [c for c in commands if c and not c.startswith("#")], job.code


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _isolation_flags(head: bool, temp_dir: Path) -> str:
    """What a second Ray on a shared machine needs: loopback, own ports, own temp dir."""
    ports = iter(_free_ports(5))
    flags = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={next(ports)}",
             f"--dashboard-agent-grpc-port={next(ports)}",
             f"--metrics-export-port={next(ports)}",
             f"--runtime-env-agent-port={next(ports)}"]
    if head:
        flags += ["--include-dashboard=false", f"--dashboard-port={next(ports)}",
                  f"--temp-dir={temp_dir}"]
    return " ".join(flags)


class _Machine:
    """A 'node' of the recipe: a home directory of its own on this machine."""

    def __init__(self, home: Path, work: Path, started: list[int]) -> None:
        home.mkdir()
        self.home, self.work, self.started = home, work, started

    def run(self, command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        env.update(HOME=str(self.home), RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        p = subprocess.Popen(["bash", "-c", command], cwd=self.work, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.started.append(p.pid)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(p.pid)
            out, _ = p.communicate()
            pytest.fail(f"{command!r} timed out after {timeout} s\n{out[-3000:]}")
        return subprocess.CompletedProcess(command, p.returncode, out, "")


@pytest.fixture
def ray_sandbox() -> Iterator[tuple[Path, list[int]]]:
    """A private Ray temp dir and the list of session leaders started; everything is killed after."""
    pytest.importorskip("ray")
    # Short: Ray's UNIX socket paths live under it (108-byte limit).
    temp = Path(tempfile.mkdtemp(prefix="nocopy-ray-", dir="/tmp"))
    started: list[int] = []
    try:
        yield temp, started
    finally:
        # Ray's daemons stay in the session of the `ray start` that made them, or name our temp dir.
        victims = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in started or any(str(temp) in a for a in proc.cmdline()):
                    victims.append(proc)
                    victims.extend(proc.children(recursive=True))
            except (OSError, psutil.Error):
                pass
        for proc in victims:
            try:
                proc.kill()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(victims, timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
        assert alive == [], f"Ray processes survived SIGKILL: {alive}"


@pytest.mark.slow
def test_ray_cluster_recipe_runs_as_written(ray_sandbox: tuple[Path, list[int]],
                                            tmp_path: Path) -> None:
    temp, started = ray_sandbox
    commands, job = _recipe()
    (tmp_path / "my_job.py").write_text(job)
    head = _Machine(tmp_path / "head-home", tmp_path, started)
    node = _Machine(tmp_path / "node-home", tmp_path, started)
    [gcs_port] = _free_ports(1)
    here = head  # the recipe's commands run on the head until it turns to the other nodes
    seen = []
    for command in commands:
        command = command.replace("HEAD_IP", "127.0.0.1").replace("6379", str(gcs_port))
        if m := re.fullmatch(r"ssh NODE '(.+)'", command):
            here = node
            result = node.run(m[1])
            seen.append("ssh")
        elif m := re.fullmatch(r"scp -p ~/(\S+) NODE:(\S+)", command):
            here = node
            shutil.copy2(head.home / m[1], node.home / m[2])  # scp -p: mode and times kept
            seen.append("scp")
            continue
        else:
            if " ray start " in f" {command} ":
                command += " " + _isolation_flags("--head" in command, temp)
            result = here.run(command)
            seen.append(command.split(" --")[0])
        assert result.returncode == 0, f"{command!r} failed:\n{result.stdout[-4000:]}"
        assert "AuthenticationError" not in result.stdout, result.stdout[-4000:]
    assert seen == [
        "ray get-auth-token",
        "RAY_AUTH_MODE=token ray start",
        "ssh",
        "scp",
        "RAY_AUTH_MODE=token ray start",
        f"RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:{gcs_port} python my_job.py",
    ], "the recipe changed: teach this test its new steps"
    assert "1000000 rows over 8 chunks" in result.stdout, result.stdout[-4000:]
    # The job really ran on a two-node cluster, reached with the token the node was given.
    count = node.run(f"RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:{gcs_port} python -c "
                     "'import ray; ray.init(); print(\"alive\", sum(n[\"Alive\"] for n in ray.nodes()))'")
    assert "alive 2" in count.stdout, count.stdout[-4000:]


def test_docstrings_are_numpy_style_for_the_reference() -> None:
    """mkdocstrings renders numpy-style sections; reST's ``Example::`` blocks and ``:func:`` roles
    would show up literally on the API pages, so the source must not use them."""
    import re

    src = Path(__file__).resolve().parent.parent / "src" / "nocopy"
    rest = re.compile(r"^\s*Examples?\b[^\n]*::\s*$|:(?:func|class|meth|exc|data|attr|mod|obj):`", re.M)
    offenders = [
        f"{path.relative_to(src)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in sorted(src.rglob("*.py"))
        for text in [path.read_text()]
        for m in rest.finditer(text)
    ]
    assert offenders == [], f"reST markup in docstrings (use numpy style): {offenders}"


# --- code that fits -----------------------------------------------------------------------------

CODE_WIDTH = 78  # columns of code the site shows at 1280 px without a scroll bar (and a terminal)


def _public_docstrings() -> list[tuple[str, str]]:
    """(name, docstring) of every public name the API reference renders, class members included."""
    import inspect

    import nocopy
    import nocopy.errors

    modules: list[Any] = [nocopy, nocopy.errors]
    for optional in ("nocopy.ray", "nocopy.joblib"):
        try:
            modules.append(importlib.import_module(optional))
        except ImportError:
            pass
    out = []
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            out.append((f"{module.__name__}.{name}", inspect.getdoc(obj) or ""))
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if not member.startswith("_") and (doc := inspect.getdoc(value)):
                        out.append((f"{module.__name__}.{name}.{member}", doc))
    return out


def test_code_on_the_site_fits_in_78_columns() -> None:
    """Every line of every code block of the site (pages, README.md, BENCHMARKS.md, the
    docstring examples the API reference renders) fits in 78 columns: wider ones scroll."""
    wide = [f"{b.path.relative_to(ROOT)}:{b.line + 1 + i}: {len(line)} columns"
            for path in [*PAGES, ROOT / "README.md", ROOT / "BENCHMARKS.md"]
            for b in blocks(path)
            for i, line in enumerate(b.code.splitlines())
            if len(line) > CODE_WIDTH]
    for name, doc in _public_docstrings():
        in_example = False  # from a ">>>" to the blank line that ends its output
        for line in doc.splitlines():
            in_example = line.lstrip().startswith(">>>") or (in_example and line.strip() != "")
            if in_example and len(line) > CODE_WIDTH:
                wide.append(f"docstring of {name}: {len(line)} columns: {line.strip()[:40]}")
    assert wide == []


def test_reference_shows_default_values_and_no_internal_constructor() -> None:
    """The API reference's Griffe extension (docs/_griffe_nocopy.py): ``share_threshold=1048576``,
    not a private constant's name; ``Shared`` without its internal constructor."""
    griffe = pytest.importorskip("griffe", reason="the docs extra is not installed")

    def load(*extensions: str) -> Any:
        return griffe.load("nocopy", search_paths=[str(ROOT / "src")], resolve_aliases=True,
                           extensions=griffe.load_extensions(*extensions))

    plain = load()
    threshold = plain["ProcessPoolExecutor"].members["__init__"].parameters["share_threshold"]
    assert str(threshold.default) == "DEFAULT_SHARE_THRESHOLD"  # what the reference showed
    assert "locator" in plain["Shared"].members["__init__"].parameters
    package = load(f"{DOCS / '_griffe_nocopy.py'}:NocopyReference")
    for cls in ("ProcessPoolExecutor", "Pool"):
        param = package[cls].members["__init__"].parameters["share_threshold"]
        assert param.default == str(1 << 20), cls
    for cls in ("Shared", "Explanation"):  # made by share() and explain()
        assert "__init__" not in package[cls].members, cls
