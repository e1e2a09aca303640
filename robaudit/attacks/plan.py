"""From the typed options of ``robaudit attack`` to a validated plan (torch-free).

Options arrive typed (floats, tuples, enums: :mod:`robaudit.kinds`); nothing is
parsed here. All checks happen once, before any attack runs: a norm an attack
does not support, eps (or steps, alpha, ...) given when no selected attack
takes it, eps > 1 in ℓ∞ without --allow-large-eps, --targeted for attacks that
have no targeted mode, float32-only attacks in a float64 run. Each raises
UsageError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from robaudit.attacks.registry import (ALPHA, BATTERIES, DEFAULT_QUERIES, EPS, N_CLASSES, QUERIES, REGISTRY,
                                       RESTARTS, STEPS, AttackParams, AttackSpec, Battery, Kind)
from robaudit.attacks.threat import DEFAULT_EPS, Eps, Norm, eps_grid, sigma_grid
from robaudit.errors import UsageError
from robaudit.kinds import AttackBattery, Pruning, TargetedMode

# σ grid of the white-noise baseline when --sigmas is not given.
DEFAULT_SIGMAS = (0.05, 0.1, 0.2, 0.4)


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
        eps: the eps grid, ascending.
        attacks: in the order they run: minimal-distance attacks first (they attack every
            correctly classified sample anyway, and what they find prunes the others), then
            budget attacks in registry order.
        sigmas: σ grid of the noise baseline (empty: no noise).
        targeted: UNTARGETED or RANDOM (a random target ≠ label per sample).
        n_classes: classes handed to FAB / APGD-T / AutoAttack.
        battery: the preset used (None when only flags were given).
        prune: which samples the battery skips (:mod:`robaudit.attacks.battery`).
    """

    norm: Norm
    eps: tuple[Eps, ...]
    attacks: tuple[PlannedAttack, ...]
    sigmas: tuple[Eps, ...]
    targeted: TargetedMode
    n_classes: int
    battery: str | None
    prune: Pruning = Pruning.CASCADE

    @property
    def runs(self) -> int:
        """Attack runs per sample: one per eps for budget attacks, one for minimal ones."""
        return sum(1 if a.spec.kind is Kind.MINIMAL else len(self.eps) for a in self.attacks)

    @property
    def names(self) -> list[str]:
        return [a.spec.name for a in self.attacks]


def _flag_list(names: Sequence[str]) -> str:
    return ", ".join(f"--{n}" for n in names)


def _choose_norm(options: Any, flagged: list[AttackSpec]) -> Norm:
    if options.norm is not None:
        return options.norm
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


def make_plan(options: Any, num_classes: int, *, float64: bool = False) -> AttackPlan:
    """Validate typed ``options`` (the attacks analysis' Options) into an :class:`AttackPlan`.

    Args:
        num_classes: the model's class count (``sys.maxsize`` to check options alone).
        float64: the run computes in float64 (float32-only attacks are refused).
    Raises:
        UsageError: see the module docstring.
    """
    flagged = [spec for name, spec in REGISTRY.items() if getattr(options, name)]
    battery_name = options.battery
    if battery_name is None and not flagged and not options.noise:
        battery_name = AttackBattery.QUICK  # no attack flag: the quick preset
    battery: Battery | None = BATTERIES[AttackBattery(battery_name).value] if battery_name is not None else None

    norm = _choose_norm(options, flagged)
    for spec in flagged:
        if norm not in spec.norms:
            only = "/".join(sorted(n.value for n in spec.norms))
            raise UsageError(f"--{spec.name}: {spec.title} attacks in {only} only, but the norm is {norm.value}; "
                             f"drop --norm {norm.value} or the attack")
    names = set(s.name for s in flagged) | set(battery.attacks[norm] if battery else ())
    specs = [spec for name, spec in REGISTRY.items() if name in names]
    specs.sort(key=lambda spec: spec.kind is not Kind.MINIMAL)  # stable: registry order within each kind
    noise = options.noise or bool(battery and battery.noise)
    if float64:
        slow = [s.name for s in specs if s.float32_only]
        if slow:
            raise UsageError(f"--{slow[0]}: {REGISTRY[slow[0]].title} in torchattacks computes in float32 only; "
                             f"run it with --dtype float32")

    _require_taken(options.eps, "--eps", EPS, specs,
                   "an eps budget (cw and deepfool are minimal-distance attacks: their robust accuracy is read "
                   "off their distances at the default grid; noise takes --sigmas)")
    if options.eps is not None:
        grid = eps_grid(options.eps, norm, allow_large=options.allow_large_eps)
    else:
        grid = eps_grid(battery.eps[norm] if battery else DEFAULT_EPS[norm], norm, allow_large=True)

    _require_taken(options.alpha, "--alpha", ALPHA, specs, "a step size")
    if options.alpha is not None and not options.alpha > 0:
        raise UsageError(f"--alpha: expected a positive step size, got {options.alpha}")
    _require_taken(options.steps, "--steps", STEPS, specs, "a number of steps")
    _require_taken(options.restarts, "--restarts", RESTARTS, specs, "restarts")
    _require_taken(options.queries, "--queries", QUERIES, specs, "a query budget")
    for flag, value in (("--steps", options.steps), ("--restarts", options.restarts), ("--queries", options.queries)):
        if value is not None and value < 1:
            raise UsageError(f"{flag}: expected a positive integer, got {value}")

    n_classes = options.n_classes
    _require_taken(n_classes, "--n-classes", N_CLASSES, specs, "a number of classes")
    if n_classes is None:
        n_classes = num_classes
    elif not 2 <= n_classes <= num_classes:
        raise UsageError(f"--n-classes: expected 2..{num_classes} (the model has {num_classes} classes), got {n_classes}")

    targeted = TargetedMode.RANDOM if options.targeted else TargetedMode.UNTARGETED
    if options.targeted:
        if not specs:
            raise UsageError("--targeted: no attack selected")
        lacking = [s.name for s in specs if s.targeted is None]
        if lacking:
            raise UsageError(f"--targeted: {', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no targeted "
                             f"mode in torchattacks; targeted attacks: "
                             f"{', '.join(n for n, s in REGISTRY.items() if s.targeted)}")
        if num_classes < 2:
            raise UsageError("--targeted: the model has fewer than 2 classes")

    if options.sigmas is not None and not noise:
        raise UsageError("--sigmas: the noise baseline is not selected; add --noise")
    sigmas = sigma_grid(options.sigmas if options.sigmas is not None else DEFAULT_SIGMAS) if noise else ()

    planned = []
    for spec in specs:
        s = None
        if STEPS in spec.takes:
            s = options.steps if options.steps is not None else (battery.steps.get(spec.name) if battery else None)
            s = s if s is not None else spec.default_steps
        q = None
        if QUERIES in spec.takes:
            q = options.queries if options.queries is not None else ((battery.queries if battery else None)
                                                                     or DEFAULT_QUERIES)
        planned.append(PlannedAttack(spec=spec, steps=s, alpha=options.alpha if ALPHA in spec.takes else None,
                                     restarts=options.restarts if options.restarts is not None and RESTARTS in spec.takes
                                     else 1, queries=q))
    if not planned and not sigmas:
        raise UsageError("no attack selected: pass an attack flag such as --pgd, --noise, or --battery quick")
    return AttackPlan(norm=norm, eps=grid if planned else (), attacks=tuple(planned), sigmas=sigmas,
                      targeted=targeted, n_classes=int(n_classes),
                      battery=AttackBattery(battery_name).value if battery_name is not None else None,
                      prune=options.prune)


def resolve_params(spec: AttackSpec, *, norm: Norm, eps: float | None = None, alpha: float | None = None,
                   steps: int | None = None, restarts: int | None = None, queries: int | None = None,
                   n_classes: int = 10, seed: int = 0, targeted: bool = False,
                   random_start: bool = True) -> AttackParams:
    """Fill in defaults: steps from the spec, alpha = 2.5·eps/steps (Madry et al.'s
    rule; 2/255 for eps = 8/255 and 10 steps, torchattacks' default), queries 5000."""
    steps = steps if steps is not None else spec.default_steps
    if ALPHA in spec.takes and alpha is None and eps is not None and steps:
        alpha = 2.5 * eps / steps
    return AttackParams(norm=norm, eps=eps if EPS in spec.takes else None, alpha=alpha, steps=steps,
                        restarts=restarts or 1, queries=(queries or DEFAULT_QUERIES) if "queries" in spec.takes else None,
                        n_classes=n_classes, seed=seed, targeted=targeted, random_start=random_start)
