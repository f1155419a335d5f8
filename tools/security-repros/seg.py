"""Helper: a same-user attacker writes an arbitrary nocopy segment and returns its URI.

posix: a file in $NOCOPY_SHM_DIR (default /dev/shm), unlinked at exit.
memfd: an *unsealed* memfd held by this process (the URI names /proc/<pid>/fd/<n>).
"""
import atexit, json, os, secrets
from nocopy._codec._layout import PREFIX, MAGIC, VERSION, align

_made = []


@atexit.register
def _cleanup():
    for p in _made:
        try:
            os.unlink(p)
        except OSError:
            pass


def layout(header, data=b""):
    body = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    tok = secrets.token_bytes(16)
    off = align(PREFIX.size + len(body))
    size = off + len(data)
    raw = PREFIX.pack(MAGIC, VERSION, 0, len(body), tok, size, off) + body.ljust(off - PREFIX.size, b"\0") + bytes(data)
    return raw, tok, size, off


def name():
    return f"nocopy-{os.getpid()}-0-{secrets.token_hex(16)}"


def segment(header, data=b"", *, mode=0o400, nbytes=None):
    """A posix segment; returns its URI."""
    raw, tok, size, off = layout(header, data)
    n = name()
    d = os.path.join(os.environ.get("NOCOPY_SHM_DIR", "/dev/shm"), f"nocopy-{os.geteuid()}")  # adapted: nocopy's private directory
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = f"{d}/{n}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    _made.append(path)
    with open(fd, "wb") as f:
        f.write(raw)
    os.chmod(path, mode)
    return (f"nocopy://posix/{n}?pid=1&fd=-1&sock=&token={tok.hex()}&size={size}"
            f"&nbytes={len(data) if nbytes is None else nbytes}&kind=x&w=0&p=0")


def posix_path(uri):
    n = uri.split("/")[3].split("?")[0]
    return os.path.join(os.environ.get("NOCOPY_SHM_DIR", "/dev/shm"), f"nocopy-{os.geteuid()}", n)  # adapted


def memfd_segment(header, data=b"", *, seals=0):
    """An unsealed (or partly sealed) memfd segment in THIS process; returns (uri, fd, offset of data)."""
    import fcntl
    raw, tok, size, off = layout(header, data)
    n = name()
    fd = os.memfd_create(n, os.MFD_ALLOW_SEALING)  # inheritable: whatever
    os.fchmod(fd, 0o600)
    os.write(fd, raw)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    uri = (f"nocopy://memfd/{n}?pid={os.getpid()}&fd={fd}&sock=&token={tok.hex()}&size={size}"
           f"&nbytes={len(data)}&kind=x&w=0&p=0")
    return uri, fd, off
