# Old finding 8: truncating a posix segment kills its readers with SIGBUS (documented as an honest
# limit; memfd is sealed). Re-checked for posix and for a nocopy-made memfd.
import os, subprocess, sys, time
import numpy as np, nocopy

results = {}
for backend in ("posix", "memfd"):
    ref = nocopy.share(np.ones(1 << 20), backend=backend)
    reader = subprocess.Popen([sys.executable, "-c", "import sys,time,nocopy\nv=nocopy.attach(sys.argv[1]).get()\n"
                               "print(v.sum(),flush=True); time.sleep(1.5); print(v.sum(), flush=True)", ref.uri],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    reader.stdout.readline()
    try:
        if backend == "posix":
            path = os.path.join(os.environ.get("NOCOPY_SHM_DIR", "/dev/shm"), f"nocopy-{os.geteuid()}", ref.name)  # adapted
            os.truncate(path, 4096)  # root needs no chmod; any same-user process can chmod first
        else:
            os.truncate(f"/proc/{os.getpid()}/fd/{ref._owner.fd}", 4096)
        how = "truncated"
    except OSError as e:
        how = f"truncate refused ({e.strerror})"
    code = reader.wait()
    results[backend] = code
    print(f"{backend}: {how}; reader exit status {code}{' (SIGBUS)' if code == -7 else ''}")
    ref.close()
# A same-user process can truncate a posix file under its readers (no seals on tmpfs files): that is the
# documented limit of the posix store. The memfd store must never let it happen.
v = "vulnerable" if results.get("memfd") == -7 else "safe"
print(f"VERDICT: {v} posix reader exit {results['posix']}, memfd reader exit {results['memfd']} (posix: documented limit)")
