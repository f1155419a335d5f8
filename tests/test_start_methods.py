"""How pools start their workers: a preloaded forkserver by default, fork made safe, clear refusals.

Most checks run a script in a fresh interpreter: what a forkserver preloads
depends on what the process had imported when it started it, a hang must be
bounded by a timeout, and a main module without ``if __name__ == "__main__":``
must be a real file that workers import again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nocopy
from nocopy._pool import _start

pytest.importorskip("polars")
needs_forkserver = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here"
)
needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")


def _run(tmp_path: Path, code: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    try:
        return subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **env}, cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        pytest.fail(f"{script} {' '.join(args)} hung for {timeout} s: {exc.stdout!r} {exc.stderr!r}")


# -- the default -------------------------------------------------------------------------
@needs_forkserver
def test_every_pool_starts_its_workers_from_one_preloaded_forkserver(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("import os\n\ndef parent(_=None):\n    return os.getppid()\n")
    out = _run(tmp_path, """
        import json, os, sys
        import numpy, polars           # polars imported by the caller: preloaded; pandas not
        from multiprocessing import forkserver
        import nocopy
        from nocopy import _map
        from helper import parent

        if __name__ == "__main__":
            assert "pandas" not in sys.modules
            with nocopy.ProcessPoolExecutor(2) as ex:
                method = ex._mp_context.get_start_method()
                server = forkserver._forkserver._forkserver_pid
                ppids = list(ex.map(parent, range(4)))
            # Tasks run in the workers: what the server has loaded, it imported before forking any.
            with open(f"/proc/{server}/maps") as f:
                maps = f.read()
            with nocopy.Pool(2) as pool:
                ppids += pool.map(parent, range(4))
                pool_method = pool._ctx.get_start_method()
            nocopy.parallel_map(len, numpy.arange(10), chunks=2, workers=2)
            map_methods = sorted(m for _, m in _map._process_pools)
            threads = []
            for tid in os.listdir(f"/proc/{server}/task"):
                with open(f"/proc/{server}/task/{tid}/comm") as f:
                    threads.append(f.read().strip())
            print(json.dumps({
                "method": method, "pool_method": pool_method, "map_methods": map_methods,
                "server": server, "same_server": forkserver._forkserver._forkserver_pid == server,
                "preload": forkserver._forkserver._preload_modules, "ppids": sorted(set(ppids)),
                "numpy_in_server": "_multiarray_umath" in maps, "polars_in_server": "polars" in maps,
                "pandas_in_server": "/pandas/" in maps, "server_threads": threads,
            }))
    """)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["method"] == got["pool_method"] == "forkserver"
    assert got["map_methods"] == ["forkserver"]
    assert got["same_server"] and got["ppids"] == [got["server"]]  # every worker is a fork of that one server
    assert got["preload"][:2] == ["nocopy", "numpy"] and "polars" in got["preload"]
    assert "__main__" not in got["preload"]  # its top-level code never runs in the server
    assert got["numpy_in_server"] and got["polars_in_server"] and not got["pandas_in_server"]
    # No compute pool in the server: no Polars pool threads, no BLAS threads (named after the process).
    assert not [t for t in got["server_threads"] if _start._POLARS_POOL_THREAD.match(t)]
    assert got["server_threads"].count("python") == 1, got["server_threads"]


@needs_forkserver
def test_joblib_backend_defaults_to_the_forkserver() -> None:
    joblib = pytest.importorskip("joblib")
    import nocopy.joblib  # noqa: F401 - registers the backend

    with joblib.parallel_config(backend="nocopy", n_jobs=2):
        ppids = joblib.Parallel()(joblib.delayed(os.getppid)() for _ in range(2))
    from multiprocessing import forkserver

    assert set(ppids) == {forkserver._forkserver._forkserver_pid}


def test_an_explicit_context_is_honoured() -> None:
    spawn = multiprocessing.get_context("spawn")
    with nocopy.ProcessPoolExecutor(1, mp_context=spawn) as ex:
        assert ex.submit(os.getppid).result() == os.getpid()  # spawned: the caller's child
    assert nocopy.parallel_map(len, np.arange(6), chunks=2, workers=1, mp_context="spawn") == [3, 3]
    from nocopy import _map

    assert (1, "spawn") in _map._process_pools


def test_parallel_map_mp_context_is_checked() -> None:
    with pytest.raises(ValueError, match="backend='processes'"):
        nocopy.parallel_map(len, np.arange(4), backend="threads", mp_context="spawn")
    with pytest.raises(TypeError, match="mp_context must be"):
        nocopy.parallel_map(len, np.arange(4), mp_context=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        nocopy.parallel_map(len, np.arange(4), mp_context="no-such-method")


# -- Polars: never a hang ---------------------------------------------------------------
_POLARS_SCRIPT = """
    import sys
    import multiprocessing
    import numpy as np
    import polars as pl
    import nocopy

    def n_rows(df):
        return len(df)

    def temporal_sum(df):
        return pl.from_arrow(df.to_arrow()).select(pl.col("t").max()).item().year + df["x"].sum()

    def frame_back(df):
        return df.with_columns(y=pl.col("x") * 2)

    if __name__ == "__main__":
        method = sys.argv[1]
        ctx = None if method == "default" else multiprocessing.get_context(method)
        df = pl.DataFrame({"t": np.arange(10).astype("datetime64[us]")})  # Datetime: Polars uses its pool
        df.sum()  # starts Polars' thread pool (threads polars-0..) in the caller
        try:
            print(nocopy.parallel_map(n_rows, df, chunks=1, workers=1, mp_context=ctx), flush=True)
        except nocopy.errors.StartMethodError as exc:
            print("REFUSED", exc, flush=True)
            raise SystemExit(0)
        if "long" in sys.argv:  # a longer sequence: more Polars work between pools, frames both ways
            big = pl.DataFrame({"t": np.arange(200_000).astype("datetime64[ms]"), "x": np.arange(200_000)})
            print(big.group_by(pl.col("x") % 7).agg(pl.col("t").max()).height, flush=True)
            print(sum(nocopy.parallel_map(temporal_sum, big, chunks=4, workers=2, mp_context=ctx)), flush=True)
            with nocopy.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                back = ex.submit(frame_back, big).result()
            print(back["y"].sum() == 2 * big["x"].sum(), flush=True)
            with nocopy.Pool(2, context=ctx) as pool:
                print(pool.map(n_rows, [big, big.head(5)]), flush=True)
            big.sort("t").sum()
            print(nocopy.parallel_map(n_rows, big, chunks=3, workers=2, mp_context=ctx), flush=True)
"""


@pytest.mark.parametrize("method", ["default", "forkserver", "spawn"])
@pytest.mark.parametrize("length", ["short", "long"])
def test_polars_work_in_the_caller_never_hangs_a_worker(tmp_path: Path, method: str, length: str) -> None:
    if method != "default" and method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    # ../shared/polars_fork_hang.py hung for ever with the old default (fork); then a longer sequence.
    out = _run(tmp_path, _POLARS_SCRIPT, method, length, timeout=150)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "[10]"
    if length == "long":
        assert lines[1:] == ["7", str(4 * 1970 + 199_999 * 200_000 // 2), "True", "[200000, 5]",
                             "[66666, 66667, 66667]"]


@needs_fork
def test_fork_while_polars_pool_runs_is_refused_not_a_hang(tmp_path: Path) -> None:
    out = _run(tmp_path, _POLARS_SCRIPT, "fork", "long", timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("REFUSED refusing to fork the workers of ProcessPoolExecutor: Polars' thread pool")
    assert "forkserver" in out.stdout and "spawn" in out.stdout  # the fix


@needs_fork
def test_fork_refusals_name_each_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_start, "polars_pool_running", lambda: True)
    fork = multiprocessing.get_context("fork")
    with pytest.raises(nocopy.errors.StartMethodError, match="workers of ProcessPoolExecutor"):
        nocopy.ProcessPoolExecutor(1, mp_context=fork)
    with pytest.raises(nocopy.errors.StartMethodError, match="workers of Pool"):
        nocopy.Pool(1, context=fork)


def test_polars_pool_is_seen_only_once_it_runs(tmp_path: Path) -> None:
    out = _run(tmp_path, """
        import polars as pl
        from nocopy._pool import _start
        print(_start.polars_pool_running())
        df = pl.DataFrame({"x": [1, 2, 3]})
        print(_start.polars_pool_running())
        df.sum()
        print(_start.polars_pool_running())
    """)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr


# -- fork: nocopy's threads stop across it ------------------------------------------------------
@needs_fork
def test_forking_pools_run_no_nocopy_thread_across_the_fork(tmp_path: Path) -> None:
    out = _run(tmp_path, """
        import json, os, threading, warnings
        seen = []
        def count():
            seen.append((len(os.listdir("/proc/self/task")), [t.name for t in threading.enumerate()]))
        os.register_at_fork(before=count)   # registered first: runs last, after nocopy's own hooks
        import multiprocessing
        import numpy as np
        import nocopy

        def double(a):
            return a * 2

        def attached_len(uri):
            return len(nocopy.attach(uri).get())

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("fork")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ref = nocopy.share(np.arange(10))          # the fd server runs
                with nocopy.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                    assert ex.submit(double, np.ones(1 << 18)).result().sum() == 2 << 18  # the inbox runs
                with nocopy.Pool(2, context=ctx) as pool:
                    assert pool.apply(double, (np.ones(1 << 18),)).sum() == 2 << 18
                # After these forks, a worker still attaches to the caller's segment.
                with nocopy.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                    assert ex.submit(attached_len, ref.uri).result() == 10
            alone = len(seen)
            # parallel_map keeps its pools warm: their stdlib threads run across the next forks.
            assert nocopy.parallel_map(len, ref, chunks=2, mp_context="fork") == [5, 5]
            assert nocopy.parallel_map(len, ref, chunks=2, workers=1, mp_context="fork") == [5, 5]
            print(json.dumps({"seen": seen, "alone": alone,
                              "deprecations": sum(issubclass(w.category, DeprecationWarning) for w in caught)}))
    """, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["alone"] >= 5 and len(got["seen"]) > got["alone"]
    for os_threads, names in got["seen"]:
        # Only threads Python knows (no OS thread of a stopped server lingering), none of them nocopy's servers.
        assert os_threads == len(names), names
        assert not {"nocopy-fds", "nocopy-res"} & set(names), names
    # Forks with no other pool alive: only the forking thread (before, nocopy-fds and nocopy-res ran too)...
    assert [n for n, _ in got["seen"][: got["alone"]]] == [1] * got["alone"]
    # ...and so no "This process is multi-threaded, use of fork() may lead to deadlocks" on Python 3.12+.
    # (3.13 counts threads after the after-fork hooks: nocopy's servers restart only once
    # os.fork() has returned, see _perprocess.restart_after_fork.)
    assert got["deprecations"] == 0


@needs_fork
def test_a_thread_that_cannot_start_never_raises_from_a_pool(tmp_path: Path) -> None:
    # As while the interpreter finalizes (CPython's test_python_finalization_error): every thread
    # start raises RuntimeError. nocopy's servers stay stopped and are started at their next use
    # (results come back pickled meanwhile); a forked worker runs without its caller watch and
    # warm-handle reaper, as the standard library's workers do.
    out = _run(tmp_path, """
        import json, multiprocessing, threading
        import numpy as np
        import nocopy
        from nocopy._ipc import _fdserver
        from nocopy._pool import _results

        refused = {"nocopy-fds", "nocopy-res", "nocopy-caller-watch", "nocopy-warm-reaper"}
        start = threading.Thread.start

        def refusing_start(self):
            if self.name in refused:
                raise RuntimeError("can't create new thread at interpreter shutdown")
            start(self)

        threading.Thread.start = refusing_start

        def big(n, ref):
            names = [t.name for t in threading.enumerate()]
            return np.full(n, len(ref.get())), names

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("fork")
            ref = nocopy.share(np.arange(10))                    # the fd server cannot start
            got = {"fds": _fdserver._server.serving()}
            with nocopy.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                arr, names = ex.submit(big, 1 << 18, ref).result()   # nor the inbox: pickled back
                got["first"] = [int(arr.sum()), _results._inbox.serving(), names]
                refused.clear()                                  # threads start again
                arr, names = ex.submit(big, 1 << 18, ref).result()   # next use: the inbox serves
                got["then"] = [int(arr.sum()), _results._inbox.serving(), _fdserver._server.serving()]
            print(json.dumps(got))
    """)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["fds"] is False
    total, inbox, names = got["first"]
    assert total == 10 << 18 and inbox is False
    assert "nocopy-caller-watch" not in names
    assert got["then"] == [10 << 18, True, True]
    assert "RuntimeError" not in out.stderr, out.stderr


@needs_fork
@needs_forkserver
def test_after_thread_starts_fail_in_a_fork_pool_it_breaks_and_the_forkserver_stops(tmp_path: Path) -> None:
    # CPython 3.13's test_python_finalization_error, on every Python: after the first, every thread
    # start fails (forked workers inherit that). The pool must break (BrokenProcessPool) and leave no
    # worker behind: each fork child holds the forkserver's "alive" pipe, and a lingering one kept
    # the forkserver of an earlier pool from stopping at exit (multiprocessing waits for it).
    out = _run(tmp_path, """
        import threading, time
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool
        from multiprocessing import forkserver
        import nocopy

        def mul(x, y):
            return x * y

        if __name__ == "__main__":
            with nocopy.ProcessPoolExecutor(1) as ex:            # the default: forkserver runs
                assert ex.submit(mul, 2, 3).result() == 6
            start, started = threading.Thread.start, []

            def mock_start(self):
                if started:
                    raise RuntimeError("can't create new thread at interpreter shutdown")
                started.append(self.name)
                start(self)

            threading.Thread.start = mock_start
            ex = nocopy.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
            with ex:
                try:
                    list(ex.map(mul, [2] * 10, [3] * 10))
                except BrokenProcessPool as exc:
                    print("broken", type(exc).__name__)
            ex.shutdown()
            threading.Thread.start = start
            t0 = time.monotonic()
            forkserver._forkserver._stop()                         # what multiprocessing's test cleanup does
            print("stopped", round(time.monotonic() - t0))
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith("broken "), out.stdout
    assert lines[1] == "stopped 0", out.stdout


def test_a_paused_server_serves_again(tmp_path: Path) -> None:
    from nocopy._ipc import _fdserver

    server = _fdserver.server()
    thread = server._thread
    server.pause()
    assert not thread.is_alive()
    assert not os.path.exists(f"/proc/self/task/{thread.native_id}")
    server.resume()
    assert server._thread.is_alive() and server._thread is not thread
    with pytest.raises(nocopy.errors.SegmentNotFoundError, match="closed or its token"):
        _fdserver.request_fd(server.address, "nocopy-none", "0")  # answered: N


# -- a main module without `if __name__ == "__main__":` -----------------------------------------
_UNGUARDED = """
    import multiprocessing, sys
    import numpy as np
    import nocopy

    kind, method = sys.argv[1], sys.argv[2]
    ctx = None if method == "default" else multiprocessing.get_context(method)
    try:
        if kind == "executor":
            with nocopy.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                print(ex.submit(abs, -3).result())
        elif kind == "map":
            print(nocopy.parallel_map(len, np.arange(10), chunks=2, mp_context=ctx))
        else:
            with nocopy.Pool(2, context=ctx) as pool:
                print(pool.map(abs, [-1, -2]))
    except nocopy.errors.StartMethodError as exc:
        print("CLEAR", exc)
"""


@pytest.mark.parametrize("kind", ["executor", "map", "pool"])
@pytest.mark.parametrize("method", ["default", "spawn"])
def test_a_missing_main_guard_gets_a_clear_error(tmp_path: Path, kind: str, method: str) -> None:
    out = _run(tmp_path, _UNGUARDED, kind, method, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("CLEAR worker pid "), out.stdout
    assert 'if __name__ == "__main__":' in lines[0] and str(tmp_path / "script.py") in lines[0]
    assert "WorkerCrashedError" not in out.stderr and "BrokenProcessPool" not in out.stderr


@needs_fork
def test_fork_needs_no_main_guard(tmp_path: Path) -> None:
    out = _run(tmp_path, _UNGUARDED, "executor", "fork", timeout=60)
    assert out.stdout.split() == ["3"], out.stderr


def test_a_worker_crash_is_still_a_crash() -> None:
    # Exit code 78 once a task ran is the task's doing, not a missing guard.
    with nocopy.ProcessPoolExecutor(1) as ex, pytest.raises(nocopy.errors.WorkerCrashedError):
        ex.submit(os._exit, _start.EXIT_UNGUARDED_MAIN).result()


def test_only_modules_the_server_finds_in_the_same_files_are_preloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The forkserver imports from its own default path: a module found on a directory added at
    # run time would be another copy there (a nocopy of another tree gave workers a worker_init
    # of another signature), so it is left to the workers, as a spawned worker imports it.
    (tmp_path / "added_at_run_time.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import added_at_run_time  # noqa: F401

    try:
        assert _start._found_alike_in_server(["numpy", "added_at_run_time"]) == ["numpy"]
    finally:
        sys.modules.pop("added_at_run_time", None)
