# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# NEW: same-user connect flood on the executor's result inbox makes tasks with big results FAIL
# (not just wait): the inbox drops the oldest of >128 connections, the worker's unread line makes
# the close a reset, and request() treats ECONNRESET on recv as fatal (no retry).
import os, socket, time, collections, sys
import numpy as np, nocopy
from nocopy._ipc._unixserver import socket_path  # ADAPTED: pathname sockets
from nocopy._pool import _results

FLOOD_S = float(sys.argv[1]) if len(sys.argv) > 1 else 10
FLOODERS = int(sys.argv[2]) if len(sys.argv) > 2 else 4


def big(i):
    return np.full(1 << 18, i, "f8")  # 2 MiB: handed over through the inbox


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


if __name__ == "__main__":
    with nocopy.ProcessPoolExecutor(2) as ex:
        for i in range(5):
            ex.submit(big, i).result()
        addr = _results.get_inbox().address
        end = time.time() + FLOOD_S
        kids = []
        for _ in range(FLOODERS):
            pid = os.fork()
            if pid == 0:
                flood(addr, end)
            kids.append(pid)
        time.sleep(0.3)
        c = collections.Counter(); lat = []; i = 0
        while time.time() < end - 0.5:
            t = time.time()
            try:
                r = ex.submit(big, i).result(); assert r[0] == i; c["ok"] += 1
            except Exception as e:
                c[f"{type(e).__name__}: {str(e)[:110]}"] += 1
            lat.append(time.time() - t); i += 1
        for k in kids:
            os.waitpid(k, 0)
        c2 = collections.Counter()
        for j in range(5):
            try:
                ex.submit(big, j).result(); c2["ok"] += 1
            except Exception as e:
                c2[type(e).__name__] += 1
    print(f"during a {FLOODERS}-process same-user flood: {dict(c)}; latency max {max(lat):.2f}s")
    print(f"after the flood: {dict(c2)}")
    bad = sum(v for k, v in c.items() if k != "ok")
    print(f"VERDICT: {'vulnerable' if bad else 'safe'} {bad} of {sum(c.values())} tasks failed under a same-user connect flood on the inbox")
