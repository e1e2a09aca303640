"""Threat models: a norm and a grid of budgets, validated once (torch-free).

The values arrive already typed (``kind=Fractions`` options: floats). Each budget
gets a label for reports, tables and gate metric names: the fraction of 255 it
is (``8/255``) when the value is one exactly, else its shortest decimal form
(``0.5``), so ``--eps 8/255`` and ``--eps 0.0313725490196`` both read "8/255".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from robaudit.errors import UsageError
from robaudit.kinds import AttackNorm

# One norm type for the whole package (kinds.AttackNorm); the name the engine has always used.
Norm = AttackNorm

# torchattacks spells its norm= arguments this way.
TORCHATTACKS_NORM: dict[AttackNorm, str] = {AttackNorm.LINF: "Linf", AttackNorm.L2: "L2"}

# The usual single budget per norm: 8/255 in ℓ∞ (Madry et al.; torchattacks' default),
# 0.5 in ℓ2 (the common CIFAR/MNIST ℓ2 benchmark radius).
DEFAULT_EPS: dict[AttackNorm, tuple[float, ...]] = {AttackNorm.LINF: (8 / 255,), AttackNorm.L2: (0.5,)}

# Pixel levels of 8-bit images: budgets are usually written as k/255.
LEVELS = 255


@dataclass(frozen=True)
class Eps:
    """One budget: ``value`` in pixel units and its ``label`` (see :func:`label_for`)."""

    label: str
    value: float


def label_for(value: float) -> str:
    """'8/255' when ``value`` is exactly k/255 and its decimal form is not exact, else '0.5'-style."""
    decimal = f"{value:.6g}"
    if float(decimal) == value:
        return decimal
    k = round(value * LEVELS)
    if k / LEVELS == value:
        return f"{k}/{LEVELS}"
    return decimal


def eps_grid(values: Sequence[float], norm: AttackNorm, *, allow_large: bool = False,
             flag: str = "--eps") -> tuple[Eps, ...]:
    """Sorted, distinct budgets with labels.

    Raises:
        UsageError: a negative or non-finite value, duplicates, or eps > 1 in ℓ∞ without
            ``allow_large`` (pixels live in [0,1], so such a ball is the whole box).
    """
    grid = []
    for value in values:
        label = label_for(value)
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{flag}: expected eps >= 0, got {label}")
        if norm is AttackNorm.LINF and value > 1 and not allow_large:
            raise UsageError(f"{flag}: linf eps {label} > 1 covers the whole [0,1] pixel box "
                             f"(did you mean {label}/255?); pass --allow-large-eps to run it anyway")
        grid.append(Eps(label, float(value)))
    if len({e.value for e in grid}) != len(grid):
        raise UsageError(f"{flag}: duplicate values in {', '.join(e.label for e in grid)}")
    return tuple(sorted(grid, key=lambda e: e.value))


def sigma_grid(values: Sequence[float], flag: str = "--sigmas") -> tuple[Eps, ...]:
    """Noise standard deviations: sorted, distinct, positive."""
    out = [Eps(label_for(v), float(v)) for v in values]
    bad = [e.label for e in out if not (math.isfinite(e.value) and e.value > 0)]
    if bad:
        raise UsageError(f"{flag}: expected positive standard deviations, got {', '.join(bad)}")
    if len({e.value for e in out}) != len(out):
        raise UsageError(f"{flag}: duplicate values in {', '.join(e.label for e in out)}")
    return tuple(sorted(out, key=lambda e: e.value))
