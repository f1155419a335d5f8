"""``nocopy bench``: argument parsing and output. ``main(argv) -> exit code``.

Examples
--------
```sh
nocopy bench seed --quick --json-out out.json --plot out.png
nocopy bench scaling --max-size 256MB --json-out scaling.json
nocopy bench pandas --rows 200000 --json > pandas.json
nocopy bench polars --rows 200000 --workers 2 --json-out polars.json
nocopy bench ray --gb 0.02 --rows 100000 --repeat 1
nocopy bench joblib --rows 200000 --frame-rows 20000 --repeat 1
nocopy bench dataloader --quick
```
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

QUICK_ROWS = 1_000_000
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4GB' / '256MB' / '1e6' -> bytes (powers of 1024 for K/M/G/T)."""
    m = _SIZE_RE.match(text)
    if m is None:
        try:
            return int(float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MB, 4GB)") from None
    unit = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * unit)


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer (``_`` allowed) of at least *minimum*."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


_positive = _at_least(1)
_non_negative = _at_least(0)

# Methods `--quick` leaves out unless --methods names them: Ray's start alone takes longer
# than the whole quick run should (under a minute).
QUICK_SKIPS = ("ray",)
QUICK_REPEAT = 1
QUICK_COLD_REPEAT = 1


def _output_options(parser: argparse.ArgumentParser, plot: bool = False) -> None:
    """The output options every bench command shares: one convention with ``nocopy ls/gc/doctor``
    (``--json`` prints JSON on stdout), plus ``--json-out PATH`` to keep the numbers in a file."""
    parser.add_argument("--json", action="store_true",
                        help="print every number as JSON on stdout instead of the table")
    parser.add_argument("--json-out", metavar="PATH",
                        help="also write every number as JSON to PATH (directories are created)")
    if plot:
        parser.add_argument("--plot", metavar="PATH", help="write a PNG plot of the results to PATH")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _start_method_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--start-method", default="spawn", choices=["spawn", "forkserver", "fork"],
                        help=f"start method of {what} (default spawn)")


def _parser() -> argparse.ArgumentParser:
    from ._methods import METHODS

    parser = argparse.ArgumentParser(
        prog="nocopy bench",
        description="Benchmarks: the classic experiment against every peer (seed), nocopy's scaling, "
        "DataFrames against Arrow IPC and pickle (pandas), a Polars frame to N workers against pickle (polars), "
        "nocopy.ray against plain Ray (ray), joblib's default backend against backend='nocopy' (joblib), "
        "a PyTorch DataLoader over three datasets (dataloader).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{seed,scaling,pandas,polars,ray,joblib,dataloader}")
    sub.required = True
    names = [m.name for m in METHODS]
    seed = sub.add_parser(
        "seed",
        help="the classic experiment: np.nansum of a record array's float field in N processes, every method",
        description=(
            "The classic experiment (10M rows of datetime/float-with-NaN/6-byte string as a record array, "
            "np.nansum of the float field in N processes, each over the whole column), done every way: "
            + ", ".join(names) + ". Methods whose package or nocopy feature is missing are skipped with a note."
        ),
    )
    seed.add_argument("--rows", type=_positive, default=None,
                      help=f"rows of data (default 10,000,000; --quick: {QUICK_ROWS:,})")
    seed.add_argument("--workers", type=_positive, default=os.cpu_count() or 2, help="processes (default: cpu_count)")
    _start_method_option(seed, "the process pools")
    seed.add_argument("--methods", default=None,
                      help=f"comma-separated subset of: {','.join(names)} (default: all; "
                      f"--quick: all but {', '.join(QUICK_SKIPS)})")
    seed.add_argument("--repeat", type=_positive, default=None,
                      help=f"warm timing runs per method (default 3; --quick: {QUICK_REPEAT}), all in this "
                      "process: median and min-max")
    seed.add_argument(
        "--memory-repeat", type=_positive, default=1,
        help="memory runs per method, apart from the timing runs (default 1: peaks vary far less than times)",
    )
    seed.add_argument(
        "--cold-repeat", type=_non_negative, default=None,
        help=f"cold runs per method (default 2; --quick: {QUICK_COLD_REPEAT}), each in a fresh interpreter, "
        "in rounds of every method in a shuffled order, before the warm runs; 0: warm runs only",
    )
    seed.add_argument(
        "--startup-repeat", type=_non_negative, default=None,
        help="rounds of the pool start-up table (default 2; --quick: 0, to stay under a minute): the standard library's and "
        "nocopy's executors under each start method, N workers and one numpy task each, each run in a "
        "fresh interpreter; 0: not measured",
    )
    seed.add_argument(
        "--no-warm-up", dest="warm_up", action="store_false",
        help="no warm-up task before the work, as a script runs it: start-up is then the pool's construction "
        "only, and the workers boot during the work phase (compare methods end to end)",
    )
    seed.add_argument("--quick", action="store_true",
                      help=f"a run of under a minute: {QUICK_ROWS:,} rows, {QUICK_REPEAT} warm and "
                      f"{QUICK_COLD_REPEAT} cold run per method, no {', '.join(QUICK_SKIPS)} unless --methods names it")
    seed.add_argument("--interval", type=float, default=10.0, help="memory sampling period in ms (default 10)")
    _output_options(seed, plot=True)

    scaling = sub.add_parser(
        "scaling",
        help="get() latency vs size, share() throughput, per-task overhead, time vs workers",
        description="How nocopy scales: get() latency in a worker from --min-size to --max-size (it must "
        "not grow with size), share() throughput against a plain copy into fresh shared memory, the "
        "per-task overhead of tiny tasks against concurrent.futures, the classic experiment's time "
        "for 1, 2, 4, 8... workers, and pool start-up per start method against the standard library's (cold). Sizes up to 4 GiB need about 8 GiB of free memory.",
    )
    scaling.add_argument("--max-size", type=parse_size, default=4 << 30, help="largest data size (default 4GB)")
    scaling.add_argument("--min-size", type=parse_size, default=1 << 20, help="smallest data size (default 1MB)")
    scaling.add_argument("--rows", type=_positive, default=10_000_000, help="rows for the workers sweep (default 10,000,000)")
    scaling.add_argument("--workers", default="1,2,4,8", help="worker counts for the sweep (default 1,2,4,8)")
    scaling.add_argument("--tasks", type=_positive, default=2000, help="tiny tasks for the overhead test (default 2000)")
    _start_method_option(scaling, "the workers")
    scaling.add_argument("--repeat", type=_positive, default=3, help="runs per point (default 3)")
    scaling.add_argument(
        "--parts", default="get,share,overhead,workers,startup",
        help="comma-separated subset of get,share,overhead,workers,startup (default all)",
    )
    _output_options(scaling, plot=True)

    pandas = sub.add_parser(
        "pandas",
        help="share() and get() of a ~1 GB DataFrame against Arrow IPC and pickle",
        description="share() of a DataFrame (10 numeric + 2 string columns) in this process and get() in a "
        "fresh spawned worker, against pa.Table.from_pandas + an IPC stream and pickle protocol 5; one run.",
    )
    pandas.add_argument("--rows", type=_positive, default=8_500_000, help="rows (default 8,500,000: about 1 GB)")
    _output_options(pandas)

    polars = sub.add_parser(
        "polars",
        help="a ~1 GB Polars DataFrame handed to N workers: pickled (Polars' own path) vs nocopy, time and memory",
        description="The same Polars DataFrame (10 numeric, a string and a datetime column) handed to --workers "
        "spawned processes, one task each: pickled as the task's argument, against nocopy.share + get(). "
        "Time to the last result, and Σ PSS + shared memory while every worker holds the frame; ratios in one run.",
    )
    polars.add_argument("--rows", type=_positive, default=8_500_000, help="rows (default 8,500,000: about 0.8 GB)")
    polars.add_argument("--workers", type=_positive, default=os.cpu_count() or 2, help="processes (default: cpu_count)")
    polars.add_argument("--repeat", type=_positive, default=3, help="timing runs per method (default 3): median")
    polars.add_argument("--interval", type=float, default=10.0, help="memory sampling period in ms (default 10)")
    _output_options(polars)

    ray = sub.add_parser(
        "ray",
        help="nocopy.ray against plain Ray: a DataFrame got inside a task, and the classic experiment",
        description="Part 1: a DataFrame put with ray.put / nocopy.ray.put and got inside a task (time and the "
        "task's memory growth). Part 2: the classic experiment's Ray method with ray and with nocopy.ray.",
    )
    ray.add_argument("--gb", type=float, default=1.0, help="frame size in GB of 1e9 bytes (default 1.0)")
    ray.add_argument("--rows", type=_positive, default=10_000_000, help="classic experiment rows (default 10,000,000)")
    ray.add_argument("--workers", type=_positive, default=2, help="Ray CPUs and classic tasks (default 2)")
    ray.add_argument("--repeat", type=_positive, default=3, help="runs per method (default 3): medians")
    _output_options(ray)

    jl = sub.add_parser(
        "joblib",
        help="joblib.Parallel with its default backend (loky) against backend='nocopy': "
        "the classic record array, a frame with string columns, a sparse matrix and scikit-learn's own n_jobs calls",
        description="Each data set is handed to --workers tasks of one joblib.Parallel call, with loky and with "
        "the nocopy backend: whole calls from fresh workers (median of --repeat) and the peak memory of one "
        "more call each; scikit-learn estimators' n_jobs calls, cold and warm; then --calls Parallel calls of 4 tiny tasks in a row, cold and warm (workers kept "
        "between calls); ratios loky / nocopy from the same run.",
    )
    jl.add_argument("--rows", type=_positive, default=10_000_000, help="record array rows (default 10,000,000)")
    jl.add_argument("--frame-rows", type=_positive, default=2_000_000, help="string frame rows (default 2,000,000)")
    jl.add_argument(
        "--sparse-rows", type=_positive, default=1_000_000,
        help="sparse matrix rows, 1,000 columns, 1%% stored (default 1,000,000; needs scipy and scikit-learn)",
    )
    jl.add_argument("--workers", type=_positive, default=os.cpu_count() or 2, help="n_jobs and tasks (default: cpu_count)")
    _start_method_option(jl, "nocopy's workers")
    jl.add_argument("--repeat", type=_positive, default=3, help="timed calls per backend (default 3): medians")
    jl.add_argument("--interval", type=float, default=10.0, help="memory sampling period in ms (default 10)")
    jl.add_argument(
        "--calls", type=_positive, default=20,
        help="the repeated case: Parallel calls of 4 tiny tasks in a row, cold and warm (default 20)",
    )
    jl.add_argument(
        "--sklearn-rows", type=_positive, default=500_000,
        help="rows of the large scikit-learn workload's matrix, 64 float64 features "
        "(default 500,000: ~256 MB)",
    )
    _output_options(jl)

    dl = sub.add_parser(
        "dataloader",
        help="a PyTorch DataLoader over Python objects, share_memory_() tensors and nocopy.torch.SharedDataset",
        description="The same samples (float32 features and an int64 label) as a list of Python objects, as "
        "tensors moved with share_memory_(), and as nocopy.torch.SharedDataset, read by DataLoader epochs "
        "with each --workers count: time per epoch and the peak of Σ PSS + shared memory.",
    )
    dl.add_argument("--rows", type=_positive, default=None, help="samples (default 2,000,000; --quick: 20,000)")
    dl.add_argument("--features", type=_positive, default=16, help="float32 features per sample (default 16)")
    dl.add_argument("--workers", default=None, help="DataLoader worker counts (default 1,2,4; --quick: 1,2)")
    dl.add_argument("--start-method", default="fork", choices=["spawn", "forkserver", "fork"],
                    help="start method of the DataLoader's workers (default fork, DataLoader's on Linux)")
    dl.add_argument("--repeat", type=_positive, default=None, help="timed epochs per point (default 3; --quick: 1)")
    dl.add_argument("--quick", action="store_true", help="a smoke run: 20,000 samples, 1 and 2 workers, 1 epoch")
    dl.add_argument("--interval", type=float, default=10.0, help="memory sampling period in ms (default 10)")
    _output_options(dl)
    return parser


def _log(quiet: bool) -> Any:
    if quiet:
        return lambda s: None
    return lambda s: print(s, file=sys.stderr, flush=True)


def seed_config(args: argparse.Namespace) -> Any:
    """The SeedConfig *args* ask for: ``--quick`` sets smaller defaults and leaves out
    QUICK_SKIPS, but an option given explicitly always wins."""
    from ._methods import METHODS
    from ._seed import SeedConfig

    quick = args.quick
    rows = args.rows if args.rows is not None else (QUICK_ROWS if quick else 10_000_000)
    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    elif quick:
        methods = [m.name for m in METHODS if m.name not in QUICK_SKIPS]
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if quick else 3)
    cold = args.cold_repeat if args.cold_repeat is not None else (QUICK_COLD_REPEAT if quick else 2)
    return SeedConfig(
        rows=rows, workers=args.workers, start_method=args.start_method, methods=methods,
        repeat=repeat, memory_repeat=args.memory_repeat, interval=args.interval / 1e3,
        cold_repeat=cold, warm_up=args.warm_up,
        startup_repeat=args.startup_repeat if args.startup_repeat is not None else (0 if quick else 2),
    )


def _seed(args: argparse.Namespace) -> int:
    from ._report import plot_seed, seed_table
    from ._seed import run_seed

    cfg = seed_config(args)
    return _run_and_report("seed", args, lambda: run_seed(cfg, _log(args.quiet)), seed_table, plot_seed)


def _scaling(args: argparse.Namespace) -> int:
    from ._report import plot_scaling
    from ._scaling import ScalingConfig, run_scaling, scaling_table

    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
        if not workers or min(workers) < 1:
            raise ValueError
    except ValueError:
        print(f"nocopy bench scaling: --workers takes positive integers like 1,2,4,8, not {args.workers!r}", file=sys.stderr)
        return 2
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    cfg = ScalingConfig(
        min_size=args.min_size, max_size=args.max_size, rows=args.rows, workers=workers,
        tasks=args.tasks, start_method=args.start_method, repeat=args.repeat, parts=parts,
    )
    return _run_and_report("scaling", args, lambda: run_scaling(cfg, _log(args.quiet)), scaling_table, plot_scaling)


def _missing(command: str, modules: tuple[str, ...], extra: str) -> bool:
    """Print which package *command* lacks (and how to get it); True if one is missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            print(f"nocopy bench {command} needs {module}: pip install 'nocopy[{extra}]'", file=sys.stderr)
            return True
    return False


def _pandas(args: argparse.Namespace) -> int:
    if _missing("pandas", ("pandas", "pyarrow"), "pandas"):
        return 2
    from ._pandas import PandasConfig, pandas_table, run_pandas

    cfg = PandasConfig(rows=args.rows)
    return _run_and_report("pandas", args, lambda: run_pandas(cfg, _log(args.quiet)), pandas_table)


def _polars(args: argparse.Namespace) -> int:
    if _missing("polars", ("polars", "pyarrow"), "polars"):
        return 2
    from ._polars import PolarsConfig, polars_table, run_polars

    cfg = PolarsConfig(rows=args.rows, workers=args.workers, repeat=args.repeat, interval=args.interval / 1e3)
    return _run_and_report("polars", args, lambda: run_polars(cfg, _log(args.quiet)), polars_table)


def _ray(args: argparse.Namespace) -> int:
    if _missing("ray", ("ray", "pandas", "pyarrow"), "ray"):
        return 2
    from ._ray import RayConfig, ray_table, run_ray

    cfg = RayConfig(gb=args.gb, rows=args.rows, workers=args.workers, repeat=args.repeat)
    return _run_and_report("ray", args, lambda: run_ray(cfg, _log(args.quiet)), ray_table)


def _joblib(args: argparse.Namespace) -> int:
    if _missing("joblib", ("joblib",), "joblib") or _missing("joblib", ("pandas", "pyarrow"), "pandas"):
        return 2
    from ._joblib import JoblibConfig, joblib_table, run_joblib

    cfg = JoblibConfig(
        rows=args.rows, frame_rows=args.frame_rows, sparse_rows=args.sparse_rows, workers=args.workers,
        start_method=args.start_method,
        repeat=args.repeat, interval=args.interval / 1e3, calls=args.calls,
        sklearn_rows=args.sklearn_rows,
    )
    return _run_and_report("joblib", args, lambda: run_joblib(cfg, _log(args.quiet)), joblib_table)


def _dataloader(args: argparse.Namespace) -> int:
    if _missing("dataloader", ("torch",), "torch"):
        return 2
    from ._dataloader import DataLoaderConfig, dataloader_table, run_dataloader

    spec = args.workers or ("1,2" if args.quick else "1,2,4")
    try:
        workers = [int(w) for w in spec.split(",") if w.strip()]
        if not workers or min(workers) < 1:
            raise ValueError
    except ValueError:
        print(f"nocopy bench dataloader: --workers takes positive integers like 1,2,4, not {spec!r}", file=sys.stderr)
        return 2
    cfg = DataLoaderConfig(
        rows=args.rows or (20_000 if args.quick else 2_000_000), features=args.features, workers=workers,
        start_method=args.start_method, repeat=args.repeat or (1 if args.quick else 3),
        interval=args.interval / 1e3,
    )
    return _run_and_report("dataloader", args, lambda: run_dataloader(cfg, _log(args.quiet)), dataloader_table)


def _compile_nocopy() -> None:
    """Write the bytecode of nocopy's own modules, as installing a wheel does.

    Every spawned worker imports nocopy: without an up-to-date ``.pyc`` (an
    editable install under ``PYTHONDONTWRITEBYTECODE``, or sources changed
    since) each one would compile the changed modules again, ~10 ms apiece,
    and the timings would include it. Quietly skipped where the package
    directory is not writable.
    """
    import compileall

    import nocopy

    with contextlib.suppress(OSError):
        compileall.compile_dir(os.path.dirname(nocopy.__file__), quiet=2)


def _run_and_report(
    command: str,
    args: argparse.Namespace,
    run: Callable[[], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], str], None] | None = None,
) -> int:
    """Run an experiment; print its table (or, with ``--json``, its JSON), write the JSON file
    and PNG if asked; the exit code. With ``--json`` stdout holds only the JSON: the
    "wrote ..." notes go to stderr."""
    from ._report import dump_json, write_json

    _compile_nocopy()
    try:
        result = run()
    except ValueError as exc:
        print(f"nocopy bench {command}: {exc}", file=sys.stderr)
        return 2
    notes = sys.stderr if args.json else sys.stdout
    print(dump_json(result) if args.json else table(result))
    if args.json_out:
        write_json(result, args.json_out)
        print(f"wrote {args.json_out}", file=notes)
    if plot is not None and args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}", file=notes)
    return 1 if result.get("failed") else 0


def main(argv: list[str] | None = None) -> int:
    """Run ``nocopy bench`` with *argv* (default: ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("nocopy bench needs psutil and matplotlib: pip install 'nocopy[bench]'", file=sys.stderr)
        return 2
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "seed": _seed, "scaling": _scaling, "pandas": _pandas, "polars": _polars, "ray": _ray, "joblib": _joblib,
        "dataloader": _dataloader,
    }
    return commands[args.command](args)
