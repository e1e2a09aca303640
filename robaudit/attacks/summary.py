"""Per-sample rows → the JSON section: per-attack rows, worst case, curves, sanity flags (pure, torch-free).

Definitions (n samples, of which ``correct`` are classified correctly; "fooled by
attack k within eps" is what :mod:`robaudit.attacks.battery` recorded, including
what k found at a smaller eps of the grid):

* robust accuracy of a row (attack k, eps): fraction of all n samples that are
  correct and that no counted attack fooled within eps. The attacks counted are
  listed in the row's ``after`` key: k alone (``--prune per-attack`` and
  ``exhaustive``), or k and every attack that ran before it (``cascade``, the
  default: later attacks skip what earlier ones broke, so the row is AutoAttack's
  "robust accuracy after attack k");
* success rate: the counted attacks' verified successes (targeted: target hit)
  among the correct samples; ``n_success`` the same count;
* perturbation norms: mean / median over the correct samples that attack k itself broke;
* ``attacked``: how many samples attack k actually ran on at this eps;
* worst case at eps: correct and fooled by no attack within eps.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from robaudit.attacks.plan import AttackPlan, resolve_params
from robaudit.attacks.registry import Kind
from robaudit.kinds import Pruning, TargetedMode
from robaudit.stats import finite, median

# "Many samples" for the gradient-masking flag.
MASKED_GRAD_FRACTION = 0.10
# Points of the dense robust-accuracy-vs-distance curves of minimal attacks.
CURVE_POINTS = 33
# Budget tolerance of the re-check (the same as robaudit.attacks.run.NORM_ATOL).
NORM_ATOL = 1e-6


def _mean(values: Sequence[float | None]) -> float | None:
    xs = finite(values)
    return math.fsum(xs) / len(xs) if xs else None


def key(name: str, label: str) -> str:
    return f"{name}@{label}"


def counted(plan: AttackPlan, k: int) -> list[str]:
    """Names of the attacks whose findings row k of the plan counts (see the module docstring)."""
    if plan.prune is Pruning.CASCADE:
        return [a.spec.name for a in plan.attacks[: k + 1]]
    return [plan.attacks[k].spec.name]


def result_rows(rows: Sequence[Any], plan: AttackPlan) -> list[dict[str, Any]]:
    """One results row per attack × eps, in plan order."""
    n = len(rows)
    n_correct = sum(r.correct for r in rows)
    out = []
    for k, planned in enumerate(plan.attacks):
        spec = planned.spec
        after = counted(plan, k)
        for eps in plan.eps:
            mine = key(spec.name, eps.label)
            keys = [key(name, eps.label) for name in after]
            params = resolve_params(spec, norm=plan.norm, eps=eps.value if spec.kind is Kind.BUDGET else
                                    plan.eps[-1].value, alpha=planned.alpha, steps=planned.steps,
                                    restarts=planned.restarts, queries=planned.queries, n_classes=plan.n_classes,
                                    targeted=plan.targeted is not TargetedMode.UNTARGETED)
            fooled = [r.correct and any(r.fooled[kk] for kk in keys) for r in rows]
            success = [r.correct and any(r.success[kk] for kk in keys) for r in rows]
            own = [r for r in rows if r.correct and r.success[mine]]
            out.append({
                "attack": spec.name, "kind": spec.kind.value, "norm": plan.norm.value, "eps": eps.value,
                "eps_label": eps.label, "steps": spec.steps_of(params), "alpha": params.alpha,
                "restarts": params.restarts, "targeted": plan.targeted is not TargetedMode.UNTARGETED,
                "seconds": round(math.fsum(r.seconds.get(mine, 0.0) for r in rows), 4),
                "violations": sum(r.violations[mine] for r in rows), "status": "ok", "reason": None,
                "note": ("eps 0: the ball is {x}; x itself was checked, the attack not run"
                         if spec.kind is Kind.BUDGET and eps.value == 0 else None),
                "robust_accuracy": (n_correct - sum(fooled)) / n if n else None,
                "success_rate": sum(success) / n_correct if n_correct else None,
                "n_success": sum(success),
                "mean_linf": _mean([r.dist_linf[mine] for r in own]),
                "median_linf": median([r.dist_linf[mine] for r in own]),
                "mean_l2": _mean([r.dist_l2[mine] for r in own]),
                "median_l2": median([r.dist_l2[mine] for r in own]),
                "shared_run": spec.kind is Kind.MINIMAL,
                "attacked": sum(r.attacked[mine] for r in rows),
                "after": after,
            })
    return out


def worst_case(rows: Sequence[Any], plan: AttackPlan) -> dict[str, list[bool] | None]:
    """eps label → per-sample robust under every attack (None: no attack ran)."""
    out: dict[str, list[bool] | None] = {}
    for eps in plan.eps:
        keys = [key(a.spec.name, eps.label) for a in plan.attacks]
        out[eps.label] = [r.correct and not any(r.fooled[k] for k in keys) for r in rows] if keys else None
    return out


def distance_summary(rows: Sequence[Any], plan: AttackPlan, name: str) -> dict[str, Any]:
    """Distances of a minimal attack over its successful correct samples, any size."""
    planned = next(a for a in plan.attacks if a.spec.name == name)
    spec = planned.spec
    cap = plan.eps[-1].value if plan.eps else None
    params = resolve_params(spec, norm=plan.norm, eps=cap, steps=planned.steps, restarts=planned.restarts,
                            n_classes=plan.n_classes)
    ok = [r for r in rows if r.correct and r.min_dist_l2.get(name) is not None]
    n_correct = sum(r.correct for r in rows)
    first = key(name, plan.eps[0].label) if plan.eps else None
    return {"searched_norm": (spec.own_norm or plan.norm).value, "steps": spec.steps_of(params),
            "seconds": round(math.fsum(r.seconds.get(first, 0.0) for r in rows), 4), "status": "ok", "reason": None,
            "eps_cap": params.eps,
            "success_rate": len(ok) / n_correct if n_correct else None,
            "mean_l2": _mean([r.min_dist_l2[name] for r in ok]), "median_l2": median([r.min_dist_l2[name] for r in ok]),
            "mean_linf": _mean([r.min_dist_linf[name] for r in ok]),
            "median_linf": median([r.min_dist_linf[name] for r in ok])}


def distance_curve(rows: Sequence[Any], plan: AttackPlan, name: str) -> dict[str, list[float]] | None:
    """Robust accuracy vs eps read off a minimal attack's distances (dense grid)."""
    found = [r.distance[name] for r in rows if r.correct and r.distance.get(name) is not None]
    top = max([e.value for e in plan.eps] + [0.0])
    if found:
        from robaudit.stats import quantile

        top = max(top, quantile(found, 0.95))
    if top <= 0 or not rows:
        return None
    grid = [top * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)]
    n, n_correct = len(rows), sum(r.correct for r in rows)
    return {"eps": grid, "robust_accuracy": [(n_correct - sum(d <= g + NORM_ATOL for d in found)) / n for g in grid]}


def noise_rows(rows: Sequence[Any], plan: AttackPlan) -> list[dict[str, Any]]:
    n = len(rows)
    return [{"sigma": s.value, "sigma_label": s.label,
             "accuracy": sum(r.noise_correct[s.label] for r in rows) / n if n else None,
             "mean_l2": _mean([r.noise_l2[s.label] for r in rows]),
             "mean_linf": _mean([r.noise_linf[s.label] for r in rows]),
             "seconds": round(math.fsum(r.seconds.get(f"noise@{s.label}", 0.0) for r in rows), 4),
             "violations": sum(r.noise_violation[s.label] for r in rows)} for s in plan.sigmas]


def sanity(rows: Sequence[Any], plan: AttackPlan, results: list[dict[str, Any]],
           worst: dict[str, list[bool] | None], noise: list[dict[str, Any]]) -> list[str]:
    """Warnings in the spirit of AutoAttack's checks (Croce & Hein 2020)."""
    flags: list[str] = []
    n = len(rows)
    clean_count = sum(r.correct for r in rows)
    ok_rows = [r for r in results if r["status"] == "ok" and r["robust_accuracy"] is not None]

    def count(r: dict[str, Any]) -> int:
        return round(r["robust_accuracy"] * n)

    # 1. A black-box attack beats every white-box attack at the same eps (only meaningful per attack).
    if plan.prune is not Pruning.CASCADE:
        for eps in plan.eps:
            at = [r for r in ok_rows if r["eps"] == eps.value]
            black = [r for r in at if r["attack"] == "square"]
            white = [r for r in at if r["attack"] not in ("square", "autoattack")]
            if black and white:
                best = min(white, key=count)
                if count(black[0]) < count(best):
                    flags.append(f"at eps {eps.label} the black-box Square attack (robust accuracy "
                                 f"{black[0]['robust_accuracy']:.4f}) beats every white-box attack (best: "
                                 f"{best['attack']} {best['robust_accuracy']:.4f}): gradients may be masked or the "
                                 f"white-box attacks too weak")
    elif "square" in [a.spec.name for a in plan.attacks]:
        # in a cascade Square runs after the white-box attacks listed before it: what it finds, they missed
        earlier = [a.spec.name for a in plan.attacks][: [a.spec.name for a in plan.attacks].index("square")]
        for eps in plan.eps:
            missed = sum(r.correct and r.fooled[key("square", eps.label)]
                         and not any(r.fooled[key(name, eps.label)] for name in earlier) for r in rows)
            if earlier and missed:
                flags.append(f"at eps {eps.label} the black-box Square attack broke {missed} sample(s) that the "
                             f"white-box attacks before it ({', '.join(earlier)}) missed: gradients may be masked "
                             f"or the white-box attacks too weak")
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
        if sum(worst[b]) > sum(worst[a]):
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
    checked = [r for r in rows if r.grad_checked]
    zero, nan = sum(r.zero_grad for r in checked), sum(r.nan_grad for r in checked)
    if checked and (zero + nan) / len(checked) >= MASKED_GRAD_FRACTION:
        flags.append(f"input gradients are zero on {zero} and NaN/Inf on {nan} of {len(checked)} checked samples: "
                     f"possible gradient masking (gradient attacks may overstate robustness; compare with --square)")
    # 5. The library returned examples that failed the re-check.
    for planned in plan.attacks:
        spec = planned.spec
        for eps in (plan.eps if spec.kind is Kind.BUDGET else plan.eps[:1]):
            bad = sum(r.violations[key(spec.name, eps.label)] for r in rows)
            if bad:
                where = f" at eps {eps.label}" if spec.kind is Kind.BUDGET else ""
                flags.append(f"{spec.name}{where}: {bad} returned example(s) failed the re-check (outside [0,1], "
                             f"over the budget or not finite) and were counted as not successful")
    for r in noise:
        if r["violations"]:
            flags.append(f"noise at sigma {r['sigma_label']}: {r['violations']} noisy input(s) outside [0,1]")
    return flags


def summarise(rows: Sequence[Any], plan: AttackPlan, *, seed: int, per_sample: bool,
              complete: bool = True) -> dict[str, Any]:
    """The ``analyses.attacks`` section from per-sample rows (also the partial section on Ctrl-C)."""
    from robaudit.analyses.runner import row_dict

    n = len(rows)
    clean = sum(r.correct for r in rows) / n if n else None
    results = result_rows(rows, plan)
    worst = worst_case(rows, plan)
    worst_acc = {label: (sum(w) / n if w is not None and n else None) for label, w in worst.items()}
    noise = noise_rows(rows, plan)
    series: dict[str, list[float | None]] = {}
    for r in results:
        series.setdefault(r["attack"], []).append(r["robust_accuracy"])
    series["worst_case"] = [worst_acc[e.label] for e in plan.eps]
    minimal = [a.spec.name for a in plan.attacks if a.spec.kind is Kind.MINIMAL]
    section: dict[str, Any] = {
        "complete": complete,
        "norm": plan.norm.value,
        "n": n,
        "battery": plan.battery,
        "attacks_run": [a.spec.name for a in plan.attacks],
        "targeted": plan.targeted is not TargetedMode.UNTARGETED,
        "prune": plan.prune.value,
        "seed": seed,
        "eps": [{"label": e.label, "value": e.value} for e in plan.eps],
        "clean_accuracy": clean,
        "results": results,
        "worst_case": worst_acc,
        "curve": {"norm": plan.norm.value, "eps": [e.value for e in plan.eps], "labels": [e.label for e in plan.eps],
                  "clean_accuracy": clean, "series": series,
                  "distance_curves": {name: c for name in minimal
                                      if (c := distance_curve(rows, plan, name)) is not None}},
        "distances": {name: distance_summary(rows, plan, name) for name in minimal},
        "noise": noise,
        "gradient_check": {"n": sum(r.grad_checked for r in rows), "zero": sum(r.zero_grad for r in rows),
                           "nan": sum(r.nan_grad for r in rows)},
        "sanity": sanity(rows, plan, results, worst, noise),
    }
    if per_sample:
        section["per_sample"] = [row_dict(r) for r in rows]
    return section
