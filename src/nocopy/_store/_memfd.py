"""The memfd store (Linux default): anonymous segments, freed by the kernel with their last holder.

Nothing can leak, even on SIGKILL. Other processes open the owner's
descriptor through /proc/<pid>/fd/<n>, or get it by SCM_RIGHTS from the
owner's fd server when ptrace rules refuse that.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from typing import Any

from .._ipc import _fdserver
from ..errors import SegmentAccessError, SegmentNotFoundError
from . import _capacity, _hugepages, _names, _procs
from ._segment import (
    Advice,
    Checkup,
    Found,
    Locator,
    OwnedSegment,
    note_fd_limit,
    open_checked,
)

__all__ = ["MemfdStore"]


class MemfdStore:
    """Segments made by memfd_create, sealed once written."""

    name = "memfd"

    def available(self) -> str | None:
        if hasattr(os, "memfd_create") and sys.platform.startswith("linux"):
            return None
        return "backend 'memfd' needs Linux (os.memfd_create); use backend='posix'"

    def create(self, size: int, *, what: str) -> OwnedSegment:
        name = _names.make_name()
        _capacity.check_room(what, size)
        # Made before the descriptor: whatever interrupts from here on
        # (Ctrl-C included), the segment is released exactly once.
        seg = OwnedSegment(Locator(self.name, name, os.getpid()), -1, size, None)
        try:
            try:
                fd = seg.open_fd(os.memfd_create, name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            except OSError as exc:
                note_fd_limit(exc)
                raise
            os.fchmod(fd, 0o600)  # memfd starts 0777; keep it private like a posix segment
            seg.mapping = _capacity.reserve(fd, size, what, shm_dir=None)
            seg.locator = Locator(self.name, name, os.getpid(), fd, _fdserver.server().address)
        except BaseException:
            seg.release()
            raise
        return seg

    def seal(self, seg: OwnedSegment, token: str, *, writable: bool) -> None:
        # Shared outputs stay writable but may never shrink (a shrink is SIGBUS for readers).
        # (The F_SEAL_* names exist only on Linux: read here, not at import.)
        seg.end_writes()
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        if not writable:
            seals |= fcntl.F_SEAL_WRITE
        fcntl.fcntl(seg.fd, fcntl.F_ADD_SEALS, seals)
        if seg.locator.sock:
            _fdserver.server().register(seg.locator.name, seg.fd, token)

    def open(self, loc: Locator, *, writable: bool, token: str) -> int:
        return open_checked(
            loc, lambda flags: _open(loc, flags, token), lambda fd, _: _write_granted(fd), writable=writable
        )

    @property
    def sealed(self) -> bool:
        return True

    def check_sealed(self, loc: Locator, fd: int, *, output: bool) -> None:
        # Read once, from the kernel: seals only ever grow, so what is checked here holds for good.
        need = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        if not output:
            need |= fcntl.F_SEAL_WRITE
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0  # not a memfd made for sealing
        missing = [n for n, bit in _SEALS if need & bit and not seals & bit]
        if missing:
            raise SegmentAccessError(
                f"segment {loc.name} (pid {loc.pid}) is not sealed against {', '.join(missing)}: "
                "nocopy seals every segment it makes before anyone can attach, so this one was "
                "made by another program or is not finished. nocopy refuses it: whoever holds it "
                "could shrink it under this process (SIGBUS) or change data after it was checked. "
                "Fix: attach only the uri of a Shared made by nocopy.share()/empty()/zeros()."
            )

    def is_alive(self, loc: Locator) -> bool:
        try:
            return os.readlink(_procs.fd_path(loc.pid, loc.fd)) == _names.memfd_link(loc.name)
        except OSError:
            return False

    def find(self) -> list[Found]:
        found: dict[str, _Seen] = {}
        uid = os.geteuid()
        for pid in _procs.pids():
            _held_open(found, pid, uid)
            _mapped_only(found, pid, uid)
        out = []
        for name, seen in found.items():
            parsed = _names.parse_name(name)
            if parsed is None:  # pragma: no cover - the regex already matched
                continue
            out.append(
                Found(
                    name=name, store=self.name, size=max(seen.size, 0), owner_pid=parsed.pid,
                    owner_alive=_names.pid_alive(parsed.pid, parsed.start), created=seen.created,
                    holders=tuple(sorted(seen.holders)),
                )
            )
        return out

    def reclaim(self, *, dry_run: bool = False) -> list[Found]:
        # The kernel frees a memfd segment with its last holder: nothing is ever left to remove.
        return []

    @property
    def leaves_orphans(self) -> bool:
        return False

    def checkup(self) -> Checkup:
        # Sealed F_SEAL_SHRINK|GROW (and WRITE for share()): nobody can resize
        # it, so a reader can never be killed by SIGBUS through it.
        isolation = "sealed (no process can shrink or grow one, nor write into a share()d one)"
        report = _probe()
        report["huge_pages"] = _hugepages.memfd_huge_pages()
        report["huge_pages"]["collapse"] = _hugepages.collapse_state()
        return Checkup("memfd", report, {"memfd": isolation})

    def advice(self, report: dict[str, Any], *, in_use: bool) -> list[Advice]:
        memfd = report["memfd"]
        if not memfd["available"]:
            return [Advice(
                "error" if in_use else "warning",
                f"memfd is not available ({memfd.get('detail', '')}): segments are named files in the "
                "shm directory, and a crashed owner leaves them behind until `nocopy gc`",
                "use Linux >= 3.17, or set NOCOPY_BACKEND=posix and run `nocopy gc` after crashes",
            )]
        out = _huge_page_advice(memfd["huge_pages"]) if in_use else []
        bad = memfd["huge_pages"].get("collapse", {}).get("error")
        if bad:
            out.append(Advice("error", bad, "set NOCOPY_HUGE_PAGES to 'off' or 'auto', or unset it"))
        if memfd["proc_fd"] is False:
            return [*out, Advice(
                "error" if not memfd["scm_rights"] and in_use else "info",
                "other processes' /proc/<pid>/fd cannot be opened here (ptrace restrictions such as "
                "kernel.yama.ptrace_scope or a container profile): memfd attach uses the SCM_RIGHTS "
                f"fallback, a round trip to the owner per attach ({memfd.get('scm_rights_detail', '')})",
                "nothing to do if the fallback works; otherwise `sysctl kernel.yama.ptrace_scope=0` "
                "or set NOCOPY_BACKEND=posix",
            )]
        return out


def _huge_page_advice(huge: dict[str, Any]) -> list[Advice]:
    """share() fills a segment one 4 KiB page at a time unless it can collapse it or shmem huge pages are on."""
    if huge["writes"] is not False or huge.get("collapse", {}).get("available"):
        return []  # on, share() collapses segments itself, or a kernel without THP (nothing to enable)
    pool = huge["hugetlb"]
    return [Advice(
        "info",
        f"shared memory gets 4 KiB pages here (shmem transparent huge pages: {huge['shmem_enabled']}; "
        f"hugetlb pool: {pool['pages_total'] or 0} pages; "
        f"{huge.get('collapse', {}).get('detail', 'MADV_COLLAPSE not tried')}): share() allocates and "
        "fills one small page at a time, the main cost of publishing large data"
        + ("; 'advise' gives huge pages only to madvised mappings, not to share()'s writes"
           if huge["mapped_advise"] else ""),
        "optional, host-wide and the administrator's call: "
        "`echo within_size > /sys/kernel/mm/transparent_hugepage/shmem_enabled` lets the kernel back "
        "memfd segments with 2 MiB pages",
    )]


class _Seen:
    __slots__ = ("created", "holders", "size")

    def __init__(self) -> None:
        self.size = -1
        self.created = float("inf")
        self.holders: set[int] = set()

    def saw(self, pid: int, st: os.stat_result | None) -> None:
        self.holders.add(pid)
        if st is not None:
            self.size = max(self.size, st.st_size)
            self.created = min(self.created, st.st_atime, st.st_mtime, st.st_ctime)


def _held_open(found: dict[str, _Seen], pid: int, uid: int) -> None:
    """The memfd segments of this user *pid* holds a descriptor of."""
    for path, link in _procs.fd_links(pid):
        m = _names.MEMFD_LINK_RE.match(link)
        if m is None:
            continue
        st = _procs.stat_or_none(path)
        if st is None or st.st_uid != uid:
            continue
        found.setdefault(m.group(1), _Seen()).saw(pid, st)


def _mapped_only(found: dict[str, _Seen], pid: int, uid: int) -> None:
    """The memfd segments of this user *pid* maps (views outliving their owner's descriptor)."""
    for map_file, path, length in _procs.mapped(pid, "/memfd:nocopy-"):
        m = _names.MEMFD_LINK_RE.match(path)
        if m is None:
            continue
        seen = found.get(m.group(1))
        if seen is not None and seen.size >= 0:
            seen.holders.add(pid)
            continue
        # Only mapped (its owner is gone): size and uid from the mapping's file.
        st = _procs.stat_or_none(map_file)
        if st is not None and st.st_uid != uid:
            continue
        seen = found.setdefault(m.group(1), _Seen())
        seen.saw(pid, st)
        if st is None:
            seen.size = max(seen.size, length)


def _probe() -> dict[str, Any]:
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
            probe = os.open(_procs.fd_path(child.pid, fd), os.O_RDONLY | os.O_CLOEXEC)
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


# (name, bit) of each seal a reader may require; the F_SEAL_* names exist only on Linux.
_SEALS: tuple[tuple[str, int], ...] = tuple(
    (what, getattr(fcntl, attr, 0))
    for what, attr in (
        ("shrinking", "F_SEAL_SHRINK"), ("growing", "F_SEAL_GROW"),
        ("more seals", "F_SEAL_SEAL"), ("writes", "F_SEAL_WRITE"),
    )
)


def _write_granted(fd: int) -> bool:
    """Whether the owner made this segment a writable output (not what any handle says).

    share() seals a memfd against writes before anyone can attach;
    empty()/zeros() leave out the write seal.
    """
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    # F_SEAL_SEAL: the owner has finished (seal() ran).
    return bool(seals & fcntl.F_SEAL_SEAL) and not seals & fcntl.F_SEAL_WRITE


def _gone(loc: Locator, now: str) -> SegmentNotFoundError:
    return SegmentNotFoundError(
        f"segment {loc.name} is gone: fd {loc.fd} of pid {loc.pid} is now {now!r}. "
        "Its owner closed it. Fix: keep the owner's Shared open while other processes attach."
    )


def _open(loc: Locator, flags: int, token: str) -> int:
    proc = _procs.fd_path(loc.pid, loc.fd)
    expected = _names.memfd_link(loc.name)
    # Look before opening: the fd number may now be any other file of the owner.
    try:
        before = os.readlink(proc)
    except OSError:
        before = expected  # missing: open() reports it; unreadable: open() or the fd server decides
    if before != expected:
        raise _gone(loc, before)
    try:
        fd = os.open(proc, flags)
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"segment {loc.name} is gone: its owner (pid {loc.pid}) closed it or exited. "
            "Fix: keep the owner's Shared open while other processes attach."
        ) from None
    except PermissionError:
        if not loc.sock:
            raise SegmentAccessError(
                f"cannot open {proc} (permission denied) and segment {loc.name} has no fd server. "
                "Fix: attach from a process running as the owner's user, with the current uri."
            ) from None
        # SCM_RIGHTS passes the owner's read-write fd; _write_granted still decides writes.
        fd = _fdserver.request_fd(loc.sock, loc.name, token)
    # The owner may have closed that fd number and reused it for another file.
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        link = expected
    if link != expected:
        os.close(fd)
        raise _gone(loc, link)
    return fd
