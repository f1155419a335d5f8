# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# Old findings 3-6: hostile clients of the SAME user against the fd server and the result inbox:
# garbage / nested-JSON / over-long / non-ASCII lines, idle connections (slowloris), descriptors sent
# with bad messages or unknown tags, EMFILE at accept. After each, a legit request must work at once
# and the server must not keep descriptors.
import os, socket, time, threading, resource
import numpy as np, nocopy
from nocopy._ipc._unixserver import socket_path  # ADAPTED: pathname sockets
from nocopy._ipc import _fdserver
from nocopy._pool import _results

ref = nocopy.share(np.arange(10))
fds_srv = _fdserver.server()
inbox = _results.get_inbox()
TAG = os.urandom(8).hex(); inbox.open_tag(TAG)
problems = []


def nfds():
    return len(os.listdir("/proc/self/fd"))


def legit_fd(label):
    t = time.time()
    try:
        fd = _fdserver.request_fd(fds_srv.address, ref.name, ref._token.hex()); os.close(fd); ok = True
    except Exception as e:
        ok = f"{type(e).__name__}: {str(e)[:60]}"
    dt = time.time() - t
    print(f"  fd server after {label}: {'ok' if ok is True else ok} in {dt*1e3:.1f} ms")
    if ok is not True or dt > 1.0:
        problems.append(f"fd server after {label}: {ok} {dt:.2f}s")


def legit_inbox(label):
    t = time.time(); key = os.urandom(16).hex(); fd = os.memfd_create("r")
    try:
        _results.hand_over(inbox.address, TAG, key, fd); got = inbox.claim(key); os.close(got); ok = True
    except Exception as e:
        ok = f"{type(e).__name__}: {str(e)[:60]}"
    os.close(fd)
    dt = time.time() - t
    print(f"  inbox after {label}: {'ok' if ok is True else ok} in {dt*1e3:.1f} ms")
    if ok is not True or dt > 1.0:
        problems.append(f"inbox after {label}: {ok} {dt:.2f}s")


def send(addr, data, fds=(), read=True):
    s = socket.socket(socket.AF_UNIX); s.settimeout(6); s.connect(socket_path(addr))
    try:
        if fds:
            socket.send_fds(s, [data], list(fds))
        else:
            s.sendall(data)
        return s.recv(16) if read else s
    except OSError as e:
        return repr(e)
    finally:
        if read:
            s.close()


memfd = os.memfd_create("attacker")
for name, addr, check in (("fd server", fds_srv.address, legit_fd), ("inbox", inbox.address, legit_inbox)):
    print(f"== {name}")
    n0 = nfds()
    replies = set()
    for payload in (b"[" * 4000 + b"\n", b"{" * 100000, b"\xff\xfe\n", b"\0" * 600 + b"\n", b"a b\nc d\n",
                    b"nocopy-1-2-" + b"0" * 32 + b" " + b"0" * 32 + b"\n", b"x" * (1 << 20)):
        replies.add(send(addr, payload))
    print("  replies to garbage:", replies)
    check("garbage lines")
    # descriptors with bad lines, unknown tags, too many fds
    for i in range(300):
        send(addr, b"\xff\n", [memfd])
        send(addr, f"{os.urandom(8).hex()} {os.urandom(16).hex()}\n".encode(), [memfd])  # unknown tag
        send(addr, b"zz\n", [memfd, memfd, memfd])
    time.sleep(0.3)
    print(f"  fds held by this process: {n0} before, {nfds()} after 900 fd-carrying bad requests")
    if nfds() > n0 + 5:
        problems.append(f"{name}: fds leaked {nfds() - n0}")
    check("fd-carrying bad requests")
    # slowloris: 127 idle connections, then 300 more idle ones (evicting the oldest)
    idle = [send(addr, b"", read=False) for _ in range(127)]
    check("127 idle connections")
    idle += [send(addr, b"partial", read=False) for _ in range(300)]
    check("427 idle connections")
    for s in idle:
        s.close()

# EMFILE at accept: limit this process's fds, hold them all, let the server try to accept
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
hog = []
waiting = socket.socket(socket.AF_UNIX); waiting.connect(socket_path(fds_srv.address))
try:
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
waiting.sendall(f"{ref.name} {ref._token.hex()}\n".encode()); time.sleep(0.5)
for f in hog:
    os.close(f)
alive = [t.name for t in threading.enumerate() if t.name in ("nocopy-fds", "nocopy-res")]
print("== EMFILE at accept: server threads alive afterwards:", alive)
if len(alive) != 2:
    problems.append("server thread died at EMFILE")
waiting.settimeout(6)
try:
    print("  queued request answered:", waiting.recv(4))
except OSError as e:
    print("  queued request:", repr(e))
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
legit_fd("EMFILE")
ref.close()
print(f"VERDICT: {'vulnerable' if problems else 'safe'} {len(problems)} problems {problems}")
