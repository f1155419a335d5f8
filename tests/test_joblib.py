"""nocopy.joblib: the "nocopy" joblib backend shares big arguments zero-copy, behaves as joblib's do."""

from __future__ import annotations

import os
import subprocess
import sys
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
