"""The trust boundary: bytes in shared memory are hostile, also after they were checked.

A reader copies the header out once per mapping and keeps the plan; the
permission to unpickle is the handle's (share(..., allow_pickle=True)), never
the segment's; writable outputs decode from a header their writers cannot
reach; memfd readers require the seals. (Findings n3, n4, n14, n15 of issue 20.)
"""

from __future__ import annotations

import builtins
import fcntl
import json
import mmap
import os
import pickle
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nocopy
from conftest import posix_dir, run_python
from nocopy._codec._layout import FLAG_PICKLE, MAGIC, PREFIX, VERSION, align
from nocopy._shared import adopt
from nocopy.errors import SegmentAccessError, SegmentCorruptError


class _Payload:
    """Unpickling it sets ``builtins._nocopy_pwned``: the proof that a segment's pickle ran."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, ("import builtins; builtins._nocopy_pwned = True",))


@pytest.fixture
def pwned() -> Iterator[None]:
    builtins.__dict__.pop("_nocopy_pwned", None)
    yield
    assert not builtins.__dict__.pop("_nocopy_pwned", False), "code from a segment ran"


def _pickle_layout(token: bytes, size: int) -> bytes:
    """A whole segment of *size* bytes holding one pickle node (the attacker's rewrite)."""
    evil = pickle.dumps(_Payload(), protocol=5)
    body = b'{"tree":{"k":"pickle","b":0},"buffers":[[0,%d]]}' % len(evil)
    off = align(PREFIX.size + len(body))
    raw = PREFIX.pack(MAGIC, VERSION, FLAG_PICKLE, len(body), token, size, off)
    raw += body.ljust(off - PREFIX.size, b"\0") + evil
    assert len(raw) <= size
    return raw.ljust(size, b"\0")


def _rewrite(ref: nocopy.Shared[Any], raw: bytes) -> None:
    """Overwrite the start of *ref*'s segment through a writable descriptor of it."""
    if ref.backend == "posix":
        path = posix_dir() / ref.name
        os.chmod(path, 0o600)  # a same-user process may: a 0400 file protects nothing
        with open(path, "r+b") as f:
            f.write(raw)
        return
    fd = os.open(f"/proc/self/fd/{ref._locator.fd}", os.O_RDWR)  # an output: not write-sealed
    try:
        with mmap.mmap(fd, ref.size) as m:
            m[: len(raw)] = raw
    finally:
        os.close(fd)


# -- n15: a writable output's header is out of its writers' reach ------------------------------


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_a_writer_of_an_output_cannot_change_what_its_owner_decodes(shm: Path, backend: str, pwned: None) -> None:
    out = nocopy.zeros((1 << 12,), "f8", backend=backend)
    try:
        out.get()[:3] = 1.5
        sent = pickle.dumps(out)  # a worker's handle carries the header too
        _rewrite(out, _pickle_layout(out._token, out.size))
        got = out.get()
        assert got.dtype == np.float64 and got.shape == (1 << 12,)
        assert pickle.loads(sent).get().shape == (1 << 12,)
    finally:
        out.close()


def test_a_uri_attach_of_an_output_refuses_a_header_that_is_not_an_array(shm: Path, pwned: None) -> None:
    out = nocopy.zeros((1 << 12,), "f8", backend="posix")
    try:
        _rewrite(out, _pickle_layout(out._token, out.size))
        # Another process (this one holds the owner's plan for the segment).
        r = run_python(
            """
            import sys, nocopy
            try:
                nocopy.attach(sys.argv[1], trusted=True).get()
            except Exception as e:
                print(type(e).__name__, e)
            """,
            out.uri,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("SegmentCorruptError") and "writable output" in r.stdout, r.stdout
    finally:
        out.close()


# -- n14: the permission to unpickle is the handle's, and the plan is decided once ------------


def test_a_rewritten_segment_under_a_trusted_handle_never_unpickles(shm: Path, pwned: None) -> None:
    ref = nocopy.share(np.arange(1 << 12, dtype=np.int64), backend="posix")  # no allow_pickle
    try:
        _rewrite(ref, _pickle_layout(ref._token, ref.size))
        worker = pickle.loads(pickle.dumps(ref))  # trusted, as the pools send it
        with pytest.raises(SegmentCorruptError, match="allow_pickle=True"):
            worker.get()
        # The owner decodes from the header it wrote, never from the file (whose data
        # bytes a same-user process can rewrite: a posix limit, not a decode decision).
        got = ref.get()
        assert got.dtype == np.int64 and got.shape == (1 << 12,)
    finally:
        ref.close()


def test_the_header_is_read_once_per_mapping(shm: Path) -> None:
    ref = nocopy.share(np.arange(512, dtype=np.int64), backend="posix")
    try:
        reader = pickle.loads(pickle.dumps(ref))
        assert reader.get().shape == (512,)
        path = shm / ref.name
        os.chmod(path, 0o600)
        with open(path, "r+b") as f:
            head = f.read(4096)
            at = head.index(b'"sh":[512]')
            f.seek(at)
            f.write(b'"sh":[256]')  # a valid header, a different object
        assert reader.get().shape == (512,)
        assert reader.get(private=True).shape == (512,)
    finally:
        ref.close()


def test_unpickling_needs_the_handles_permission_and_trust() -> None:
    ref = nocopy.share({"o": {1, 2}}, allow_pickle=True)
    try:
        assert "&p=1" in ref.uri
        assert pickle.loads(pickle.dumps(ref)).get()["o"] == {1, 2}
        assert nocopy.attach(ref.uri, trusted=True).get()["o"] == {1, 2}
        with pytest.raises(SegmentAccessError, match="trusted=True"):
            nocopy.attach(ref.uri).get()
        # trusted=True alone is not a permission: a URI that does not carry it never unpickles.
        with pytest.raises(SegmentCorruptError, match="allow_pickle=True"):
            nocopy.attach(ref.uri.replace("&p=1", "&p=0"), trusted=True).get()
    finally:
        ref.close()


# -- n3/n4: memfd readers require the seals ---------------------------------------------------


def _forged_memfd(seals: int, *, writable: bool = False) -> tuple[str, int]:
    """An attacker's memfd holding a valid layout of one array, with only *seals*; (uri, fd)."""
    data = np.arange(512, dtype=np.int64).tobytes()
    body = json.dumps(
        {"tree": {"k": "nd", "b": 0, "dt": "<i8", "sh": [512]}, "buffers": [[0, len(data)]]},
        separators=(",", ":"),
    ).encode()
    token = secrets.token_bytes(16)
    off = align(PREFIX.size + len(body))
    size = off + len(data)
    raw = PREFIX.pack(MAGIC, VERSION, 0, len(body), token, size, off) + body.ljust(off - PREFIX.size, b"\0") + data
    name = f"nocopy-{os.getpid()}-0-{secrets.token_hex(16)}"
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.fchmod(fd, 0o600)
    os.write(fd, raw)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    uri = (
        f"nocopy://memfd/{name}?pid={os.getpid()}&fd={fd}&sock=&token={token.hex()}&size={size}"
        f"&nbytes={len(data)}&kind=ndarray&w={int(writable)}&p=0"
    )
    return uri, fd


_RESIZE = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


@pytest.mark.parametrize(
    ("seals", "missing"),
    [
        (0, "shrinking"),
        (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW, "more seals"),
        (_RESIZE, "writes"),  # read-only data that its maker can still rewrite
    ],
)
def test_an_unsealed_memfd_is_refused_at_attach(seals: int, missing: str) -> None:
    uri, fd = _forged_memfd(seals)
    try:
        with pytest.raises(SegmentAccessError, match=f"not sealed against .*{missing}"):
            nocopy.attach(uri)
    finally:
        os.close(fd)


def test_a_sealed_memfd_is_accepted_and_an_output_needs_no_write_seal() -> None:
    uri, fd = _forged_memfd(_RESIZE | fcntl.F_SEAL_WRITE)
    try:
        assert nocopy.attach(uri).get()[-1] == 511
    finally:
        os.close(fd)
    uri, fd = _forged_memfd(_RESIZE, writable=True)
    try:
        assert nocopy.attach(uri).get()[-1] == 511
    finally:
        os.close(fd)


def test_a_descriptor_handed_over_unsealed_is_refused() -> None:
    # The pool's result hand-over adopts descriptors another process sent.
    uri, fd = _forged_memfd(fcntl.F_SEAL_SHRINK)
    with pytest.raises(SegmentAccessError, match="not sealed"):
        adopt(fd, uri)
    with pytest.raises(OSError):
        os.fstat(fd)  # adopt() owned it: closed on refusal


# -- n4: what the compressed-IPC refusal checks is what Arrow reads ----------------------------


def _compressed_stream(rows: int) -> tuple[bytes, int, bytes]:
    """An IPC stream of one zstd-compressed batch of *rows* int8 zeros, its compression field
    dropped from the batch's vtable; the stream offset of that vtable slot and its bytes
    (restoring them makes the batch compressed again)."""
    pa = pytest.importorskip("pyarrow")
    from nocopy._codec._arrow._ipc import _fb_field, _fb_int, _fb_table

    schema = pa.schema([("v", pa.int8())])
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, schema, options=options) as w:
        w.write_batch(pa.record_batch([pa.array(np.zeros(rows, np.int8))], schema=schema))
    stream = bytearray(sink.getvalue().to_pybytes())
    schema_len = 8 + int.from_bytes(stream[4:8], "little")
    meta = bytes(stream[schema_len + 8 :])
    header = _fb_table(meta, _fb_int(meta, 0, 4), 2)
    assert header is not None and _fb_field(meta, header, 3) is not None
    vtable = header - _fb_int(meta, header, 4, signed=True)
    slot = schema_len + 8 + vtable + 4 + 2 * 3  # RecordBatch field 3: compression
    original = bytes(stream[slot : slot + 2])
    stream[slot : slot + 2] = b"\0\0"
    return bytes(stream), slot, original


def test_a_writer_cannot_change_arrow_stream_metadata_between_check_and_read(
    shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nocopy._codec._arrow import _ipc as _arrow

    rows = 1 << 22
    stream, slot, original = _compressed_stream(rows)
    body = json.dumps(
        {"tree": {"k": "pa.ipc", "what": "table", "b": 0}, "buffers": [[0, len(stream)]]}, separators=(",", ":")
    ).encode()
    token = secrets.token_bytes(16)
    off = align(PREFIX.size + len(body))
    size = off + len(stream)
    name = f"nocopy-{os.getpid()}-0-{secrets.token_hex(16)}"
    path = shm / name
    path.write_bytes(PREFIX.pack(MAGIC, VERSION, 0, len(body), token, size, off) + body.ljust(off - PREFIX.size, b"\0") + stream)
    os.chmod(path, 0o400)
    uri = (
        f"nocopy://posix/{name}?pid=1&fd=-1&sock=&token={token.hex()}&size={size}"
        f"&nbytes={len(stream)}&kind=Table&w=0&p=0"
    )
    check = _arrow._ipc_refusal

    def racing_writer(raw: np.ndarray, *, freeze: bool) -> str:
        refusal = check(raw, freeze=freeze)
        # A same-user process restores the compression field right after the check.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, original, off + slot)
        finally:
            os.close(fd)
        return refusal

    monkeypatch.setattr(_arrow, "_ipc_refusal", racing_writer)
    try:
        table = nocopy.attach(uri).get()
    except SegmentCorruptError:
        return  # the frozen (uncompressed-looking) metadata does not describe valid data: refused
    assert table.num_rows != rows, "Arrow read a compressed batch the check never saw"


# -- n3 (posix): string offsets rewritten after the checks --------------------------------------


def test_string_offsets_rewritten_in_a_posix_file_after_get_never_move_the_reader(shm: Path) -> None:
    # A same-user process rewrites the offsets of a string column in the posix file after
    # the reader's get() checked them: the reader must keep reading through the offsets it
    # checked (its own copy-on-write pages), never through the rewritten ones (SIGSEGV).
    pytest.importorskip("pandas")
    out = run_python(
        """
        import os
        import numpy as np, pandas as pd, nocopy
        n = 20000
        ref = nocopy.share(pd.DataFrame({"s": ["abcd"] * n}), backend="posix")
        path = os.path.join(os.environ["NOCOPY_SHM_DIR"], "nocopy-%d" % os.geteuid(), ref.name)
        offsets = np.arange(0, 4 * (n + 1), 4, dtype=np.int64).tobytes()
        with open(path, "rb") as f:
            pos = f.read().find(offsets)
        assert pos > 0, "the offsets are not in the file"
        frame = nocopy.attach(ref.uri).get()           # checked here
        os.chmod(path, 0o600)
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, np.full(n, 1 << 40, dtype=np.int64).tobytes(), pos + 8)  # rewritten after
        os.close(fd)
        print(sum(len(s) for s in frame["s"].tolist()), flush=True)
        """
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == [str(4 * 20000)]
