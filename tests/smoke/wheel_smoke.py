"""Smoke test of nocopy as users install it: the built wheel in a fresh virtual environment.

``make smoke`` installs ``dist/nocopy-*.whl`` (numpy only, no extras) into
``.venv-wheel`` and runs this file there as ``python -I`` from an empty
temporary directory, so neither the source tree nor ``PYTHONPATH`` can stand
in for the installed package. Not collected by pytest (no ``test_`` prefix):
it runs where pytest is not installed. Prints one line per check and a
closing ``N passed, N failed`` line; exits 1 if any check failed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import sysconfig
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor as StdlibExecutor
from pathlib import Path
from typing import Any

import numpy as np

import nocopy

BIN = Path(sys.executable).parent
# Children must not pick the source tree up through the developer's PYTHONPATH either.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def segment_of(arr: Any) -> str | None:
    """Name of the nocopy segment whose mapping (in this process) holds *arr*'s memory."""
    addr = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                path = " ".join(fields[5:])
                m = re.search(r"nocopy-[0-9]+-[0-9]+-[0-9a-f]{32}", path)
                return m.group(0) if m else None
    return None


def classic(n: int) -> np.ndarray:
    """The classic experiment's record array: datetime, float with NaN, short bytes."""
    a = np.zeros(n, dtype=[("date_col", "M8[us]"), ("float_col", "f8"), ("character_col", "S6")])
    a["date_col"] = np.arange(n).astype("M8[us]")
    a["float_col"] = np.arange(n, dtype="f8")
    a["float_col"][::7] = np.nan
    a["character_col"] = b"abc"
    return a


# -- work done in worker processes (importable by spawned children as __mp_main__) ----------


def worker_reads(ref: nocopy.Shared[Any]) -> tuple[float, str | None, bool, str]:
    view = ref.get()
    try:
        view["float_col"][0] = 1.0
        refused = False
    except ValueError:
        refused = True
    return float(np.nansum(view["float_col"])), segment_of(view), refused, nocopy.__file__


def task_on_argument(arr: np.ndarray) -> tuple[float, str | None, np.ndarray]:
    # The result is as big as the argument: it comes back through shared memory too.
    return float(arr.sum()), segment_of(arr), arr * 2


def worker_in(fn: Callable[..., Any], *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    with StdlibExecutor(1, mp_context=ctx) as ex:
        return ex.submit(fn, *args).result(timeout=120)


# -- checks ----------------------------------------------------------------------------------


def check_installed_from_the_wheel() -> None:
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    where = Path(nocopy.__file__).resolve()
    assert where.is_relative_to(purelib), f"nocopy imported from {where}, not from {purelib}"
    dist = importlib.metadata.distribution("nocopy")
    direct_url = dist.read_text("direct_url.json")
    assert direct_url is not None, "no direct_url.json: not installed from a local wheel"
    assert "editable" not in json.loads(direct_url).get("dir_info", {}), direct_url
    assert json.loads(direct_url)["url"].endswith(".whl"), direct_url
    assert dist.version == nocopy.__version__, (dist.version, nocopy.__version__)
    assert (where.parent / "py.typed").is_file(), "py.typed missing from the wheel"
    assert dist.read_text("licenses/LICENSE") is not None, "LICENSE missing from the wheel"


def check_numpy_only_install() -> None:
    # What `pip install nocopy` gives: import works, and pulls in no optional package.
    for extra in ("pandas", "pyarrow", "ray", "tqdm", "psutil"):
        assert importlib.util.find_spec(extra) is None, f"{extra} is installed: not a numpy-only venv"


def check_share_get_in_spawned_worker() -> None:
    data = classic(200_000)
    expected = float(np.nansum(data["float_col"]))
    for backend in ("memfd", "posix"):
        with nocopy.share(data, backend=backend) as ref:
            mine = segment_of(ref.get())
            assert mine is not None, f"{backend}: the owner's view is not in a nocopy segment"
            total, theirs, refused, their_file = worker_in(worker_reads, ref)
            assert total == expected, (backend, total, expected)
            assert theirs == mine, f"{backend}: worker read {theirs}, not the shared segment {mine}"
            assert refused, f"{backend}: the worker could write into the shared view"
            assert Path(their_file).resolve() == Path(nocopy.__file__).resolve(), their_file


def check_executor_shares_a_big_argument() -> None:
    big = np.arange(2_000_000, dtype="f8")  # 16 MB, far above share_threshold
    ctx = mp.get_context("spawn")
    with nocopy.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        futures = [ex.submit(task_on_argument, big) for _ in range(3)]
        results = [f.result(timeout=120) for f in futures]
    for total, seg, doubled in results:
        assert total == float(big.sum()), total
        assert seg is not None, "the task's argument was not a view of a nocopy segment (pickled?)"
        np.testing.assert_array_equal(doubled, big * 2)
    assert len({seg for _, seg, _ in results}) == 1, "the argument was shared more than once"
    assert segment_of(results[0][2]) is not None, "the big result did not come back through shared memory"


def check_progress_error_names_an_extra_that_installs_tqdm() -> None:
    try:
        nocopy.parallel_map(len, np.arange(10), progress=True, backend="threads")
    except ImportError as exc:
        message = str(exc)
    else:
        raise AssertionError("progress=True without tqdm did not raise ImportError")
    m = re.search(r"nocopy\[([a-z0-9_-]+)\]", message)
    assert m, f"the ImportError names no extra: {message}"
    extra = m.group(1)
    meta = importlib.metadata.metadata("nocopy")
    assert extra in meta.get_all("Provides-Extra", []), f"'{extra}' is not an extra of the wheel"
    requires = meta.get_all("Requires-Dist", [])
    assert any(r.startswith("tqdm") and f"extra == '{extra}'" in r.replace('"', "'") for r in requires), (
        f"nocopy[{extra}] does not install tqdm: {requires}"
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "nocopy"), *args], capture_output=True, text=True, timeout=120, env=CLEAN_ENV)


def check_console_script() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"nocopy {nocopy.__version__}", version
    doctor = run_cli("doctor")
    assert doctor.returncode == 0, f"nocopy doctor exited {doctor.returncode}:\n{doctor.stdout}{doctor.stderr}"
    report = json.loads(run_cli("doctor", "--json").stdout)
    assert report["ok"] and report["nocopy"] == nocopy.__version__, report
    assert report["versions"]["pandas"] is None, report["versions"]
    module = subprocess.run(
        [sys.executable, "-I", "-m", "nocopy", "--version"], capture_output=True, text=True, timeout=120, env=CLEAN_ENV
    )
    assert module.stdout.strip() == f"nocopy {nocopy.__version__}", module


def check_nothing_left() -> None:
    mine = [s for s in nocopy.segments() if s.owner_pid == os.getpid()]
    assert not mine, f"segments left behind: {mine}"


CHECKS = [
    check_installed_from_the_wheel,
    check_numpy_only_install,
    check_share_get_in_spawned_worker,
    check_executor_shares_a_big_argument,
    check_progress_error_names_an_extra_that_installs_tqdm,
    check_console_script,
    check_nothing_left,
]


def main() -> int:
    print(f"wheel smoke test: nocopy {nocopy.__version__} from {Path(nocopy.__file__).parent}, cwd {os.getcwd()}")
    failed = 0
    for check in CHECKS:
        try:
            check()
        except Exception:
            failed += 1
            print(f"FAILED {check.__name__}")
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok     {check.__name__}")
    print(f"smoke: {len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
