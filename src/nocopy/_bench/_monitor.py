"""Peak memory of a process tree, sampled by a separate process.

What one sample counts (each physical page once):

    Σ over the parent and all its descendants of
        PSS  minus  the PSS of their mappings of shared-memory objects
    +  Σ over the shared-memory objects they map or hold open (or that match
        the method's registered paths) of the object's allocated bytes

PSS (proportional set size) already splits a page mapped by k processes into
k parts, so Σ PSS counts every *mapped* page once. What it misses is shared
memory that is allocated but not mapped by anyone right now: a memfd held only
by a file descriptor (nocopy after ``share()``), a /dev/shm file between its
writer closing it and a reader mapping it (the Arrow method), pages of Ray's
store that no process has faulted in. So shared-memory objects (memfd, /dev/shm
and any tmpfs file, SysV and shared anonymous memory: everything on a tmpfs
device or the kernel's internal shm mount) are counted whole, by their
allocated size (``st_blocks``), once each (keyed by device and inode), and
their mapped part is taken out of PSS so it is not counted twice. When a
process's mappings cannot all be resolved to an object (``/proc/PID/map_files``
needs root), the full ``/proc/PID/smaps`` is read for that process and only
the resolved mappings are taken out.

Per process that costs ``smaps_rollup`` + ``maps`` + a stat of each open file:
about 1-2 ms. The sampler is its own process (started with
``subprocess``), so sampling takes no time from the parent's threads, and it
is excluded from the tree it measures. Timing runs leave it idle.

Protocol on stdin/stdout, one line each way:
``sample`` -> one sample; ``start <json list of glob patterns>`` -> ``ok``,
then sampling every ``interval`` seconds; ``mark`` -> a sample now, counted
toward the peak (the end of a work phase); ``stop`` -> the peak sample and
statistics; ``quit`` or EOF -> exit.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import select
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MemoryMonitor", "Sample", "ShmAccounting", "take_sample"]


@dataclass
class Sample:
    """One instant: total bytes and its parts."""

    total: int = 0  # pss_private + shm_bytes
    pss_private: int = 0  # Σ PSS minus the PSS of shared-memory mappings
    shm_bytes: int = 0  # allocated bytes of the shared-memory objects, each once
    shm_objects: int = 0
    processes: int = 0
    unresolved_maps: int = 0  # shm mappings left inside PSS (no object size found)
    t: float = 0.0  # time.monotonic() when taken
    cost_ms: float = 0.0  # how long the sample took


@functools.lru_cache(maxsize=256)
def _dev_of(text: str) -> int:
    """A device number from /proc/PID/maps ("fe:01", hex)."""
    major, minor = text.split(":")
    return os.makedev(int(major, 16), int(minor, 16))


class ShmAccounting:
    """Knows which devices hold shared memory: every tmpfs mount and the kernel's shm mount."""

    def __init__(self) -> None:
        devs: set[int] = set()
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    left, _, right = line.partition(" - ")
                    fstype = right.split(" ", 1)[0]
                    if fstype in ("tmpfs", "shm", "ramfs"):
                        # Decimal here (/proc/PID/maps writes hex).
                        major, minor = left.split()[2].split(":")
                        devs.add(os.makedev(int(major), int(minor)))
        except OSError:
            pass
        if hasattr(os, "memfd_create"):
            # memfd, SysV shm and MAP_SHARED|MAP_ANONYMOUS all live on the
            # kernel's internal shm mount, which no mount table lists.
            fd = os.memfd_create("nocopy-bench-probe", getattr(os, "MFD_CLOEXEC", 0))
            try:
                devs.add(os.fstat(fd).st_dev)
            finally:
                os.close(fd)
        self.devs = frozenset(devs)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _tree(root: int, exclude: set[int]) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(root)
        kids = proc.children(recursive=True)
    except psutil.Error:
        return []
    return [root] + [p.pid for p in kids if p.pid not in exclude]


def _rollup(pid: int) -> tuple[int, int]:
    pss = shmem = 0
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith(b"Pss:"):
            pss = int(line.split()[1]) * 1024
        elif line.startswith(b"Pss_Shmem:"):
            shmem = int(line.split()[1]) * 1024
    return pss, shmem


def _pss_of(pid: int, keys: set[tuple[int, int]], acct: ShmAccounting) -> int:
    """PSS of *pid*'s mappings of the given objects, from the full smaps."""
    total = 0
    current: tuple[int, int] | None = None
    for line in _read(f"/proc/{pid}/smaps").splitlines():
        if line[:1].isdigit() or line[:1] in b"abcdef":
            parts = line.split()
            if len(parts) >= 5 and b"-" in parts[0] and b":" in parts[3]:
                key = (_dev_of(parts[3].decode()), int(parts[4]))
                current = key if key in keys else None
                continue
        if current is not None and line.startswith(b"Pss:"):
            total += int(line.split()[1]) * 1024
    return total


def _shm_maps(pid: int, acct: ShmAccounting) -> list[tuple[tuple[int, int], str]]:
    """(object key, address range) of each of *pid*'s mappings of a shared-memory object."""
    maps = []
    for line in _read(f"/proc/{pid}/maps").splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or parts[4] == b"0":
            continue
        dev = _dev_of(parts[3].decode())
        if dev in acct.devs:
            maps.append(((dev, int(parts[4])), parts[0].decode()))
    return maps


def _count_file(path: str, acct: ShmAccounting, objects: dict[tuple[int, int], int], *, follow: bool = True) -> None:
    """Add the file at *path* to *objects* if it is shared memory (gone or unreadable: skipped)."""
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return
    if st.st_dev in acct.devs and stat.S_ISREG(st.st_mode):
        objects[(st.st_dev, st.st_ino)] = st.st_blocks * 512


def _private_pss(
    pid: int, pss: int, pss_shmem: int, maps: list[tuple[tuple[int, int], str]],
    objects: dict[tuple[int, int], int], acct: ShmAccounting,
) -> tuple[int, int]:
    """*pid*'s PSS without its shared-memory mappings, and how many mappings stayed unresolved.

    Resolves each mapping to its object (adding it to *objects*); when one
    cannot be resolved, only the resolved ones are taken out of PSS.
    """
    unresolved = 0
    for key, rng in maps:
        if key in objects:
            continue
        try:
            st = os.stat(f"/proc/{pid}/map_files/{rng}")
        except OSError:
            unresolved += 1
            continue
        objects[key] = st.st_blocks * 512
    if unresolved == 0:
        return pss - pss_shmem, 0
    return pss - _pss_of(pid, {k for k, _ in maps if k in objects}, acct), unresolved


def take_sample(root: int, *, exclude: set[int], acct: ShmAccounting, globs: list[str]) -> Sample:
    """One sample of the tree under *root* (see the module docstring)."""
    t0 = time.perf_counter()
    objects: dict[tuple[int, int], int] = {}
    per_proc: list[tuple[int, int, int, list[tuple[tuple[int, int], str]]]] = []
    for pid in _tree(root, exclude):
        try:
            pss, pss_shmem = _rollup(pid)
            maps = _shm_maps(pid, acct)
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                _count_file(f"{fd_dir}/{fd}", acct, objects)
        except (OSError, ValueError):
            continue  # the process exited while being read
        per_proc.append((pid, pss, pss_shmem, maps))
    for pattern in globs:
        for path in glob.glob(pattern):
            _count_file(path, acct, objects, follow=False)
    out = Sample(t=time.monotonic())
    for pid, pss, pss_shmem, maps in per_proc:
        try:
            private, unresolved = _private_pss(pid, pss, pss_shmem, maps, objects, acct)
        except OSError:
            continue  # the process exited while its smaps was read
        out.unresolved_maps += unresolved
        out.pss_private += max(0, private)
        out.processes += 1
    out.shm_bytes = sum(objects.values())
    out.shm_objects = len(objects)
    out.total = out.pss_private + out.shm_bytes
    out.cost_ms = (time.perf_counter() - t0) * 1e3
    return out


# -- the sampler process ------------------------------------------------


class _Sampler:
    """The sampler process's state: what it samples and the peak so far."""

    def __init__(self, root: int, interval: float) -> None:
        self.root = root
        self.interval = interval
        self.acct = ShmAccounting()
        self.exclude = {os.getpid()}
        self.sampling = False
        self.globs: list[str] = []
        self.peak = Sample()
        self.low: int | None = None  # the lowest total sampled while measuring
        self.count = 0
        self.gaps: list[float] = []
        self.last = 0.0

    def timeout(self) -> float | None:
        """How long to wait for a command before the next sample is due (None: no sampling)."""
        return max(0.0, self.last + self.interval - time.monotonic()) if self.sampling else None

    def take(self, globs: list[str] | None = None) -> Sample:
        return take_sample(self.root, exclude=self.exclude, acct=self.acct, globs=self.globs if globs is None else globs)

    def count_toward_peak(self) -> None:
        s = self.take()
        self.count += 1
        if s.total > self.peak.total:
            self.peak = s
        if self.low is None or s.total < self.low:
            self.low = s.total

    def tick(self) -> None:
        """A periodic sample, if sampling and one is due."""
        if not self.sampling or time.monotonic() < self.last + self.interval:
            return
        now = time.monotonic()
        if self.last:
            self.gaps.append(now - self.last)
        self.last = now
        self.count_toward_peak()

    def command(self, cmd: str, arg: str) -> Any:
        """The answer to one protocol command (see the module docstring)."""
        if cmd == "sample":
            return asdict(self.take(json.loads(arg or "[]")))
        if cmd == "mark":
            # A sample at a moment the parent chose (e.g. the end of the
            # work phase), so short runs still see their high point.
            self.count_toward_peak()
            return "ok"
        if cmd == "start":
            self.globs = json.loads(arg or "[]")
            self.peak, self.low, self.count, self.gaps, self.last = Sample(), None, 0, [], 0.0
            self.sampling = True
            return "ok"
        if cmd == "stop":
            self.sampling = False
            self.count_toward_peak()
            gaps = sorted(self.gaps)
            return {
                "peak": asdict(self.peak),
                "low": self.low,
                "samples": self.count,
                "interval_ms_median": 1e3 * gaps[len(gaps) // 2] if gaps else None,
                "interval_ms_max": 1e3 * gaps[-1] if gaps else None,
            }
        return {"error": f"unknown command {cmd!r}"}


def _serve(root: int, interval: float) -> None:
    # Keep the cadence while the measured processes saturate the CPUs (memory
    # runs are never timed, so the sampler may take priority); needs root.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    sampler = _Sampler(root, interval)
    buf = b""
    while True:
        ready, _, _ = select.select([0], [], [], sampler.timeout())
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd, _, arg = line.decode().partition(" ")
                if cmd == "quit":
                    return
                os.write(1, (json.dumps(sampler.command(cmd, arg)) + "\n").encode())
        sampler.tick()


@dataclass
class PeakResult:
    """What the sampler reports for one measured stretch."""

    peak: Sample
    # The lowest total sampled: below the baseline when memory from before the
    # stretch (a finished run's processes or pages) was freed during it.
    low: int | None
    samples: int
    interval_ms_median: float | None
    interval_ms_max: float | None
    extra: dict[str, Any] = field(default_factory=dict)


class MemoryMonitor:
    """The parent's side: starts the sampler process, asks it for samples and peaks.

    Examples
    --------
    >>> with MemoryMonitor() as mon:
    ...     base = mon.sample().total
    ...     mon.start()
    ...     big = bytearray(50_000_000)
    ...     peak = mon.stop().peak.total
    >>> peak - base > 40_000_000
    True
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MemoryMonitor:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "nocopy._bench._monitor", str(os.getpid()), str(self.interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _ask(self, line: str) -> Any:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("the memory monitor is not running (use it as a context manager)")
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the memory monitor (pid {proc.pid}) exited (code {proc.poll()})")
        return json.loads(answer)

    def sample(self, globs: list[str] | None = None) -> Sample:
        """One sample now (e.g. the baseline before a run)."""
        return Sample(**self._ask("sample " + json.dumps(globs or [])))

    def start(self, globs: list[str] | None = None) -> None:
        """Start sampling; *globs* name shared-memory files the method may leave unmapped."""
        if self._ask("start " + json.dumps(globs or [])) != "ok":
            raise RuntimeError("the memory monitor refused to start")

    def mark(self) -> None:
        """Take a sample now (while sampling) and count it toward the peak."""
        self._ask("mark")

    def stop(self) -> PeakResult:
        """Stop sampling and return the peak."""
        answer = self._ask("stop")
        return PeakResult(
            peak=Sample(**answer["peak"]),
            low=answer["low"],
            samples=answer["samples"],
            interval_ms_median=answer["interval_ms_median"],
            interval_ms_max=answer["interval_ms_max"],
        )


if __name__ == "__main__":
    _serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.01)
