"""pytest plugin: nocopy's backend as joblib's default, the way joblib's own CI switches it.

joblib's conftest.py (not shipped in its wheel) sets ``joblib.parallel.DEFAULT_BACKEND`` from
``JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND``; this plugin does the same, after registering
nocopy's backend, so that every ``Parallel()`` without a backend in joblib's tests runs on nocopy.

It also selects the fair subset (README.md beside it): the parametrizations that run another
backend (``backend="loky"``, a ``ThreadingBackend()`` instance...) test that backend, not nocopy,
and are deselected; so are the tests listed in `UNFAIR`, with the reason.
"""

from __future__ import annotations

import os
from multiprocessing.context import BaseContext
from typing import Any

import pytest

# Tests that cannot pass with any backend other than joblib's own: why (README.md classifies them).
UNFAIR = {
    # Asserts that prefer="processes" picks the LokyBackend class itself (joblib's hard-coded
    # process backend), whatever the default backend is.
    "test_backend_hinting_and_constraints[parallel_config]": "asserts LokyBackend is chosen",
    "test_backend_hinting_and_constraints[parallel_backend]": "asserts LokyBackend is chosen",
    # A Parallel(backend="nocopy") inside a loky or multiprocessing worker: those workers are
    # fresh interpreters where only joblib's built-in backends are registered (as for any
    # third-party backend); this harness registers nocopy in the test process only.
    "test_nested_loop[loky-nocopy]": "backend name unknown in loky's workers",
    "test_nested_loop[back_compat_backend-nocopy]": "backend name unknown in loky's workers",
    # test_config.py: asserts that prefer="processes" picks LokyBackend, and that loky's
    # memmapping wrote into the temp_folder (or refused a non-memmap argument).
    "test_parallel_config_no_backend": "asserts LokyBackend and loky's memmapping folder",
    "test_parallel_config_params_explicit_set": "asserts LokyBackend and loky's memmapping",
}


# Tests whose body names another backend itself (loky's own worker reuse, loky's pickling of
# interactively defined functions, loky's temp folders under concurrent calls): they test
# that backend, whatever the default is. The last one also fails about 1 run in 4 in this
# harness (after test_memory and test_config in the same process; alone it passes 6/6):
# a thread's Parallel(backend="loky") sees a second temp folder.
OTHER_BACKEND_TESTS = (
    "test_initializer_reused", "test_initializer_not_reused", "test_memmapping_temp_folder_thread_safety",
)


def _other_backend(item: pytest.Item) -> bool:
    """Whether the item's parameters select a backend other than nocopy (and not the default)."""
    from joblib._parallel_backends import ParallelBackendBase
    from joblib.parallel import BACKENDS

    name = getattr(item, "originalname", item.name)
    if name in OTHER_BACKEND_TESTS or name.endswith("_loky"):
        return True
    callspec: Any = getattr(item, "callspec", None)
    if callspec is None:
        return False
    names = set()
    for value in callspec.params.values():
        if isinstance(value, str) and value in BACKENDS:
            names.add(value)
        elif isinstance(value, ParallelBackendBase):
            names.add("nocopy" if type(value).__name__ == "NocopyBackend" else type(value).__name__)
        elif isinstance(value, BaseContext):
            names.add("multiprocessing")  # Parallel(backend=<context>): the multiprocessing backend
    return bool(names) and "nocopy" not in names


def pytest_configure(config: pytest.Config) -> None:
    import joblib.parallel

    import nocopy.joblib

    nocopy.joblib.register()
    joblib.parallel.DEFAULT_BACKEND = os.environ.get("JOBLIB_TESTS_DEFAULT_PARALLEL_BACKEND", "nocopy")
    for mark in ("thread_unsafe", "no_cover"):  # joblib's own markers (its setup.cfg declares them)
        config.addinivalue_line("markers", f"{mark}: joblib's marker")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("NOCOPY_JOBLIB_SELECT", "fair") != "fair":
        return
    keep, drop = [], []
    for item in items:
        (drop if item.name in UNFAIR or _other_backend(item) else keep).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
