"""``nocopy doctor``: can this machine share memory, how much, and what to fix."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .._inventory import segments
from .._store import _capacity, _fdserver, default_backend, invisible_until_locked, shm_dir
from .._version import __version__
from . import _fmt

__all__ = ["add_parser", "collect", "render", "run"]

DOCKER_DEFAULT_SHM = 64 << 20
_PACKAGES = ("numpy", "pandas", "pyarrow", "ray", "psutil", "matplotlib", "joblib")
_SHM_FIX = (
    "give it more room: `docker run --shm-size=8g ...` (docker compose: `shm_size: 8gb`); on "
    "Kubernetes mount an `emptyDir: {medium: Memory, sizeLimit: 8Gi}` volume at /dev/shm; "
    "or use backend='memfd' (Linux default), which the /dev/shm size does not bound"
)


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


def _mount_of(path: str) -> dict[str, Any]:
    """The mount holding *path*: mount point, filesystem type, options."""
    real = os.path.realpath(path)
    best: dict[str, Any] = {"mount": None, "fstype": None, "options": None}
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best
    best_len = -1
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        point = parts[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best_len:  # later mounts shadow earlier ones
            best_len = len(point)
            best = {"mount": point, "fstype": parts[2], "options": parts[3]}
    return best


def _shm_report() -> dict[str, Any]:
    directory = shm_dir()
    rep: dict[str, Any] = {"dir": directory, "exists": os.path.isdir(directory)}
    rep.update(_mount_of(directory))
    try:
        room = _capacity.tmpfs_room(directory)
        rep["size"], rep["free"] = room.total, room.available
    except OSError as exc:
        rep["size"] = rep["free"] = None
        rep["error"] = exc.strerror
    rep["writable"] = os.access(directory, os.W_OK | os.X_OK)
    return rep


def _cgroups() -> list[dict[str, Any]]:
    """This process's memory cgroup(s): version, directory, limit (None: none) and usage."""
    out = []
    for version, rel in _capacity._cgroup_paths():
        parts = [p for p in rel.split("/") if p]
        if version == 1:
            d = (_capacity._CGROUP_FS / "memory").joinpath(*parts)
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            root = _capacity._CGROUP_FS
            if not (root / "cgroup.controllers").exists():
                root = _capacity._CGROUP_FS / "unified"
            d = root.joinpath(*parts)
            limit_file, usage_file = "memory.max", "memory.current"
        if not (d / usage_file).exists():
            continue  # e.g. the v2 hierarchy of a v1 machine: no memory controller there
        out.append(
            {
                "version": version,
                "path": str(d),
                "limit": _capacity._read_int(d / limit_file),
                "usage": _capacity._read_int(d / usage_file),
            }
        )
    return out


def _probe_memfd() -> dict[str, Any]:
    rep: dict[str, Any] = {"available": False, "sealing": False, "proc_fd": None, "scm_rights": None}
    if not hasattr(os, "memfd_create"):
        rep["detail"] = "os.memfd_create does not exist on this platform"
        return rep
    try:
        fd = os.memfd_create("nocopy-doctor", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as exc:
        rep["detail"] = f"memfd_create failed: {exc.strerror}"
        return rep
    try:
        rep["available"] = True
        os.ftruncate(fd, 4096)
        import fcntl

        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            rep["sealing"] = True
        except OSError as exc:
            rep["detail"] = f"sealing refused: {exc.strerror}"
        rep["proc_fd"], rep["proc_fd_detail"] = _probe_proc_fd()
        rep["scm_rights"], rep["scm_rights_detail"] = _probe_scm_rights(fd)
    finally:
        os.close(fd)
    return rep


def _probe_proc_fd() -> tuple[bool | None, str]:
    """Can this process open another process's memfd through /proc/<pid>/fd/<n>?"""
    fd = os.memfd_create("nocopy-doctor-probe", 0)  # inheritable: the child holds it
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE, pass_fds=(fd,), close_fds=True,
        )
    except OSError as exc:
        os.close(fd)
        return None, f"could not start a probe process ({exc.strerror})"
    os.close(fd)
    try:
        try:
            probe = os.open(f"/proc/{child.pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return False, f"open(/proc/<pid>/fd/<n>) of another process: {exc.strerror}"
        os.close(probe)
        return True, "open(/proc/<pid>/fd/<n>) of another process works"
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _probe_scm_rights(fd: int) -> tuple[bool, str]:
    """Does the fd-server fallback (SCM_RIGHTS over a UNIX socket) hand out a descriptor?"""
    try:
        srv = _fdserver.server()
        srv.register("nocopy-doctor", fd, "probe")
        try:
            got = _fdserver.request_fd(srv.address, "nocopy-doctor", "probe")
        finally:
            srv.unregister("nocopy-doctor")
        os.close(got)
        return True, "SCM_RIGHTS fd server works"
    except Exception as exc:  # any failure is the finding
        return False, f"SCM_RIGHTS fd server failed: {exc}"


def _isolation() -> dict[str, Any]:
    """What another process of the same user can do to a segment, per store."""
    directory = shm_dir()
    return {
        # Sealed F_SEAL_SHRINK|GROW (and WRITE for share()): nobody can resize
        # it, so a reader can never be killed by SIGBUS through it.
        "memfd": "sealed (no process can shrink or grow one, nor write into a share()d one)",
        # A same-user process can open the file read-write (root: any mode) and
        # ftruncate it; nocopy cannot seal a file on tmpfs.
        "posix": "named files (any process of this user can truncate one, or chmod and write "
        "it, and a truncated segment kills its readers with SIGBUS)",
        "posix_named_after_lock": os.path.isdir(directory) and invisible_until_locked(directory),
    }


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
    methods = multiprocessing.get_all_start_methods()
    report: dict[str, Any] = {
        "nocopy": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": _backend(),
        "memfd": _probe_memfd(),
        "shm": _shm_report(),
        "isolation": _isolation(),
        "memory": {
            "mem_total": mem.total if mem else None,
            "mem_available": mem.available if mem else None,
            "cgroups": _cgroups(),
            "cgroup_limit": None if tight is None else {"name": tight.name, "limit": tight.total, "available": tight.available},
        },
        "segments": {
            "count": len(segs),
            "bytes": sum(s.size for s in segs),
            "posix_orphans": sum(1 for s in segs if s.backend == "posix" and not s.owner_alive),
            "posix_orphan_bytes": sum(s.size for s in segs if s.backend == "posix" and not s.owner_alive),
        },
        "start_methods": {
            "available": methods,
            "default": multiprocessing.get_start_method(allow_none=True) or methods[0],
        },
        "versions": _versions(),
    }
    report["warnings"] = _warnings(report)
    report["ok"] = not any(w["level"] == "error" for w in report["warnings"])
    return report


def _warn(out: list[dict[str, str]], level: str, message: str, fix: str) -> None:
    out.append({"level": level, "message": message, "fix": fix})


def _warnings(r: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    backend = r["backend"]["default"]
    if r["backend"]["error"]:
        _warn(out, "error", r["backend"]["error"], "set NOCOPY_BACKEND to memfd or posix, or unset it")
    memfd = r["memfd"]
    if not memfd["available"]:
        _warn(
            out, "error" if backend == "memfd" else "warning",
            f"memfd is not available ({memfd.get('detail', '')}): segments are named files in the "
            "shm directory, and a crashed owner leaves them behind until `nocopy gc`",
            "use Linux >= 3.17, or set NOCOPY_BACKEND=posix and run `nocopy gc` after crashes",
        )
    elif memfd["proc_fd"] is False:
        level = "error" if not memfd["scm_rights"] and backend == "memfd" else "info"
        _warn(
            out, level,
            "other processes' /proc/<pid>/fd cannot be opened here (ptrace restrictions such as "
            "kernel.yama.ptrace_scope or a container profile): memfd attach uses the SCM_RIGHTS "
            f"fallback, a round trip to the owner per attach ({memfd.get('scm_rights_detail', '')})",
            "nothing to do if the fallback works; otherwise `sysctl kernel.yama.ptrace_scope=0` "
            "or set NOCOPY_BACKEND=posix",
        )
    shm = r["shm"]
    posix_needed = backend == "posix"
    if not shm["exists"] or not shm["writable"]:
        _warn(
            out, "error" if posix_needed else "warning",
            f"the shm directory {shm['dir']} is missing or not writable: posix segments cannot be made",
            "mount a tmpfs there (`mount -t tmpfs tmpfs /dev/shm`), or point NOCOPY_SHM_DIR at a "
            "writable tmpfs directory",
        )
    else:
        if shm["fstype"] not in (None, "tmpfs"):
            _warn(
                out, "warning",
                f"{shm['dir']} is on {shm['fstype']}, not tmpfs: posix segments would live on disk",
                "point NOCOPY_SHM_DIR at a tmpfs (normally /dev/shm)",
            )
        size, free = shm.get("size"), shm.get("free")
        if size is not None and size <= DOCKER_DEFAULT_SHM * 1.05:
            _warn(
                out, "warning" if posix_needed else "info",
                f"{shm['dir']} is only {_fmt.size(size)} (Docker's default is 64 MiB): posix "
                "segments (and other libraries' shared memory) larger than that fail with "
                "InsufficientMemoryError",
                _SHM_FIX,
            )
        elif size is not None and free is not None and size and free < min(size * 0.1, 1 << 30):
            _warn(
                out, "warning",
                f"{shm['dir']} is nearly full: {_fmt.size(free)} free of {_fmt.size(size)}",
                "run `nocopy gc` to reclaim orphaned segments, close unused Shared handles, or "
                + _SHM_FIX,
            )
    if posix_needed:
        _warn(
            out, "warning",
            f"the posix backend is in use: posix segments are {r['isolation']['posix']}; memfd "
            "segments are sealed and cannot be truncated",
            "use backend='memfd' (unset NOCOPY_BACKEND) unless you need named segments",
        )
        if shm["exists"] and shm["writable"] and not r["isolation"]["posix_named_after_lock"]:
            _warn(
                out, "warning",
                f"{shm['dir']} does not support O_TMPFILE (or /proc is missing): a new posix "
                "segment is visible for a moment before its owner locks it, and `nocopy gc` run "
                "in another pid namespace (a container sharing this directory) could remove it then",
                "run `nocopy gc` only in the pid namespace of the processes that share, or use memfd",
            )
    segs = r["segments"]
    if segs["posix_orphans"]:
        _warn(
            out, "warning",
            f"{segs['posix_orphans']} posix segment(s) of dead owners hold "
            f"{_fmt.size(segs['posix_orphan_bytes'])} in {shm['dir']}",
            "run `nocopy gc` (or `nocopy gc --dry-run` to see them first)",
        )
    lim = r["memory"]["cgroup_limit"]
    avail = r["memory"]["mem_available"]
    if lim is not None:
        level = "warning" if lim["available"] < 1 << 30 else "info"
        _warn(
            out, level,
            f"a memory cgroup limits this process to {_fmt.size(lim['limit'])} "
            f"({_fmt.size(lim['available'])} available; {lim['name']}): shared segments are "
            "charged to it, and nocopy refuses a share that would not fit (InsufficientMemoryError "
            "instead of an OOM kill)",
            "raise the limit (`docker run --memory=...`, Kubernetes resources.limits.memory) "
            "if you share large data",
        )
    elif avail is not None and avail < 1 << 30:
        _warn(
            out, "warning", f"only {_fmt.size(avail)} of memory is available (MemAvailable)",
            "free memory or share less data at once",
        )
    versions = r["versions"]
    if versions.get("pandas") is None or versions.get("pyarrow") is None:
        _warn(
            out, "info", "pandas/pyarrow are not installed: DataFrames and Arrow tables cannot be shared",
            "pip install 'nocopy[pandas]'",
        )
    return out


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
    s = r["shm"]
    if s.get("size") is not None:
        row("shm dir", f"{s['dir']}: {s['fstype'] or '?'} at {s['mount'] or '?'}, "
                       f"{_fmt.size(s['size'])}, {_fmt.size(s['free'])} free"
                       + ("" if s["writable"] else ", NOT writable"))
    else:
        row("shm dir", f"{s['dir']}: unusable ({s.get('error', 'missing')})")
    iso = r["isolation"]
    row("isolation", f"memfd segments are {iso['memfd']}")
    row("", f"posix segments are {iso['posix']}: prefer memfd")
    g = r["segments"]
    row("segments", f"{g['count']} live nocopy segment(s) of this user, {_fmt.size(g['bytes'])}"
                    + (f"; {g['posix_orphans']} posix orphan(s), {_fmt.size(g['posix_orphan_bytes'])}"
                       if g["posix_orphans"] else ""))
    mem = r["memory"]
    row("memory", f"MemAvailable {_fmt.size(mem['mem_available'])} of {_fmt.size(mem['mem_total'])}")
    for cg in mem["cgroups"]:
        limit = "no limit" if cg["limit"] is None else f"limit {_fmt.size(cg['limit'])}"
        row(f"cgroup v{cg['version']}", f"{cg['path']}: {limit}, usage {_fmt.size(cg['usage'])}")
    if mem["cgroup_limit"] is not None:
        lim = mem["cgroup_limit"]
        row("cgroup limit", f"{_fmt.size(lim['limit'])}, {_fmt.size(lim['available'])} available ({lim['name']})")
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
