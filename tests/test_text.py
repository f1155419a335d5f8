"""nocopy._text: the one byte formatter and the one table renderer every layer uses."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nocopy._text
from nocopy._text import format_age, format_bytes, render_table


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1 << 20, "1 MiB"),
        (256 << 20, "256 MiB"),
        (4 << 30, "4 GiB"),
        (220_000_000, "209.8 MiB"),
        ((1 << 20) - 41, "1.0 MiB"),  # 1023.96 KiB rounds up into the next unit, not to "1024.0 KiB"
        (-5_000_000, "-4.8 MiB"),  # a difference of sizes keeps its sign
        (3 << 50, "3072 TiB"),  # TiB is the last unit
        (1.5 * (1 << 30), "1.5 GiB"),
    ],
)
def test_format_bytes(n: float | None, text: str) -> None:
    assert format_bytes(n) == text


def test_format_age() -> None:
    assert [format_age(s) for s in (0, 59.9, 60, 3599, 3600, 86399, 86400 * 3 + 3600)] == [
        "0s", "59s", "1m00s", "59m59s", "1h00m", "23h59m", "3d01h",
    ]


def test_render_table_pads_aligns_and_strips() -> None:
    out = render_table(["name", "size", "note"], [["a", "1 MiB", ""], ["bbbb", "12 KiB", "x"]], right={1})
    assert out.splitlines() == [
        "name    size  note",
        "a      1 MiB",
        "bbbb  12 KiB  x",
    ]


def test_render_table_rule_and_caps() -> None:
    out = render_table(["path", "detail"], [["a" * 10, "long detail"]], rule=True, max_width=[6])
    assert out.splitlines() == [
        "path    detail",
        "------  -----------",
        "aaaaa…  long detail",
    ]


def test_render_table_rows_must_match_the_header() -> None:
    with pytest.raises(ValueError):
        render_table(["a", "b"], [["only one"]])


def test_text_is_a_leaf_module() -> None:
    tree = ast.parse(Path(nocopy._text.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("nocopy") or m == ""], imported
    assert all(n.level == 0 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
