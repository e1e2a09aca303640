"""Threat models: a norm and a grid of epsilons, parsed once from user text.

Epsilons keep the user's spelling (``"8/255"``) as their label next to the
float, so reports, tables and gate metric names read as the user typed them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from robaudit.errors import UsageError
from robaudit.settings import eval_fraction


class Norm(str, Enum):
    """The ℓp norm of a threat model (pixel space [0,1])."""

    LINF = "linf"
    L2 = "l2"

    @property
    def torchattacks(self) -> str:
        """The spelling torchattacks' ``norm=`` arguments expect."""
        return {"linf": "Linf", "l2": "L2"}[self.value]

    @property
    def symbol(self) -> str:
        return {"linf": "ℓ∞", "l2": "ℓ2"}[self.value]

    @classmethod
    def parse(cls, text: str, flag: str = "--norm") -> "Norm":
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise UsageError(f"{flag}: expected linf or l2, got {text!r}") from None


# The usual single budget per norm: 8/255 in ℓ∞ (Madry et al.; torchattacks' default),
# 0.5 in ℓ2 (the common CIFAR/MNIST ℓ2 benchmark radius).
DEFAULT_EPS: dict[Norm, str] = {Norm.LINF: "8/255", Norm.L2: "0.5"}


@dataclass(frozen=True)
class Eps:
    """One budget: ``value`` in pixel units and the ``label`` the user typed."""

    label: str
    value: float

    @property
    def decimal(self) -> str:
        """6 significant digits, the decimal alias used in gate metric names."""
        return f"{self.value:.6g}"


def label_of(value: float) -> str:
    """A short label for a computed eps (e.g. 0.0313725 → '0.0313725')."""
    return f"{value:.6g}"


def parse_eps_grid(text: str, norm: Norm, *, allow_large: bool = False, flag: str = "--eps") -> tuple[Eps, ...]:
    """'0,2/255,8/255' → sorted, distinct :class:`Eps` values.

    Raises:
        UsageError: not numbers, negative, NaN/Inf, duplicates, or eps > 1 in ℓ∞
            without ``allow_large`` (pixels live in [0,1], so such a ball is the whole box).
    """
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise UsageError(f"{flag}: expected one value or a comma-separated grid such as 0,2/255,8/255, got {text!r}")
    grid: list[Eps] = []
    for item in items:
        if not item:
            raise UsageError(f"{flag}: empty item in {text!r} (expected e.g. 0,2/255,8/255)")
        try:
            value = eval_fraction(item)
        except ValueError:
            raise UsageError(f"{flag}: expected a number or a fraction like 8/255, got {item!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"{flag}: expected a finite number, got {item!r}")
        if value < 0:
            raise UsageError(f"{flag}: expected eps >= 0, got {item!r}")
        if norm is Norm.LINF and value > 1 and not allow_large:
            raise UsageError(f"{flag}: linf eps {item} > 1 covers the whole [0,1] pixel box "
                             f"(did you mean {item}/255?); pass --allow-large-eps to run it anyway")
        grid.append(Eps(item, value))
    values = [e.value for e in grid]
    if len(set(values)) != len(values):
        raise UsageError(f"{flag}: duplicate values in {text!r}")
    return tuple(sorted(grid, key=lambda e: e.value))


def parse_positive(text: str, flag: str, *, allow_zero: bool = False) -> float:
    """One positive number or fraction ('2/255')."""
    try:
        value = eval_fraction(str(text))
    except ValueError:
        raise UsageError(f"{flag}: expected a number or a fraction like 2/255, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{flag}: expected a {'non-negative' if allow_zero else 'positive'} finite number, got {text!r}")
    return value


def parse_sigmas(text: str, flag: str = "--sigmas") -> tuple[Eps, ...]:
    """Noise standard deviations: '0.05,0.1' → sorted distinct values (labels kept)."""
    items = [t.strip() for t in str(text).split(",")]
    out = [Eps(item, parse_positive(item, flag)) for item in items if item]
    if not out:
        raise UsageError(f"{flag}: expected comma-separated standard deviations such as 0.05,0.1, got {text!r}")
    if len({e.value for e in out}) != len(out):
        raise UsageError(f"{flag}: duplicate values in {text!r}")
    return tuple(sorted(out, key=lambda e: e.value))
