"""From the options of ``robaudit attack`` to a validated plan (torch-free).

All user-facing checks happen here, once, before any attack runs: unknown
attacks, a norm an attack does not support, eps (or steps, alpha, ...) given
when no selected attack takes it, eps > 1 in ℓ∞ without --allow-large-eps,
--targeted for attacks that have no targeted mode. Each raises UsageError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from robaudit.attacks.registry import (ALPHA, BATTERIES, DEFAULT_QUERIES, EPS, N_CLASSES, QUERIES, REGISTRY,
                                       RESTARTS, STEPS, AttackSpec, Battery)
from robaudit.attacks.threat import (DEFAULT_EPS, Eps, Norm, parse_eps_grid, parse_positive, parse_sigmas)
from robaudit.errors import UsageError

# σ grid of the white-noise baseline when --sigmas is not given.
DEFAULT_SIGMAS = "0.05,0.1,0.2,0.4"


@dataclass(frozen=True)
class PlannedAttack:
    """One attack of the plan with its resolved iteration settings."""

    spec: AttackSpec
    steps: int | None
    alpha: float | None
    restarts: int
    queries: int | None


@dataclass(frozen=True)
class AttackPlan:
    """What ``robaudit attack`` will run.

    Attributes:
        norm: the threat model's norm (one per run, so worst cases are well defined).
        eps: the eps grid, ascending (labels as typed).
        attacks: attacks in registry order.
        sigmas: σ grid of the noise baseline (empty: no noise).
        targeted: targeted mode.
        n_classes: classes handed to FAB / APGD-T / AutoAttack.
        battery: the preset used (None when only flags were given).
    """

    norm: Norm
    eps: tuple[Eps, ...]
    attacks: tuple[PlannedAttack, ...]
    sigmas: tuple[Eps, ...]
    targeted: bool
    n_classes: int
    battery: str | None

    @property
    def names(self) -> list[str]:
        return [a.spec.name for a in self.attacks]


def _flag_list(names: Sequence[str]) -> str:
    return ", ".join(f"--{n}" for n in names)


def _choose_norm(options: Any, flagged: list[AttackSpec]) -> Norm:
    if getattr(options, "norm", None):
        return Norm.parse(options.norm)
    fixed: dict[Norm, list[str]] = {}
    for spec in flagged:
        if len(spec.norms) == 1:
            fixed.setdefault(next(iter(spec.norms)), []).append(spec.name)
    if len(fixed) > 1:
        parts = " and ".join(f"{_flag_list(v)} {'is' if len(v) == 1 else 'are'} {k.value}-only" for k, v in fixed.items())
        raise UsageError(f"{parts}: one norm per run; run them in separate commands")
    return next(iter(fixed)) if fixed else Norm.LINF


def _require_taken(value: Any, flag: str, param: str, specs: list[AttackSpec], what: str) -> None:
    """UsageError if ``value`` was given but no selected attack takes ``param``."""
    if value is None or value is False:
        return
    if any(param in s.takes for s in specs):
        return
    takers = [n for n, s in REGISTRY.items() if param in s.takes]
    chosen = ", ".join(s.name for s in specs) or "none"
    raise UsageError(f"{flag}: no selected attack takes {what} (selected: {chosen}); "
                     f"it applies to {', '.join(takers)}")


def make_plan(options: Any, num_classes: int) -> AttackPlan:
    """Validate ``options`` (the attacks analysis' Options) into an :class:`AttackPlan`.

    Raises:
        UsageError: see the module docstring.
    """
    flagged = [spec for name, spec in REGISTRY.items() if getattr(options, name, False)]
    want_noise = bool(getattr(options, "noise", False))
    battery_name = getattr(options, "battery", None)
    if battery_name is None and not flagged and not want_noise:
        battery_name = "quick"  # no attack flag: the quick preset
    battery: Battery | None = None
    if battery_name is not None:
        if battery_name not in BATTERIES:
            raise UsageError(f"--battery: expected one of {', '.join(BATTERIES)}, got {battery_name!r}")
        battery = BATTERIES[battery_name]

    norm = _choose_norm(options, flagged)
    for spec in flagged:
        if norm not in spec.norms:
            only = "/".join(sorted(n.value for n in spec.norms))
            raise UsageError(f"--{spec.name}: {spec.title} attacks in {only} only, but the norm is {norm.value}; "
                             f"drop --norm {norm.value} or the attack")
    names = set(s.name for s in flagged) | set(battery.attacks[norm] if battery else ())
    specs = [spec for name, spec in REGISTRY.items() if name in names]
    noise = want_noise or bool(battery and battery.noise)

    eps_text = getattr(options, "eps", None)
    _require_taken(eps_text, "--eps", EPS, specs,
                   "an eps budget (cw and deepfool are minimal-distance attacks: their robust accuracy is read "
                   "off their distances at the default grid; noise takes --sigmas)")
    if eps_text is not None:
        grid = parse_eps_grid(eps_text, norm, allow_large=bool(getattr(options, "allow_large_eps", False)))
    else:
        grid = parse_eps_grid(battery.eps[norm] if battery else DEFAULT_EPS[norm], norm, allow_large=True)

    alpha_text = getattr(options, "alpha", None)
    _require_taken(alpha_text, "--alpha", ALPHA, specs, "a step size")
    alpha = parse_positive(alpha_text, "--alpha") if alpha_text is not None else None
    steps = getattr(options, "steps", None)
    _require_taken(steps, "--steps", STEPS, specs, "a number of steps")
    restarts = getattr(options, "restarts", None)
    _require_taken(restarts, "--restarts", RESTARTS, specs, "restarts")
    queries = getattr(options, "queries", None)
    _require_taken(queries, "--queries", QUERIES, specs, "a query budget")
    for flag, value in (("--steps", steps), ("--restarts", restarts), ("--queries", queries)):
        if value is not None and int(value) < 1:
            raise UsageError(f"{flag}: expected a positive integer, got {value}")

    n_classes = getattr(options, "n_classes", None)
    _require_taken(n_classes, "--n-classes", N_CLASSES, specs, "a number of classes")
    if n_classes is None:
        n_classes = num_classes
    elif not 2 <= int(n_classes) <= num_classes:
        raise UsageError(f"--n-classes: expected 2..{num_classes} (the model has {num_classes} classes), got {n_classes}")

    targeted = bool(getattr(options, "targeted", False))
    if targeted:
        if not specs:
            raise UsageError("--targeted: no attack selected")
        lacking = [s.name for s in specs if s.targeted is None]
        if lacking:
            raise UsageError(f"--targeted: {', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no targeted "
                             f"mode in torchattacks; targeted attacks: "
                             f"{', '.join(n for n, s in REGISTRY.items() if s.targeted)}")
        if num_classes < 2:
            raise UsageError("--targeted: the model has fewer than 2 classes")

    sigmas_text = getattr(options, "sigmas", None)
    if sigmas_text is not None and not noise:
        raise UsageError("--sigmas: the noise baseline is not selected; add --noise")
    sigmas = parse_sigmas(sigmas_text if sigmas_text is not None else DEFAULT_SIGMAS) if noise else ()

    planned = []
    for spec in specs:
        s = None
        if STEPS in spec.takes:
            s = int(steps) if steps is not None else (battery.steps.get(spec.name) if battery else None)
            s = s if s is not None else spec.default_steps
        q = None
        if QUERIES in spec.takes:
            q = int(queries) if queries is not None else ((battery.queries if battery else None) or DEFAULT_QUERIES)
        planned.append(PlannedAttack(spec=spec, steps=s, alpha=alpha if ALPHA in spec.takes else None,
                                     restarts=int(restarts) if restarts is not None and RESTARTS in spec.takes else 1,
                                     queries=q))
    if not planned and not sigmas:
        raise UsageError("no attack selected: pass an attack flag such as --pgd, --noise, or --battery quick")
    return AttackPlan(norm=norm, eps=grid if planned else (), attacks=tuple(planned), sigmas=sigmas,
                      targeted=targeted, n_classes=int(n_classes), battery=battery_name)
