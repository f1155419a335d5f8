"""Small helpers: summary statistics and byte formatting."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["fmt_bytes", "fmt_size", "ratio", "summary"]


def summary(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min and max (None when there is nothing to summarise)."""
    if not values:
        return None
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} GB"  # pragma: no cover


def fmt_size(n: int) -> str:
    """Binary units for sizes chosen as powers of two: 1 MiB, 256 MiB, 4 GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"
