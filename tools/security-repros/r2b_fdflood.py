# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# Old finding 2 (fd server): 12 processes of uid 65534 flood connect() on a memfd owner's fd server
# for 12 s while a same-user reader asks it for descriptors (the SCM_RIGHTS path readers take when
# /proc/<pid>/fd is refused). The client gives up after 5 s: count requests that fail.
import os, socket, time, collections, sys
import numpy as np, nocopy
from nocopy._ipc._unixserver import socket_path  # ADAPTED: pathname sockets
from nocopy._ipc import _fdserver

FLOOD_S = float(sys.argv[1]) if len(sys.argv) > 1 else 12
FLOODERS = int(sys.argv[2]) if len(sys.argv) > 2 else 12


def flood(addr, end):
    os.setgid(65534); os.setuid(65534)
    while time.time() < end:
        with socket.socket(socket.AF_UNIX) as s:
            s.setblocking(False)
            try:
                s.connect(addr)
            except OSError:
                pass
    os._exit(0)


def measure(label, seconds, addr, ref):
    c = collections.Counter(); lat = []
    end = time.time() + seconds
    while time.time() < end:
        t = time.time()
        try:
            fd = _fdserver.request_fd(addr, ref.name, ref._token.hex()); os.close(fd); c["ok"] += 1
        except Exception as e:
            c[f"{type(e).__name__}: ...{str(e)[60:140]}"] += 1
        lat.append(time.time() - t)
        time.sleep(0.02)
    print(f"{label}: {dict(c)}; latency max {max(lat):.2f}s median {sorted(lat)[len(lat)//2]*1e3:.1f} ms", flush=True)
    return c


if __name__ == "__main__":
    ref = nocopy.share(np.arange(10))
    addr = _fdserver.server().address
    measure("no flood, 2 s", 2, addr, ref)
    end = time.time() + FLOOD_S
    kids = []
    for _ in range(FLOODERS):
        pid = os.fork()
        if pid == 0:
            flood(socket_path(addr), end)
        kids.append(pid)
    time.sleep(0.5)
    c = measure(f"{FLOODERS} foreign flooders, {FLOOD_S:g} s", FLOOD_S - 0.5, addr, ref)
    for k in kids:
        os.waitpid(k, 0)
    ref.close()
    bad = sum(v for k, v in c.items() if k != "ok")
    print(f"VERDICT: {'vulnerable' if bad else 'safe'} {bad} of {sum(c.values())} fd requests failed under a foreign connect flood")
