# Fixed-in-0.2 claims not covered by the old repro scripts: out-of-range categorical/MultiIndex codes,
# and odd files (symlink, FIFO, socket, directory) at a posix segment's name.
import os, socket, subprocess, sys, time
import numpy as np, nocopy
from nocopy.errors import NocopyError
from seg import segment, name as seg_name

bad = []
cats = {"k": "pd.oidx", "v": ["a", "b", "c", "d", "e"], "name": None}
for codes, dt in (([300], "<i2"), ([-2], "<i8"), ([5], "|i1"), ([2**40], "<i8")):
    arr = np.array(codes, dtype=dt)
    u = segment({"tree": {"k": "pd.array", "v": {"k": "pd.cat", "codes": {"k": "nd", "b": 0, "dt": dt, "sh": [1]}, "cats": cats, "ordered": False}},
                 "buffers": [[0, arr.nbytes]]}, arr.tobytes())
    try:
        r = nocopy.attach(u).get(); res = f"ACCEPTED -> {list(r)}"; bad.append(f"cat codes {codes}")
    except NocopyError as e:
        res = type(e).__name__
    print(f"categorical code {codes} ({dt}) over 5 categories: {res}")
    mi = {"k": "pd.mi", "levels": [cats], "codes": [{"k": "nd", "b": 0, "dt": dt, "sh": [1]}], "names": [{"k": "py", "v": None}]}
    u = segment({"tree": mi, "buffers": [[0, arr.nbytes]]}, arr.tobytes())
    try:
        r = nocopy.attach(u).get(); res = f"ACCEPTED -> {list(r)}"; bad.append(f"mi codes {codes}")
    except NocopyError as e:
        res = type(e).__name__
    print(f"MultiIndex code {codes} ({dt}) over 5 labels: {res}")

ref = nocopy.share(np.arange(4), backend="posix")
tok = ref.uri.split("token=")[1].split("&")[0]
for kind in ("symlink", "fifo", "socket", "dir"):
    n = seg_name(); p = f"/dev/shm/nocopy-{os.geteuid()}/{n}"  # adapted: the private directory
    if kind == "symlink":
        os.symlink(f"/dev/shm/nocopy-{os.geteuid()}/{ref.name}", p)
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX); s.bind(p)
    else:
        os.mkdir(p)
    u = ref.uri.replace(ref.name, n)
    t = time.time()
    try:
        nocopy.attach(u).get(); res = "ATTACHED"; bad.append(kind)
    except NocopyError as e:
        res = f"{type(e).__name__}: {str(e)[60:120]}"
    except BaseException as e:
        res = f"!! {type(e).__name__}"; bad.append(kind)
    print(f"{kind} at the name: {res} ({time.time() - t:.2f} s)")
    (os.rmdir if kind == "dir" else os.unlink)(p)
ref.close()
print(f"VERDICT: {'vulnerable' if bad else 'safe'} {len(bad)} problems {bad}")
