"""Fuzzing: corrupted headers and malformed URIs give a NocopyError, never a crash or a hang;
hostile segments decode in memory and CPU time linear in their size, or are refused.

Each fuzz loop runs in a child interpreter, so a segfault or SIGBUS shows up
as the child's exit status instead of killing the test run, and a hang as a
timeout. The decode-budget fuzzer (``BUDGET``) draws segments from the header
grammar and the Arrow/Polars/pandas layouts with hypothesis, biased toward what
a decoder might materialise (lengths stated for free, shared views, colliding
keys), in two workers under ``RLIMIT_AS`` and ``RLIMIT_CPU``: on the code before
the budget (issue 20) they died by SIGABRT or met MemoryErrors of 16-128 GiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEADERS = r'''
import copy, json, pickle, random, sys
import numpy as np
import nocopy
from nocopy._codec import decode_buffer, plan
from nocopy._codec._layout import PREFIX
from nocopy.errors import NocopyError

rng = random.Random(int(sys.argv[1]))
wanted = int(sys.argv[2])

rows = np.zeros(50, dtype=[("when", "M8[ns]"), ("x", "f8"), ("s", "U5")])
rows["x"][::7] = np.nan
objects = [
    np.arange(100, dtype="i8"),
    np.ones((7, 5), order="F"),
    rows,
    rows.view(np.recarray),
    np.array(3.5),
    np.empty((0, 3), "f4"),
    np.array(["ab", "c"], "U3"),
    np.arange(10).astype("m8[s]"),
    np.array([True, False]),
    {"a": np.arange(5), "b": [np.zeros(3, "c16"), (1, "x", None, 2.5, b"by")]},
    ["ab", None, "\u00e9\U0001F600", ""],  # a SharedSequence of str
    (b"x", None, b""),  # of bytes
]
try:  # scipy.sparse, when scipy is here: its compiled routines trust the index arrays
    import scipy.sparse as sp
    m = sp.random(6, 5, density=0.4, format="csr", random_state=0)
    objects += [m, sp.csc_array(m), sp.coo_matrix(m), sp.bsr_array(m.toarray()[:6, :4], blocksize=(2, 2))]
except ImportError:
    pass
try:  # pandas and Arrow data, when their codecs and packages are here
    import pandas as pd, pyarrow as pa
    df = pd.DataFrame({
        "i": np.arange(20), "f": np.linspace(0, 1, 20), "s": [f"s{i}" for i in range(20)],
        "c": pd.Categorical(["a", "b"] * 10), "n": pd.array([1, None] * 10, dtype="Int64"),
        "t": pd.date_range("2024-01-01", periods=20, tz="UTC"),
    })
    extra = [df, df["s"], pa.table({"x": [1, 2, 3], "y": ["a", None, "c"]})]
except ImportError:
    extra = []
layouts = []
for obj in objects + extra:
    try:
        p = plan(obj)
    except Exception as exc:
        if obj in extra:
            print("skipped (cannot encode yet):", type(obj).__name__, exc, file=sys.stderr)
            continue
        raise
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    decode_buffer(mem, trusted=False)  # the originals decode
    layouts.append(mem)

INTERESTING = [-1, 0, 1, 7, 63, 64, 2**31, 2**32 + 1, 2**63 - 1, 2**63, -(2**63), 10**30, 1.5, float("nan"),
               "", "x", "nd", "pickle", None, True, False, [], {}, [1] * 70, [2**40, 2**40], [-1],
               "<f8", "|O", "|V0", "<U0", "<M8[Y]", "<m8[as]", "|S99999999999", "<f8,<i4", {"k": "nd"},
               {"names": ["a"], "formats": ["<f8"], "offsets": [10**9]}]

def pick():
    return copy.deepcopy(rng.choice(INTERESTING))  # never alias one list into two places

def unpack(mem):
    return list(PREFIX.unpack_from(mem, 0))

def repack(mem, doc_bytes, fields):
    magic, version, flags, _, token, _, _ = fields
    off = (PREFIX.size + len(doc_bytes) + 63) // 64 * 64
    data = mem[fields[6]:fields[5]] if fields[6] <= fields[5] <= len(mem) else mem[:0]
    out = np.zeros(off + len(data), dtype=np.uint8)
    out[:PREFIX.size] = np.frombuffer(PREFIX.pack(magic, version, flags, len(doc_bytes), token, len(out), off), np.uint8)
    out[PREFIX.size:PREFIX.size + len(doc_bytes)] = np.frombuffer(doc_bytes, np.uint8)
    out[off:] = data
    return out

def nodes(x, path=()):
    yield path
    if isinstance(x, dict):
        for k, v in x.items():
            yield from nodes(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from nodes(v, path + (i,))

def json_mutation(mem):
    fields = unpack(mem)
    doc = json.loads(mem[PREFIX.size:PREFIX.size + fields[3]].tobytes())
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(nodes(doc)))
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        r = rng.random()
        if r < 0.7:
            parent[path[-1]] = pick()
        elif r < 0.85 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.append(pick())
        else:
            parent["junk"] = pick()
    return repack(mem, json.dumps(doc).encode(), fields)

def prefix_mutation(mem):
    fields = unpack(mem)
    i = rng.choice([1, 2, 3, 5, 6])
    fields[i] = rng.choice([0, 1, 47, 48, 64, 65, len(mem) - 1, len(mem), len(mem) + 64, 2**16 - 1, 2**32 - 1,
                            2**63, 2**64 - 1, fields[i] + 64, max(0, fields[i] - 64)])
    if i in (1, 2):
        fields[i] &= 0xFFFF
    if i == 3:
        fields[i] &= 0xFFFFFFFF
    fields[i] = min(fields[i], 2**64 - 1)
    out = mem.copy()
    out[:PREFIX.size] = np.frombuffer(PREFIX.pack(*fields), np.uint8)
    return out

def byte_flips(mem):
    out = mem.copy()
    end = min(len(out), unpack(mem)[6] or len(out))
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(end)
        out[i] = rng.randrange(256)
    return out

def truncation(mem):
    return mem[:rng.randrange(len(mem))].copy()

def splice(mem):
    other = rng.choice(layouts)
    cut = rng.randrange(min(len(mem), len(other)))
    return np.concatenate([mem[:cut], other[cut:]])

mutators = [json_mutation] * 5 + [prefix_mutation, byte_flips, byte_flips, truncation, splice]

def touch(obj):
    # Reading every byte of every view: an out-of-bounds view would fault here.
    pickle.dumps(obj, protocol=5)
    if hasattr(obj, "toarray"):  # a sparse matrix: scipy's compiled code reads through its indices
        obj.toarray()
        obj @ np.ones(obj.shape[-1])
        obj.tocsr().T.tocsr().sum()

raised = succeeded = attempts = 0
failures = []
while raised < wanted and attempts < 5 * wanted:
    attempts += 1
    base = rng.choice(layouts)
    mutator = rng.choice(mutators)
    mem = mutator(base)
    if len(mem) == len(base) and np.array_equal(mem, base):
        continue
    try:
        obj = decode_buffer(mem, trusted=False)
        touch(obj)
        succeeded += 1
    except NocopyError:
        raised += 1
    except BaseException as exc:
        failures.append(f"{mutator.__name__}: {type(exc).__name__}: {exc}"[:400])
        if len(failures) >= 10:
            break
print(json.dumps({"raised": raised, "succeeded": succeeded, "attempts": attempts, "failures": failures,
                  "layouts": len(layouts)}))
'''

URIS = r'''
import json, os, sys
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
import nocopy
from nocopy.errors import NocopyError

bases = []
for backend in ("memfd", "posix"):
    ref = nocopy.share(np.arange(3), backend=backend)
    bases.append(ref.uri)
    ref.close()  # gone: any URI at all must now fail, and fail cleanly
live = nocopy.share(np.arange(3))  # a live segment of this process, for mutations to aim near
bases.append(live.uri.replace(live.uri.split("token=")[1][:32], "0" * 32))

KEYS = ["pid", "fd", "sock", "token", "size", "nbytes", "kind", "w", "p"]
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "-1", "0", "1", str(os.getpid()), "3", "99999999999", "00", "0x10", "1e3",
                     "nocopy-fds-1-" + "a" * 32, "a" * 32, "../..", "%2e%2e", "ndarray"]),
)
query = st.lists(st.tuples(st.sampled_from(KEYS + ["x", "pid "]), values), max_size=12).map(
    lambda kv: "&".join(f"{k}={v}" for k, v in kv))
name = st.one_of(st.just(bases[0].split("/")[3].split("?")[0]), st.text(max_size=60),
                 st.from_regex(r"nocopy-[0-9]{1,12}-[0-9]{1,21}-[0-9a-f]{30,34}", fullmatch=True))

def edit(base, i, j, text):
    i, j = sorted((i % (len(base) + 1), j % (len(base) + 1)))
    return base[:i] + text + base[j:]

uris = st.one_of(
    st.text(max_size=300),
    st.builds(edit, st.sampled_from(bases), st.integers(0, 500), st.integers(0, 500), st.text(max_size=12)),
    st.builds(edit, st.sampled_from(bases), st.integers(0, 500), st.integers(0, 500),
              st.sampled_from(["/", "../", "\n", "\x00", "%00", "?", "&", "=", "#", " ", "\u0661", "//", "-1"])),
    st.builds(lambda store, n, q: f"nocopy://{store}/{n}?{q}", st.sampled_from(["memfd", "posix", "file", ""]),
              name, query),
    st.from_regex(r"nocopy://(memfd|posix)/[A-Za-z0-9-]{0,70}\?[A-Za-z0-9=&_.-]{0,300}", fullmatch=True),
)

seen = []
failures = []

@settings(max_examples=int(sys.argv[1]), database=None, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(uris)
def check(uri):
    seen.append(uri)
    try:
        nocopy.attach(uri)
    except NocopyError:
        return
    except BaseException as exc:
        failures.append(f"{uri!r}: {type(exc).__name__}: {exc}"[:300])
        raise
    failures.append(f"{uri!r}: attached")
    raise AssertionError(uri)

try:
    check()
except BaseException:
    pass
print(json.dumps({"examples": len(seen), "distinct": len(set(seen)), "failures": failures[:10]}))
'''


def _run(code: str, *args: str, timeout: float) -> dict[str, object]:
    import json

    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    # A segfault or SIGBUS is a negative return code; anything but 0 fails here.
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_ten_thousand_corrupted_headers_each_raise_a_nocopy_error() -> None:
    result = _run(HEADERS, "20251125", "10000", timeout=280)
    assert result["failures"] == [], result["failures"]
    assert result["raised"] >= 10_000, result
    assert result["layouts"] >= 10  # numpy layouts at least, pandas/Arrow when available


def test_a_thousand_malformed_uris_each_raise_a_nocopy_error() -> None:
    result = _run(URIS, "1500", timeout=280)
    assert result["failures"] == [], result["failures"]
    assert result["distinct"] >= 1000, result  # type: ignore[operator]


# -- structure-aware: decode cost bounded by the segment's size (issue 20) -----------------

BUDGET = r'''
import json, os, pickle, resource, sys, time
import numpy as np, pyarrow as pa
from hypothesis import HealthCheck, given, settings, seed, strategies as st
sys.path.insert(0, sys.argv[4])
from strategies import arrow_arrays, dataframes
from nocopy._codec import decode_buffer, plan
from nocopy._codec._layout import MAGIC, PREFIX, VERSION, align
from nocopy.errors import NocopyError
try:
    import polars as pl
except ImportError:
    pl = None

MiB = 1 << 20
K_MEM, C_CPU, FLOOR_S = 16, 2e-6, 2.0  # bytes per segment byte; CPU seconds per segment byte; floor
pa.table({"x": [1]}).to_pandas()  # warm the imports the decoders use before measuring
# Every decode below must fit: address space now + K_MEM x the largest segment + a floor.
with open("/proc/self/statm") as f:
    vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
MAX_SEGMENT = 8 * MiB
limit = vsz + K_MEM * MAX_SEGMENT + 1024 * MiB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (int(sys.argv[3]), int(sys.argv[3]) + 5))

BIG = [0, 1, 2, 7, 255, 2**16, 2**31 - 1, 2**31, 2**34, 2**40, 2**62, -1, -(2**31), (2**61 - 1) * 3]
ints = st.one_of(st.sampled_from(BIG), st.integers(-5, 300))
# Lengths a header states for free (metadata) that decoders might materialise.
lengths = st.one_of(st.sampled_from([0, 1, 100, 2**20, 2**31, 2**34, 2**40]), st.integers(0, 300))
# Multipliers of dict keys and labels: 2**61 - 1 makes every int hash alike.
colliding = st.sampled_from([1, 2**61 - 1, -(2**61 - 1)])
BUFSIZES = [0, 8, 64, 4096]

def rng_node(d, n=None):
    start = d(ints)
    n = d(lengths) if n is None else n
    return {"k": "pd.range", "start": start, "stop": start + n, "step": 1, "name": None}

def nd(d, sizes):
    """An array node over one of the buffers: mostly of the shape its buffer holds, else any."""
    b = d(st.integers(0, max(len(sizes) - 1, 0)))
    dt, itemsize = d(st.sampled_from([("|i1", 1), ("<i8", 8), ("<f8", 8), ("|u1", 1), ("<i4", 4)]))
    fits = sizes[b] // itemsize if sizes else 0
    return {"k": "nd", "b": b, "dt": dt, "sh": [d(st.one_of(st.just(fits), st.just(fits), ints))]}

def labels(d):
    return [i * d(colliding) for i in range(d(st.sampled_from([0, 3, 20000, 20000, d(st.integers(0, 3000))])))]

@st.composite
def trees(d, sizes, depth=0):
    kinds = ["py", "bytes", "nd", "range", "mi", "interval", "cat", "oidx", "dict", "ipc", "pl"] * 2
    if depth < 2:
        kinds += ["list", "df", "series"]
    k = d(st.sampled_from(kinds))
    sub = lambda: d(trees(sizes, depth + 1))
    if k == "py":
        return {"k": "py", "v": d(st.one_of(ints, st.none(), st.text(max_size=4)))}
    if k == "bytes":
        return {"k": "bytes", "b": d(st.integers(0, len(sizes)))}
    if k == "nd":
        return nd(d, sizes)
    if k == "range":
        return rng_node(d)
    if k == "mi":
        levels = [d(st.sampled_from([rng_node(d), {"k": "pd.oidx", "v": labels(d), "name": None}]))]
        return {"k": "pd.mi", "levels": levels, "codes": [nd(d, sizes)], "names": [{"k": "py", "v": None}]}
    if k == "interval":
        n = d(lengths)
        left = d(st.sampled_from([rng_node(d, n), {"k": "pd.idx", "v": nd(d, sizes), "name": None}]))
        return {"k": "pd.array", "v": {"k": "pd.interval", "left": left, "right": rng_node(d, n), "closed": "right"}}
    if k == "cat":
        cats = d(st.sampled_from([rng_node(d), {"k": "pd.oidx", "v": labels(d), "name": None}]))
        return {"k": "pd.cat", "codes": nd(d, sizes), "cats": cats, "ordered": False}
    if k == "oidx":
        return {"k": "pd.oidx", "v": labels(d), "name": None}
    if k == "dict":
        keys = labels(d)
        return {"k": "dict", "keys": [{"k": "py", "v": v} for v in keys], "vals": [{"k": "py", "v": 0}] * len(keys)}
    if k == "ipc":
        return {"k": "pa.ipc", "what": d(st.sampled_from(["table", "batch", "chunked", "array"])), "b": 0}
    if k == "pl":
        return {"k": "pl.df", "cols": [{"k": "pl.col", "t": {"k": "pa.ipc", "what": "table", "b": 0}}], "rows": d(ints)}
    if k == "list":
        return {"k": "list", "items": d(st.lists(trees(sizes, depth + 1), max_size=3))}
    if k == "df":
        return {"k": "pd.df", "index": rng_node(d), "columns": {"k": "pd.oidx", "v": ["a"], "name": None}, "cols": [sub()]}
    return {"k": "pd.series", "index": rng_node(d), "name": {"k": "py", "v": None}, "v": sub()}

def layout(tree, buffers):
    """(layout bytes): the tree over the given data buffers, laid out as the encoder would."""
    table, data, off = [], b"", 0
    for b in buffers:
        table.append([off, len(b)])
        data += b + bytes(align(len(b)) - len(b))
        off = len(data)
    body = json.dumps({"tree": tree, "buffers": table}).encode()
    start = align(PREFIX.size + len(body))
    mem = np.zeros(start + len(data), np.uint8)
    mem[:PREFIX.size] = np.frombuffer(PREFIX.pack(MAGIC, VERSION, 0, len(body), b"t" * 16, len(mem), start), np.uint8)
    mem[PREFIX.size:PREFIX.size + len(body)] = np.frombuffer(body, np.uint8)
    mem[start:] = np.frombuffer(data, np.uint8)
    return mem

def stream(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()

@st.composite
def arrow_tables(d):
    """Arrow layouts Polars and pandas write, and ones they never do (amplifiers)."""
    n = d(st.sampled_from([0, 3, 1000, 1 << 16, 1 << 18, 1 << 18]))
    kind = d(st.sampled_from(["dict_list", "dict_str", "views", "struct", "ree", "list", "plain"]))
    if kind == "dict_list":
        values = pa.array([list(range(d(st.sampled_from([1, 2048, 2048]))))], pa.list_(pa.int64()))
        arr = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), values)
    elif kind == "dict_str":
        arr = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.uint32)), pa.array(["x" * d(st.sampled_from([1, 5000]))], pa.string_view()))
    elif kind == "views":
        size = d(st.sampled_from([13, 1 << 12, 1 << 20, 1 << 20, 1 << 20]))
        views = np.zeros((n, 4), np.int32); views[:, 0] = size; views[:, 1] = int.from_bytes(b"xxxx", "little")
        arr = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views.tobytes()), pa.py_buffer(b"x" * size)])
    elif kind == "struct":
        width = d(st.integers(1, 50))
        arr = pa.StructArray.from_arrays([pa.array(np.arange(n))] * width, names=[f"f{i}" for i in range(width)])
    elif kind == "ree":
        arr = pa.RunEndEncodedArray.from_arrays(pa.array([max(n, 1) * 1000], pa.int32()), pa.array(["v"]))
    elif kind == "list":
        arr = pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1), pa.int64()), pa.array(np.arange(n) % 100, pa.int8()))
    else:
        arr = d(arrow_arrays())
    return pa.table([arr], names=["c"])

@st.composite
def segments(d):
    which = d(st.sampled_from(["tree", "arrow", "encoded", "tree", "arrow"]))
    if which == "tree":
        sizes = d(st.lists(st.sampled_from(BUFSIZES), min_size=1, max_size=3))
        return layout(d(trees(sizes)), [bytes(n) for n in sizes])
    if which == "arrow":
        data = stream(d(arrow_tables()))
        node = d(st.sampled_from([{"k": "pa.ipc", "what": "table", "b": 0},
                                  {"k": "pl.df", "cols": [{"k": "pl.col", "t": {"k": "pa.ipc", "what": "table", "b": 0}}], "rows": 0},
                                  {"k": "pd.array", "v": {"k": "pd.arrow", "v": {"k": "pa.ipc", "what": "chunked", "b": 0}}}]))
        return layout(node, [data])
    obj = d(st.one_of(dataframes(max_rows=6, max_cols=3), arrow_arrays()))
    if pl is not None and d(st.booleans()):
        try:
            obj = pl.from_pandas(obj) if not isinstance(obj, pa.Array) else pl.from_arrow(obj)
        except Exception:
            pass
    try:
        p = plan(obj)
    except NocopyError:  # e.g. a Polars dtype nocopy refuses
        return layout({"k": "py", "v": None}, [])
    mem = np.zeros(p.size, np.uint8)
    p.write_into(mem)
    hlen, start = PREFIX.unpack_from(mem, 0)[3], PREFIX.unpack_from(mem, 0)[6]
    doc = json.loads(mem[PREFIX.size:PREFIX.size + hlen].tobytes())
    spots = []
    def walk(x):
        if isinstance(x, dict):
            for key, v in x.items():
                if type(v) is int and key not in ("b",):
                    spots.append((x, key))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(doc["tree"])
    for _ in range(d(st.integers(0, 3))):
        if spots:
            parent, key = d(st.sampled_from(spots))
            parent[key] = d(ints)
    data = mem[start:].tobytes()
    bufs = [data[o:o + n] for o, n in doc["buffers"]]
    return layout(doc["tree"], bufs)

seen, failures, refused, worst = [0], [], [0], [0.0]

def d_tree(mem):
    hlen = PREFIX.unpack_from(mem, 0)[3]
    return json.loads(mem[PREFIX.size:PREFIX.size + hlen].tobytes())["tree"]

@seed(int(sys.argv[1]))
@settings(max_examples=int(sys.argv[2]), database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(segments())
def check(mem):
    seen[0] += 1
    if len(mem) > MAX_SEGMENT:
        return
    t = time.process_time()
    try:
        out = decode_buffer(mem, trusted=False)
    except NocopyError:
        refused[0] += 1
    except BaseException as exc:
        failures.append(f"{type(exc).__name__}: {exc}"[:300])
        return
    else:
        try:
            pickle.dumps(out, protocol=5)  # touch every byte of every view: out of bounds faults here
        except MemoryError:
            failures.append("pickling the result ran out of memory | " + json.dumps(d_tree(mem))[:300])
        except Exception:
            pass  # an object pickle cannot take (Arrow: a dictionary of lists): not the decoder's doing
    spent = time.process_time() - t
    worst[0] = max(worst[0], spent / (FLOOR_S + C_CPU * len(mem)))
    if spent > FLOOR_S + C_CPU * len(mem):
        failures.append(f"{len(mem)}-byte segment took {spent:.1f} s of CPU | " + json.dumps(d_tree(mem))[:300])

try:
    check()
except BaseException as exc:
    failures.append(f"hypothesis: {type(exc).__name__}: {exc}"[:300])
print(json.dumps({"examples": seen[0], "refused": refused[0], "failures": failures[:10], "worst": worst[0]}))
'''


def test_hostile_segments_decode_in_memory_and_time_linear_in_their_size() -> None:
    # Each worker decodes many hypothesis-made segments under RLIMIT_AS and RLIMIT_CPU:
    # every one returns or raises a NocopyError within K x its size (a bomb is a
    # MemoryError or a death by signal, a slow one fails the CPU bound).
    from pathlib import Path

    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", BUDGET, str(seed), "250", "150", here],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (20261207, 31)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=280)
            # A death by signal (SIGXCPU, SIGABRT, SIGSEGV) is a negative return code.
            assert proc.returncode == 0, (proc.returncode, err[-3000:])
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for result in results:
        assert result["failures"] == [], result
        assert result["examples"] >= 100 and result["refused"] >= 10, result
