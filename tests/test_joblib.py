"""nocopy.joblib: the "nocopy" joblib backend shares big arguments zero-copy, behaves as joblib's do."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

joblib = pytest.importorskip("joblib")

import nocopy  # noqa: E402
import nocopy.joblib  # noqa: E402 - registers the backend
from conftest import segment_of  # noqa: E402

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _stop_kept_workers() -> Any:
    """Each test starts and ends without the workers the backend keeps between calls."""
    nocopy.joblib.shutdown()
    yield
    nocopy.joblib.shutdown()


# -- what the workers run (module level: importable under spawn) ----------------------------
def buffer_segment(buf: Any) -> str | None:
    """The nocopy segment holding an Arrow buffer's memory in this process, or None."""
    return segment_of(np.frombuffer(buf, dtype=np.uint8)) if buf is not None and buf.size else None


def describe_recarray(arr: np.ndarray) -> tuple[str, str | None, float, str]:
    return type(arr).__name__, segment_of(arr), float(np.nansum(arr["x"])), str(arr["t"][-1])


def describe_frame(df: Any) -> tuple[str | None, str | None, str, float, int, str]:
    import pyarrow as pa

    strings = pa.array(df["s"].array)  # pandas' str column is Arrow-backed: its own buffers
    chunk = strings.chunks[0] if isinstance(strings, pa.ChunkedArray) else strings
    return (
        segment_of(df["x"].to_numpy()), buffer_segment(chunk.buffers()[2]), str(df["s"].dtype),
        float(df["x"].sum()), int(df["s"].str.len().sum()), str(df["o"].iloc[-1]),
    )


def describe_table(table: Any) -> tuple[str, str | None, str | None, int]:
    x, s = table.column("x").chunks[0], table.column("s").chunks[0]
    return type(table).__name__, buffer_segment(x.buffers()[1]), buffer_segment(s.buffers()[2]), table.num_rows


def describe_polars(df: Any) -> tuple[str, str | None, float, int]:
    return type(df).__name__, segment_of(df["x"].to_numpy()), float(df["x"].sum()), int(df["s"].str.len_bytes().sum())


def fail_on(i: int, arr: np.ndarray) -> float:
    if i == 3:
        raise ValueError(f"bad item {i}")
    return float(arr.sum()) + i


def inner_backend(i: int) -> tuple[str, list[int]]:
    backend, _ = joblib.parallel.get_active_backend()
    squares = joblib.Parallel(n_jobs=2)(joblib.delayed(pow)(j, 2) for j in range(3))
    return type(backend).__name__, squares


def worker_pid(_: Any) -> int:
    return os.getpid()


# -- data ------------------------------------------------------------------------------------
def records(n: int = 300_000) -> np.recarray:
    x = np.arange(n, dtype="f8")
    x[::7] = np.nan
    t = np.arange(n).astype("M8[s]")
    return np.rec.fromarrays([t, x, np.full(n, "abc", dtype="U3")], names="t,x,s")


def string_frame(n: int = 200_000) -> Any:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    return pd.DataFrame({
        "x": np.arange(n, dtype="f8"),
        "s": pd.array([f"row {i}" for i in range(n)], dtype="str"),
        "o": pd.Series([f"obj {i}" for i in range(n)], dtype=object),
    })


def run(backend: str, fn: Any, data: Any, n: int = 4, **kw: Any) -> list[Any]:
    with joblib.parallel_config(backend=backend, n_jobs=2, **kw):
        return list(joblib.Parallel()(joblib.delayed(fn)(data) for _ in range(n)))


# -- zero-copy arguments, same results as joblib's default --------------------------------
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_record_array_arrives_zero_copy_as_a_recarray(method: str) -> None:
    arr = records()
    assert arr.nbytes > MiB
    ours = run("nocopy", describe_recarray, arr, mp_context=method)
    assert {r[1] for r in ours} != {None} and len({r[1] for r in ours}) == 1  # one segment, every task
    theirs = run("loky", describe_recarray, arr)
    assert [r[1] for r in theirs] == [None] * 4  # loky pickles the recarray subclass into every task
    assert [(r[0], r[2], r[3]) for r in ours] == [(r[0], r[2], r[3]) for r in theirs]
    assert ours[0][0] == "recarray"


def test_a_frame_with_string_columns_arrives_zero_copy() -> None:
    df = string_frame()
    ours = run("nocopy", describe_frame, df)
    theirs = run("loky", describe_frame, df)
    numeric, strings = ours[0][0], ours[0][1]
    assert numeric is not None and strings == numeric  # numbers and string bytes: one segment
    assert theirs[0][0] is None and theirs[0][1] is None
    assert [r[2:] for r in ours] == [r[2:] for r in theirs] == [("str", float(df["x"].sum()),
                                                                  int(df["s"].str.len().sum()), "obj 199999")] * 4


def test_an_arrow_table_arrives_zero_copy() -> None:
    pa = pytest.importorskip("pyarrow")
    n = 200_000
    table = pa.table({"x": np.arange(n, dtype="f8"), "s": [f"s{i}" for i in range(n)]})
    ours = run("nocopy", describe_table, table)
    assert ours[0][0] == "Table" and ours[0][1] is not None and ours[0][2] == ours[0][1]
    assert [r[3] for r in ours] == [n] * 4
    theirs = run("loky", describe_table, table)
    assert theirs[0][1] is None and [r[3] for r in theirs] == [n] * 4


def test_a_polars_frame_arrives_zero_copy() -> None:
    pl = pytest.importorskip("polars")
    n = 200_000
    df = pl.DataFrame({"x": np.arange(n, dtype="f8"), "s": [f"s{i}" for i in range(n)]})
    ours = run("nocopy", describe_polars, df)
    assert ours[0][0] == "DataFrame" and ours[0][1] is not None
    theirs = run("loky", describe_polars, df)
    assert theirs[0][1] is None
    assert [r[2:] for r in ours] == [r[2:] for r in theirs]


def test_results_and_return_as_generator_match_the_default_backend() -> None:
    arr = np.arange(500_000, dtype="f8")
    for return_as in ("list", "generator"):
        got = {}
        for backend in ("nocopy", "loky"):
            with joblib.parallel_config(backend=backend, n_jobs=2):
                out = joblib.Parallel(return_as=return_as)(joblib.delayed(np.multiply)(arr, k) for k in range(5))
                got[backend] = list(out)
        assert len(got["nocopy"]) == 5
        for a, b in zip(got["nocopy"], got["loky"], strict=True):
            np.testing.assert_array_equal(a, b)
        # A big result comes back through shared memory, writable as joblib's are.
        assert segment_of(got["nocopy"][1]) is not None
        got["nocopy"][1][0] = -1.0


def test_lambdas_run_on_the_backend() -> None:
    arr = np.arange(300_000, dtype="f8")
    k = 2.0
    with joblib.parallel_config(backend="nocopy", n_jobs=2, mp_context="spawn"):
        out = joblib.Parallel()(joblib.delayed(lambda a, i: float(a.sum()) * k + i)(arr, i) for i in range(3))
    assert out == [float(arr.sum()) * 2.0 + i for i in range(3)]


def test_a_parallel_context_keeps_its_workers_and_shares_once_across_calls() -> None:
    arr = records()
    with joblib.Parallel(n_jobs=2, backend="nocopy") as par:
        first = par(joblib.delayed(describe_recarray)(arr) for _ in range(2))
        pids1 = set(par(joblib.delayed(worker_pid)(i) for i in range(4)))
        second = par(joblib.delayed(describe_recarray)(arr) for _ in range(2))
        pids2 = set(par(joblib.delayed(worker_pid)(i) for i in range(4)))
        assert len(pids1 | pids2) <= 2  # the same two workers all along (tiny tasks may all land on one)
    assert {r[1] for r in first} == {r[1] for r in second} != {None}  # the same segment: shared once
    nocopy.joblib.shutdown()  # the workers kept for the next call (see the reuse tests)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids1 | pids2)


# -- failures, nesting, clean-up -----------------------------------------------------------
def test_an_exception_propagates_as_with_joblib() -> None:
    arr = np.ones(300_000)
    raised = {}
    for backend in ("nocopy", "loky"):
        with joblib.parallel_config(backend=backend, n_jobs=2), pytest.raises(ValueError) as err:
            joblib.Parallel()(joblib.delayed(fail_on)(i, arr) for i in range(8))
        raised[backend] = (type(err.value), str(err.value))
    assert raised["nocopy"] == raised["loky"] == (ValueError, "bad item 3")


def test_a_parallel_call_inside_a_task_runs_with_threads_as_with_loky() -> None:
    for backend in ("nocopy", "loky"):
        with joblib.parallel_config(backend=backend, n_jobs=2):
            out = joblib.Parallel()(joblib.delayed(inner_backend)(i) for i in range(2))
        assert out == [("ThreadingBackend", [0, 1, 4])] * 2, backend


def test_one_job_runs_in_the_caller() -> None:
    with joblib.parallel_config(backend="nocopy", n_jobs=1):
        assert joblib.Parallel()(joblib.delayed(worker_pid)(i) for i in range(2)) == [os.getpid()] * 2


def test_bad_parameters_get_clear_errors() -> None:
    with pytest.raises(TypeError, match="unknown parameters \\['colour'\\]"):
        joblib.Parallel(backend="nocopy", n_jobs=2, colour="red")(joblib.delayed(abs)(-1) for _ in range(2))
    with pytest.raises(TypeError, match="colour"), joblib.parallel_config(backend="nocopy", colour="red"):
        pass
    with pytest.raises(TypeError, match="mp_context"):
        nocopy.joblib.NocopyBackend(mp_context=3)  # type: ignore[arg-type]


def thread_limits(_: Any) -> tuple[str | None, list[int]]:
    from threadpoolctl import threadpool_info

    return os.environ.get("OMP_NUM_THREADS"), [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


@pytest.mark.parametrize(("inner", "expected"), [(None, max(joblib.cpu_count() // 2, 1)), (2, 2)])
def test_workers_numerical_libraries_get_a_share_of_the_cpus_as_with_loky(
    inner: int | None, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers each running a BLAS with a thread per CPU oversubscribe the machine;
    # loky gives each worker cpu_count // n_jobs threads (or inner_max_num_threads).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    with joblib.parallel_config(backend="nocopy", n_jobs=2, inner_max_num_threads=inner, mp_context="spawn"):
        got = joblib.Parallel()(joblib.delayed(thread_limits)(i) for i in range(2))
    for env, blas in got:
        assert env == str(expected)
        assert blas and all(n == expected for n in blas), blas


def test_the_callers_own_thread_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with joblib.parallel_config(backend="nocopy", n_jobs=2, mp_context="spawn"):
        got = joblib.Parallel()(joblib.delayed(thread_limits)(i) for i in range(2))
    assert [env for env, _ in got] == ["2", "2"]


def own_segments() -> list[Any]:
    return [s for s in nocopy.segments() if s.owner_pid == os.getpid()]


def test_nothing_is_left_behind_after_success_and_after_a_failure() -> None:
    before_children = {p.pid for p in psutil.Process().children(recursive=True)}
    before_segments = {s.name for s in own_segments()}
    arr, df = records(), string_frame()
    with joblib.parallel_config(backend="nocopy", n_jobs=2, mp_context="fork"):
        pids = joblib.Parallel()(joblib.delayed(worker_pid)(x) for x in [arr, df] * 3)
        with pytest.raises(ValueError):
            joblib.Parallel()(joblib.delayed(fail_on)(i, np.ones(300_000)) for i in range(8))
    nocopy.joblib.shutdown()  # the workers kept for the next call (see the reuse tests)
    assert os.getpid() not in pids
    assert {s.name for s in own_segments()} - before_segments == set()
    # No new child left (loky's idle workers from other tests may exit meanwhile: not ours).
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before_children == set()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


# -- scikit-learn --------------------------------------------------------------------------
try:
    from sklearn.base import BaseEstimator, ClassifierMixin
except ImportError:  # the test using them is skipped
    BaseEstimator = ClassifierMixin = object  # type: ignore[misc,assignment]


class Probe(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A minimal scikit-learn classifier that records whether its fit parameter arrived shared."""

    def fit(self, X: Any, y: Any, lookup: Any = None) -> Probe:
        self.lookup_segment_ = None if lookup is None else segment_of(lookup)
        self.classes_ = np.unique(y)
        self.majority_ = np.bincount(y).argmax()
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.full(len(X), self.majority_)


def test_scikit_learn_n_jobs_runs_on_the_backend_and_shares_big_data() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score, cross_validate

    X, y = make_classification(n_samples=300, n_features=8, random_state=0)
    lookup = np.arange(300_000, dtype="f8")  # not sample-aligned: scikit-learn passes it through
    seen = {}
    scores = {}
    for backend in ("nocopy", "loky"):
        with joblib.parallel_config(backend=backend, n_jobs=2):
            out = cross_validate(Probe(), X, y, cv=3, params={"lookup": lookup}, return_estimator=True)
            seen[backend] = [est.lookup_segment_ for est in out["estimator"]]
            forest = RandomForestClassifier(n_estimators=8, random_state=0, n_jobs=2)
            scores[backend] = list(cross_val_score(forest, X, y, cv=3))
    assert None not in seen["nocopy"] and len(set(seen["nocopy"])) == 1
    assert seen["loky"] == [None] * 3  # loky memory-maps it from a file, not a nocopy segment
    assert scores["nocopy"] == scores["loky"]


# -- import ----------------------------------------------------------------------------------
def test_importing_registers_the_backend_and_import_nocopy_does_not_import_joblib() -> None:
    code = (
        "import sys, nocopy; assert 'joblib' not in sys.modules\n"
        "import joblib.parallel as p; assert 'nocopy' not in p.BACKENDS\n"
        "import nocopy.joblib; print(p.BACKENDS['nocopy'].__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NocopyBackend"


def test_configuring_again_without_terminate_leaves_no_second_pool() -> None:
    backend = nocopy.joblib.NocopyBackend(mp_context="fork")
    assert backend.configure(n_jobs=2) == 2
    first = backend.submit(lambda: os.getpid()).result()
    children = {p.pid for p in psutil.Process().children()}
    backend.configure(n_jobs=2)
    try:
        # The same settings: the same workers again (kept, see the reuse tests), no second pool.
        assert backend.submit(lambda: os.getpid()).result() == first
        assert {p.pid for p in psutil.Process().children()} == children
    finally:
        backend.terminate()
    nocopy.joblib.shutdown()
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


# -- issue 22: joblib's initializer, exec'd functions, nested loky, abandoned generators ------
_initialized: list[Any] = []


def remember_init(tag: str) -> None:
    _initialized.append(tag)


def init_tags(_: Any) -> list[Any]:
    return list(_initialized)


def test_initializer_and_initargs_reach_every_worker_through_parallel_config_and_parallel() -> None:
    with joblib.parallel_config(
        backend="nocopy", n_jobs=2, mp_context="fork", initializer=remember_init, initargs=("config",),
    ):
        got = joblib.Parallel()(joblib.delayed(init_tags)(i) for i in range(4))
    assert got == [["config"]] * 4
    got = joblib.Parallel(
        n_jobs=2, backend="nocopy", initializer=remember_init, initargs=("parallel",),
    )(joblib.delayed(init_tags)(i) for i in range(4))
    assert got == [["parallel"]] * 4  # new settings: new workers, not the ones initialized before
    with pytest.raises(TypeError, match="initializer must be a callable"):
        joblib.Parallel(n_jobs=2, backend="nocopy", initializer=3)(joblib.delayed(abs)(i) for i in range(2))


SRC = str(Path(__file__).resolve().parent.parent / "src")


def test_main_functions_that_are_not_attributes_of_main_go_by_value() -> None:
    # As a notebook kernel or exec() makes them: __module__ is "__main__", the name leads nowhere.
    # (-c is an interactive __main__ already: a script file is what a kernel's __main__ looks like.)
    script = Path(tempfile.mkdtemp()) / "script.py"
    script.write_text(
        "import functools, tempfile, joblib, nocopy.joblib\n"
        "ns = {'__name__': '__main__'}\n"
        "exec('def f(x):\\n    return x + 1\\n', ns)\n"
        "h = ns['f']\n"
        "if __name__ == '__main__':\n"
        "    nocopy.joblib.register()\n"
        "    mem = joblib.Memory(tempfile.mkdtemp(), verbose=0)\n"
        "    for fn in (h, functools.partial(h, 1), mem.cache(h)):\n"
        "        args = () if isinstance(fn, functools.partial) else (1,)\n"
        "        print(joblib.Parallel(2, backend='nocopy')(joblib.delayed(fn)(*args) for _ in range(2)))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["[2,", "2]"] * 3
    assert "InvalidStateError" not in out.stderr


def test_a_late_second_settle_of_a_task_future_is_ignored() -> None:
    # The queue's feeder thread (a task that failed to pickle) and the manager thread (the
    # pool broke or was stopped) may both settle a future: the stdlib printed InvalidStateError.
    with nocopy.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
        fut = ex.submit(abs, -1)
        assert fut.result() == 1
        fut.set_exception(RuntimeError("late"))
        assert fut.result() == 1


@pytest.mark.slow  # ~7-10 s: loky starts its workers in each task
def test_a_loky_parallel_inside_nocopy_tasks_returns_and_the_workers_exit() -> None:
    code = (
        "import joblib, nocopy, nocopy.joblib\n"
        "def inner(i):\n"
        "    return sum(joblib.Parallel(2, backend='loky')(joblib.delayed(abs)(-j) for j in range(3)))\n"
        "if __name__ == '__main__':\n"
        "    nocopy.joblib.register()\n"
        "    print(joblib.Parallel(2, backend='nocopy')(joblib.delayed(inner)(i) for i in range(2)))\n"
        "    nocopy.joblib.shutdown()\n"
        "    ex = nocopy.ProcessPoolExecutor(2)\n"
        "    print([f.result() for f in [ex.submit(inner, i) for i in range(2)]])\n"
        "    ex.shutdown()\n"
        "    print('done')\n"
    )
    script = Path(tempfile.mkdtemp()) / "nested.py"  # a file: forkserver workers import the main module
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["[3,", "3]", "[3,", "3]", "done"]


def test_abandoning_a_generator_result_neither_stalls_nor_keeps_the_program_alive() -> None:
    code = (
        "import gc, threading, time, joblib, nocopy.joblib\n"
        "def big(i):\n"
        "    return bytes(900_000)\n"  # below the share threshold: through the result pipe
        "if __name__ == '__main__':\n"
        "    nocopy.joblib.register()\n"
        "    base = threading.active_count()\n"
        "    for _ in range(2):\n"
        "        t = time.monotonic()\n"
        "        g = joblib.Parallel(2, backend='nocopy', return_as='generator')(\n"
        "            joblib.delayed(big)(i) for i in range(2000))\n"
        "        next(g); del g; gc.collect()\n"
        "        print(round(time.monotonic() - t, 1), threading.active_count() - base)\n"
    )
    script = Path(tempfile.mkdtemp()) / "gen.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-W", "ignore::UserWarning", str(script)],
                         capture_output=True, text=True, timeout=60, env=env)  # it used to never exit
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) == 2, out.stdout
    assert all(float(seconds) < 5 for seconds, _ in rows), out.stdout  # each used to stall 10 s in the abort
    assert rows[0][1] == rows[1][1], out.stdout  # no thread left per abandoned call (they piled up)


# -- issue 22: workers kept across Parallel calls ----------------------------------------------
def pid_and_segment(arr: np.ndarray) -> tuple[int, str | None]:
    return os.getpid(), segment_of(arr)


def test_workers_and_shared_arguments_are_kept_across_parallel_calls() -> None:
    arr = np.ones(300_000)
    calls = [
        joblib.Parallel(n_jobs=2, backend="nocopy")(joblib.delayed(pid_and_segment)(arr) for _ in range(4))
        for _ in range(3)
    ]
    pids = {pid for call in calls for pid, _ in call}
    segments = {seg for call in calls for _, seg in call}
    assert len(pids) <= 2 and os.getpid() not in pids  # the same workers, call after call
    assert len(segments) == 1 and None not in segments  # shared once, for every call
    # Other settings: a new pool replaces the kept one (whose workers stop).
    other = joblib.Parallel(n_jobs=3, backend="nocopy")(joblib.delayed(worker_pid)(i) for i in range(6))
    assert not set(other) & pids
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_kept_workers_stop_after_the_idle_timeout() -> None:
    # Long enough that the workers are surely still there right after the call, even on a
    # loaded machine; the wait below allows for it.
    with joblib.parallel_config(backend="nocopy", n_jobs=2, idle_worker_timeout=3, mp_context="fork"):
        pids = set(joblib.Parallel()(joblib.delayed(worker_pid)(i) for i in range(4)))
    assert all(psutil.pid_exists(p) for p in pids)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids
    ):
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    with joblib.parallel_config(backend="nocopy", n_jobs=2, idle_worker_timeout=0, mp_context="fork"):
        pids = set(joblib.Parallel()(joblib.delayed(worker_pid)(i) for i in range(4)))
    # 0: stopped at the end of the call, nothing kept.
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_a_forked_child_neither_uses_nor_stops_the_parents_kept_workers() -> None:
    before = {p.pid for p in psutil.Process().children()}
    with joblib.parallel_config(backend="nocopy", n_jobs=2, mp_context="fork"):
        joblib.Parallel()(joblib.delayed(worker_pid)(i) for i in range(4))
        kept = {p.pid for p in psutil.Process().children()} - before  # the parent's kept workers
        assert len(kept) == 2
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - reported through the pipe and the exit status
            code = 1
            try:
                got = set(joblib.Parallel()(joblib.delayed(worker_pid)(i) for i in range(4)))
                nocopy.joblib.shutdown()
                os.write(write, json.dumps(sorted(got)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(child, 0)
        child_pids = set(json.loads(os.read(read, 1000).decode() or "[]"))
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_pids and not child_pids & kept  # its own workers, not its parent's
        assert all(psutil.pid_exists(p) for p in kept)  # the child's shutdown() left them alone
        # The parent's kept workers still run, and serve its next call.
        again = set(joblib.Parallel()(joblib.delayed(worker_pid)(i) for i in range(4)))
    assert again <= kept


def test_register_is_explicit_and_idempotent() -> None:
    backends = joblib.parallel.BACKENDS
    saved = backends.pop("nocopy")
    try:
        nocopy.joblib.register()
        nocopy.joblib.register()
        assert backends["nocopy"] is nocopy.joblib.NocopyBackend
    finally:
        backends["nocopy"] = saved


class Uncomparable:
    """An initializer argument whose == raises (a proxy to a dead manager, say)."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("cannot compare")

    __hash__ = object.__hash__


def test_settings_that_cannot_be_compared_get_new_workers_and_shutdown_waits_for_a_running_call() -> None:
    pids = []
    for _ in range(2):
        with joblib.parallel_config(backend="nocopy", n_jobs=2, mp_context="fork",
                                    initializer=remember_init, initargs=(Uncomparable(),)):
            pids.append(set(joblib.Parallel()(joblib.delayed(worker_pid)(i) for i in range(4))))
    assert not pids[0] & pids[1]  # not known to be the same settings: not the same workers
    gen = joblib.Parallel(n_jobs=2, backend="nocopy", return_as="generator")(
        joblib.delayed(worker_pid)(i) for i in range(4)
    )
    first = next(gen)
    nocopy.joblib.shutdown()  # the pool is in use: it stops when the call ends, not under it
    rest = list(gen)
    assert len(rest) == 3
    assert not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in {first, *rest}
    )
