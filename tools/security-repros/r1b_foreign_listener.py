# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# Old finding 1, second layer: a worker's hand-over to an address re-bound by another user (or by
# another pid of the same user) must send nothing. Direct check of nocopy._pool._results.hand_over.
import os, socket, time, sys
from nocopy._pool import _results
from nocopy.errors import SegmentNotFoundError


def listener(uid, addr, ready_w):
    if uid:
        os.setgid(uid); os.setuid(uid)
    os.mkdir("/tmp/" + addr, 0o700); s = socket.socket(socket.AF_UNIX); s.bind("/tmp/" + addr + "/s"); s.listen(8); s.settimeout(4)
    os.write(ready_w, b"x")
    got = 0
    try:
        while True:
            c, _ = s.accept(); c.settimeout(1)
            try:
                data, fds, _, _ = socket.recv_fds(c, 512, 4)
                got += len(fds) + (1 if data else 0)
            except OSError:
                pass
            try:
                c.sendall(b"K")
            except OSError:
                pass
    except OSError:
        pass
    os._exit(min(got, 100))


received = 0
for uid in (65534, 0):
    addr = f"nocopy-res-{os.getpid()}-{os.urandom(16).hex()}"  # names THIS pid, bound by another
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        listener(uid, addr, w)
    os.read(r, 1)
    fd = os.memfd_create("secret")
    t = time.time()
    try:
        _results.hand_over(addr, "0" * 16, "1" * 32, fd)
        res = "sent (accepted!)"
    except SegmentNotFoundError as e:
        res = f"refused: {str(e)[:110]}"
    _, st = os.waitpid(pid, 0)
    got = os.waitstatus_to_exitcode(st)
    received += got
    print(f"listener uid {uid} (pid {pid}, not the named pid): hand_over {res} in {time.time()-t:.2f}s; listener received {got} bytes/fds")
print(f"VERDICT: {'vulnerable' if received else 'safe'} {received} messages received by impostor listeners")
