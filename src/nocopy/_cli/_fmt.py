"""Human-readable sizes, ages and tables for the command line."""

from __future__ import annotations

from .._store._capacity import _fmt

__all__ = ["age", "size", "table"]


def size(n: int | None) -> str:
    """``8.0 MiB``; ``-`` for unknown."""
    return "-" if n is None else _fmt(n)


def age(seconds: float) -> str:
    """``42s``, ``3m12s``, ``5h03m``, ``2d04h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """Columns padded to their widest cell; columns in *right* aligned right."""
    right = right or set()
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
