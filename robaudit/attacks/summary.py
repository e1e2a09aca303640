"""Outcomes → the JSON section: per-attack rows, worst case, curves, sanity flags.

Definitions (n samples, of which ``correct`` are classified correctly):

* robust accuracy at eps: fraction of all n samples that are correct AND for
  which no verified adversarial example within eps was found;
* success rate: verified successes among the correct samples;
* perturbation norms: mean / median over the successful correct samples;
* worst case at eps: a sample is robust only if no attack run at that eps
  (MINIMAL attacks: with distance ≤ eps) fooled it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robaudit.attacks.plan import AttackPlan, PlannedAttack
from robaudit.attacks.registry import Kind
from robaudit.attacks.run import NORM_ATOL, AttackOutcome, CleanPass
from robaudit.attacks.threat import Eps

# "Many samples" for the gradient-masking flag.
MASKED_GRAD_FRACTION = 0.10
# Points of the dense robust-accuracy-vs-distance curves of minimal attacks.
CURVE_POINTS = 33


@dataclass
class Ran:
    """One finished attack run: the planned attack, its eps (None: MINIMAL, once), the outcome."""

    planned: PlannedAttack
    eps: Eps | None
    outcome: AttackOutcome


def _stat(values: torch.Tensor, how: str) -> float | None:
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None
    if how == "mean":
        return float(values.mean())
    return float(torch.quantile(values.to(torch.float64), 0.5))


def fooled_at(ran: Ran, plan: AttackPlan, eps: Eps) -> torch.Tensor | None:
    """(N,) bool: verified adversarial within ``eps`` (None if the run failed or is another eps)."""
    out = ran.outcome
    if out.status != "ok":
        return None
    if ran.planned.spec.kind is Kind.BUDGET:
        return out.misclassified if ran.eps is not None and ran.eps.value == eps.value else None
    dist = out.distance(plan.norm)
    return out.misclassified & (dist <= eps.value + NORM_ATOL)


def _success_at(ran: Ran, plan: AttackPlan, eps: Eps) -> torch.Tensor:
    out = ran.outcome
    if ran.planned.spec.kind is Kind.BUDGET:
        return out.success
    return out.success & (out.distance(plan.norm) <= eps.value + NORM_ATOL)


def row(ran: Ran, plan: AttackPlan, eps: Eps, clean: CleanPass) -> dict[str, Any]:
    """One results row (attack × eps)."""
    spec, out = ran.planned.spec, ran.outcome
    params = out.params
    base = {
        "attack": spec.name, "kind": spec.kind.value, "norm": plan.norm.value, "eps": eps.value,
        "eps_label": eps.label, "steps": spec.steps_of(params), "alpha": params.alpha,
        "restarts": params.restarts, "targeted": bool(params.targeted),
        "seconds": round(out.seconds, 4), "violations": out.violations, "status": out.status, "reason": out.reason,
        "note": out.note,
    }
    if out.status != "ok":
        return {**base, "robust_accuracy": None, "success_rate": None, "n_success": None, "mean_linf": None,
                "median_linf": None, "mean_l2": None, "median_l2": None}
    n = len(clean.correct)
    fooled = fooled_at(ran, plan, eps)
    ok = _success_at(ran, plan, eps) & clean.correct
    n_correct = int(clean.correct.sum())
    robust = int((clean.correct & ~fooled).sum())
    return {
        **base,
        "robust_accuracy": robust / n if n else None,
        "success_rate": int(ok.sum()) / n_correct if n_correct else None,
        "n_success": int(ok.sum()),
        "mean_linf": _stat(out.dist_linf[ok], "mean"), "median_linf": _stat(out.dist_linf[ok], "median"),
        "mean_l2": _stat(out.dist_l2[ok], "mean"), "median_l2": _stat(out.dist_l2[ok], "median"),
        "shared_run": spec.kind is Kind.MINIMAL,
    }


def worst_case(runs: list[Ran], plan: AttackPlan, clean: CleanPass) -> dict[str, torch.Tensor | None]:
    """eps label → (N,) bool robust under every attack run at that eps (None: nothing ran)."""
    out: dict[str, torch.Tensor | None] = {}
    for eps in plan.eps:
        robust, any_ran = clean.correct.clone(), False
        for ran in runs:
            fooled = fooled_at(ran, plan, eps)
            if fooled is not None:
                robust &= ~fooled
                any_ran = True
        out[eps.label] = robust if any_ran else None
    return out


def distance_summary(ran: Ran, plan: AttackPlan, clean: CleanPass) -> dict[str, Any]:
    """Distances of a MINIMAL attack over its successful correct samples, any size."""
    out = ran.outcome
    spec = ran.planned.spec
    base = {"searched_norm": (spec.own_norm or plan.norm).value, "steps": spec.steps_of(out.params),
            "seconds": round(out.seconds, 4), "status": out.status, "reason": out.reason,
            "eps_cap": out.params.eps}
    if out.status != "ok":
        return base
    ok = out.success & clean.correct
    n_correct = int(clean.correct.sum())
    return {**base, "success_rate": int(ok.sum()) / n_correct if n_correct else None,
            "mean_l2": _stat(out.dist_l2[ok], "mean"), "median_l2": _stat(out.dist_l2[ok], "median"),
            "mean_linf": _stat(out.dist_linf[ok], "mean"), "median_linf": _stat(out.dist_linf[ok], "median")}


def distance_curve(ran: Ran, plan: AttackPlan, clean: CleanPass) -> dict[str, list[float]] | None:
    """Robust accuracy vs eps read off a MINIMAL attack's distances (dense grid)."""
    out = ran.outcome
    if out.status != "ok":
        return None
    dist = out.distance(plan.norm)
    found = out.misclassified & clean.correct & torch.isfinite(dist)
    top = max([e.value for e in plan.eps] + [0.0])
    if found.any():
        top = max(top, float(torch.quantile(dist[found].to(torch.float64), 0.95)))
    if top <= 0:
        return None
    grid = torch.linspace(0, top, CURVE_POINTS, dtype=torch.float64)
    n = len(clean.correct)
    acc = [int((clean.correct & ~(found & (dist <= g + NORM_ATOL))).sum()) / n for g in grid]
    return {"eps": [float(g) for g in grid], "robust_accuracy": acc}


def sanity(runs: list[Ran], plan: AttackPlan, clean: CleanPass, rows: list[dict[str, Any]],
           worst: dict[str, torch.Tensor | None], noise_rows: list[dict[str, Any]]) -> list[str]:
    """Warnings in the spirit of AutoAttack's checks (Croce & Hein 2020)."""
    flags: list[str] = []
    n = len(clean.correct)
    clean_count = int(clean.correct.sum())
    ok_rows = [r for r in rows if r["status"] == "ok"]

    def count(r: dict[str, Any]) -> int:
        return round(r["robust_accuracy"] * n)

    # 1. A black-box attack beats every white-box attack at the same eps.
    for eps in plan.eps:
        at = [r for r in ok_rows if r["eps"] == eps.value]
        black = [r for r in at if r["attack"] == "square"]
        white = [r for r in at if r["attack"] not in ("square", "autoattack")]
        if black and white:
            best = min(white, key=count)
            if count(black[0]) < count(best):
                flags.append(f"at eps {eps.label} the black-box Square attack (robust accuracy "
                             f"{black[0]['robust_accuracy']:.4f}) beats every white-box attack (best: {best['attack']} "
                             f"{best['robust_accuracy']:.4f}): gradients may be masked or the white-box attacks too weak")
    # 2. Robust accuracy must not increase with eps (per attack, and the worst case).
    for name in dict.fromkeys(r["attack"] for r in ok_rows):
        series = sorted((r for r in ok_rows if r["attack"] == name), key=lambda r: r["eps"])
        for a, b in zip(series, series[1:]):
            if count(b) > count(a):
                flags.append(f"robust accuracy of {name} is not monotone in eps: {a['robust_accuracy']:.4f} at "
                             f"{a['eps_label']} but {b['robust_accuracy']:.4f} at {b['eps_label']} "
                             f"(attack too weak or unstable: try more --steps or --restarts)")
                break
    labels = [e.label for e in plan.eps if worst.get(e.label) is not None]
    for a, b in zip(labels, labels[1:]):
        if int(worst[b].sum()) > int(worst[a].sum()):
            flags.append(f"worst-case robust accuracy is not monotone in eps ({a} → {b}): "
                         f"different attacks ran at different eps")
            break
    # 3. At eps = 0 nothing may change the prediction.
    for r in ok_rows:
        if r["eps"] == 0 and count(r) < clean_count:
            flags.append(f"{r['attack']} at eps 0 lowers accuracy ({r['robust_accuracy']:.4f} < clean "
                         f"{clean_count / n:.4f}): predictions change under perturbations <= 1e-6 "
                         f"(non-deterministic or numerically unstable model)")
    # 4. Gradient masking: zero or NaN input gradients on many samples.
    zero, nan, checked = int(clean.zero_grad.sum()), int(clean.nan_grad.sum()), len(clean.zero_grad)
    if checked and (zero + nan) / checked >= MASKED_GRAD_FRACTION:
        flags.append(f"input gradients are zero on {zero} and NaN/Inf on {nan} of {checked} checked samples: possible "
                     f"gradient masking (gradient attacks may overstate robustness; compare with --square)")
    # 5. The library returned examples that failed the re-check.
    for ran in runs:
        if ran.outcome.violations:
            where = f" at eps {ran.eps.label}" if ran.eps is not None else ""
            flags.append(f"{ran.planned.spec.name}{where}: {ran.outcome.violations} returned example(s) failed the "
                         f"re-check (outside [0,1], over the budget or not finite) and were counted as not successful")
    for r in noise_rows:
        if r["violations"]:
            flags.append(f"noise at sigma {r['sigma_label']}: {r['violations']} noisy input(s) outside [0,1]")
    # 6. Failed attacks.
    seen = set()
    for r in rows:
        if r["status"] == "failed" and (r["attack"], r["reason"]) not in seen:
            seen.add((r["attack"], r["reason"]))
            flags.append(f"{r['attack']} failed ({r['reason']}); the other attacks still ran")
    return flags
