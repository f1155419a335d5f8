# Old finding 7: gc in another pid namespace (a container sharing the shm dir) unlinked live posix
# segments in the window between creation and the owner's lock. 18 s of reclaim() in a new pid
# namespace against a process creating posix segments; count live segments found unlinked.
import os, subprocess, sys, time, shutil
import numpy as np

D = "/dev/shm/nocopy-sec-ns"
os.makedirs(D, exist_ok=True)
os.environ["NOCOPY_SHM_DIR"] = D
import nocopy  # noqa: E402

gc = subprocess.Popen(
    ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c",
     "import time, sys; from nocopy._store import _orphans; end = time.time() + 18; n = 0\n"
     f"while time.time() < end: n += len(_orphans.reclaim({os.path.join(D, 'nocopy-%d' % os.geteuid())!r}))  # adapted: the private directory\n"
     "print('reclaimed in the other namespace:', n)"],
    stdin=subprocess.DEVNULL)
time.sleep(1.5)
n = lost = 0
end = time.time() + 15
while time.time() < end:
    r = nocopy.share(np.ones(4), backend="posix"); n += 1
    if os.fstat(r._owner.fd).st_nlink == 0:
        lost += 1
    r.close()
gc.wait()
shutil.rmtree(D, ignore_errors=True)
print(f"VERDICT: {'vulnerable' if lost else 'safe'} {lost} of {n} live segments unlinked by gc in another pid namespace")
