"""The posix store: named segment files in a private directory of the shm directory ($NOCOPY_SHM_DIR, else /dev/shm).

The default off Linux. Each user's segments live in ``<shm dir>/nocopy-<uid>``,
mode 0700: another user can neither open, list nor hard-link them (a link in
the shared sticky /dev/shm would pin the memory after the owner freed it).
Names carry the owner's pid and start time, and every owner holds a lock on
its file, so a crashed owner's segments are found and reclaimed (see
_orphans), there and in the shm directory itself, where nocopy 0.2 made them.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
from typing import Any

from .._text import format_bytes
from ..errors import SegmentAccessError, SegmentNotFoundError
from . import _capacity, _hugepages, _names, _orphans, _procs
from ._segment import (
    Advice,
    Checkup,
    Found,
    Locator,
    OwnedSegment,
    note_fd_limit,
    open_checked,
    read_only_error,
)

__all__ = ["PosixStore", "invisible_until_locked", "segment_dir", "shm_dir"]


def shm_dir() -> str:
    """The tmpfs directory posix segments live under: $NOCOPY_SHM_DIR, else /dev/shm."""
    return os.environ.get("NOCOPY_SHM_DIR", "/dev/shm")


def segment_dir(base: str | None = None) -> str:
    """This user's private directory of posix segments in *base* (default `shm_dir`)."""
    return os.path.join(shm_dir() if base is None else base, f"nocopy-{os.geteuid()}")


def _private_dir(base: str) -> str:
    """`segment_dir`, made if missing (mode 0700) and checked: a directory of this user, private, not a symlink.

    Made by whoever comes first: another user could make it first in the
    world-writable shm directory to read or pin this user's segments, so an
    existing one must be this user's own, closed to everyone else, in a
    directory where nobody else can rename it away (sticky, like /dev/shm).
    """
    d = segment_dir(base)
    uid = os.geteuid()
    fix = (
        f"Fix: remove {d} (it is not one nocopy made for this user), point NOCOPY_SHM_DIR at a "
        "directory only this user can write, or use backend='memfd'."
    )
    parent = os.stat(base)
    if parent.st_mode & 0o022 and not parent.st_mode & _stat.S_ISVTX:
        raise SegmentAccessError(
            f"cannot make a posix segment in {base}: other users may write there and it is not "
            "sticky (mode 1777 like /dev/shm), so they could replace this user's segment directory. "
            "Fix: use /dev/shm or a directory of this user (NOCOPY_SHM_DIR), or backend='memfd'."
        )
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except PermissionError:
        raise SegmentAccessError(
            f"cannot make a posix segment: this user (uid {uid}) may not create {d}. Fix: point "
            "NOCOPY_SHM_DIR at a tmpfs directory this user can write, or use backend='memfd'."
        ) from None
    st = os.lstat(d)
    if _stat.S_ISLNK(st.st_mode) or not _stat.S_ISDIR(st.st_mode):
        raise SegmentAccessError(f"cannot make a posix segment: {d} is {_what_is(d)}, not a directory. {fix}")
    if st.st_uid != uid:
        raise SegmentAccessError(
            f"cannot make a posix segment: {d} belongs to uid {st.st_uid}, not to this process's "
            f"uid {uid}: another user made it, perhaps to read or pin this user's segments. {fix}"
        )
    if st.st_mode & 0o077:
        raise SegmentAccessError(
            f"cannot make a posix segment: {d} has mode {_stat.S_IMODE(st.st_mode):o}, open to other "
            f"users: nocopy makes it 0700. Fix: `chmod 700 {d}`, or use backend='memfd'."
        )
    return d


class PosixStore:
    """Segments that are files in this user's `segment_dir`, made 0400 once written (0600 for outputs)."""

    name = "posix"

    def available(self) -> str | None:
        return None

    def create(self, size: int, *, what: str) -> OwnedSegment:
        base = shm_dir()
        if not os.path.isdir(base):
            raise SegmentNotFoundError(
                f"cannot make a posix segment: the shm directory {base} ($NOCOPY_SHM_DIR, "
                "default /dev/shm) does not exist or is not a directory. Fix: point "
                "NOCOPY_SHM_DIR at a tmpfs directory, or use backend='memfd'."
            )
        directory = _private_dir(base)
        _gc_once(base)
        _capacity.check_room(what, size, shm_dir=base)
        name = _names.make_name()
        path = os.path.join(directory, name)
        # Made before the file: whatever interrupts from here on (Ctrl-C
        # included), each descriptor is closed once and the name removed.
        seg = OwnedSegment(Locator(self.name, name, os.getpid()), -1, size, None)
        try:
            visible = _create_locked(seg, directory, path)
            # The mapping maps the file, not the descriptor: still valid after the reopen.
            seg.mapping = _capacity.reserve(seg.fd, size, what, shm_dir=base)
            if not visible:
                # Sized and reserved while nobody can see it: the name appears with
                # the owner's lock already held, so no reclaim (in any pid
                # namespace) can ever find it unlocked.
                # Never overwrites (EEXIST). A src_dir_fd (ignored for an absolute
                # path) makes CPython call linkat(AT_SYMLINK_FOLLOW): plain link()
                # would link the /proc symlink itself and fail with EXDEV.
                seg.path = path  # first: a release removes it only if it names this file
                os.link(f"/proc/self/fd/{seg.fd}", path, src_dir_fd=seg.fd, follow_symlinks=True)
                _reopen_locked(seg, path)
        except BaseException:
            seg.release()
            raise
        return seg

    def seal(self, seg: OwnedSegment, token: str, *, writable: bool) -> None:
        # A file on tmpfs cannot be sealed: read-only is its mode, which open() checks.
        seg.end_writes()
        if not writable:
            os.fchmod(seg.fd, 0o400)

    def open(self, loc: Locator, *, writable: bool, token: str) -> int:
        # Root opens a 0400 file read-write all the same, so the mode decides writes.
        return open_checked(
            loc, lambda flags: _open(loc, flags), lambda _, st: bool(st.st_mode & _stat.S_IWUSR),
            writable=writable,
        )

    @property
    def sealed(self) -> bool:
        return False

    def check_sealed(self, loc: Locator, fd: int, *, output: bool) -> None:
        # A named file cannot be sealed: any process of its owner's uid can chmod it,
        # rewrite or truncate it. What readers are not protected from here is
        # documented (docs/concepts/security.md); the decode plan stays private.
        return None

    def is_alive(self, loc: Locator) -> bool:
        return os.path.exists(os.path.join(segment_dir(), loc.name))

    def find(self) -> list[Found]:
        base = shm_dir()
        files = [f for d in _dirs(base) for f in _orphans.scan(d)]
        holders: dict[str, set[int]] = {}
        if files:
            prefix = os.path.join(base, "nocopy-")  # both places: <base>/nocopy-<uid>/ and <base>/
            for pid in _procs.pids():
                for _, path, _ in _procs.mapped(pid, prefix):
                    if path.startswith(prefix):
                        holders.setdefault(os.path.basename(path.removesuffix(" (deleted)")), set()).add(pid)
        out = []
        for f in files:
            # The lock as well as the pid: a live owner in another pid namespace,
            # or a hard link to a live segment under a name with another pid, is alive.
            alive = f.owner_alive or _orphans.held(f)
            pids = holders.get(f.name, set()) | ({f.pid} if f.owner_alive else set())
            out.append(_found(f, alive, tuple(sorted(pids))))
        return out

    def reclaim(self, *, dry_run: bool = False) -> list[Found]:
        return [_found(f, False, ()) for d in _dirs(shm_dir()) for f in _orphans.reclaim(d, dry_run=dry_run)]

    @property
    def leaves_orphans(self) -> bool:
        return True

    def checkup(self) -> Checkup:
        directory = shm_dir()
        isolation = {
            # A same-user process can open the file read-write (root: any mode) and
            # ftruncate it; nocopy cannot seal a file on tmpfs.
            "posix": "named files (any process of this user can truncate one, or chmod and write "
            "it, and a truncated segment kills its readers with SIGBUS)",
            "posix_named_after_lock": os.path.isdir(directory) and invisible_until_locked(directory),
        }
        return Checkup("shm", _shm_report(directory), isolation)

    def advice(self, report: dict[str, Any], *, in_use: bool) -> list[Advice]:
        shm = report["shm"]
        if not shm["exists"] or not shm["writable"]:
            out = [Advice(
                "error" if in_use else "warning",
                f"the shm directory {shm['dir']} is missing or not writable: posix segments cannot be made",
                "mount a tmpfs there (`mount -t tmpfs tmpfs /dev/shm`), or point NOCOPY_SHM_DIR at a "
                "writable tmpfs directory",
            )]
        else:
            out = _room_advice(shm, in_use=in_use)
        if in_use:
            out += _in_use_advice(shm, report["isolation"])
        return out


DOCKER_DEFAULT_SHM = 64 << 20
_SHM_FIX = (
    "give it more room: `docker run --shm-size=8g ...` (docker compose: `shm_size: 8gb`); on "
    "Kubernetes mount an `emptyDir: {medium: Memory, sizeLimit: 8Gi}` volume at /dev/shm; "
    "or use backend='memfd' (Linux default), which the /dev/shm size does not bound"
)


def _mount_of(path: str) -> dict[str, Any]:
    """The mount holding *path*: mount point, filesystem type, options."""
    real = os.path.realpath(path)
    best: dict[str, Any] = {"mount": None, "fstype": None, "options": None}
    try:
        with open("/proc/self/mounts") as f:
            lines = f.read().splitlines()
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


def _shm_report(directory: str) -> dict[str, Any]:
    rep: dict[str, Any] = {"dir": directory, "exists": os.path.isdir(directory)}
    rep.update(_mount_of(directory))
    try:
        room = _capacity.tmpfs_room(directory)
        rep["size"], rep["free"] = room.total, room.available
    except OSError as exc:
        rep["size"] = rep["free"] = None
        rep["error"] = exc.strerror
    rep["writable"] = os.access(directory, os.W_OK | os.X_OK)
    rep["huge_pages"] = _hugepages.tmpfs_huge_pages(rep.get("options"))
    return rep


def _room_advice(shm: dict[str, Any], *, in_use: bool) -> list[Advice]:
    out = []
    if shm["fstype"] not in (None, "tmpfs"):
        out.append(Advice(
            "warning",
            f"{shm['dir']} is on {shm['fstype']}, not tmpfs: posix segments would live on disk",
            "point NOCOPY_SHM_DIR at a tmpfs (normally /dev/shm)",
        ))
    size, free = shm.get("size"), shm.get("free")
    if size is not None and size <= DOCKER_DEFAULT_SHM * 1.05:
        out.append(Advice(
            "warning" if in_use else "info",
            f"{shm['dir']} is only {format_bytes(size)} (Docker's default is 64 MiB): posix "
            "segments (and other libraries' shared memory) larger than that fail with "
            "InsufficientMemoryError",
            _SHM_FIX,
        ))
    elif size is not None and free is not None and size and free < min(size * 0.1, 1 << 30):
        out.append(Advice(
            "warning",
            f"{shm['dir']} is nearly full: {format_bytes(free)} free of {format_bytes(size)}",
            "run `nocopy gc` to reclaim orphaned segments, close unused Shared handles, or " + _SHM_FIX,
        ))
    return out


def _in_use_advice(shm: dict[str, Any], isolation: dict[str, Any]) -> list[Advice]:
    out = [Advice(
        "warning",
        f"the posix backend is in use: posix segments are {isolation['posix']}; memfd "
        "segments are sealed and cannot be truncated",
        "use backend='memfd' (unset NOCOPY_BACKEND) unless you need named segments",
    )]
    if shm["exists"] and shm["writable"] and not isolation["posix_named_after_lock"]:
        out.append(Advice(
            "warning",
            f"{shm['dir']} does not support O_TMPFILE (or /proc is missing): a new posix "
            "segment is visible for a moment before its owner locks it, and `nocopy gc` run "
            "in another pid namespace (a container sharing this directory) could remove it then",
            "run `nocopy gc` only in the pid namespace of the processes that share, or use memfd",
        ))
    return out


def _found(f: _orphans.PosixFile, alive: bool, holders: tuple[int, ...]) -> Found:
    return Found(
        name=f.name, store="posix", size=f.size, owner_pid=f.pid, owner_alive=alive,
        created=f.created, path=f.path, holders=holders,
    )


_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}
_no_tmpfile: set[str] = set()


def _create_locked(seg: OwnedSegment, directory: str, path: str) -> bool:
    """Open a new segment file for *path* into *seg*, holding the owner's lock; whether *path* names it yet.

    Where the kernel allows it (Linux: O_TMPFILE and /proc/self/fd), the file
    starts with no name and create() links it at *path* only after
    locking it: between an O_CREAT|O_EXCL and the flock, a reclaim in another
    pid namespace (a container sharing /dev/shm), where the pid in the name
    means nothing, would see an unlocked file of a "dead" owner and unlink it.
    Elsewhere there are no pid namespaces, and the pid and start time in the
    name protect the file in that window.
    """
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile and directory not in _no_tmpfile and os.path.isdir("/proc/self/fd"):
        try:
            fd = seg.open_fd(os.open, directory, tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            note_fd_limit(exc)
            if exc.errno not in _NO_TMPFILE:
                raise
            _no_tmpfile.add(directory)  # this filesystem cannot: do not ask again
        else:
            _orphans.lock_owned(fd)
            return False
    seg.path = path  # first: a release removes it only if this process made the file
    try:
        fd = seg.open_fd(os.open, path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        note_fd_limit(exc)
        raise
    _orphans.lock_owned(fd)  # held until release or death: reclaim skips it
    return True


def _reopen_locked(seg: OwnedSegment, path: str) -> None:
    """Give *seg* a descriptor of its file opened by *path*, holding the owner's lock, in place of the nameless one.

    The file was opened nameless, so /proc/<pid>/fd and maps lines of that
    descriptor show "#<inode> (deleted)": `nocopy ls`, lsof and leak checks
    find a segment by its name. The new descriptor takes its lock before the
    old one lets go, so the file is never unlocked.
    """
    old = seg.fd
    try:
        new = seg.open_fd(os.open, path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        note_fd_limit(exc)
        raise
    a, b = os.fstat(old), os.fstat(new)
    if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):  # pragma: no cover - replaced by this user
        seg.close_fd(new, same_file=False)
        raise SegmentNotFoundError(
            f"segment {path} was replaced while it was being created (by another process of "
            "this user). Fix: share the data again, and find what writes into the shm directory."
        )
    _orphans.lock_owned(new)
    seg.close_fd(old)


def invisible_until_locked(directory: str) -> bool:
    """Whether new posix segments in *directory* get their name only once locked (see _create_locked)."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if not tmpfile or directory in _no_tmpfile or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        os.close(os.open(directory, tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600))
    except OSError:
        return False
    return True


def _dirs(base: str) -> tuple[str, str]:
    """Where this user's posix segments are: the private directory, and *base* itself (nocopy 0.2)."""
    return segment_dir(base), base


_gc_done: set[str] = set()


def _gc_once(base: str) -> None:
    """Reclaim posix orphans of dead owners the first time this process creates one under *base*."""
    if base in _gc_done:
        return
    _gc_done.add(base)
    for d in _dirs(base):
        _orphans.reclaim(d)


def _open(loc: Locator, flags: int) -> int:
    directory = segment_dir()
    path = os.path.join(directory, loc.name)
    try:
        return os.open(path, flags | os.O_NOFOLLOW)
    except FileNotFoundError:
        owner_uid = _owner_uid(loc.name)
        if owner_uid is not None and owner_uid != os.geteuid():
            # Not in this user's directory because it is in its owner's, closed to others.
            raise SegmentAccessError(
                f"segment {loc.name} belongs to uid {owner_uid} (its owner, pid {loc.pid}, runs as that "
                f"user), not to this process's uid {os.geteuid()}: posix segments are private to "
                f"their owner's user (in its 0700 directory). Fix: attach as uid {owner_uid}."
            ) from None
        raise SegmentNotFoundError(
            f"segment {loc.name} does not exist in {directory}: its owner (pid {loc.pid}) "
            "closed it or exited. Fix: keep the owner's Shared open while other processes attach."
        ) from None
    except PermissionError:
        if flags & os.O_RDWR:
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                st = None
            if st is not None and st.st_uid == os.geteuid() and not st.st_mode & _stat.S_IWUSR:
                raise read_only_error(loc) from None
        raise SegmentAccessError(
            f"segment {path} is not accessible to uid {os.geteuid()}: segments are private "
            "to their owner's user (mode 0600). Fix: attach as the owner's user."
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EISDIR, errno.EOPNOTSUPP):
            raise
        # ELOOP: a symlink (O_NOFOLLOW); ENXIO/ENODEV/EOPNOTSUPP: a socket or a device.
        raise SegmentNotFoundError(
            f"segment {loc.name}: {path} is not a nocopy segment ({_what_is(path)}): the name "
            "was taken by something else. Fix: use the uri of a live Shared."
        ) from None


def _owner_uid(name: str) -> int | None:
    """The uid of the live process that made segment *name* (pid and start time), or None."""
    parsed = _names.parse_name(name)
    if parsed is None or not _names.pid_alive(parsed.pid, parsed.start):
        return None
    try:
        return os.stat(f"/proc/{parsed.pid}").st_uid
    except OSError:
        return None


def _what_is(path: str) -> str:
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except OSError as exc:
        return exc.strerror or "unreadable"
    for test, what in (
        (_stat.S_ISLNK, "a symbolic link"), (_stat.S_ISSOCK, "a socket"), (_stat.S_ISFIFO, "a FIFO"),
        (_stat.S_ISDIR, "a directory"), (_stat.S_ISCHR, "a character device"), (_stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a regular file"
