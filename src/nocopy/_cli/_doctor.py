"""``nocopy doctor``: can this machine share memory, how much, and what to fix."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import sys
from typing import Any

from .._inventory import segments
from .._pool import default_context
from .._store import _capacity, default_backend, leaves_orphans, stores_known
from .._text import format_bytes
from .._version import __version__

__all__ = ["add_parser", "collect", "huge_pages_lines", "render", "run"]

_PACKAGES = ("numpy", "pandas", "pyarrow", "ray", "psutil", "matplotlib", "joblib")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check shared-memory capacity, limits, start methods and versions",
        description="Report shared-memory capacity (the shm tmpfs and its free space, cgroup "
        "memory limit and usage, MemAvailable), the backend in use, memfd and /proc access, "
        "multiprocessing start methods and package versions, with a fix for each problem. "
        "Exits 1 when nocopy cannot work here.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


# -- probes ----------------------------------------------------------------------------


def _cgroups() -> list[dict[str, Any]]:
    """This process's memory cgroup(s): version, directory, limit (None: none) and usage."""
    return [
        {"version": c.version, "path": str(c.path), "limit": c.limit, "usage": c.usage}
        for c in _capacity.memory_cgroups()
    ]


def _versions() -> dict[str, str | None]:
    # importlib.metadata, not import: importing ray takes seconds.
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _backend() -> dict[str, Any]:
    env = os.environ.get("NOCOPY_BACKEND", "")
    try:
        return {"default": default_backend(), "source": "NOCOPY_BACKEND" if env.strip() else "platform default", "error": None}
    except ValueError as exc:
        return {"default": None, "source": "NOCOPY_BACKEND", "error": str(exc)}


# -- the report ------------------------------------------------------------------------


def collect() -> dict[str, Any]:
    """Every probe, as a JSON-able dict (what ``nocopy doctor --json`` prints)."""
    mem = _capacity.mem_available()
    tight = _capacity.cgroup_memory()
    segs = segments()
    orphans = [s for s in segs if leaves_orphans(s.backend) and not s.owner_alive]
    methods = multiprocessing.get_all_start_methods()
    report: dict[str, Any] = {
        "nocopy": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": _backend(),
        "isolation": {},
    }
    for store in stores_known():
        checkup = store.checkup()
        report[checkup.key] = checkup.report
        report["isolation"].update(checkup.isolation)
    report.update({
        "memory": {
            "mem_total": mem.total if mem else None,
            "mem_available": mem.available if mem else None,
            "cgroups": _cgroups(),
            "cgroup_limit": None if tight is None else {"name": tight.name, "limit": tight.total, "available": tight.available},
        },
        "segments": {
            "count": len(segs),
            "bytes": sum(s.size for s in segs),
            "posix_orphans": len(orphans),
            "posix_orphan_bytes": sum(s.size for s in orphans),
        },
        "start_methods": {
            "available": methods,
            # nocopy's pools' default (a preloaded forkserver), not multiprocessing's.
            "default": default_context().get_start_method(),
        },
        "versions": _versions(),
    })
    report["warnings"] = _warnings(report)
    report["ok"] = not any(w["level"] == "error" for w in report["warnings"])
    return report


def _warn(out: list[dict[str, str]], level: str, message: str, fix: str) -> None:
    out.append({"level": level, "message": message, "fix": fix})


def _warnings(r: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if r["backend"]["error"]:
        _warn(out, "error", r["backend"]["error"], "set NOCOPY_BACKEND to memfd or posix, or unset it")
    for store in stores_known():
        for a in store.advice(r, in_use=store.name == r["backend"]["default"]):
            _warn(out, a.level, a.message, a.fix)
    segs = r["segments"]
    if segs["posix_orphans"]:
        _warn(
            out, "warning",
            f"{segs['posix_orphans']} posix segment(s) of dead owners hold "
            f"{format_bytes(segs['posix_orphan_bytes'])} in {r['shm']['dir']}",
            "run `nocopy gc` (or `nocopy gc --dry-run` to see them first)",
        )
    _memory_warnings(out, r["memory"])
    versions = r["versions"]
    if versions.get("pandas") is None or versions.get("pyarrow") is None:
        _warn(
            out, "info", "pandas/pyarrow are not installed: DataFrames and Arrow tables cannot be shared",
            "pip install 'nocopy[pandas]'",
        )
    return out


def _memory_warnings(out: list[dict[str, str]], memory: dict[str, Any]) -> None:
    lim = memory["cgroup_limit"]
    avail = memory["mem_available"]
    if lim is not None:
        level = "warning" if lim["available"] < 1 << 30 else "info"
        _warn(
            out, level,
            f"a memory cgroup limits this process to {format_bytes(lim['limit'])} "
            f"({format_bytes(lim['available'])} available; {lim['name']}): shared segments are "
            "charged to it, and nocopy refuses a share that would not fit (InsufficientMemoryError "
            "instead of an OOM kill)",
            "raise the limit (`docker run --memory=...`, Kubernetes resources.limits.memory) "
            "if you share large data",
        )
    elif avail is not None and avail < 1 << 30:
        _warn(
            out, "warning", f"only {format_bytes(avail)} of memory is available (MemAvailable)",
            "free memory or share less data at once",
        )


_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


def huge_pages_lines(memfd: dict[str, Any], tmpfs: dict[str, Any]) -> list[str]:
    """What the huge-page setup means for the user, and what to do about it.

    The kernel's own words (shmem_enabled, MADV_COLLAPSE, hugetlb) stay in ``--json``.
    """
    collapse = memfd.get("collapse", {})
    if memfd["writes"] is None:
        return ["off: no transparent huge pages in this kernel: segments get",
                "4 KiB pages; everything works, with more page faults"]
    if memfd["writes"] or collapse.get("available"):
        lines = ["on: big segments get 2 MiB pages: fewer page faults in workers"]
        if not (tmpfs["writes"] or collapse.get("available")):
            lines.append("posix segments get 4 KiB pages: prefer the default memfd store")
        return lines
    return ["off: segments get 4 KiB pages; everything works. For fewer",
            "page faults with big data, as root:",
            f"echo within_size > {_THP_SETTING}"]


def render(r: dict[str, Any]) -> str:
    lines = [f"nocopy {r['nocopy']} (Python {r['python']}, {r['platform']})", ""]

    def row(key: str, value: str) -> None:
        lines.append(f"{key:<15}{value}")

    b = r["backend"]
    row("backend", f"{b['default']} ({b['source']})" if b["default"] else f"invalid: {b['error']}")
    m = r["memfd"]
    if m["available"]:
        proc = {True: "openable", False: "refused", None: "not checked"}[m["proc_fd"]]
        scm = "works" if m["scm_rights"] else "FAILED"
        row("memfd", f"available, sealing {'ok' if m['sealing'] else 'refused'}; "
                     f"/proc/<pid>/fd of another process: {proc}; SCM_RIGHTS fallback: {scm}")
    else:
        row("memfd", f"not available: {m.get('detail', '')}")
    h = m.get("huge_pages")
    if h is not None:
        for i, line in enumerate(huge_pages_lines(h, r["shm"]["huge_pages"])):
            row("" if i else "huge pages", line)
    s = r["shm"]
    if s.get("size") is not None:
        row("shm dir", f"{s['dir']}: {s['fstype'] or '?'} at {s['mount'] or '?'}, "
                       f"{format_bytes(s['size'])}, {format_bytes(s['free'])} free"
                       + ("" if s["writable"] else ", NOT writable"))
    else:
        row("shm dir", f"{s['dir']}: unusable ({s.get('error', 'missing')})")
    iso = r["isolation"]
    row("isolation", f"memfd segments are {iso['memfd']}")
    row("", f"posix segments are {iso['posix']}: prefer memfd")
    g = r["segments"]
    row("segments", f"{g['count']} live nocopy segment(s) of this user, {format_bytes(g['bytes'])}"
                    + (f"; {g['posix_orphans']} posix orphan(s), {format_bytes(g['posix_orphan_bytes'])}"
                       if g["posix_orphans"] else ""))
    mem = r["memory"]
    row("memory", f"MemAvailable {format_bytes(mem['mem_available'])} of {format_bytes(mem['mem_total'])}")
    for cg in mem["cgroups"]:
        limit = "no limit" if cg["limit"] is None else f"limit {format_bytes(cg['limit'])}"
        row(f"cgroup v{cg['version']}", f"{cg['path']}: {limit}, usage {format_bytes(cg['usage'])}")
    if mem["cgroup_limit"] is not None:
        lim = mem["cgroup_limit"]
        row("cgroup limit", f"{format_bytes(lim['limit'])}, {format_bytes(lim['available'])} available ({lim['name']})")
    elif not mem["cgroups"]:
        row("cgroup", "no memory cgroup found")
    sm = r["start_methods"]
    row("start methods", ", ".join(f"{x} (default)" if x == sm["default"] else x for x in sm["available"]))
    row("versions", ", ".join(f"{k} {v or 'not installed'}" for k, v in r["versions"].items()))
    lines.append("")
    if not r["warnings"]:
        lines.append("no problems found")
    for w in r["warnings"]:
        lines.append(f"[{w['level']}] {w['message']}")
        lines.append(f"    fix: {w['fix']}")
    if r["warnings"]:
        lines.append("")
        lines.append("nocopy works here" if r["ok"] else "nocopy cannot work here until the errors above are fixed")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0 if report["ok"] else 1
