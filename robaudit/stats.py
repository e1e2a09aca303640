"""Summary statistics of per-sample values: the one quantile rule of the package (torch-free).

Quantiles interpolate linearly between order statistics (numpy's default), so
tests can check them against ``numpy.quantile``.
"""

from __future__ import annotations

import math
from typing import Iterable


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite values, in order (None, NaN and ±Inf dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def quantile(values: Iterable[float | None], q: float) -> float | None:
    """The q-quantile (0 ≤ q ≤ 1) of the finite values; None when there are none."""
    xs = sorted(finite(values))
    if not xs:
        return None
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Iterable[float | None]) -> float | None:
    return quantile(values, 0.5)


def summary(values: Iterable[float | None]) -> dict[str, float | None]:
    """mean, median, p95 and max of the finite values (each None when there are none)."""
    xs = finite(values)
    if not xs:
        return {"mean": None, "median": None, "p95": None, "max": None}
    return {"mean": math.fsum(xs) / len(xs), "median": quantile(xs, 0.5), "p95": quantile(xs, 0.95),
            "max": max(xs)}
