"""Store details: the SCM_RIGHTS fallback, sealing, name format, file modes."""

from __future__ import annotations

import fcntl
import mmap
import os
import pickle
import stat
from typing import Any

import numpy as np
import pytest

import nocopy
from conftest import run_python
from nocopy._store import _names

NO_PROC = """
import os, sys, nocopy
real_open = os.open
def deny_proc(path, *a, **k):
    if str(path).startswith("/proc/") and "/fd/" in str(path) and not str(path).startswith("/proc/self"):
        raise PermissionError(13, "Permission denied (simulated ptrace refusal)", path)
    return real_open(path, *a, **k)
os.open = deny_proc
ref = nocopy.attach(sys.argv[1])
print(ref.get().sum())
"""


def test_scm_rights_fallback_when_proc_is_refused() -> None:
    with nocopy.share(np.arange(100), backend="memfd") as ref:
        out = run_python(NO_PROC, ref.uri)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "4950"


def test_scm_rights_fallback_refuses_a_wrong_token() -> None:
    with nocopy.share(np.arange(100), backend="memfd") as ref:
        forged = ref.uri.replace(f"token={ref._token.hex()}", "token=" + "0" * 32)
        out = run_python(NO_PROC, forged)
        assert out.returncode != 0
        assert "SegmentNotFoundError" in out.stderr or "SegmentAccessError" in out.stderr


def test_forged_token_is_refused_on_the_proc_path() -> None:
    with nocopy.share(np.arange(100)) as ref:
        forged = ref.uri.replace(f"token={ref._token.hex()}", "token=" + "ab" * 16)
        with pytest.raises(nocopy.errors.SegmentAccessError, match="token"):
            nocopy.attach(forged)


def test_memfd_is_sealed_against_writes_and_shrinking() -> None:
    with nocopy.share(np.arange(1000)) as ref:
        fd = os.open(f"/proc/self/fd/{ref._locator.fd}", os.O_RDWR)
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
            with pytest.raises(PermissionError):
                mmap.mmap(fd, ref.size, access=mmap.ACCESS_WRITE)
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)


def test_outputs_cannot_shrink_under_readers() -> None:
    out = nocopy.empty(1000, "f8")
    fd = os.open(f"/proc/self/fd/{out._locator.fd}", os.O_RDWR)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
        out.close()


def test_posix_segments_are_private_to_the_owner() -> None:
    with nocopy.share(np.arange(10), backend="posix") as ref:
        # In this user's own directory, closed to every other user.
        directory = f"/dev/shm/nocopy-{os.geteuid()}"
        for path in (directory, f"{directory}/{ref.name}"):
            st = os.stat(path, follow_symlinks=False)
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0
            assert st.st_uid == os.geteuid()
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_names_carry_pid_start_time_and_128_random_bits() -> None:
    names = {nocopy.share(np.arange(1)).name for _ in range(50)}
    assert len(names) == 50
    for name in names:
        parsed = _names.parse_name(name)
        assert parsed is not None and parsed.pid == os.getpid()
        assert parsed.start == _names.process_start_time(os.getpid())
        assert len(name.rsplit("-", 1)[1]) == 32
    assert _names.pid_alive(os.getpid(), _names.process_start_time(os.getpid()) or 0)
    assert not _names.pid_alive(os.getpid(), 1)  # same pid, other start: a recycled pid


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_a_bad_shm_dir_is_a_clear_error(where: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(str(tmp_path), "nope")
    if where == "a file":
        open(path, "w").close()
    monkeypatch.setenv("NOCOPY_SHM_DIR", path)
    with pytest.raises(nocopy.errors.SegmentNotFoundError, match=r"NOCOPY_SHM_DIR.*Fix"):
        nocopy.share(np.arange(3), backend="posix")
    assert os.listdir(str(tmp_path)) == ([] if where == "missing" else ["nope"])


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_running_out_of_file_descriptors_names_the_fix(backend: str) -> None:
    # Every live segment holds one descriptor in its owner: sharing thousands
    # of objects meets `ulimit -n`, and the error must say what to do.
    out = run_python(f"""
        import errno, resource, numpy as np, nocopy
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        refs = []
        try:
            for _ in range(200):
                refs.append(nocopy.share(np.arange(3), backend={backend!r}))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            print("NOTE", " ".join(getattr(exc, "__notes__", [])))
        for r in refs:
            r.close()
        print("OK", int(nocopy.share(np.arange(3), backend={backend!r}).get().sum()))
    """)
    assert out.returncode == 0, out.stderr
    assert "NOTE nocopy:" in out.stdout and "ulimit -n" in out.stdout and "close()" in out.stdout
    assert "OK 3" in out.stdout


@pytest.mark.parametrize("backend", ["memfd", "posix"])
def test_the_pool_surface_works_on_every_store(backend: str) -> None:
    """owner_fd / adopt / is_alive / map_now: what the pool may use of a handle, on each store."""
    from nocopy._shared import adopt, is_alive, map_now, owner_fd

    ref = nocopy.share(np.arange(1000), backend=backend)
    clone = pickle.loads(pickle.dumps(ref))
    assert is_alive(ref) and is_alive(clone)
    map_now(clone)
    adopted = adopt(os.dup(owner_fd(ref)), ref.uri)
    assert adopted.is_owner and owner_fd(adopted) != owner_fd(ref)
    ref.close()
    assert not is_alive(clone)  # its owner let go: gone, whatever other descriptors remain
    with pytest.raises(nocopy.errors.SegmentNotFoundError):
        owner_fd(ref)
    # The adopted descriptor keeps the data, as the mapping map_now made keeps the clone's.
    assert adopted.get(private=True).sum() == clone.get().sum() == 499500
    adopted.close()
    with pytest.raises(nocopy.errors.SegmentNotFoundError):
        owner_fd(adopted)


def _fake_thp(root: Any, shmem: str, per_size: dict[str, str], hugetlb_total: int = 0) -> tuple[Any, Any]:
    """A fake /sys/kernel/mm/transparent_hugepage tree and /proc/meminfo."""
    choices = ["always", "within_size", "advise", "never", "deny", "force"]
    thp = root / "thp"
    thp.mkdir()
    (thp / "shmem_enabled").write_text(" ".join(f"[{c}]" if c == shmem else c for c in choices) + "\n")
    for size, value in per_size.items():
        d = thp / f"hugepages-{size}"
        d.mkdir()
        opts = ["always", "inherit", "within_size", "advise", "never"]
        (d / "shmem_enabled").write_text(" ".join(f"[{c}]" if c == value else c for c in opts) + "\n")
    meminfo = root / "meminfo"
    meminfo.write_text(
        f"MemTotal: 100 kB\nHugePages_Total: {hugetlb_total}\nHugePages_Free: {hugetlb_total}\nHugepagesize: 2048 kB\n"
    )
    return thp, meminfo


@pytest.mark.parametrize(
    ("shmem", "per_size", "writes", "advise"),
    [
        ("never", {}, False, False),
        ("within_size", {}, True, False),
        ("advise", {}, False, True),
        ("deny", {"2048kB": "always"}, False, False),
        # Per-size knobs (Linux >= 6.11) decide; inherit follows the global setting.
        ("never", {"2048kB": "inherit", "64kB": "within_size"}, True, False),
        ("always", {"2048kB": "never"}, False, False),
        ("always", {"2048kB": "inherit"}, True, False),
    ],
)
def test_huge_page_probe_reads_the_kernel_settings(
    shmem: str, per_size: dict[str, str], writes: bool, advise: bool, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nocopy._store import _hugepages

    thp, meminfo = _fake_thp(tmp_path, shmem, per_size, hugetlb_total=3)
    monkeypatch.setattr(_hugepages, "_THP", thp)
    monkeypatch.setattr(_hugepages, "_MEMINFO", meminfo)
    rep = _hugepages.memfd_huge_pages()
    assert rep["shmem_enabled"] == shmem
    assert (rep["writes"], rep["mapped_advise"]) == (writes, advise)
    assert rep["hugetlb"] == {"pages_total": 3, "pages_free": 3, "page_size": 2 << 20}
    assert rep["per_size"] == {k: v for k, v in per_size.items() if v != "never"}
    # A tmpfs follows its own huge= option unless the host denies or forces.
    posix = _hugepages.tmpfs_huge_pages("rw,size=64m,huge=within_size")
    want = {"deny": False}.get(shmem, True)
    assert posix["writes"] is want
    assert _hugepages.tmpfs_huge_pages("rw,size=64m")["writes"] is False


def test_huge_page_probe_without_thp_says_unknown(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from nocopy._store import _hugepages

    monkeypatch.setattr(_hugepages, "_THP", tmp_path / "absent")
    monkeypatch.setattr(_hugepages, "_MEMINFO", tmp_path / "absent-meminfo")
    rep = _hugepages.memfd_huge_pages()
    assert rep["shmem_enabled"] is None and rep["writes"] is None and rep["mapped_advise"] is None
    assert rep["hugetlb"] == {"pages_total": None, "pages_free": None, "page_size": None}
