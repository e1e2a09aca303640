"""``robaudit attack``: the attack battery (torchattacks), robust accuracy per attack and eps.

Attacks run in pixel space [0,1] on the adapted model (normalisation inside).
Every returned adversarial example is re-checked (budget, box, success on the
model) before it counts. Settings follow Johansson et al. 2022, Sec. 4.2.2 and
Hoffman et al. 2019, Sec. 3.2 / App. F (white noise, FGSM, PGD, CW).

No torch at module level: the engine lives in :mod:`robaudit.attacks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich import box
from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, opt
from robaudit.report.terminal import fmt

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext

ATTACK_NAMES = ("fgsm", "pgd", "pgdl2", "tpgd", "square", "cw", "deepfool", "apgd", "apgdt", "fab", "autoattack")


@dataclass(frozen=True)
class Options:
    fgsm: bool = opt(False, "FGSM, one signed-gradient step (linf).")
    pgd: bool = opt(False, "PGD with random start (linf).")
    pgdl2: bool = opt(False, "PGD in l2.")
    tpgd: bool = opt(False, "TPGD: PGD on the KL divergence of the softmax (linf).")
    square: bool = opt(False, "Square: black-box random search (linf or l2).")
    cw: bool = opt(False, "Carlini-Wagner l2, minimal distance (no eps: accuracy read off its distances; slow).")
    deepfool: bool = opt(False, "DeepFool, minimal l2 distance (no eps; slow: one sample at a time).")
    apgd: bool = opt(False, "APGD-CE (linf or l2).")
    apgdt: bool = opt(False, "APGD-T, targeted DLR loss (linf or l2).")
    fab: bool = opt(False, "FAB, minimal distance, accepted up to the largest eps (linf or l2).")
    autoattack: bool = opt(False, "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (slow).")
    noise: bool = opt(False, "Gaussian white-noise baseline over --sigmas, clipped to [0,1].")
    battery: str | None = opt(None, "Preset: quick (FGSM + PGD-10, 2 eps), standard, full. Default when no attack flag: quick.",
                              choices=("quick", "standard", "full"))
    eps: str | None = opt(None, "Budget or grid, fractions allowed, e.g. 8/255 or 0,2/255,4/255,8/255 "
                                "(default: 8/255 linf, 0.5 l2; the battery's grid with --battery).")
    norm: str | None = opt(None, "Threat model norm (default: linf, or l2 for --pgdl2).", choices=("linf", "l2"))
    alpha: str | None = opt(None, "PGD/TPGD step size, e.g. 2/255 (default: 2.5*eps/steps).")
    steps: int | None = opt(None, "Iterations (default: PGD/TPGD/APGD/FAB 10, CW 1000, DeepFool 50, or the battery's).", min=1)
    restarts: int | None = opt(None, "Random restarts (PGD/TPGD: best of N; APGD/FAB/Square: native).", min=1)
    queries: int | None = opt(None, "Square: queries per sample (default: 5000).", min=1)
    targeted: bool = opt(False, "Targeted attacks (a random target class per sample, fixed by --seed).")
    n_classes: int | None = opt(None, "Classes for FAB/APGD-T/AutoAttack (default: the model's).", min=2)
    allow_large_eps: bool = opt(False, "Allow linf eps > 1 (normally a typo for eps/255).")
    per_sample: bool = opt(False, "Include per-sample success flags and distances in the JSON.")
    plot: str | None = opt(None, "Write the accuracy-vs-eps curve to this PNG.")
    sigmas: str | None = opt(None, "Noise standard deviations (default: 0.05,0.1,0.2,0.4).")


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Run the planned attacks; returns the ``analyses.attacks`` section.

    On Ctrl-C the finished part is attached to the KeyboardInterrupt as
    ``exc.partial_section`` (marked ``"complete": false``) and it is re-raised.
    """
    import torch

    from robaudit.attacks.noise import run_noise
    from robaudit.attacks.plan import make_plan
    from robaudit.attacks.registry import Kind
    from robaudit.attacks.run import clean_pass, make_targets, resolve_params, run_attack, seed_for
    from robaudit.attacks.summary import Ran
    from robaudit.errors import DataError

    data = ctx.require_data("attack")
    plan = make_plan(options, ctx.model.num_classes)
    if len(data) == 0:
        raise DataError("attack: the dataset is empty")
    if (data.y < 0).any() or (data.y >= ctx.model.num_classes).any():
        raise DataError(f"attack: labels must be in 0..{ctx.model.num_classes - 1} for a "
                        f"{ctx.model.num_classes}-class model (unknown labels are -1)")
    model = ctx.model.module
    torch.manual_seed(ctx.seed)
    common = dict(batch_size=ctx.batch_size, device=ctx.device, dtype=ctx.dtype)
    clean = clean_pass(model, data, **common)
    targets = make_targets(data.y, ctx.model.num_classes, seed_for(ctx.seed, "targets")) if plan.targeted else None
    runs: list[Ran] = []
    noise_outcomes: list = []
    n = len(data)
    try:
        for planned in plan.attacks:
            spec = planned.spec
            seed = seed_for(ctx.seed, spec.name)
            # MINIMAL attacks run once (FAB with the largest eps as its cap), BUDGET ones per eps.
            budgets = [None] if spec.kind is Kind.MINIMAL else list(plan.eps)
            with ctx.progress(f"{spec.name}", n * len(budgets)) as task:
                for eps in budgets:
                    value = eps.value if eps is not None else (plan.eps[-1].value if plan.eps else None)
                    params = resolve_params(spec, norm=plan.norm, eps=value, alpha=planned.alpha, steps=planned.steps,
                                            restarts=planned.restarts, queries=planned.queries,
                                            n_classes=plan.n_classes, seed=seed, targeted=plan.targeted)
                    outcome = run_attack(model, data, spec, params, seed=seed, targets=targets,
                                         advance=task.advance, **common)
                    runs.append(Ran(planned, eps, outcome))
        if plan.sigmas:
            with ctx.progress("noise", n * len(plan.sigmas)) as task:
                for sigma in plan.sigmas:
                    out = run_noise(model, data, sigma.value, seed=seed_for(ctx.seed, "noise"),
                                    advance=task.advance, **common)
                    noise_outcomes.append((sigma, out))
    except KeyboardInterrupt as exc:
        exc.partial_section = build_section(plan, clean, runs, noise_outcomes, data, options,  # type: ignore[attr-defined]
                                            seed=ctx.seed, complete=False)
        raise
    return build_section(plan, clean, runs, noise_outcomes, data, options, seed=ctx.seed, complete=True)


def build_section(plan, clean, runs, noise_outcomes, data, options: Options, *, seed: int,
                  complete: bool) -> dict[str, Any]:
    """The JSON-safe section from finished runs (also used for the partial section on Ctrl-C)."""
    from robaudit.attacks.registry import Kind
    from robaudit.attacks.summary import distance_curve, distance_summary, row, sanity, worst_case

    n = len(clean.correct)
    rows: list[dict[str, Any]] = []
    for ran in runs:
        if ran.planned.spec.kind is Kind.MINIMAL:
            rows.extend(row(ran, plan, eps, clean) for eps in plan.eps)
        else:
            rows.append(row(ran, plan, ran.eps, clean))
    worst = worst_case(runs, plan, clean)
    worst_acc = {label: (int(r.sum()) / n if r is not None else None) for label, r in worst.items()}
    noise_rows = []
    for sigma, out in noise_outcomes:
        noise_rows.append({
            "sigma": sigma.value, "sigma_label": sigma.label, "accuracy": int(out.correct.sum()) / n,
            "mean_l2": float(out.dist_l2.mean()), "mean_linf": float(out.dist_linf.mean()),
            "seconds": round(out.seconds, 4), "violations": out.violations})
    series: dict[str, list[float | None]] = {}
    for r in rows:
        series.setdefault(r["attack"], [None] * len(plan.eps))
        series[r["attack"]][[e.value for e in plan.eps].index(r["eps"])] = r["robust_accuracy"]
    series["worst_case"] = [worst_acc[e.label] for e in plan.eps]
    minimal = [ran for ran in runs if ran.planned.spec.kind is Kind.MINIMAL]
    section: dict[str, Any] = {
        "complete": complete,
        "norm": plan.norm.value,
        "n": n,
        "battery": plan.battery,
        "attacks_run": plan.names,
        "targeted": plan.targeted,
        "seed": seed,
        "eps": [{"label": e.label, "value": e.value} for e in plan.eps],
        "clean_accuracy": int(clean.correct.sum()) / n,
        "results": rows,
        "worst_case": worst_acc,
        "curve": {"norm": plan.norm.value, "eps": [e.value for e in plan.eps], "labels": [e.label for e in plan.eps],
                  "clean_accuracy": int(clean.correct.sum()) / n, "series": series,
                  "distance_curves": {ran.planned.spec.name: c for ran in minimal
                                      if (c := distance_curve(ran, plan, clean)) is not None}},
        "distances": {ran.planned.spec.name: distance_summary(ran, plan, clean) for ran in minimal},
        "noise": noise_rows,
        "gradient_check": {"n": len(clean.zero_grad), "zero": int(clean.zero_grad.sum()),
                           "nan": int(clean.nan_grad.sum())},
        "sanity": sanity(runs, plan, clean, rows, worst, noise_rows),
    }
    if getattr(options, "per_sample", False):
        section["per_sample"] = per_sample(plan, clean, runs, noise_outcomes, worst, data)
    return section


def per_sample(plan, clean, runs, noise_outcomes, worst, data) -> list[dict[str, Any]]:
    """Per-sample flags: fooled per attack@eps, distances of MINIMAL attacks, robust per eps."""
    import math

    from robaudit.attacks.registry import Kind
    from robaudit.attacks.summary import fooled_at

    columns: dict[str, list[bool]] = {}
    for ran in runs:
        for eps in (plan.eps if ran.planned.spec.kind is Kind.MINIMAL else [ran.eps]):
            fooled = fooled_at(ran, plan, eps)
            if fooled is not None:
                columns[f"{ran.planned.spec.name}@{eps.label}"] = fooled.tolist()
    distances = {ran.planned.spec.name: ran.outcome.distance(plan.norm).tolist() for ran in runs
                 if ran.planned.spec.kind is Kind.MINIMAL and ran.outcome.status == "ok"}
    found = {ran.planned.spec.name: ran.outcome.misclassified.tolist() for ran in runs
             if ran.planned.spec.kind is Kind.MINIMAL and ran.outcome.status == "ok"}
    robust = {label: r.tolist() for label, r in worst.items() if r is not None}
    noisy = {sigma.label: out.correct.tolist() for sigma, out in noise_outcomes}
    out = []
    for i in range(len(clean.correct)):
        entry = {"index": int(data.indices[i]), "label": int(data.y[i]), "pred": int(clean.pred[i]),
                 "correct": bool(clean.correct[i]),
                 "fooled": {k: bool(v[i]) for k, v in columns.items()},
                 "distance": {k: (float(v[i]) if found[k][i] and math.isfinite(v[i]) else None)
                              for k, v in distances.items()},
                 "robust": {k: bool(v[i]) for k, v in robust.items()}}
        if noisy:
            entry["noise_correct"] = {k: bool(v[i]) for k, v in noisy.items()}
        out.append(entry)
    return out


# ---------------------------------------------------------------- rendering (JSON only)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def render(section: Mapping[str, Any]) -> list:
    """Rich renderables built only from the JSON section."""
    out: list = []
    norm = section.get("norm", "linf")
    sym = {"linf": "ℓ∞", "l2": "ℓ2"}.get(norm, norm)
    title = (f"attacks ({sym}, n={section.get('n')}, clean accuracy {_pct(section.get('clean_accuracy'))}"
             + (f", battery {section['battery']}" if section.get("battery") else "") + ")")
    rows = section.get("results", [])
    failed = any(r.get("status") != "ok" for r in rows)
    table = Table(title=Text(title, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    columns = [("attack", "left"), ("eps", "right"), ("steps", "right"), ("robust", "right"), ("success", "right"),
               ("mean ℓ∞", "right"), ("mean ℓ2", "right"), ("sec", "right"), ("viol", "right")]
    if failed:
        columns.append(("status", "left"))
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col == "attack")
    for r in rows:
        name = r["attack"] + (" (T)" if r.get("targeted") else "")
        cells = [name, r.get("eps_label") or fmt(r.get("eps")), fmt(r.get("steps")),
                 _pct(r.get("robust_accuracy")), _pct(r.get("success_rate")), fmt(r.get("mean_linf"), 3),
                 fmt(r.get("mean_l2"), 3), f"{r['seconds']:.1f}" + ("*" if r.get("shared_run") else ""),
                 Text(str(r.get("violations", 0)), style="bold red" if r.get("violations") else "")]
        if failed:  # the reason is listed under the table (sanity)
            cells.append(Text("ok", style="green") if r.get("status") == "ok" else Text("failed", style="bold red"))
        table.add_row(*cells)
    worst = section.get("worst_case") or {}
    for label, acc in worst.items():
        table.add_row(Text("worst case", style="bold"), label, "", Text(_pct(acc), style="bold"),
                      *[""] * (len(columns) - 4))
    if rows:
        out.append(table)
    if any(r.get("shared_run") for r in rows):
        out.append(Text("* minimal-distance attack: one run, robust accuracy read off its distances at each eps",
                        style="dim"))
    distances = section.get("distances") or {}
    if distances:
        dt = Table(title=Text("minimal adversarial distances (successful, correctly classified samples)", style="bold"),
                   title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("attack", "searched", "success", "median ℓ2", "mean ℓ2", "median ℓ∞", "mean ℓ∞"):
            dt.add_column(col, justify="left" if col in ("attack", "searched") else "right")
        for name, d in distances.items():
            dt.add_row(name, d.get("searched_norm", ""), _pct(d.get("success_rate")), fmt(d.get("median_l2")),
                       fmt(d.get("mean_l2")), fmt(d.get("median_linf")), fmt(d.get("mean_linf")))
        out.append(dt)
    noise = section.get("noise") or []
    if noise:
        nt = Table(title=Text("Gaussian white noise (clipped to [0,1]), accuracy by sigma", style="bold"),
                   title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("sigma", "accuracy", "mean ℓ2", "mean ℓ∞", "time s"):
            nt.add_column(col, justify="right")
        for r in noise:
            nt.add_row(r["sigma_label"], _pct(r["accuracy"]), fmt(r["mean_l2"]), fmt(r["mean_linf"]),
                       f"{r['seconds']:.2f}")
        out.append(nt)
    if section.get("complete") is False:
        out.append(Text("attacks: INCOMPLETE (interrupted), rows above are what finished", style="bold red"))
    for flag in section.get("sanity") or []:
        out.append(Text(f"sanity: {flag}", style="yellow"))
    return out


# ---------------------------------------------------------------- gate metrics

def _eps_keys(label: str, value: float | None) -> list[str]:
    """The label as typed plus decimal aliases (6 and 4 significant digits)."""
    keys = [label]
    if value is not None:
        for form in (f"{value:.6g}", f"{value:.4g}"):
            if form not in keys:
                keys.append(form)
    return keys


def metrics(section: Mapping[str, Any]) -> dict[str, float]:
    """Gate aliases, e.g. ``attacks.pgd@8/255.robust_accuracy``, ``attacks.worst_case@8/255``
    (also ``@0.0313725`` / ``@0.03137``), ``attacks.clean_accuracy``, ``attacks.cw.median_l2``."""
    out: dict[str, float] = {}
    if section.get("clean_accuracy") is not None:
        out["attacks.clean_accuracy"] = section["clean_accuracy"]
    for r in section.get("results", []):
        if r.get("status") != "ok":
            continue
        for key in _eps_keys(r.get("eps_label") or f"{r['eps']:.6g}", r.get("eps")):
            out[f"attacks.{r['attack']}@{key}.robust_accuracy"] = r["robust_accuracy"]
            if r.get("success_rate") is not None:
                out[f"attacks.{r['attack']}@{key}.success_rate"] = r["success_rate"]
    values = {e["label"]: e["value"] for e in section.get("eps", [])}
    worst = [v for v in (section.get("worst_case") or {}).values() if v is not None]
    for label, acc in (section.get("worst_case") or {}).items():
        if acc is None:
            continue
        for key in _eps_keys(label, values.get(label)):
            out[f"attacks.worst_case@{key}"] = acc
    if worst:
        out["attacks.worst_case.min"] = min(worst)
    for name, d in (section.get("distances") or {}).items():
        for stat in ("median_l2", "mean_l2", "median_linf", "mean_linf", "success_rate"):
            if d.get(stat) is not None:
                out[f"attacks.{name}.{stat}"] = d[stat]
    for r in section.get("noise") or []:
        for key in _eps_keys(r["sigma_label"], r.get("sigma")):
            out[f"attacks.noise@{key}.accuracy"] = r["accuracy"]
    out["attacks.violations"] = float(sum(r.get("violations") or 0 for r in section.get("results", [])))
    return out


# ---------------------------------------------------------------- plot

def plot(section: Mapping[str, Any], path: str) -> None:
    """Robust accuracy vs eps: one line per attack, the worst case in bold, minimal
    attacks as dense dashed curves, clean accuracy as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = section.get("curve") or {}
    eps, labels = curve.get("eps") or [], curve.get("labels") or []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        for name, accs in (curve.get("series") or {}).items():
            if name == "worst_case" or name in (curve.get("distance_curves") or {}):
                continue
            pts = [(e, a) for e, a in zip(eps, accs) if a is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, zorder=3)
        for name, dense in (curve.get("distance_curves") or {}).items():
            ax.plot(dense["eps"], dense["robust_accuracy"], linestyle="--", label=f"{name} (from distances)")
        worst = [(e, a) for e, a in zip(eps, (curve.get("series") or {}).get("worst_case") or []) if a is not None]
        if worst:
            # drawn wide and light underneath, so attacks that equal it stay visible
            ax.plot(*zip(*worst), color="black", linewidth=6, alpha=0.25, zorder=1, label="worst case")
        if curve.get("clean_accuracy") is not None:
            ax.axhline(curve["clean_accuracy"], color="gray", linestyle=":", label="clean")
        if eps and len(eps) <= 8:
            ax.set_xticks(eps, labels, rotation=30)
        ax.set_xlabel(f"eps ({curve.get('norm', section.get('norm', ''))})")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def check(options: Options) -> None:
    """Reject invalid flag combinations before any analysis runs (the model's class count is checked in run)."""
    import sys

    from robaudit.attacks.plan import make_plan

    make_plan(options, sys.maxsize)


ANALYSIS = Analysis(
    check=check,
    name="attacks",
    command="attack",
    help="Attack battery (torchattacks): robust accuracy per attack and eps, worst case, re-checked examples.",
    options=Options,
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    profiles={"quick": {"battery": "quick"}, "standard": {"battery": "standard"}, "full": {"battery": "full"}},
)
