"""Security: private segments, unguessable names and tokens, uid and token checks, strict URIs,
bounds-checked headers."""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nocopy
from conftest import needs_root
from nocopy._codec import decode_buffer, plan
from nocopy._codec._layout import PREFIX
from nocopy._ipc import _fdserver
from nocopy.errors import InvalidURIError, NocopyError, SegmentAccessError, SegmentCorruptError


def _memfd_fd(ref: nocopy.Shared) -> int:  # type: ignore[type-arg]
    return ref._locator.fd


def _mapping_range(name: str) -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            if name in line:
                return line.split()[0]
    raise AssertionError(f"{name} is not mapped")


# -- modes, names, tokens ----------------------------------------------------------------


def test_segments_are_private_to_their_owner(shm: Path) -> None:
    refs = [
        nocopy.share(np.arange(10), backend="posix"),
        nocopy.empty(10, "f8", backend="posix"),
        nocopy.share(np.arange(10), backend="memfd"),
        nocopy.empty(10, "f8", backend="memfd"),
    ]
    try:
        for ref in refs:
            path = str(shm / ref.name) if ref.backend == "posix" else f"/proc/self/fd/{_memfd_fd(ref)}"
            st = os.stat(path)
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (ref, oct(st.st_mode))
            assert stat.S_IMODE(st.st_mode) & 0o600 in (0o400, 0o600)
            assert st.st_uid == os.geteuid()
    finally:
        for ref in refs:
            ref.close()


def test_names_and_tokens_carry_128_random_bits(shm: Path) -> None:
    n = 200
    names, tokens = [], []
    for i in range(n):
        with nocopy.share(np.arange(3), backend="posix" if i % 2 else "memfd") as ref:
            m = re.fullmatch(r"nocopy-[0-9]+-[0-9]+-([0-9a-f]{32})", ref.name)
            assert m is not None
            names.append(int(m.group(1), 16))
            tok = re.search(r"[?&]token=([0-9a-f]+)", ref.uri)
            assert tok is not None and len(tok.group(1)) == 32
            tokens.append(int(tok.group(1), 16))
    assert len(set(names)) == len(set(tokens)) == n
    assert not set(names) & set(tokens)
    # Every one of the 128 bits varies like a coin (a counter or a clock would not):
    # P(a fair bit is set in < 20% or > 80% of 200 draws) < 1e-17.
    for values in (names, tokens):
        for bit in range(128):
            ones = sum((v >> bit) & 1 for v in values)
            assert 0.2 * n < ones < 0.8 * n, (bit, ones)


# -- uid checks ------------------------------------------------------------------------------

AS_NOBODY = """
import hmac, json, os, sys  # hmac: imported lazily by the header check; /root is closed to uid 65534
import nocopy
from nocopy._ipc import _fdserver
from nocopy.errors import NocopyError
cases = json.loads(sys.argv[1])
# Imported as root; from here on this process is uid 65534 with no groups.
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
assert os.geteuid() == 65534 and os.getuid() == 65534
out = {}
for c in cases:
    r = {}
    try:
        nocopy.attach(c["uri"]).get()
        r["attach"] = "ATTACHED"
    except NocopyError as exc:
        r["attach"] = type(exc).__name__
    except BaseException as exc:
        r["attach"] = "other: " + repr(exc)
    for path in c["paths"]:
        try:
            with open(path, "rb") as f:
                r[path] = "READ " + repr(f.read(8))
        except PermissionError:
            r[path] = "EACCES"
        except OSError as exc:
            r[path] = "errno %d" % exc.errno
    if c["sock"]:
        try:
            _fdserver.request_fd(c["sock"], c["name"], c["token"])
            r["scm"] = "GOT AN FD"
        except NocopyError as exc:
            r["scm"] = type(exc).__name__
    r["listed"] = any(s.name == c["name"] for s in nocopy.segments())
    out[c["name"]] = r
print(json.dumps(out))
"""


@needs_root
@pytest.mark.root
def test_another_user_can_neither_attach_nor_read_a_segment(shm: Path) -> None:
    refs = [
        nocopy.share(np.arange(1000), backend="memfd"),
        nocopy.empty(1000, "u1", backend="memfd"),
        nocopy.share(np.arange(1000), backend="posix"),
        nocopy.empty(1000, "u1", backend="posix"),
    ]
    views = [ref.get() for ref in refs]  # mapped here too: /proc/<pid>/map_files is a path to try
    try:
        cases = []
        for ref in refs:
            token = re.search(r"token=([0-9a-f]{32})", ref.uri)
            assert token is not None
            if ref.backend == "memfd":
                paths = [
                    f"/proc/{os.getpid()}/fd/{_memfd_fd(ref)}",
                    f"/proc/{os.getpid()}/map_files/{_mapping_range(ref.name)}",
                ]
            else:
                paths = [str(shm / ref.name)]
            cases.append({"uri": ref.uri, "name": ref.name, "paths": paths,
                          "sock": ref._locator.sock, "token": token.group(1)})
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(AS_NOBODY), json.dumps(cases)],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout)
        for case in cases:
            r = results[case["name"]]
            assert r["attach"] == "SegmentAccessError", r
            for path in case["paths"]:
                assert r[path] == "EACCES", (path, r)
            if case["sock"]:
                # Even with the right token, root's fd server refuses uid 65534 (SO_PEERCRED).
                assert r["scm"] == "SegmentAccessError", r
            assert r["listed"] is False  # not this user's segment
        # ...while the owner's own user still can.
        for ref in refs:
            assert nocopy.attach(ref.uri).get().nbytes == 1000 * (8 if not ref.writable else 1)
    finally:
        del views
        for ref in refs:
            ref.close()


@needs_root
def test_root_refuses_a_segment_owned_by_another_user(shm: Path) -> None:
    # root can open any file, so only the uid check stands between it and another user's data.
    posix = nocopy.share(np.arange(10), backend="posix")
    memfd = nocopy.share(np.arange(10), backend="memfd")
    try:
        os.chown(shm / posix.name, 65534, 65534)
        assert posix._owner is not None and memfd._owner is not None
        os.fchown(memfd._owner.fd, 65534, 65534)
        for ref in (posix, memfd):
            with pytest.raises(SegmentAccessError, match="belongs to uid 65534"):
                nocopy.attach(ref.uri)
    finally:
        posix.close()
        memfd.close()


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_a_handle_whose_token_does_not_match_is_refused(shm: Path, backend: str) -> None:
    with nocopy.share(np.arange(100), backend=backend) as ref:
        forged = re.sub(r"token=[0-9a-f]{32}", "token=" + secrets.token_hex(16), ref.uri)
        with pytest.raises(SegmentAccessError, match="token does not match"):
            nocopy.attach(forged)
        stale = pickle.loads(pickle.dumps(ref))
        stale._token = secrets.token_bytes(16)
        with pytest.raises(SegmentAccessError):
            stale.get()
        if backend == "memfd":
            # The SCM_RIGHTS fallback checks the token before handing out a descriptor.
            with pytest.raises(NocopyError):
                _fdserver.request_fd(ref._locator.sock, ref.name, secrets.token_hex(16))
        assert nocopy.attach(ref.uri).get().tolist() == list(range(100))


# -- strict URIs -------------------------------------------------------------------------


def _good_uri() -> str:
    ref = nocopy.share(np.arange(3))
    uri = ref.uri
    ref.close()
    return uri


BAD_URIS = [
    lambda u: u + "\n",
    lambda u: u.replace("nocopy://memfd/", "nocopy://memfd/../../../etc/"),
    lambda u: u.replace("nocopy://memfd/", "nocopy://memfd//dev/shm/"),
    lambda u: u.replace("nocopy://memfd/", "nocopy://file/"),
    lambda u: u.replace("nocopy://", "NOCOPY://"),
    lambda u: u.replace("nocopy://", "nocopy:/"),
    lambda u: u.replace("?", "/x?"),
    lambda u: u.replace("?", "%2F..?"),
    lambda u: u.replace("pid=", "pid=%31"),
    lambda u: u.replace("pid=", "pid=-"),
    lambda u: u.replace("pid=", "pid=\u0661"),  # an Arabic-Indic digit: not ASCII
    lambda u: u + "&pid=1",  # a duplicate field
    lambda u: u + "&extra=1",
    lambda u: re.sub(r"&kind=[^&]*", "", u),  # a missing field
    lambda u: re.sub(r"token=([0-9a-f]{32})", lambda m: "token=" + m.group(1).upper(), u),
    lambda u: re.sub(r"token=([0-9a-f]{32})", lambda m: "token=" + m.group(1)[:-2], u),
    lambda u: re.sub(r"size=[0-9]+", "size=47", u),
    lambda u: re.sub(r"size=[0-9]+", "size=99999999999999999999", u),
    lambda u: re.sub(r"fd=[0-9]+", "fd=-1", u),
    lambda u: re.sub(r"kind=[^&]*", "kind=" + "K" * 65, u),
    lambda u: u.split("?")[0],
    lambda u: u.replace("nocopy-", "nocopy-x", 1),
    lambda u: "",
    lambda u: " " + u,
    lambda u: u + "#frag",
    lambda u: u.replace("&", ";"),
]


@pytest.mark.parametrize("mutate", range(len(BAD_URIS)))
def test_malformed_uris_are_refused_before_touching_anything(mutate: int) -> None:
    bad = BAD_URIS[mutate](_good_uri())
    with pytest.raises(InvalidURIError, match="malformed nocopy URI"):
        nocopy.attach(bad)


@pytest.mark.parametrize("bad", [None, b"nocopy://memfd/x", 42, ["nocopy://"]])
def test_non_string_uris_are_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="a nocopy URI is a str"):
        nocopy.attach(bad)  # type: ignore[arg-type]


# -- headers are bounds-checked ----------------------------------------------------------


def _layout(obj: object) -> np.ndarray:
    p = plan(obj)
    mem = np.zeros(p.size, dtype=np.uint8)
    p.write_into(mem)
    return mem


def _repack(mem: np.ndarray, edit: object, *, fix_offsets: bool = True) -> np.ndarray:
    """Rewrite the JSON header with *edit* applied, keeping the prefix consistent."""
    magic, version, flags, hlen, token, payload, data_offset = PREFIX.unpack_from(mem, 0)
    doc = json.loads(mem[PREFIX.size : PREFIX.size + hlen].tobytes())
    edit(doc)  # type: ignore[operator]
    body = json.dumps(doc).encode()
    new_off = (PREFIX.size + len(body) + 63) // 64 * 64
    data = mem[data_offset:payload]
    out = np.zeros(new_off + len(data), dtype=np.uint8)
    out[: PREFIX.size] = np.frombuffer(
        PREFIX.pack(magic, version, flags, len(body), token, len(out), new_off if fix_offsets else data_offset),
        dtype=np.uint8,
    )
    out[PREFIX.size : PREFIX.size + len(body)] = np.frombuffer(body, dtype=np.uint8)
    out[new_off:] = data
    return out


def _raw(mem: np.ndarray, body: bytes) -> np.ndarray:
    """Replace the JSON header with raw *body* bytes, prefix kept consistent."""
    magic, version, flags, _hlen, token, _payload, _off = PREFIX.unpack_from(mem, 0)
    off = (PREFIX.size + len(body) + 63) // 64 * 64
    out = np.zeros(off + 8192, dtype=np.uint8)
    out[: PREFIX.size] = np.frombuffer(PREFIX.pack(magic, version, flags, len(body), token, len(out), off), dtype=np.uint8)
    out[PREFIX.size : PREFIX.size + len(body)] = np.frombuffer(body, dtype=np.uint8)
    return out


def _prefix(mem: np.ndarray, **fields: int) -> np.ndarray:
    out = mem.copy()
    names = ["magic", "version", "flags", "hlen", "token", "payload", "data_offset"]
    values = dict(zip(names, PREFIX.unpack_from(out, 0), strict=True))
    values.update(fields)
    out[: PREFIX.size] = np.frombuffer(PREFIX.pack(*values.values()), dtype=np.uint8)
    return out


def _set_buffer(i: int, off: int, n: int) -> object:
    def edit(doc: dict[str, object]) -> None:
        doc["buffers"][i] = [off, n]  # type: ignore[index]
    return edit


def _set_tree(key: str, value: object) -> object:
    def edit(doc: dict[str, object]) -> None:
        doc["tree"][key] = value  # type: ignore[index]
    return edit


HOSTILE = {
    "payload larger than the buffer": lambda m: _prefix(m, payload=len(m) + 64),
    "header longer than the segment": lambda m: _prefix(m, hlen=len(m)),
    "header length of 4 GiB": lambda m: _prefix(m, hlen=2**32 - 1),
    "data offset past the end": lambda m: _prefix(m, data_offset=len(m) + 64),
    "misaligned data offset": lambda m: _prefix(m, data_offset=PREFIX.size + 1),
    "bad magic": lambda m: _prefix(m, magic=b"NOCOPY\x00\x02"),
    "future version": lambda m: _prefix(m, version=99),
    "truncated": lambda m: m[: len(m) // 2],
    "shorter than the prefix": lambda m: m[:20],
    "buffer past the end": lambda m: _repack(m, _set_buffer(0, 0, 10**9)),
    "negative buffer offset": lambda m: _repack(m, _set_buffer(0, -64, 8)),
    "misaligned buffer": lambda m: _repack(m, _set_buffer(0, 1, 8)),
    "buffer length as a float": lambda m: _repack(m, _set_buffer(0, 0, 8.0)),  # type: ignore[arg-type]
    "shape larger than the buffer": lambda m: _repack(m, _set_tree("sh", [10**6])),
    "negative shape": lambda m: _repack(m, _set_tree("sh", [-1])),
    "shape overflowing int64": lambda m: _repack(m, _set_tree("sh", [2**40, 2**40])),
    "1000 dimensions": lambda m: _repack(m, _set_tree("sh", [1] * 1000)),
    "buffer index out of range": lambda m: _repack(m, _set_tree("b", 7)),
    "object dtype": lambda m: _repack(m, _set_tree("dt", "|O")),
    "unknown node kind": lambda m: _repack(m, _set_tree("k", "os.system")),
    "deeply nested tree": lambda m: _raw(m, b'{"tree":' + b"[" * 100_000 + b"]" * 100_000 + b',"buffers":[]}'),
    "header not JSON": lambda m: _raw(m, b'{"tree": {"k": "nd"}, "buffers": [[0, 8]'),
    "header JSON of the wrong shape": lambda m: _raw(m, b'[1, 2, 3]'),
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_headers_are_refused_before_a_view_is_built(what: str) -> None:
    mem = HOSTILE[what](_layout(np.arange(1000, dtype="i8")))
    with pytest.raises(SegmentCorruptError):
        decode_buffer(mem, trusted=False)


def test_a_corrupted_header_in_a_live_segment_is_refused(shm: Path) -> None:
    out = nocopy.empty(1000, "u1", backend="posix")
    try:
        path = shm / out.name
        with open(path, "r+b") as f:
            head = f.read(4096)
            at = head.index(b'"sh":[1000]')
            f.seek(at)
            f.write(b'"sh":[9999]')  # more elements than the buffer holds
        with pytest.raises(SegmentCorruptError, match="needs 9999 bytes"):
            nocopy.attach(out.uri).get()
    finally:
        out.close()


def test_a_handle_attached_untrusted_stays_untrusted_when_pickled() -> None:
    # Passing an attach()ed handle to a worker must not turn on unpickling
    # (nor skip the full validation of untrusted Arrow data) over there.
    ref = nocopy.share({"a": np.arange(3), "o": {1, 2}}, allow_pickle=True)
    try:
        untrusted = pickle.loads(pickle.dumps(nocopy.attach(ref.uri)))
        with pytest.raises(SegmentAccessError, match="trusted=True"):
            untrusted.get()
        trusted = pickle.loads(pickle.dumps(nocopy.attach(ref.uri, trusted=True)))
        assert trusted.get()["o"] == {1, 2}
        assert pickle.loads(pickle.dumps(ref)).get()["o"] == {1, 2}
    finally:
        ref.close()
