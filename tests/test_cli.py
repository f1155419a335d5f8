"""The operator's command line, through the real console script: ls, gc, doctor, bench, --version."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nocopy
from conftest import Procs, needs_root
from nocopy._cli import main


def _script() -> str:
    found = Path(sys.executable).with_name("nocopy")
    if found.exists():
        return str(found)
    which = shutil.which("nocopy")
    assert which is not None, "the nocopy console script is not installed"
    return which


def nocopy_cmd(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_script(), *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else dict(os.environ))


def _orphan(procs: Procs) -> tuple[str, int]:
    """A posix segment whose owner was SIGKILLed: (name, size)."""
    p = procs.python(
        "import sys, numpy as np, nocopy\n"
        "ref = nocopy.share(np.ones(100_000), backend='posix')\n"
        "print(ref.name, ref.size, flush=True)\n"
        "sys.stdin.read()\n",
        stdin=subprocess.PIPE,
    )
    assert p.stdout is not None
    name, size = p.stdout.readline().decode().split()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    return name, int(size)


def test_version() -> None:
    out = nocopy_cmd("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"nocopy {nocopy.__version__}"
    mod = subprocess.run([sys.executable, "-m", "nocopy", "--version"], capture_output=True, text=True, timeout=60)
    assert mod.returncode == 0 and mod.stdout.strip() == f"nocopy {nocopy.__version__}"


def test_no_command_and_unknown_command_are_usage_errors() -> None:
    assert nocopy_cmd().returncode == 2
    bad = nocopy_cmd("frobnicate")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_ls_shows_live_segments_in_table_and_json(shm: Path, procs: Procs) -> None:
    memfd = nocopy.share(np.arange(250_000), backend="memfd")
    posix = nocopy.share(np.zeros(1000), backend="posix")
    orphan, orphan_size = _orphan(procs)
    try:
        out = nocopy_cmd("ls", "--json")
        assert out.returncode == 0, out.stderr
        rows = {r["name"]: r for r in json.loads(out.stdout)}
        for ref in (memfd, posix):
            r = rows[ref.name]
            assert (r["backend"], r["size"], r["owner_pid"], r["owner_alive"]) == (
                ref.backend, ref.size, os.getpid(), True)
            assert os.getpid() in r["holders"] and r["age"] >= 0
        assert rows[orphan]["owner_alive"] is False and rows[orphan]["size"] == orphan_size
        assert rows[posix.name]["path"] == str(shm / posix.name)

        text = nocopy_cmd("ls")
        assert text.returncode == 0
        lines = {ln.split()[-1]: ln for ln in text.stdout.splitlines() if ln.split()[-1:] and ln.split()[-1].startswith("nocopy-")}
        assert "alive" in lines[memfd.name].split() and "memfd" in lines[memfd.name].split()
        assert "dead" in lines[orphan].split()
        assert "`nocopy gc` reclaims them" in text.stdout
    finally:
        memfd.close()
        posix.close()
    after = {r["name"] for r in json.loads(nocopy_cmd("ls", "--json").stdout)}
    assert memfd.name not in after and posix.name not in after


def test_gc_dry_run_then_gc(shm: Path, procs: Procs) -> None:
    live = nocopy.share(np.zeros(1000), backend="posix")
    orphan, size = _orphan(procs)
    try:
        dry = nocopy_cmd("gc", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would reclaim {shm / orphan}" in dry.stdout
        assert live.name not in dry.stdout
        assert (shm / orphan).exists()  # a dry run removes nothing

        dry_json = json.loads(nocopy_cmd("gc", "--dry-run", "--json").stdout)
        assert dry_json["dry_run"] is True and dry_json["count"] == 1 and dry_json["bytes"] == size

        real = nocopy_cmd("gc")
        assert real.returncode == 0 and f"reclaimed {shm / orphan}" in real.stdout
        assert f"({size} bytes)" in real.stdout
        assert not (shm / orphan).exists() and (shm / live.name).exists()
        again = nocopy_cmd("gc", "--dry-run")
        assert "nothing to reclaim" in again.stdout
    finally:
        live.close()


def test_doctor_reports_capacity_limits_start_methods_and_versions() -> None:
    out = nocopy_cmd("doctor", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout)
    st = os.statvfs(r["shm"]["dir"])
    assert r["shm"]["size"] == st.f_blocks * st.f_frsize
    assert r["shm"]["fstype"] == "tmpfs"
    assert r["backend"]["default"] == nocopy._store.default_backend()
    assert r["memfd"]["available"] is True and r["memfd"]["scm_rights"] is True
    assert r["memfd"]["proc_fd"] in (True, False)
    assert set(r["start_methods"]["available"]) >= {"fork", "spawn"}
    assert r["start_methods"]["default"] == "forkserver"  # nocopy's pools' default, on every Python
    assert r["versions"]["numpy"] == np.__version__
    for pkg in ("pandas", "pyarrow", "ray"):
        assert pkg in r["versions"]
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert r["memory"]["mem_total"] == total
    if Path("/sys/fs/cgroup/memory").is_dir():  # cgroup v1 (this machine): our own cgroup is listed
        v1 = [c for c in r["memory"]["cgroups"] if c["version"] == 1]
        assert v1 and v1[0]["usage"] > 0
    assert r["ok"] is True
    # Huge pages: what this kernel says, read back (the verdicts: test_store's fake trees).
    thp = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
    huge = r["memfd"]["huge_pages"]
    if thp.exists():
        assert f"[{huge['shmem_enabled']}]" in thp.read_text()
        assert huge["writes"] in (True, False)
    assert huge["hugetlb"]["pages_total"] is not None
    assert r["shm"]["huge_pages"]["huge"] in ("never", "always", "within_size", "advise")

    text = nocopy_cmd("doctor")
    assert text.returncode == 0
    for key in ("backend", "memfd", "huge pages", "shm dir", "memory", "start methods", "versions"):
        assert any(line.startswith(key) for line in text.stdout.splitlines()), key
    assert "fork" in text.stdout and "numpy " + np.__version__ in text.stdout


def test_doctor_warns_about_orphans(shm: Path, procs: Procs) -> None:
    _orphan(procs)
    r = json.loads(nocopy_cmd("doctor", "--json").stdout)
    assert r["segments"]["posix_orphans"] == 1
    assert any("nocopy gc" in w["fix"] for w in r["warnings"])


def test_doctor_flags_a_bad_backend_setting() -> None:
    out = nocopy_cmd("doctor", env=dict(os.environ, NOCOPY_BACKEND="carrier-pigeon"))
    assert out.returncode == 1
    assert "[error]" in out.stdout and "carrier-pigeon" in out.stdout


@needs_root
@pytest.mark.root
def test_doctor_in_a_container_sized_dev_shm_says_how_to_fix_it() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "NOCOPY_SHM_DIR"}
    env["NOCOPY_BACKEND"] = "posix"
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'set -e; mount -t tmpfs -o size=64m tmpfs /dev/shm; exec "$0" doctor --json', _script()],
        capture_output=True, text=True, timeout=120, env=env,
    )
    if proc.returncode != 0 and ("unshare failed" in proc.stderr or "mount:" in proc.stderr):
        pytest.skip(f"cannot mount a private /dev/shm here: {proc.stderr.strip()}")
    r = json.loads(proc.stdout)
    assert r["shm"]["size"] == 64 << 20
    warn = [w for w in r["warnings"] if "64 MiB" in w["message"]]
    assert warn and warn[0]["level"] == "warning"
    assert "--shm-size" in warn[0]["fix"] and "emptyDir: {medium: Memory" in warn[0]["fix"]


# -- bench is another module's; the CLI only hands it the rest of argv ------------------------


def test_bench_gets_the_remaining_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("nocopy._bench.cli")
    fake.main = lambda argv: seen.append(list(argv)) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nocopy._bench.cli", fake)
    assert main(["bench", "--rows", "1000", "--help"]) == 7
    assert seen == [["--rows", "1000", "--help"]]


def test_bench_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "nocopy._bench.cli", None)
    assert main(["bench"]) == 2
    assert "nocopy bench is not available" in capsys.readouterr().err


def test_bench_with_a_missing_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(name: str) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr("nocopy._cli.importlib.import_module", boom)
    assert main(["bench"]) == 2
    assert "pip install 'nocopy[bench]'" in capsys.readouterr().err


# --- help and conventions: what a newcomer reads first ------------------------------------------


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command line, parser) of `nocopy`, `nocopy bench` and every subcommand of each."""
    import argparse

    from nocopy._bench import cli as bench_cli
    from nocopy._cli import _parser as nocopy_parser

    out: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    if f"{name} {sub_name}" == "nocopy bench":
                        continue  # a placeholder: `nocopy bench` has a parser of its own
                    walk(f"{name} {sub_name}", sub)

    walk("nocopy", nocopy_parser())
    walk("nocopy bench", bench_cli._parser())
    return out


def test_every_command_has_a_description_and_every_option_a_help_string() -> None:
    import argparse

    missing = []
    for name, parser in _all_parsers():
        if not (parser.description or "").strip():
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                subs = {a.dest: a.help for a in action._choices_actions}
                missing += [f"{name} {s}: no help line" for s, h in subs.items() if not (h or "").strip()]
            elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_json_means_print_json_everywhere_and_json_out_writes_a_file() -> None:
    """One convention: `--json` is a flag that prints JSON (ls, gc, doctor, every bench command);
    a file is `--json-out PATH`."""
    seen = 0
    for name, parser in _all_parsers():
        options = {o: a for a in parser._actions for o in a.option_strings}
        if "--json" in options:
            seen += 1
            assert options["--json"].nargs == 0, f"{name} --json takes a value"
        if "--json-out" in options:
            assert "--json" in options, name
            assert options["--json-out"].metavar == "PATH", name
    assert seen >= 9  # ls, gc, doctor and the six bench commands


def test_bench_json_prints_only_json_and_json_out_writes_it(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from nocopy._bench import cli as bench_cli

    result = {"config": {"rows": 3}, "value": float("nan")}
    monkeypatch.setattr(bench_cli, "_compile_nocopy", lambda: None)
    args = bench_cli._parser().parse_args(["pandas", "--json", "--json-out", str(tmp_path / "r.json")])
    code = bench_cli._run_and_report("pandas", args, lambda: result, lambda r: "TABLE")
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {"config": {"rows": 3}, "value": None}  # stdout: JSON only
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(out)
    assert "wrote" in err
    args = bench_cli._parser().parse_args(["pandas"])
    bench_cli._run_and_report("pandas", args, lambda: result, lambda r: "TABLE")
    assert capsys.readouterr().out == "TABLE\n"


def test_bench_seed_quick_leaves_ray_out_unless_asked() -> None:
    from nocopy._bench import cli as bench_cli

    def config(*argv: str) -> Any:
        return bench_cli.seed_config(bench_cli._parser().parse_args(["seed", *argv]))

    quick = config("--quick")
    assert quick.methods is not None and "ray" not in quick.methods and "nocopy-executor" in quick.methods
    assert (quick.rows, quick.repeat, quick.cold_repeat) == (1_000_000, 1, 1)
    # The start-up table (one fresh interpreter per start method) only when asked.
    assert quick.startup_repeat == 0
    assert config("--quick", "--startup-repeat", "1").startup_repeat == 1
    assert "ray" in config("--quick", "--methods", "nocopy-map,ray").methods
    assert config("--quick", "--repeat", "3").repeat == 3
    full = config()
    assert full.methods is None and (full.rows, full.repeat, full.cold_repeat) == (10_000_000, 3, 2)
    assert full.startup_repeat == 2


@pytest.mark.parametrize("writes, collapse, expect", [
    (True, {}, "on: "),
    (False, {"available": True}, "on: "),
    (False, {"available": False}, "echo within_size > /sys/kernel/mm/transparent_hugepage/shmem_enabled"),
    (None, {}, "no transparent huge pages in this kernel"),
])
def test_doctor_says_what_huge_pages_mean_without_kernel_jargon(writes: bool | None, collapse: dict[str, Any],
                                                                expect: str) -> None:
    from nocopy._cli._doctor import huge_pages_lines

    lines = huge_pages_lines({"writes": writes, "collapse": collapse, "shmem_enabled": "never"},
                             {"writes": False, "huge": "never"})
    text = "\n".join(lines)
    assert expect in text
    for jargon in ("MADV", "hugetlb", "kB inherit", "shmem_enabled never"):
        assert jargon not in text
    # Fits a terminal after the 15-column key (a command to copy is what it is).
    assert all(len(line) <= 78 - 15 for line in lines if not line.startswith("echo "))
