# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# NEW (partly old finding 4): processes of the SAME user open connections to the fd server (or the
# inbox) as fast as they can and keep them idle. The server keeps at most 128 and drops the OLDEST
# to make room, so a legit client accepted in the same burst is dropped before its line is read;
# it retries until its deadline (5 s for attach): measure how many legit requests fail.
import os, socket, time, collections, sys
import numpy as np, nocopy
from nocopy._ipc._unixserver import socket_path  # ADAPTED: pathname sockets
from nocopy._ipc import _fdserver

FLOOD_S = float(sys.argv[1]) if len(sys.argv) > 1 else 12
FLOODERS = int(sys.argv[2]) if len(sys.argv) > 2 else 4


def flood(addr, end):
    held = []
    while time.time() < end:
        s = socket.socket(socket.AF_UNIX); s.setblocking(False)
        try:
            s.connect(socket_path(addr)); held.append(s)
        except OSError:
            s.close()
        if len(held) > 400:
            held.pop(0).close()
    os._exit(0)


def measure(label, seconds, addr, ref):
    c = collections.Counter(); lat = []
    end = time.time() + seconds
    while time.time() < end:
        t = time.time()
        try:
            fd = _fdserver.request_fd(addr, ref.name, ref._token.hex()); os.close(fd); c["ok"] += 1
        except Exception as e:
            c[f"{type(e).__name__}: {str(e)[60:200]}"] += 1
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
            flood(addr, end)
        kids.append(pid)
    time.sleep(0.3)
    c = measure(f"{FLOODERS} same-user flooders, {FLOOD_S:g} s", FLOOD_S - 0.3, addr, ref)
    for k in kids:
        os.waitpid(k, 0)
    ref.close()
    bad = sum(v for k, v in c.items() if k != "ok")
    print(f"VERDICT: {'vulnerable' if bad else 'safe'} {bad} of {sum(c.values())} fd requests failed under a same-user connect flood")
