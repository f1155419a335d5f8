"""Run CPython's own ProcessPoolExecutor tests on nocopy's executor (or the stdlib's, to compare).

Usage: ``python run_process_pool_tests.py {nocopy,stdlib} OUT.json [SUBSTRING] [--timeout S]``

Runs every ProcessPool{Fork,Forkserver,Spawn}* class of this Python's own
``test_concurrent_futures`` (the package of 3.13: one module per family) or,
where the interpreter ships none, of the vendored CPython 3.11 module, under
unittest, and writes to OUT.json::

    {"python": "3.13.0", "files": [the test modules' files], "vendored": bool,
     "outcome": {test id: "ok" | "fail: Exc" | "error: Exc" | "skip: reason"
                 | "expected failure" | "unexpected success" | "hang: ..."},
     "seconds": {test id: its duration}}

(``Exc``: the type of the exception that failed the test.) With ``nocopy``,
``concurrent.futures.ProcessPoolExecutor`` (and
``concurrent.futures.process.ProcessPoolExecutor``) are nocopy's before the
test modules are imported, so every test class builds nocopy's executor. The
few tests that run a script in a fresh interpreter (``assert_python_ok``,
isolated mode: no PYTHONPATH) get the same set-up prepended to the script,
so they exercise nocopy too.

The tests run in a child process watched by this one: a test that gives no
outcome within ``--timeout`` seconds (default 120; the slowest took 28 s on this loaded 2-core machine) is recorded as
``"hang: ..."``, the child's whole process group is killed, and a new child runs
the tests left. A hang thus costs one timeout and never stops the run; whether
a hang is acceptable is for the caller to judge (tests/test_stdlib_conformance.py
accepts only CPython 3.13.0's own shutdown deadlock, gh-125451).
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import unittest
from types import ModuleType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# This Python's own test directory: its modules go before the vendored ones (test/__init__.py).
STDLIB_TESTS = os.path.join(sysconfig.get_path("stdlib"), "test")
CLASSES = re.compile(r"^ProcessPool(Fork|Forkserver|Spawn)[A-Z]")


NOCOPY_SETUP = (
    "import concurrent.futures, concurrent.futures.process, nocopy",
    "concurrent.futures.ProcessPoolExecutor = nocopy.ProcessPoolExecutor",
    "concurrent.futures.process.ProcessPoolExecutor = nocopy.ProcessPoolExecutor",
)


def executor_modules() -> list[str]:
    """The modules holding this Python's ProcessPool test classes: the submodules of its own
    ``test_concurrent_futures`` package (3.13), else ``test.test_concurrent_futures`` (its own
    module if it ships one, else the vendored 3.11 one)."""
    package = os.path.join(STDLIB_TESTS, "test_concurrent_futures")
    if os.path.isfile(os.path.join(package, "__init__.py")):
        names = sorted(f[:-3] for f in os.listdir(package) if f.startswith("test_") and f.endswith(".py"))
        return [f"test.test_concurrent_futures.{name}" for name in names]
    return ["test.test_concurrent_futures"]


def prelude(which: str, setup: tuple[str, ...]) -> str:
    """The lines that make a fresh interpreter import this directory's ``test`` (and, with
    ``nocopy``, this nocopy with *setup* run)."""
    lines = [f"import sys; sys.path.insert(0, {HERE!r})"]
    if which == "nocopy":
        import nocopy

        src = os.path.dirname(os.path.dirname(os.path.abspath(nocopy.__file__)))
        lines += [f"sys.path.insert(0, {src!r})", *setup]
    return "\n".join(lines) + "\n"


def _live_executors() -> list[Any]:
    """Every process-pool executor (the stdlib's or nocopy's) still alive in this process and not shut down."""
    from concurrent.futures.process import ProcessPoolExecutor as Std

    return [o for o in gc.get_objects() if isinstance(o, Std) and not getattr(o, "_shutdown_thread", True)]


def _finish(executor: Any) -> None:
    """``executor.shutdown(wait=True)``, but a pool that does not stop within 60 s has its workers terminated."""
    manager = getattr(executor, "_executor_manager_thread", None)
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join(60)
    if manager is None or manager.is_alive():
        for p in processes:
            p.terminate()
        for p in processes:
            p.join(10)
    print(f"(runner: shut down {type(executor).__name__} {id(executor):#x}, left running by the failed test;"
          f" {'stopped' if manager is None or not manager.is_alive() else 'workers terminated'})",
          file=sys.__stderr__, flush=True)


class _Recorder(unittest.TextTestResult):
    """Writes one JSON line per test start and per outcome to ``progress`` (flushed at once:
    the watching process reads it to tell a hang)."""

    progress: Any
    started: float = 0.0
    failed: bool = False
    before: set[int] = set()  # noqa: RUF012 - replaced per test, never mutated

    def _line(self, **kw: Any) -> None:
        self.progress.write(json.dumps(kw) + "\n")
        self.progress.flush()

    def _set(self, test: Any, what: str) -> None:
        self._line(id=test.id(), outcome=what, seconds=round(time.monotonic() - self.started, 2))

    def startTest(self, test: Any) -> None:
        self.started = time.monotonic()
        self.failed = False
        self.before = {id(e) for e in _live_executors()}
        self._line(start=test.id())
        super().startTest(test)

    def stopTest(self, test: Any) -> None:
        super().stopTest(test)
        if self.failed:
            # A failed assertion skips the rest of the test, and with it the test's own
            # ``executor.shutdown(wait=True)`` (ExecutorDeadlockTest._check_crash ends so): the
            # executor and its workers would live on, holding the resource tracker's and the
            # forkserver's pipes, and the module's ``_cleanup_tests`` (or the exit) would wait
            # for them for ever. Finish what the test skipped, for the executors it made.
            for executor in _live_executors():
                if id(executor) not in self.before:
                    _finish(executor)
        self.before = set()

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._set(test, "ok")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self.failed = True
        self._set(test, f"fail: {err[0].__name__}")

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self.failed = True
        # setUpModule/setUpClass errors come as a pseudo-test: recorded under its description.
        self._set(test, f"error: {err[0].__name__}")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._set(test, f"skip: {reason}")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._set(test, "expected failure")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._set(test, "unexpected success")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=("nocopy", "stdlib"))
    parser.add_argument("out")
    parser.add_argument("only", nargs="?", default="", help="run only the tests whose id contains this")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a test may take before it counts as hung")
    # Internal: set by the watching process for the child that runs the tests.
    parser.add_argument("--child", nargs=2, metavar=("PROGRESS", "DONE"), help=argparse.SUPPRESS)
    return parser.parse_args()


def start(setup: tuple[str, ...]) -> argparse.Namespace:
    """Read the arguments. In the child: make this process and every script the tests run in
    a fresh interpreter import this directory's ``test`` and, with ``nocopy``, run *setup*
    first. Before any test module is imported."""
    args = _arguments()
    if args.child is None:
        return args
    if "test" in sys.modules:
        raise SystemExit("the 'test' package was imported before this runner could put its own first")
    code = prelude(args.which, setup)
    exec(code, {})  # here: exactly the set-up the scripts get

    from test.support import script_helper

    def in_the_same_setup(run: Any) -> Any:
        def wrapped(*a: Any, **kwargs: Any) -> Any:
            if len(a) >= 2 and a[0] == "-c":
                a = ("-c", code + a[1], *a[2:])
            return run(*a, **kwargs)

        return wrapped

    script_helper.assert_python_ok = in_the_same_setup(script_helper.assert_python_ok)
    script_helper.assert_python_failure = in_the_same_setup(script_helper.assert_python_failure)
    return args


def tests_of(modules: list[ModuleType], classes: re.Pattern[str], only: str) -> unittest.TestSuite:
    """The tests of *modules*' TestCase classes named like *classes* whose id contains *only*."""
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for module in modules:
        for name in sorted(vars(module)):
            cls = getattr(module, name)
            if classes.match(name) and isinstance(cls, type) and issubclass(cls, unittest.TestCase):
                for test in loader.loadTestsFromTestCase(cls):
                    if only in test.id():
                        suite.addTest(test)
    return suite


def run_child(args: argparse.Namespace, modules: list[ModuleType], suite: unittest.TestSuite) -> int:
    """In the child: run the tests of *suite* not yet done, one progress line each."""
    # The watcher's signal before it kills a hang: every thread's stack, for diagnose().
    stacks = open(args.child[0] + ".stacks", "w", encoding="utf-8")  # noqa: SIM115 - open until the process ends
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    with open(args.child[1], encoding="utf-8") as f:
        done = set(json.load(f))
    todo = unittest.TestSuite(t for t in suite if t.id() not in done)
    with open(args.child[0], "a", encoding="utf-8") as progress:

        class Recorder(_Recorder):
            pass

        Recorder.progress = progress
        files = [os.path.abspath(m.__file__ or "") for m in modules]
        progress.write(json.dumps({"files": files}) + "\n")
        unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Recorder).run(todo)
        progress.write(json.dumps({"end": True}) + "\n")
    return 0


def _session(sid: int) -> str:
    """One line per process of session *sid* (pid, parent, state, what it waits in, command line):
    which of a hung child's workers, forkserver or resource tracker is still there, and why."""
    lines = []
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) != sid:  # field 6, the session id
                continue
            with open(f"/proc/{entry}/wchan", encoding="utf-8", errors="replace") as f:
                wchan = f.read() or "-"
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        lines.append(f"  pid {entry} parent {fields[1]} state {fields[0]} in {wchan}: {cmd[:160]}")
    return "\n".join(lines) or "  (none)"


def diagnose(stacks: str, timeout: float) -> str:
    """What a hung child's thread stacks (faulthandler's dump) show: ``"hang (gh-125451)"`` for
    CPython's own shutdown deadlock, else ``"hang: ..."``.

    gh-125451 (fixed in 3.12.8 and 3.13.1; 3.11 has it too): the queue's feeder thread, failing
    to pickle a task, waits in ``_on_queue_feeder_error`` for the executor's shutdown lock, which
    the executor manager thread holds while it joins that feeder thread in
    ``join_executor_internals``; ``shutdown(wait=True)`` then waits for the manager for ever.
    """
    threads = [block.strip().splitlines() for block in stacks.split("\n\n") if block.strip()]
    feeder = any(len(lines) > 1 and lines[1].endswith(" in _on_queue_feeder_error") for lines in threads)
    manager = any(
        any(line.endswith(" in join_thread") for line in lines)
        and any(line.endswith(" in join_executor_internals") for line in lines)
        for lines in threads
    )
    if feeder and manager:
        return "hang (gh-125451)"
    return f"hang: no outcome in {timeout:.0f} s"


def supervise(script: str, args: argparse.Namespace) -> int:
    """Run *script* as a child on the tests not done yet until all are; record a test that hangs."""
    outcome: dict[str, str] = {}
    seconds: dict[str, float] = {}
    files: list[str] = []
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nocopy-conformance-") as tmp:
        progress_path, done_path = os.path.join(tmp, "progress"), os.path.join(tmp, "done.json")
        stacks_path = progress_path + ".stacks"
        env = dict(os.environ)
        # Python 3.11's forkserver ignores the caller's sys.path: the test classes its workers
        # unpickle live in this directory's stand-in ``test`` package.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
        while True:
            with open(done_path, "w", encoding="utf-8") as f:
                json.dump(sorted(outcome), f)
            open(progress_path, "w").close()
            cmd = [sys.executable, script, args.which, args.out, args.only, "--child", progress_path, done_path]
            # A session of its own: the child, its workers and whatever a test leaves running die together.
            child = subprocess.Popen(cmd, env=env, start_new_session=True)
            current: str | None = None
            ended = False
            last = time.monotonic()
            hung = False
            with open(progress_path, encoding="utf-8") as progress:
                while True:
                    code = child.poll()
                    for line in progress.readlines():
                        event = json.loads(line)
                        last = time.monotonic()
                        if "start" in event:
                            current = event["start"]
                        elif "id" in event:
                            outcome[event["id"]] = event["outcome"]
                            seconds[event["id"]] = event["seconds"]
                            current = None
                        elif "files" in event:
                            files = event["files"]
                        elif "end" in event:
                            ended = True
                    if code is not None:
                        break
                    if time.monotonic() - last > args.timeout:
                        hung = True
                        # Every thread's stack (faulthandler, registered in the child), then the kill.
                        os.kill(child.pid, signal.SIGUSR1)
                        time.sleep(1)
                        processes = _session(child.pid)
                        os.killpg(child.pid, signal.SIGKILL)
                        stacks = ""
                        if os.path.exists(stacks_path):
                            with open(stacks_path, encoding="utf-8", errors="replace") as f:
                                stacks = f.read()
                        print(f"\n*** no progress in {args.timeout:.0f} s; the child's threads:\n{stacks}"
                              f"\n*** the processes of its session:\n{processes}", file=sys.stderr, flush=True)
                        child.wait()
                        break
                    time.sleep(0.2)
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            else:
                # Whatever the child's tests left running in its session goes too.
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if hung and current is not None:
                outcome[current] = diagnose(stacks, args.timeout)
                print(f"*** {current}: {outcome[current]}; its process group killed,"
                      " the tests left go on in a new child", file=sys.stderr, flush=True)
                seconds[current] = args.timeout
                continue
            if hung:  # between tests (a class or module fixture) or at exit: a failure of the run
                what = "at exit" if ended else f"after {next(reversed(outcome), 'the start')}"
                outcome[f"(run) hang {what}"] = f"hang: no progress in {args.timeout:.0f} s"
            elif child.returncode != 0:
                outcome["(run) child exit"] = f"error: exit code {child.returncode}"
            elif not ended:
                outcome["(run) child exit"] = "error: ended before its last test"
            break
    result = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "files": files,
        "vendored": any(not f.startswith(STDLIB_TESTS + os.sep) for f in files),
        "outcome": outcome,
        "seconds": seconds,
        "wall seconds": round(time.monotonic() - wall, 1),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return 0


def main() -> int:
    args = start(NOCOPY_SETUP)
    if args.child is None:
        return supervise(__file__, args)
    import importlib

    modules = [importlib.import_module(name) for name in executor_modules()]
    if args.which == "nocopy":
        import concurrent.futures

        import nocopy

        assert concurrent.futures.ProcessPoolExecutor is nocopy.ProcessPoolExecutor
    suite = tests_of(modules, CLASSES, args.only)
    if args.which == "nocopy":  # every class builds nocopy's executor
        kinds = {getattr(type(t), "executor_type", None) for t in suite}
        assert kinds <= {nocopy.ProcessPoolExecutor}, kinds
    return run_child(args, modules, suite)


if __name__ == "__main__":
    sys.exit(main())
