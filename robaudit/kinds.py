"""Value kinds and modes shared by the CLI layer and the engines (torch-free).

User text becomes one of these exactly once, at the edge (``opt`` values in
:mod:`robaudit.analyses.base`, settings in :mod:`robaudit.settings`). Engines
and analyses receive the typed values and never parse text again.

Every enum is ``str``-valued, so a member compares equal to its value and
serialises to it in JSON reports.
"""

from __future__ import annotations

import enum
import math
from typing import Any

from robaudit.errors import UsageError

# Largest number of classes for which the exact Jacobian is the default (C VJPs per sample).
EXACT_MAX_CLASSES = 64
# Default relative residual tolerance of the iterative solvers (see robaudit/linalg/tol.py for why).
TOL_FLOAT64 = 1e-10
TOL_FLOAT32 = 1e-5


def default_tol(dtype: Any) -> float:
    """Relative residual tolerance for ``dtype`` (a torch dtype or its name, e.g. "float64")."""
    return TOL_FLOAT64 if str(dtype).removeprefix("torch.") == "float64" else TOL_FLOAT32


# Longest user value echoed back in an error message.
ECHO_LIMIT = 80


def echo(value: Any) -> str:
    """``repr(value)``, cut to ECHO_LIMIT characters, for error messages."""
    text = repr(value)
    return text if len(text) <= ECHO_LIMIT else text[: ECHO_LIMIT - 1] + "…"


class Better(str, enum.Enum):
    """Which way of a metric is more robust."""

    HIGHER = "higher"
    LOWER = "lower"
    NEUTRAL = "neutral"


class Fraction:
    """Option kind: one finite float, written as 0.03, '0.03' or '8/255'."""


class Fractions:
    """Option kind: a tuple of finite floats, written as '0,2/255,8/255' or a YAML list."""


def eval_fraction(text: str) -> float:
    """'8/255' → 0.0313..., '0.1' → 0.1 (no eval of arbitrary text); ValueError otherwise."""
    text = str(text).strip()
    if "/" in text:
        num, _, den = text.partition("/")
        d = float(den)
        if d == 0:
            raise ValueError(text)
        return float(num) / d
    return float(text)


def parse_fraction(value: Any, where: str) -> float:
    """One finite number (fractions allowed); UsageError naming ``where`` otherwise."""
    if isinstance(value, bool):
        raise UsageError(f"{where}: expected a number such as 0.1 or 8/255, got {echo(value)}")
    try:
        out = float(value) if isinstance(value, (int, float)) else eval_fraction(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: expected a number such as 0.1 or 8/255, got {echo(value)}") from None
    if not math.isfinite(out):
        raise UsageError(f"{where}: expected a finite number, got {echo(value)}")
    return out


def parse_fractions(value: Any, where: str) -> tuple[float, ...]:
    """'0,2/255,8/255' or [0, '2/255'] → (0.0, 0.00784..., 0.0313...); at least one value."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    else:
        items = [s for s in str(value).replace(" ", "").split(",") if s != ""]
    if not items:
        raise UsageError(f"{where}: expected comma-separated numbers such as 0.1,8/255, got {echo(value)}")
    return tuple(parse_fraction(v, where) for v in items)


class LabelledFractions:
    """Option kind: a tuple of (label, value) pairs, the label as the user wrote it ('36/255').

    For values that name metrics (``certified_accuracy@36/255``): the label stays what the user
    typed, the value is parsed once.
    """


def parse_labelled_fractions(value: Any, where: str, *, nonnegative: bool = True) -> tuple[tuple[str, float], ...]:
    """'0.1, 36/255' or [0.1, '36/255'] → (('0.1', 0.1), ('36/255', 0.1411…))."""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() if not isinstance(v, (int, float)) else f"{v:g}" for v in value]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [f"{value:g}"]
    else:
        items = [s.strip() for s in str(value).split(",") if s.strip()]
    if not items:
        raise UsageError(f"{where}: expected comma-separated numbers such as 0.1,36/255, got {echo(value)}")
    out = []
    for item in items:
        number = parse_fraction(item, where)
        if nonnegative and number < 0:
            raise UsageError(f"{where}: expected non-negative values, got {echo(item)}")
        out.append((item, number))
    return tuple(out)


class NormMethod(str, enum.Enum):
    """How σ_max of a Jacobian is computed."""

    AUTO = "auto"
    EXACT = "exact"
    POWER = "power"
    LANCZOS = "lanczos"


class FrobeniusMethod(str, enum.Enum):
    """How ‖J‖_F is computed."""

    AUTO = "auto"
    EXACT = "exact"
    HUTCHINSON = "hutchinson"


class JacTarget(str, enum.Enum):
    """Which output is differentiated."""

    LOGITS = "logits"
    PROBS = "probs"
    LOGPROBS = "logprobs"


class AttackNorm(str, enum.Enum):
    """Threat-model norm."""

    LINF = "linf"
    L2 = "l2"


class TargetedMode(str, enum.Enum):
    """Untargeted, or targeted at a random/least-likely class."""

    UNTARGETED = "untargeted"
    RANDOM = "random"
    LEAST_LIKELY = "least-likely"


class Status(str, enum.Enum):
    """Outcome of one analysis step or attack."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


class BoundKind(str, enum.Enum):
    """What a per-layer number is."""

    EXACT = "exact"
    UPPER = "upper"
    LOWER = "lower"
    HEURISTIC = "heuristic"


class ThresholdKind(str, enum.Enum):
    """A gate threshold: fail when the value is above, or below, the threshold."""

    FAIL_ABOVE = "fail_above"
    FAIL_BELOW = "fail_below"


class CurvatureTarget(str, enum.Enum):
    """The scalar whose input Hessian is analysed."""

    LOSS = "loss"
    MARGIN = "margin"


class Plane(str, enum.Enum):
    """How a cross-section plane is spanned."""

    RANDOM = "random"
    ADVERSARIAL = "adversarial"


class CurvatureMethod(str, enum.Enum):
    """How the top input-Hessian eigenvalues are computed."""

    LANCZOS = "lanczos"
    POWER = "power"
    EXACT = "exact"


class Ints:
    """Option kind: a tuple of integers, written as '3,7', a repeated flag, or a YAML list."""


def parse_ints(value: Any, where: str) -> tuple[int, ...]:
    """'3,7', ['3', '7,9'] or [3, 7] → (3, 7[, 9]); at least one value; UsageError naming ``where``."""
    parts = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[int] = []
    for part in parts:
        if isinstance(part, bool) or (isinstance(part, float) and not part.is_integer()):
            raise UsageError(f"{where}: expected integers such as 3,7, got {echo(value)}")
        texts = [part] if isinstance(part, (int, float)) else [s for s in str(part).replace(" ", "").split(",") if s]
        for text in texts:
            try:
                out.append(int(text))
            except (TypeError, ValueError):
                raise UsageError(f"{where}: expected integers such as 3,7, got {echo(value)}") from None
    if not out:
        raise UsageError(f"{where}: expected integers such as 3,7, got {echo(value)}")
    return tuple(out)


class AttackBattery(str, enum.Enum):
    """A preset battery of attacks (robaudit.attacks.registry.BATTERIES)."""

    QUICK = "quick"
    STANDARD = "standard"
    FULL = "full"


class Pruning(str, enum.Enum):
    """Which samples an attack battery skips (robaudit.attacks.battery).

    CASCADE: skip misclassified samples, samples the same attack broke at a smaller
    eps, and samples an earlier attack of the battery broke (AutoAttack's rule).
    PER_ATTACK: only the first two (each attack's own numbers stay exact).
    EXHAUSTIVE: attack every correctly classified sample at every eps.
    """

    CASCADE = "cascade"
    PER_ATTACK = "per-attack"
    EXHAUSTIVE = "exhaustive"
