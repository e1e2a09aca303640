"""Running one torchattacks attack over a dataset, and checking what it returns.

"Trust but verify" (foolbox's rule: we don't really know what the attack
returns): every adversarial example is re-checked here, independently of the
library. It must be finite, lie in [0,1], stay within the budget
(‖x_adv − x‖ ≤ eps + 1e-6 in the threat norm) and its success is re-evaluated
on the model. Examples that fail the check are counted as violations and as
NOT successful.

The user's model is left as found: eval mode during the attack, parameters
frozen (CW, DeepFool and FAB call ``backward()``, which would otherwise fill
``param.grad``), and modes / ``requires_grad`` restored in ``finally:``.
"""

from __future__ import annotations

import contextlib
import io
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F

from robaudit.attacks.registry import (ALPHA, DEFAULT_QUERIES, EPS, AttackParams, AttackSpec, Kind)
from robaudit.attacks.threat import Norm

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.data.types import AuditData

# Budget tolerance of the re-check, in pixel units (float32 rounding of clamp(x + δ)).
NORM_ATOL = 1e-6


@contextlib.contextmanager
def model_guard(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters inside; every module's mode and every
    parameter's ``requires_grad`` restored on exit (also on error / Ctrl-C)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside, restore the caller's RNG state after (so seeding here
    does not change what the rest of the program draws)."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torchattacks prints to stdout (e.g. when it cannot find the device);
    stdout carries the report, so swallow it."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def seed_for(base: int, name: str) -> int:
    """A per-attack seed: stable across runs and Python processes (crc32, not hash()).

    The same attack uses the same seed at every eps, so random starts are
    scaled copies of each other and accuracy over an eps grid is comparable.
    """
    return (int(base) * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


@dataclass(frozen=True)
class Budget:
    """What the re-check enforces: ‖x_adv − x‖_norm ≤ eps + NORM_ATOL (None: no budget)."""

    norm: Norm | None
    eps: float | None


@dataclass
class Check:
    """Re-check of one batch of returned examples (all (B,) tensors).

    Attributes:
        pred: model prediction on the returned example.
        misclassified: valid and pred ≠ label.
        success: valid and the attack's criterion holds (misclassified, or
            pred = target when targeted).
        violation: not finite, outside [0,1], or over budget.
        dist_linf, dist_l2: float64 size of x_adv − x (NaN if not finite).
    """

    pred: torch.Tensor
    misclassified: torch.Tensor
    success: torch.Tensor
    violation: torch.Tensor
    dist_linf: torch.Tensor
    dist_l2: torch.Tensor


def verify(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, budget: Budget,
           target: torch.Tensor | None = None) -> Check:
    """Re-check returned examples independently of the attack.

    Shapes: x, x_adv (B, C, H, W); y, target (B,).
    Raises:
        RuntimeError: x_adv does not have the shape of x (the attack is broken).
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        shape = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise RuntimeError(f"attack returned {shape}, expected a tensor of shape {tuple(x.shape)}")
    x_adv = x_adv.detach().to(device=x.device)
    delta = (x_adv.to(torch.float64) - x.to(torch.float64)).flatten(1)
    finite = torch.isfinite(delta).all(dim=1)
    flat = x_adv.flatten(1)
    in_box = (flat >= 0).all(dim=1) & (flat <= 1).all(dim=1)
    dist_linf = delta.abs().amax(dim=1)
    dist_l2 = delta.norm(dim=1)
    violation = ~(finite & in_box)
    if budget.norm is not None and budget.eps is not None:
        dist = dist_linf if budget.norm is Norm.LINF else dist_l2
        violation |= ~(dist <= budget.eps + NORM_ATOL)
    with torch.no_grad():
        x_eval = torch.where(finite.view(-1, *[1] * (x.dim() - 1)), x_adv.to(x.dtype), x)
        pred = model(x_eval).argmax(dim=1)
    misclassified = (pred != y) & ~violation
    success = misclassified if target is None else (pred == target) & ~violation
    nan = torch.full_like(dist_linf, float("nan"))
    return Check(pred=pred, misclassified=misclassified, success=success, violation=violation,
                 dist_linf=torch.where(finite, dist_linf, nan), dist_l2=torch.where(finite, dist_l2, nan))


def resolve_params(spec: AttackSpec, *, norm: Norm, eps: float | None = None, alpha: float | None = None,
                   steps: int | None = None, restarts: int | None = None, queries: int | None = None,
                   n_classes: int = 10, seed: int = 0, targeted: bool = False) -> AttackParams:
    """Fill in defaults: steps from the spec, alpha = 2.5·eps/steps (Madry et al.'s
    rule; 2/255 for eps = 8/255 and 10 steps, torchattacks' default), queries 5000."""
    steps = steps if steps is not None else spec.default_steps
    if ALPHA in spec.takes and alpha is None and eps is not None and steps:
        alpha = 2.5 * eps / steps
    return AttackParams(norm=norm, eps=eps if EPS in spec.takes else None, alpha=alpha, steps=steps,
                        restarts=restarts or 1, queries=(queries or DEFAULT_QUERIES) if "queries" in spec.takes else None,
                        n_classes=n_classes, seed=seed, targeted=targeted)


def make_targets(y: torch.Tensor, n_classes: int, seed: int) -> torch.Tensor:
    """A random target ≠ label per sample, fixed by ``seed`` (independent of batching).

    Shapes: y (N,) → (N,).
    """
    gen = torch.Generator().manual_seed(int(seed))
    offset = torch.randint(1, n_classes, (len(y),), generator=gen)
    return (y.cpu() + offset) % n_classes


@dataclass
class AttackOutcome:
    """One attack (at one budget, or once for MINIMAL attacks) over the data.

    Attributes:
        name: attack name.
        params: the arguments it ran with.
        status: "ok" or "failed" (then ``reason`` says why; tensors are empty).
        misclassified: (N,) bool, a verified adversarial example was found.
        success: (N,) bool, the attack's criterion holds (targeted: hit the target).
        dist_linf, dist_l2: (N,) float64 size of the kept example (NaN if invalid).
        violations: returned examples that failed the re-check.
        seconds: wall time (attack + re-check).
    """

    name: str
    params: AttackParams
    status: str = "ok"
    reason: str | None = None
    misclassified: torch.Tensor | None = None
    success: torch.Tensor | None = None
    dist_linf: torch.Tensor | None = None
    dist_l2: torch.Tensor | None = None
    violations: int = 0
    seconds: float = 0.0
    note: str | None = None

    def distance(self, norm: Norm) -> torch.Tensor:
        return self.dist_linf if norm is Norm.LINF else self.dist_l2


def _budget_of(spec: AttackSpec, params: AttackParams) -> Budget:
    # FAB takes eps as a cap on the accepted distance, so it is checked like a budget.
    if EPS in spec.takes and params.eps is not None:
        return Budget(params.norm, params.eps)
    return Budget(None, None)


def _configure_targeted(atk, spec: AttackSpec, params: AttackParams, holder: list) -> None:
    if params.targeted and spec.targeted == "mode":
        # By function (not by label): FAB/Square still need the true labels to pick what to attack.
        atk.set_mode_targeted_by_function(lambda inputs, labels: holder[0], quiet=True)


def _unchanged(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.clone()


def run_attack(model: torch.nn.Module, data: "AuditData", spec: AttackSpec, params: AttackParams, *,
               batch_size: int, device: torch.device, dtype: torch.dtype, seed: int,
               targets: torch.Tensor | None = None,
               advance: Callable[[int], None] = lambda n: None) -> AttackOutcome:
    """Run ``spec`` with ``params`` over ``data`` batch by batch and re-check every example.

    An exception raised inside torchattacks makes the outcome "failed" with
    the reason; KeyboardInterrupt propagates.

    Args:
        targets: (N,) target labels when ``params.targeted`` and the attack uses
            torchattacks' targeted mode.
        advance: progress callback (samples done).
    """
    start = time.perf_counter()
    outcome = AttackOutcome(name=spec.name, params=params)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("mis", "succ", "linf", "l2")}
    budget = _budget_of(spec, params)
    holder: list = [None]
    rounds = params.restarts if spec.outer_restarts else 1
    # The eps = 0 ball holds x alone: check x itself instead of running the attack
    # (AutoAttack or Square would otherwise spend their whole budget finding nothing).
    identity = spec.kind is Kind.BUDGET and params.eps == 0
    if identity:
        rounds, outcome.note = 1, "eps 0: the ball is {x}; x itself was checked, the attack not run"
    try:
        with model_guard(model), seeded(seed, device), quiet():
            if identity:
                atk = _unchanged
            else:
                atk = spec.build(model, params)
                atk.set_device(torch.device(device))
                _configure_targeted(atk, spec, params, holder)
            row = 0
            for _, x, y in data.batches(batch_size, device=device, dtype=dtype):
                tgt = None
                if params.targeted and spec.targeted == "mode" and targets is not None:
                    tgt = targets[row:row + len(y)].to(device)
                holder[0] = tgt
                mis = succ = linf = l2 = None
                for _ in range(rounds):
                    check = verify(model, x, y, atk(x, y), budget, tgt)
                    outcome.violations += int(check.violation.sum())
                    if succ is None:
                        mis, succ, linf, l2 = check.misclassified, check.success, check.dist_linf, check.dist_l2
                        continue
                    # Keep, per sample, the first restart that succeeded (its distances with it).
                    take = check.success & ~succ
                    linf, l2 = torch.where(take, check.dist_linf, linf), torch.where(take, check.dist_l2, l2)
                    succ, mis = succ | check.success, mis | check.misclassified
                for key, value in (("mis", mis), ("succ", succ), ("linf", linf), ("l2", l2)):
                    parts[key].append(value.cpu())
                row += len(y)
                advance(len(y))
    except Exception as exc:  # a failing attack is a result, not a crash of the audit
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {first}"[:300]
        outcome.seconds = time.perf_counter() - start
        return outcome
    outcome.misclassified = torch.cat(parts["mis"]) if parts["mis"] else torch.zeros(0, dtype=torch.bool)
    outcome.success = torch.cat(parts["succ"]) if parts["succ"] else torch.zeros(0, dtype=torch.bool)
    outcome.dist_linf = torch.cat(parts["linf"]) if parts["linf"] else torch.zeros(0, dtype=torch.float64)
    outcome.dist_l2 = torch.cat(parts["l2"]) if parts["l2"] else torch.zeros(0, dtype=torch.float64)
    outcome.seconds = time.perf_counter() - start
    return outcome


# Samples whose input gradient is checked for masking: a fraction estimate needs a few
# hundred samples, and a backward pass over all of them would cost a PGD step.
GRAD_CHECK_SAMPLES = 256


@dataclass
class CleanPass:
    """Clean predictions (N,) and the input-gradient health check.

    Attributes:
        pred: clean predictions.
        correct: pred = label.
        zero_grad, nan_grad: (M,) for the first M >= min(N, GRAD_CHECK_SAMPLES) samples
            (whole batches): the cross-entropy input gradient is exactly zero / has NaN or Inf.
    """

    pred: torch.Tensor
    correct: torch.Tensor
    zero_grad: torch.Tensor
    nan_grad: torch.Tensor


def clean_pass(model: torch.nn.Module, data: "AuditData", *, batch_size: int, device: torch.device,
               dtype: torch.dtype, grad_samples: int = GRAD_CHECK_SAMPLES) -> CleanPass:
    """Clean predictions, and input gradients on the first ``grad_samples`` (whole batches).

    Zero or NaN gradients on many samples hint at gradient masking
    (Athalye et al. 2018; AutoAttack's checks), which makes gradient attacks look weak.
    """
    preds, zeros, nans = [], [], []
    seen = 0
    with model_guard(model):
        for _, x, y in data.batches(batch_size, device=device, dtype=dtype):
            if seen < grad_samples:
                x = x.clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x)
                g = grad.flatten(1)
                nans.append((~torch.isfinite(g)).any(dim=1).cpu())
                zeros.append((g == 0).all(dim=1).cpu())
            else:
                with torch.no_grad():
                    logits = model(x)
            preds.append(logits.detach().argmax(dim=1).cpu())
            seen += len(y)
    pred = torch.cat(preds)
    empty = torch.zeros(0, dtype=torch.bool)
    return CleanPass(pred=pred, correct=pred == data.y.cpu(), zero_grad=torch.cat(zeros) if zeros else empty,
                     nan_grad=torch.cat(nans) if nans else empty)


def attack_batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, *, norm: Norm | str = Norm.LINF,
                 eps: float | None = None, steps: int | None = None, alpha: float | None = None,
                 queries: int | None = None, n_classes: int | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, Check]:
    """Adversarial examples for one batch, re-checked (for other analyses:
    adversarial directions for spectrum/linearity, distances for cells).

    Args:
        name: a registry name (``pgd``, ``cw``, ``deepfool``, ``fab``, ...).
        eps: the budget (BUDGET attacks) or FAB's cap; ignored by CW/DeepFool.
    Returns:
        (x_adv, check): x_adv (B, C, H, W) as returned by torchattacks, and its
        :class:`Check` (use ``check.success`` and ``check.dist_l2``).
    Shapes: x (B, C, H, W) in [0,1]; y (B,).
    """
    from robaudit.attacks import registry

    spec = registry.get(name)
    norm = Norm.parse(norm) if isinstance(norm, str) else norm
    if n_classes is None:
        with torch.no_grad(), model_guard(model):
            n_classes = int(model(x[:1]).shape[1])
    if spec.kind is Kind.BUDGET and eps is None:
        from robaudit.errors import UsageError

        raise UsageError(f"{name}: needs eps")
    params = resolve_params(spec, norm=norm, eps=eps, alpha=alpha, steps=steps, queries=queries,
                            n_classes=n_classes, seed=seed_for(seed, name))
    with model_guard(model), seeded(params.seed, x.device), quiet():
        atk = spec.build(model, params)
        atk.set_device(x.device)
        x_adv = atk(x, y).detach()
        check = verify(model, x, y, x_adv, _budget_of(spec, params))
    return x_adv, check
