# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# Old finding 2: 8 processes of uid 65534 flood connect() on the executor's inbox and the fd server
# for ~6 s; root's result hand-overs and fd requests must not fail (EAGAIN) -- at most be delayed.
import os, socket, time, collections, threading, signal
import numpy as np, nocopy
from nocopy._ipc import _fdserver

FLOOD_S = 6


def big(i):
    return np.full(1 << 18, i, "f8")  # 2 MiB: comes back through the inbox


def flood():
    os.setgid(65534); os.setuid(65534)
    end = time.time() + FLOOD_S
    addrs = [l.split()[-1] for l in open("/proc/net/unix") if "/nocopy-res-" in l or "/nocopy-fds-" in l]
    n = 0
    while time.time() < end:
        for a in addrs:
            with socket.socket(socket.AF_UNIX) as s:
                s.setblocking(False)
                try:
                    s.connect(a); n += 1
                except OSError:
                    pass
    os._exit(0)


if __name__ == "__main__":
    ref = nocopy.share(np.arange(10))  # memfd: starts the fd server
    srv = _fdserver.server()
    with nocopy.ProcessPoolExecutor(2) as ex:
        ex.submit(big, 0).result()
        c = collections.Counter(); lat = []
        fdc = collections.Counter(); fdlat = []
        kids = []
        for _ in range(8):
            pid = os.fork()
            if pid == 0:
                flood()
            kids.append(pid)
        t_end = time.time() + FLOOD_S

        def fdreq():
            while time.time() < t_end:
                t = time.time()
                try:
                    fd = _fdserver.request_fd(srv.address, ref.name, ref._token.hex()); os.close(fd); fdc["ok"] += 1
                except Exception as e:
                    fdc[f"{type(e).__name__}: {str(e)[:80]}"] += 1
                fdlat.append(time.time() - t)
                time.sleep(0.01)

        th = threading.Thread(target=fdreq); th.start()
        i = 0
        while time.time() < t_end:
            t = time.time()
            try:
                r = ex.submit(big, i).result(); assert r[0] == i; c["ok"] += 1
            except Exception as e:
                c[f"{type(e).__name__}: {str(e)[:95]}"] += 1
            lat.append(time.time() - t); i += 1
        th.join()
        for k in kids:
            os.waitpid(k, 0)
    ref.close()
    print("results:", dict(c), f"max latency {max(lat):.2f}s, median {sorted(lat)[len(lat)//2]*1e3:.1f} ms")
    print("fd requests:", dict(fdc), f"max latency {max(fdlat):.2f}s")
    bad = sum(v for k, v in c.items() if k != "ok") + sum(v for k, v in fdc.items() if k != "ok")
    print(f"VERDICT: {'vulnerable' if bad else 'safe'} {bad} failures of {sum(c.values()) + sum(fdc.values())} requests under a foreign connect flood")
