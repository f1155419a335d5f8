# Deterministic version of n10: a KeyboardInterrupt delivered right after one C call inside
# share() (what a SIGINT arriving during that call does), at three places:
#  A. posix create, just after _reopen_locked closed the nameless fd: the cleanup then closes that
#     fd number AGAIN (EBADF, or another thread's file that reused the number) and never unlinks.
#  B. right after store.create() returned, before _new_segment's try: nothing releases it.
#  C. memfd create, after its try (starting the fd server): the memfd and its mapping leak.
import os, sys, threading
import numpy as np, nocopy
from nocopy._store import _posix, _memfd

big = np.ones(1 << 16)
results = {}


def interrupt_at(code_obj, lineno):
    def tracer(frame, event, arg):
        if frame.f_code is code_obj:
            def local(f, ev, a):
                if ev == "line" and f.f_lineno == lineno:
                    sys.settrace(None); f.f_trace = None
                    raise KeyboardInterrupt
                return local
            return local
        return None
    return tracer


def leftovers():
    fds = 0
    for f in os.listdir("/proc/self/fd"):
        try:
            fds += "nocopy-" in os.readlink(f"/proc/self/fd/{f}")
        except OSError:
            pass
    d = f"/dev/shm/nocopy-{os.geteuid()}"  # adapted: the private directory
    files = [f for f in (os.listdir(d) if os.path.isdir(d) else []) if f.startswith(f"nocopy-{os.getpid()}-")]
    return fds, files


def attempt(label, backend, code_obj, line):
    fds0, _ = leftovers()
    sys.settrace(interrupt_at(code_obj, line))
    try:
        nocopy.share(big, backend=backend)
        outcome = "no interrupt"
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    except BaseException as e:
        outcome = f"{type(e).__name__}: {e}"   # the interrupt was replaced by this
    finally:
        sys.settrace(None)
    fds, files = leftovers()
    fds -= fds0
    print(f"{label}: share() raised {outcome}; left behind: {fds} segment fd(s), {len(files)} posix file(s)")
    results[label] = fds + len(files)
    for f in files:
        os.unlink(os.path.join(d, f))


src = open(_posix.__file__).read().splitlines()
# adapted: the nameless fd is now closed in OwnedSegment.close_fd: interrupt right after its close
from nocopy._store import _segment
ssrc_seg = open(_segment.__file__).read().splitlines()
line_a = next(i + 1 for i, l in enumerate(ssrc_seg) if l.strip() == "self._fds.remove(fd)")
attempt("A posix, after _reopen_locked's close", "posix", _segment.OwnedSegment.close_fd.__code__, line_a)
import nocopy._shared as S
ssrc = open(S.__file__).read().splitlines()
line_b = next(i + 1 for i, l in enumerate(ssrc) if l.strip() == "try:" and "seg = store.create" in ssrc[i - 1])
attempt("B memfd, between create() and its try", "memfd", S._new_segment.__code__, line_b)
msrc = open(_memfd.__file__).read().splitlines()
line_c = next(i + 1 for i, l in enumerate(msrc) if l.strip().startswith("seg.locator = Locator(self.name, name, os.getpid(), fd"))  # adapted: the fd server start
attempt("C memfd, after create's try", "memfd", _memfd.MemfdStore.create.__code__, line_c)
bad = sum(1 for v in results.values() if v)
print(f"VERDICT: {'vulnerable' if bad else 'safe'} {bad} of 3 interrupt points leak a segment")
