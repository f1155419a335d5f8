"""Summary statistics of repeated measurements."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["ratio", "summary"]


def summary(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min and max (None when there is nothing to summarise)."""
    if not values:
        return None
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is unknown or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b
