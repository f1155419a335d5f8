from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# CPython's vendored test module runs under unittest, in a subprocess started by
# test_stdlib_conformance.py (see cpython/README.md): not collected by pytest.
collect_ignore = ["cpython"]


class Procs:
    """Processes a test started; every one is reaped at teardown, by pid."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []

    def python(self, code: str, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kw,  # type: ignore[call-overload]
        )
        self.popens.append(p)
        return p

    def reap(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.reap()


@pytest.fixture(scope="module")
def spawn_pool() -> Iterator[Any]:
    """One spawned worker per test module (its start-up paid once)."""
    pool = mp.get_context("spawn").Pool(1)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def run_python(code: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter (not a multiprocessing child)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def posix_dir() -> Path:
    """Where this user's posix segments are: ``<$NOCOPY_SHM_DIR or /dev/shm>/nocopy-<uid>``."""
    return Path(os.environ.get("NOCOPY_SHM_DIR", "/dev/shm"), f"nocopy-{os.geteuid()}")


def own_posix_segments(prefix_pid: int) -> list[str]:
    """Names of posix segments made by *prefix_pid* (in this user's segment directory)."""
    try:
        names = os.listdir(posix_dir())
    except OSError:
        return []
    return [n for n in names if n.startswith(f"nocopy-{prefix_pid}-")]


is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One local Ray instance (2 CPUs) for the whole session: ray.init costs 2-4 s.

    Yields the ``ray`` module. Test modules whose functions run in Ray tasks
    register themselves with ``ray.cloudpickle.register_pickle_by_value``
    (workers cannot import ``tests/`` by name).
    """
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=4 << 30,
        )
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@pytest.fixture
def shm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This user's segment directory in a private shm directory on the /dev/shm tmpfs.

    The shm directory ($NOCOPY_SHM_DIR, in the environment for children too)
    is world-writable and sticky like /dev/shm (mode 1777); what is yielded is
    the 0700 directory nocopy keeps this user's posix segments in there.
    Removed afterwards whatever the test's processes left in it. Posix
    segments made here cannot be reclaimed by other nocopy processes on the
    machine, nor reclaim theirs.
    """
    d = Path(tempfile.mkdtemp(prefix="nocopytest-", dir="/dev/shm"))
    os.chmod(d, 0o1777)
    monkeypatch.setenv("NOCOPY_SHM_DIR", str(d))
    mine = d / f"nocopy-{os.geteuid()}"
    mine.mkdir(mode=0o700)
    try:
        yield mine
    finally:
        shutil.rmtree(d, ignore_errors=True)


def segment_holders(names: set[str]) -> list[str]:
    """Every /proc/<pid>/fd link and maps line that still refers to one of segments *names*."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if any(n in link for n in names):
                    found.append(f"{pid}/fd/{fd} -> {link}")
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError:
            continue
        found += [f"{pid}/maps: {n}" for n in names if n in maps]
    return found


def segment_of(arr: object) -> str | None:
    """Name of the nocopy segment whose mapping holds *arr*'s memory (in this process), or None."""
    addr = arr.__array_interface__["data"][0]  # type: ignore[attr-defined]
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                path = " ".join(fields[5:])
                return path.split("nocopy-", 1)[1].split()[0] if "nocopy-" in path else None
    return None


def workers_at_each_share(monkeypatch: pytest.MonkeyPatch, module: Any, executor: Callable[[], Any]) -> list[int]:
    """Record, at each call of *module*'s ``share``, how many workers *executor()* has started by then."""
    seen: list[int] = []
    real_share = module.share

    def spying_share(value: Any) -> Any:
        seen.append(len(executor()._processes))
        return real_share(value)

    monkeypatch.setattr(module, "share", spying_share)
    return seen


# Modules whose tests may run Polars work in this (pytest's) process. Once Polars'
# thread pool runs here, nocopy refuses to fork workers from this process (a forked
# worker would hang in its first Polars call: StartMethodError), so every test that
# forks a pool in-process must run before them. They run last, in their own order.
_STARTS_POLARS_POOL = frozenset(
    {"test_bench.py", "test_fuzz.py", "test_joblib.py", "test_polars.py", "test_ray_polars.py",
     "test_security_codec.py", "test_start_methods.py"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name in _STARTS_POLARS_POOL)  # stable: order kept within each group


@pytest.fixture(autouse=True)
def _polars_pool_only_where_expected(request: pytest.FixtureRequest) -> Iterator[None]:
    """The order above holds only if no other module starts Polars' pool: checked after each of their tests.

    (A test in test_torch.py once did, and every fork test after it failed with StartMethodError.)
    """
    yield
    if request.node.path.name in _STARTS_POLARS_POOL:
        return
    from nocopy._pool._start import polars_pool_running

    if polars_pool_running():
        pytest.fail(
            f"{request.node.nodeid} started Polars' thread pool in the pytest process: every later test that "
            "forks a pool here would get StartMethodError. Fix: run its Polars work in a subprocess or a "
            "spawned worker, or move the test to a module listed in conftest._STARTS_POLARS_POOL.",
            pytrace=False,
        )
