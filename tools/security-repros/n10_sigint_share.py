# Signals during share(): Ctrl-C (SIGINT) at random moments while 128 MiB arrays are shared (the
# parallel fill threads, and the MADV_COLLAPSE huge-page path where the kernel allows it), for both
# stores. Afterwards: descriptors, mappings, posix files and threads left behind in the process.
import os, signal, subprocess, sys, time, random

CHILD = r"""
import os, sys, time, threading, gc, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
import numpy as np, nocopy
from nocopy._store import huge_pages_now
backend = sys.argv[1]
print("collapse:", huge_pages_now().get("available"), flush=True)
big = np.ones(128 << 20, np.uint8)
interrupted = done = 0
def count():
    fds = []
    for f in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{f}"))
        except OSError:
            pass
    memfds = sum("nocopy-" in l for l in fds)
    maps = sum(1 for l in open("/proc/self/maps") if "nocopy-" in l)
    return memfds, maps
armed = False
def on_sigint(sig, frame):
    if armed:          # only inside share()/close(): the loop itself is never interrupted
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, on_sigint)
print("READY", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        armed = True
        r = nocopy.share(big, backend=backend); done += 1; r.close(); del r
        armed = False
    except KeyboardInterrupt:
        armed = False
        interrupted += 1
    except OSError as e:
        armed = False
        print("OSError", e, flush=True)
gc.collect(); time.sleep(0.5)
fds, maps = count()
d = os.path.join(os.environ.get("NOCOPY_SHM_DIR", "/dev/shm"), f"nocopy-{os.geteuid()}")  # adapted: the private directory
files = [f for f in (os.listdir(d) if os.path.isdir(d) else []) if f.startswith(f"nocopy-{os.getpid()}-")]
threads = [t.name for t in threading.enumerate() if t.name.startswith("nocopy-fill")]
pass  # adapted: d is the private directory
modes = [oct(os.stat(os.path.join(d, f)).st_mode & 0o777) for f in files]
for f in files:
    os.unlink(os.path.join(d, f))   # clean up what nocopy left
print(f"RESULT shares {done} interrupted {interrupted} | left: segment fds {fds}, mappings {maps}, posix files {len(files)}, fill threads {len(threads)} (file modes {modes})", flush=True)
"""
bad = 0
for backend in ("memfd", "posix"):
    p = subprocess.Popen([sys.executable, "-c", CHILD, backend, "20"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    first = p.stdout.readline().strip()
    p.stdout.readline()
    end = time.time() + 19
    sent = 0
    while time.time() < end:
        time.sleep(random.uniform(0.005, 0.08))
        try:
            os.kill(p.pid, signal.SIGINT); sent += 1
        except ProcessLookupError:
            break
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill(); out = "HUNG"; bad += 1
    res = [l for l in out.splitlines() if l.startswith("RESULT")]
    line = res[0] if res else f"child exit {p.returncode}: {out[-200:]}"
    print(f"{backend}: {first}; {sent} SIGINTs; {line}")
    if not res or any(f" {k} 0" not in line for k in ("fds", "mappings", "files", "threads")):
        bad += 1
print(f"VERDICT: {'vulnerable' if bad else 'safe'} {bad} of 2 stores left something behind or hung after random SIGINTs")
