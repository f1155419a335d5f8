# NEW (only where fs.protected_hardlinks=0, the kernel's own default; distros usually set 1 -- this machine has 1, so it is NOT reproduced here): posix
# segments live in the shared sticky /dev/shm, so ANOTHER user can hard-link root's segment file
# (0400, root-owned) under a name of its choice. When root closes the segment its memory is not
# freed; `nocopy gc` (root's) ignores the non-nocopy name; the other user cannot read it, and in
# the sticky directory cannot even remove the link again. Also checked: `nocopy gc` run by the
# other user touches none of root's segments.
import os, subprocess, sys, time
import numpy as np, nocopy


def shmem_kb():
    for line in open("/proc/meminfo"):
        if line.startswith("Shmem:"):
            return int(line.split()[1])


prot = open("/proc/sys/fs/protected_hardlinks").read().strip()
ref = nocopy.share(np.ones(32 << 20, np.uint8), backend="posix")   # 32 MiB, root's
path = os.path.join(f"/dev/shm/nocopy-{os.geteuid()}", ref.name)  # adapted: the private directory
pin = f"/dev/shm/not-a-segment-{os.urandom(4).hex()}"
dead = nocopy.share(np.ones(1 << 20, np.uint8), backend="posix")   # a live one, for the gc check
from nocopy._cli import main  # before setuid: /root is not readable by uid 65534
import argparse, json  # noqa
main(['gc', '--dry-run'])
pid = os.fork()
if pid == 0:
    os.setgid(65534); os.setuid(65534)
    try:
        os.link(path, pin); r = 0
    except OSError as e:
        print("link refused:", e.strerror); r = 1
    try:
        open(pin, "rb").read(1); print("other user READ root's segment!")
    except OSError as e:
        print("other user reading the link:", e.strerror)
    print("nocopy gc as uid 65534 ->", end=" ", flush=True); main(["gc"])
    os._exit(r)
_, st = os.waitpid(pid, 0)
linked = os.waitstatus_to_exitcode(st) == 0
before = shmem_kb()
ref.close()
time.sleep(0.2)
after = shmem_kb()
print(f"fs.protected_hardlinks={prot}; other user linked root's segment: {linked}; root's segments still there after "
      f"the other user's gc: {os.path.exists(os.path.join(f'/dev/shm/nocopy-{os.geteuid()}', dead.name))}")
print(f"root closed its 32 MiB segment: Shmem {before} kB -> {after} kB (freed {(before - after) >> 10} MiB)")
from nocopy._cli import main
print("root's nocopy gc ->", end=" ", flush=True); main(["gc"])
still = os.path.exists(pin)
pinned = linked and still and (before - after) < (16 << 10)
try:
    os.unlink(pin)   # root cleans up
except OSError:
    pass
dead.close()
print(f"VERDICT: {'vulnerable' if pinned else 'safe'} {'32 MiB of root shared memory pinned by uid 65534' if pinned else 'nothing pinned'}")
