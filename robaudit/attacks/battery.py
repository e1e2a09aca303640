"""The attack battery on one batch: which samples each attack runs on, and what it found.

Pruning (``AttackPlan.prune``; Croce & Hein 2020, Sec. 5: AutoAttack runs each
attack only on the points the previous ones did not break):

* misclassified clean samples are never attacked (they are not robust at any eps);
* on an eps grid (ascending), an attack runs only on the samples it did not break
  at the previous eps. An example found within a smaller eps lies inside the larger
  ball, so it is kept for the larger eps with its distances. The attack's own
  number at each eps is therefore exact for "this attack, run at every budget up to
  eps, found no verified adversarial example within eps": per-attack numbers are
  monotone in eps by construction, and never above the exhaustive run's except
  through the attack's own randomness;
* CASCADE (the default) also skips the samples that an attack earlier in the battery
  broke within eps: the worst case is decided with the fewest attack calls. A later
  attack then did not run on every sample, so its row counts the samples broken by it
  *or by the attacks before it* ("robust accuracy after attack k", as AutoAttack
  reports); the per-attack number alone is what ``--prune per-attack`` gives;
* minimal-distance attacks (CW, DeepFool, FAB) run once on every correctly
  classified sample, first: their distance statistics cover all of them.

``Pruning.EXHAUSTIVE`` runs every attack on every correctly classified sample at
every eps (the reference the pruned modes are tested against). Misclassified clean
samples are left out there too: APGD and FAB drop them inside the library call, and a
call whose batch is not the batch of keys draws its starts from the batch's stream,
so the exhaustive run's starts would differ from the pruned runs' (at 1,000 samples
this moved the worst case at 4/255 by 3 samples, in either direction).

Randomness (the sharding rule): nothing depends on a global stream or on the rank.
Per-sample draws inside an attack (random starts) are keyed by (seed, attack,
restart, dataset index) (:class:`robaudit.attacks.run.KeyedDraws`), so a sample
gets the same start in a pruned sub-batch as in the exhaustive run, which makes
pruning never lose a success for these attacks; any other draw of the library
comes from a generator seeded by (seed, attack, the batch's first dataset index);
targets and the gradient-check subset are keyed by dataset index. A batch gives
the same rows whichever process runs it, in any order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from robaudit.attacks.plan import AttackPlan, PlannedAttack
from robaudit.attacks.registry import Kind
from robaudit.attacks.run import (NORM_ATOL, Budget, KeyedDraws, budget_of, build_attack, call_attack, keyed_targets,
                                  keyed_unit, resolve_params, seed_for, seeded, verify)
from robaudit.kinds import Pruning, TargetedMode

# Samples whose input gradient is checked for masking, in expectation over the dataset: a
# fraction estimate needs a few hundred, and a backward pass over all would cost a PGD step.
GRAD_CHECK_SAMPLES = 256
# Seeds for noise are offset from attack seeds so that σ grids and attacks never share draws.
NOISE_SEED_OFFSET = 7919


def key(name: str, eps_label: str) -> str:
    """The result key of one attack at one eps: ``pgd@8/255``."""
    return f"{name}@{eps_label}"


@dataclass
class Found:
    """One attack at one eps on a batch; (B,) tensors on the CPU.

    Attributes:
        attacked: the attack ran on the sample at this eps.
        fooled: a verified misclassifying example within eps was found by this attack
            (at this eps, or a smaller one of the grid, or, minimal attacks, at distance ≤ eps).
        success: the attack's criterion holds within eps (targeted: the target was hit).
        dist_linf, dist_l2: float64 size of the kept example where ``success``, else NaN.
        violations: returned examples of this sample that failed the re-check (all restarts).
        seconds: wall time of this attack at this eps on the batch.
    """

    attacked: torch.Tensor
    fooled: torch.Tensor
    success: torch.Tensor
    dist_linf: torch.Tensor
    dist_l2: torch.Tensor
    violations: torch.Tensor
    seconds: float = 0.0


@dataclass
class BatchFindings:
    """Everything the battery learned about one batch (CPU tensors, (B,) each).

    ``found`` maps ``attack@eps`` keys to :class:`Found` (minimal attacks have one key per
    eps, read off their single run); ``distance`` holds each minimal attack's distance in
    the plan's norm (NaN where it found nothing); ``minimal`` each minimal attack's
    (success, dist_linf, dist_l2) at any size; ``noise`` maps σ labels to
    (correct, dist_linf, dist_l2, violation, seconds).
    """

    pred: torch.Tensor
    correct: torch.Tensor
    target: torch.Tensor | None
    grad_checked: torch.Tensor
    zero_grad: torch.Tensor
    nan_grad: torch.Tensor
    found: dict[str, Found] = field(default_factory=dict)
    distance: dict[str, torch.Tensor] = field(default_factory=dict)
    minimal: dict[str, tuple] = field(default_factory=dict)
    noise: dict[str, tuple] = field(default_factory=dict)


def clean_check(model: torch.nn.Module, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, seed: int,
                n_total: int) -> tuple[torch.Tensor, ...]:
    """Clean predictions, and the input-gradient health check on a keyed subset.

    About GRAD_CHECK_SAMPLES samples of the n_total are checked (chosen by dataset index,
    so the subset does not depend on batching). Zero or NaN gradients on many samples
    hint at gradient masking (Athalye et al. 2018), which makes gradient attacks look weak.
    Returns (pred, checked, zero_grad, nan_grad), each (B,) on the CPU.
    """
    checked = keyed_unit(seed, "grad-check", index) < GRAD_CHECK_SAMPLES / max(n_total, 1)
    zero = torch.zeros(len(y), dtype=torch.bool)
    nan = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        pred = model(x).argmax(dim=1).cpu()
    if checked.any():
        sel = checked.nonzero().squeeze(1)
        xs = x[sel.to(x.device)].clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(xs), y[sel.to(y.device)], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xs)
        g = grad.flatten(1).cpu()
        nan[sel] = (~torch.isfinite(g)).any(dim=1)
        zero[sel] = (g == 0).all(dim=1)
    return pred, checked, zero, nan


def _run_on(model, planned: PlannedAttack, plan: AttackPlan, eps: float | None, index, x, y, target,
            todo: torch.Tensor, seed: int, key_seed: int, what: str) -> tuple[torch.Tensor, ...]:
    """Run one attack (with its restarts) on the samples ``todo`` of the batch.

    ``seed`` seeds the global generator for the batch; per-sample draws (random starts) are
    keyed by (key_seed, restart, dataset index) through :class:`KeyedDraws`.

    Returns (misclassified, success, dist_linf, dist_l2, violations) over the whole batch
    (False / NaN / 0 where not attacked).
    """
    spec = planned.spec
    b = len(y)
    mis = torch.zeros(b, dtype=torch.bool)
    succ = torch.zeros(b, dtype=torch.bool)
    linf = torch.full((b,), float("nan"), dtype=torch.float64)
    l2 = linf.clone()
    viol = torch.zeros(b, dtype=torch.long)
    params = resolve_params(spec, norm=plan.norm, eps=eps, alpha=planned.alpha, steps=planned.steps,
                            restarts=planned.restarts, queries=planned.queries, n_classes=plan.n_classes, seed=seed,
                            targeted=plan.targeted is not TargetedMode.UNTARGETED)
    holder: list = [None]
    atk = build_attack(model, spec, params, x.device, holder)
    budget = budget_of(spec, params)
    rounds = params.restarts if spec.outer_restarts else 1
    stream = torch.Generator().manual_seed(seed)  # the draws not keyed by sample, across restarts
    with seeded(seed, x.device):  # the same seed at every eps: random starts are scaled copies
        for restart in range(rounds):
            # each restart runs only on the samples no earlier restart broke (the first success is kept)
            sel = (todo & ~succ).nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            dev = sel.to(x.device)
            tgt = target[sel].to(x.device) if target is not None and spec.targeted == "mode" else None
            holder[0] = tgt
            xs, ys = x[dev], y[dev]
            with KeyedDraws(index[sel].tolist(), key_seed, salt=restart, stream=stream):
                x_adv = call_attack(atk, xs, ys, what)
            check = verify(model, xs, ys, x_adv, budget, tgt)
            viol[sel] += check.violation.cpu().long()
            ok = check.success.cpu()
            succ[sel] |= ok
            mis[sel] |= check.misclassified.cpu()
            linf[sel] = torch.where(ok, check.dist_linf.cpu(), linf[sel])
            l2[sel] = torch.where(ok, check.dist_l2.cpu(), l2[sel])
    return mis, succ, linf, l2, viol


def run_battery(model: torch.nn.Module, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, plan: AttackPlan, *,
                seed: int, n_total: int, advance: Callable[[int], None] = lambda n: None) -> BatchFindings:
    """Clean check, the planned attacks (pruned as in the module docstring) and the noise baseline on one batch.

    The caller holds the model in eval mode with frozen parameters (``preserved(freeze=True)``).

    Args:
        index: (B,) dataset indices (key the randomness).
        x: (B, *shape) pixels in [0,1]; y: (B,) labels.
        n_total: samples in the whole run (sizes the gradient-check subset).
        advance: progress callback, called with B after each attack at each eps.
    """
    index = index.cpu()
    first = int(index[0])
    pred, checked, zero, nan = clean_check(model, index, x, y, seed=seed, n_total=n_total)
    correct = pred == y.cpu()
    target = None
    if plan.targeted is TargetedMode.RANDOM:
        target = keyed_targets(index, y, plan.n_classes, seed_for(seed, "targets"))
    out = BatchFindings(pred=pred, correct=correct, target=target, grad_checked=checked, zero_grad=zero, nan_grad=nan)
    exhaustive = plan.prune is Pruning.EXHAUSTIVE
    # broken[label]: an attack run so far found a verified example within that eps (any attack, any eps' <= eps)
    broken = {e.label: torch.zeros(len(y), dtype=torch.bool) for e in plan.eps}
    for planned in plan.attacks:
        spec = planned.spec
        seeds = (seed_for(seed, spec.name, first), seed_for(seed, spec.name))  # batch stream, per-sample keys
        if spec.kind is Kind.MINIMAL:
            _minimal(model, planned, plan, index, x, y, target, correct, seeds, out)
            advance(len(y))
        else:
            _budget(model, planned, plan, index, x, y, target, correct, broken, exhaustive, seeds, out, advance)
        if plan.prune is Pruning.CASCADE:
            for i, e in enumerate(plan.eps):
                for smaller in plan.eps[: i + 1]:
                    broken[e.label] |= out.found[key(spec.name, smaller.label)].fooled
    for sigma in plan.sigmas:
        out.noise[sigma.label] = _noise(model, x, y, sigma.value, seed_for(seed, "noise", first) + NOISE_SEED_OFFSET)
        advance(len(y))
    return out


def _minimal(model, planned: PlannedAttack, plan: AttackPlan, index, x, y, target, correct: torch.Tensor,
             seeds: tuple[int, int], out: BatchFindings) -> None:
    """One run of a minimal-distance attack (FAB capped at the largest eps) on the correctly classified
    samples, read off at every eps."""
    spec = planned.spec
    cap = plan.eps[-1].value if plan.eps else None
    start = time.perf_counter()
    mis, succ, linf, l2, viol = _run_on(model, planned, plan, cap, index, x, y, target, correct, *seeds, spec.name)
    seconds = time.perf_counter() - start
    dist = linf if plan.norm.value == "linf" else l2
    out.distance[spec.name] = torch.where(mis, dist, torch.full_like(dist, float("nan")))
    out.minimal[spec.name] = (succ, linf, l2)
    for e in plan.eps:
        within = dist <= e.value + NORM_ATOL
        ok = succ & within
        out.found[key(spec.name, e.label)] = Found(
            attacked=correct.clone(), fooled=mis & within, success=ok,
            dist_linf=torch.where(ok, linf, torch.full_like(linf, float("nan"))),
            dist_l2=torch.where(ok, l2, torch.full_like(l2, float("nan"))), violations=viol, seconds=seconds)


def _budget(model, planned: PlannedAttack, plan: AttackPlan, index, x, y, target, correct: torch.Tensor,
            broken: dict[str, torch.Tensor], exhaustive: bool, seeds: tuple[int, int], out: BatchFindings,
            advance: Callable[[int], None]) -> None:
    """A budget attack over the eps grid, ascending, reusing what it found at smaller eps."""
    spec = planned.spec
    b = len(y)
    mis = torch.zeros(b, dtype=torch.bool)
    succ = torch.zeros(b, dtype=torch.bool)
    linf = torch.full((b,), float("nan"), dtype=torch.float64)
    l2 = linf.clone()
    for e in plan.eps:
        if exhaustive:
            todo = correct.clone()
            mis, succ = torch.zeros_like(mis), torch.zeros_like(succ)
            linf, l2 = torch.full_like(linf, float("nan")), torch.full_like(l2, float("nan"))
        else:
            todo = correct & ~mis & ~broken[e.label]
        start = time.perf_counter()
        new_mis, new_succ, new_linf, new_l2, viol = _run_on(model, planned, plan, e.value, index, x, y, target, todo,
                                                           *seeds, f"{spec.name} at eps {e.label}")
        mis, succ = mis | new_mis, succ | new_succ
        linf, l2 = torch.where(new_succ, new_linf, linf), torch.where(new_succ, new_l2, l2)
        out.found[key(spec.name, e.label)] = Found(attacked=todo, fooled=mis.clone(), success=succ.clone(),
                                                   dist_linf=linf.clone(), dist_l2=l2.clone(), violations=viol,
                                                   seconds=time.perf_counter() - start)
        advance(b)


def _noise(model, x, y, sigma: float, seed: int) -> tuple:
    """Gaussian white noise x̃ = clip(x + N(0, σ²), 0, 1) (Hoffman et al. 2019, eq. 9), drawn by torchattacks' GN."""
    from robaudit.attacks.library import attack_class

    start = time.perf_counter()
    with seeded(seed, x.device), KeyedDraws([], seed, stream=seed):  # every draw from the batch's stream
        gn = attack_class("GN")(model, std=sigma)
        gn.set_device(x.device)
        noisy = call_attack(gn, x, y, f"noise at sigma {sigma:g}")
    check = verify(model, x, y, noisy, Budget(None, None))
    return (~check.misclassified.cpu(), check.dist_linf.cpu(), check.dist_l2.cpu(), check.violation.cpu(),
            time.perf_counter() - start)
