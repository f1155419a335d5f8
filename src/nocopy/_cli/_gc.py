"""``nocopy gc``: reclaim posix segments whose owner died."""

from __future__ import annotations

import argparse
import json

from .._inventory import cleanup
from .._store import shm_dir
from .._text import format_bytes

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gc",
        help="reclaim posix segments left by crashed owners",
        description="Remove posix segments (in $NOCOPY_SHM_DIR or /dev/shm) whose owner process "
        "has exited (pid and start time checked, so a recycled pid does not count). Segments of "
        "live owners and files that are not this user's nocopy segments are never touched. "
        "memfd segments need no gc: the kernel frees them with their last holder. Bytes count "
        "what was freed: a name whose file has another hard link frees nothing.",
    )
    p.add_argument("--dry-run", action="store_true", help="only show what would be reclaimed")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    done = cleanup(dry_run=args.dry_run)
    total = sum(s.size for s in done)
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": args.dry_run,
                    "directory": shm_dir(),
                    "count": len(done),
                    "bytes": total,
                    "reclaimed": [s.to_dict() for s in done],
                },
                indent=2,
            )
        )
        return 0
    verb = "would reclaim" if args.dry_run else "reclaimed"
    if not done:
        print(f"nothing to reclaim in {shm_dir()}: no posix segment of a dead owner")
        return 0
    for s in done:
        # size 0: the name was one of several hard links; the data lives on under another.
        freed = format_bytes(s.size) if s.size else "0 B: another hard link keeps its data"
        print(f"{verb} {s.path} ({freed}, owner pid {s.owner_pid} exited)")
    print(f"{verb} {len(done)} segment{'s' * (len(done) != 1)}, {format_bytes(total)} ({total} bytes)")
    return 0
