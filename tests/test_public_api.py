"""The public API is exactly what we mean it to be."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import nocopy
import nocopy.errors

EXPECTED = {
    "Explanation",
    "Pool",
    "ProcessPoolExecutor",
    "Segment",
    "Shared",
    "SharedSequence",
    "__version__",
    "attach",
    "cleanup",
    "empty",
    "errors",
    "explain",
    "parallel_map",
    "segments",
    "share",
    "shutdown_parallel_map_workers",
    "zeros",
}


def test_all_is_sorted_and_exact() -> None:
    assert list(nocopy.__all__) == sorted(nocopy.__all__)
    assert set(nocopy.__all__) == EXPECTED
    for name in nocopy.__all__:
        assert hasattr(nocopy, name)


def test_every_public_name_has_a_docstring_with_an_example() -> None:
    names = [n for n in nocopy.__all__ if n not in ("__version__", "errors")]
    names += [f"errors.{n}" for n in nocopy.errors.__all__]
    for name in names:
        obj = nocopy
        for part in name.split("."):
            obj = getattr(obj, part)
        doc = inspect.getdoc(obj) or ""
        assert "Example" in doc, f"nocopy.{name} has no example in its docstring"


def _public_objects() -> list[tuple[str, object]]:
    objs: list[tuple[str, object]] = [(n, getattr(nocopy, n)) for n in nocopy.__all__ if n not in ("__version__", "errors")]
    objs += [(f"errors.{n}", getattr(nocopy.errors, n)) for n in nocopy.errors.__all__]
    objs += [(f"Shared.{n}", getattr(nocopy.Shared, n)) for n in ("get", "close")]
    try:
        ray_api = importlib.import_module("nocopy.ray")
    except ImportError:
        pass
    else:
        objs += [(f"ray.{n}", getattr(ray_api, n)) for n in ray_api.__all__]
    try:
        joblib_api = importlib.import_module("nocopy.joblib")
    except ImportError:
        pass
    else:
        objs += [(f"joblib.{n}", getattr(joblib_api, n)) for n in joblib_api.__all__]
        objs += [
            (f"joblib.NocopyBackend.{n}", getattr(joblib_api.NocopyBackend, n))
            for n in ("configure", "effective_n_jobs", "submit", "terminate", "abort_everything")
        ]
    try:
        torch_api = importlib.import_module("nocopy.torch")
    except ImportError:  # the torch extra is not installed on every Python
        pass
    else:
        objs += [("torch", torch_api)] + [(f"torch.{n}", getattr(torch_api, n)) for n in torch_api.__all__]
    return objs


def test_public_methods_and_nocopy_ray_have_examples_too() -> None:
    for name, obj in _public_objects():
        assert "Example" in (inspect.getdoc(obj) or ""), f"nocopy.{name} has no example in its docstring"


def test_docstring_examples_run_and_print_what_they_show() -> None:
    """The examples not marked ``+SKIP`` (those need a crash, another user or Ray) run as doctests."""
    import doctest
    import io

    import numpy as np

    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for name, obj in _public_objects():
        for test in finder.find(obj, name, globs={"np": np, "nocopy": nocopy}):
            runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
    assert runner.tries >= 20  # most examples really run


def test_error_tree() -> None:
    e = nocopy.errors
    assert issubclass(e.UnsupportedTypeError, (e.NocopyError, TypeError))
    assert issubclass(e.InsufficientMemoryError, (e.NocopyError, MemoryError))
    assert issubclass(e.SegmentNotFoundError, (e.NocopyError, FileNotFoundError))
    assert issubclass(e.SegmentCorruptError, (e.NocopyError, ValueError))
    assert issubclass(e.SegmentAccessError, (e.NocopyError, PermissionError))
    from concurrent.futures.process import BrokenProcessPool

    assert issubclass(e.WorkerCrashedError, (e.NocopyError, BrokenProcessPool))
    import pickle

    assert issubclass(e.TaskUnpicklingError, (e.NocopyError, pickle.UnpicklingError))
    assert issubclass(e.StartMethodError, (e.NocopyError, RuntimeError))


def test_use_after_close_error_is_caught_as_not_found_and_as_value_error() -> None:
    e = nocopy.errors
    assert issubclass(e.SegmentClosedError, e.SegmentNotFoundError)
    assert issubclass(e.SegmentClosedError, ValueError)


def test_import_does_not_pull_optional_dependencies() -> None:
    code = (
        "import sys, nocopy, nocopy.errors; "
        "print(sorted(m for m in ('pandas', 'pyarrow', 'ray', 'psutil', 'matplotlib', 'tqdm', 'joblib', 'cloudpickle') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_workers_imports_stay_lean() -> None:
    # Every spawned worker imports nocopy before its first task: what it
    # imports is start-up time, paid per worker. numpy it needs anyway;
    # OpenSSL's hashlib (hmac, secrets: ~3 ms) and optional libraries it must not load.
    code = (
        "import sys, numpy, concurrent.futures.process; base = set(sys.modules); "
        "import nocopy._pool._worker, nocopy._pool._task; "
        "print(sorted(m for m in ('pandas', 'pyarrow', 'polars', 'cloudpickle', 'psutil', 'hmac', 'hashlib', "
        "'secrets', 'pathlib', 'tqdm', 'joblib', 'ray') if m in sys.modules and m not in base))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("extra", ["pandas", "ray", "joblib"])
def test_missing_extra_names_the_pip_command(extra: str) -> None:
    """Without the optional dependency, the ImportError says which extra to install."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {('pandas', 'pyarrow') if extra == 'pandas' else (extra,)!r}:\n"
        "            raise ImportError(f'No module named {name!r} (blocked)')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    if extra == "pandas":
        use = "import nocopy\nclass FakeFrame: pass\nFakeFrame.__module__ = 'pandas.core.frame'\nnocopy.share(FakeFrame())\n"
    else:
        use = f"import nocopy.{extra}\n"
    out = subprocess.run([sys.executable, "-c", blocker + use], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"pip install 'nocopy[{extra}]'" in out.stderr, out.stderr
