"""``nocopy ls``: the live segments of this user."""

from __future__ import annotations

import argparse
import json

from .._inventory import Segment, segments
from .._store import leaves_orphans, shm_dir
from .._text import format_age, format_bytes, render_table

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ls",
        help="list this user's shared-memory segments",
        description="List every live nocopy segment of this user: memfd segments held by "
        "any process and posix segments in the shm directory ($NOCOPY_SHM_DIR or /dev/shm), "
        "with size, owner pid, whether the owner is alive, age and the processes holding it.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(run=run)


def render(segs: list[Segment]) -> str:
    if not segs:
        return f"no nocopy segments of this user (memfd held by any process, posix in {shm_dir()})"
    rows = [
        [
            s.backend,
            format_bytes(s.size),
            str(s.owner_pid),
            "alive" if s.owner_alive else "dead",
            format_age(s.age),
            ",".join(map(str, s.holders)) or "-",
            s.name,
        ]
        for s in segs
    ]
    out = [render_table(["BACKEND", "SIZE", "OWNER", "STATE", "AGE", "HELD BY", "NAME"], rows, right={1, 2, 4})]
    total = sum(s.size for s in segs)
    out.append(f"{len(segs)} segment{'s' * (len(segs) != 1)}, {format_bytes(total)}")
    orphans = [s for s in segs if leaves_orphans(s.backend) and not s.owner_alive]
    if orphans:
        out.append(
            f"{len(orphans)} posix segment{'s' * (len(orphans) != 1)} of dead owners "
            f"({format_bytes(sum(s.size for s in orphans))}): `nocopy gc` reclaims them"
        )
    held = [s for s in segs if not leaves_orphans(s.backend) and not s.owner_alive]
    if held:
        out.append(
            f"{len(held)} memfd segment{'s' * (len(held) != 1)} of dead owners stay only while "
            "the processes holding them run; the kernel frees them when those exit"
        )
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    segs = segments()
    if args.json:
        print(json.dumps([s.to_dict() for s in segs], indent=2))
    else:
        print(render(segs))
    return 0
