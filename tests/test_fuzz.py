"""Fuzzing: corrupted headers and malformed URIs give a NocopyError, never a crash or a hang.

Each fuzz loop runs in a child interpreter, so a segfault or SIGBUS shows up
as the child's exit status instead of killing the test run, and a hang as a
timeout.
"""

from __future__ import annotations

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
]
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
