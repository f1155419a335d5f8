"""The ``nocopy`` command: ``ls``, ``gc``, ``doctor``, ``bench`` and ``--version``.

Examples
--------
```sh
$ nocopy doctor          # can this machine share memory, how much, what to fix
$ nocopy ls --json       # this user's live segments
$ nocopy gc --dry-run    # what crashed owners left behind
$ nocopy bench seed      # the classic experiment, every way of sharing the data
```
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .._version import __version__

__all__ = ["main"]

_BENCH_MODULE = "nocopy._bench.cli"


def _parser() -> argparse.ArgumentParser:
    from . import _doctor, _gc, _ls

    parser = argparse.ArgumentParser(
        prog="nocopy",
        description="Zero-copy sharing of NumPy, pandas and Arrow data between processes: "
        "inspect and clean shared memory, check this machine, run the benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"nocopy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "bench",
        help="every benchmark: the classic experiment against its peers, scaling, DataFrames, Ray; "
        "`nocopy bench --help`",
        add_help=False,
    )
    _ls.add_parser(sub)
    _gc.add_parser(sub)
    _doctor.add_parser(sub)
    return parser


def _bench(argv: list[str]) -> int:
    # Imported only here: the benchmark pulls in psutil, matplotlib and friends.
    try:
        module = importlib.import_module(_BENCH_MODULE)
    except ImportError as exc:
        missing = exc.name or ""
        if missing == "nocopy" or missing.startswith("nocopy."):
            print(
                f"nocopy bench is not available in this installation ({_BENCH_MODULE} is "
                "missing). Fix: install a nocopy release that ships the benchmark.",
                file=sys.stderr,
            )
        else:
            print(
                f"nocopy bench needs packages that are not installed ({exc}). "
                "Fix: pip install 'nocopy[bench]'",
                file=sys.stderr,
            )
        return 2
    code = module.main(argv)
    return code if isinstance(code, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nocopy`` command line with *argv* (default: ``sys.argv[1:]``); return the exit code.

    Examples
    --------
    >>> from nocopy._cli import main
    >>> main(["gc", "--dry-run"])            # doctest: +SKIP
    nothing to reclaim in /dev/shm: no posix segment of a dead owner
    0
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:
        # Everything after `bench` belongs to the benchmark's own parser.
        return _bench(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except BrokenPipeError:  # `nocopy ls | head`: stop quietly, and keep the exit-time flush quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    return code
