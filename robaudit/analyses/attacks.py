"""``robaudit attack``: the attack battery (torchattacks), robust accuracy per attack and eps.

Attacks run in pixel space [0,1] on the adapted model (normalisation inside).
Every returned adversarial example is re-checked (budget, box, success on the
model) before it counts. Settings follow Johansson et al. 2022, Sec. 4.2.2 and
Hoffman et al. 2019, Sec. 3.2 / App. F (white noise, FGSM, PGD, CW). Which
samples each attack runs on (the pruning of issue 16, AutoAttack's cascade by
default) and what each number then means: :mod:`robaudit.attacks.battery` and
:mod:`robaudit.attacks.summary`.

No torch at module level: the engine lives in :mod:`robaudit.attacks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich import box
from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, Metric, opt
from robaudit.kinds import AttackBattery, AttackNorm, Better, Fraction, Fractions, Pruning
from robaudit.numfmt import fmt

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.analyses.runner import Batch
    from robaudit.attacks.plan import AttackPlan
    from robaudit.context import AuditContext


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
    battery: AttackBattery | None = opt(None, "Preset: quick (FGSM + PGD-10, 2 eps), standard, full. Default when "
                                        "no attack flag: quick.", kind=AttackBattery)
    eps: tuple | None = opt(None, "Budget or grid, fractions allowed, e.g. 8/255 or 0,2/255,4/255,8/255 "
                                  "(default: 8/255 linf, 0.5 l2; the battery's grid with --battery).",
                            kind=Fractions, min=0.0)
    norm: AttackNorm | None = opt(None, "Threat model norm (default: linf, or l2 for --pgdl2).", kind=AttackNorm)
    alpha: float | None = opt(None, "PGD/TPGD step size, e.g. 2/255 (default: 2.5*eps/steps).", kind=Fraction,
                              min=0.0)
    steps: int | None = opt(None, "Iterations (default: PGD/TPGD/APGD/FAB 10, CW 1000, DeepFool 50, or the "
                                  "battery's).", kind=int, min=1)
    restarts: int | None = opt(None, "Random restarts (PGD/TPGD: best of N; APGD/FAB/Square: native).", kind=int,
                               min=1)
    queries: int | None = opt(None, "Square: queries per sample (default: 5000).", kind=int, min=1)
    targeted: bool = opt(False, "Targeted attacks (a random target class per sample, fixed by --seed).")
    n_classes: int | None = opt(None, "Classes for FAB/APGD-T/AutoAttack (default: the model's).", kind=int, min=2)
    allow_large_eps: bool = opt(False, "Allow linf eps > 1 (normally a typo for eps/255).")
    per_sample: bool = opt(False, "Include one row per sample (what each attack found) in the JSON.")
    plot: str | None = opt(None, "Write the accuracy-vs-eps curve to this PNG.", kind=str)
    sigmas: tuple | None = opt(None, "Noise standard deviations (default: 0.05,0.1,0.2,0.4).", kind=Fractions,
                               min=0.0)
    prune: Pruning = opt(Pruning.PER_ATTACK, "Samples the battery skips: per-attack (misclassified ones and "
                         "those the same attack broke at a smaller eps: each row is its attack's own robust "
                         "accuracy, exactly), cascade (also those an earlier attack broke, as AutoAttack does: "
                         "fastest, and each row then counts the attacks before it), exhaustive (only the "
                         "misclassified ones: every correct sample at every eps; slowest).")


@dataclass(frozen=True)
class Row:
    """What the battery found on one sample. Keys ``attack@eps`` (e.g. ``pgd@8/255``) index the
    per-attack dicts; see :class:`robaudit.attacks.battery.Found` for their meaning."""

    index: int
    label: int
    pred: int
    correct: bool
    target: int | None
    grad_checked: bool
    zero_grad: bool
    nan_grad: bool
    attacked: dict
    fooled: dict
    success: dict
    violations: dict
    dist_linf: dict
    dist_l2: dict
    distance: dict
    min_dist_linf: dict
    min_dist_l2: dict
    robust: dict
    noise_correct: dict
    noise_linf: dict
    noise_l2: dict
    noise_violation: dict
    seconds: dict


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compute_rows(model, batch: "Batch", plan: "AttackPlan", *, seed: int, n_total: int,
                 advance=lambda n: None) -> list[Row]:
    """The battery on one batch, one Row per sample (keyed randomness: any batch order gives the same rows)."""
    from robaudit.attacks.battery import key, run_battery

    f = run_battery(model, batch.index, batch.x, batch.y, plan, seed=seed, n_total=n_total, advance=advance)
    b, at = len(batch.y), f.found
    robust = {e.label: f.correct.clone() for e in plan.eps}
    for e in plan.eps:  # the worst case: fooled by no attack within eps
        for a in plan.attacks:
            robust[e.label] &= ~at[key(a.spec.name, e.label)].fooled
    return [Row(
        index=int(index), label=int(label), pred=int(f.pred[i]), correct=bool(f.correct[i]),
        target=int(f.target[i]) if f.target is not None else None, grad_checked=bool(f.grad_checked[i]),
        zero_grad=bool(f.zero_grad[i]), nan_grad=bool(f.nan_grad[i]),
        attacked={k: bool(v.attacked[i]) for k, v in at.items()}, fooled={k: bool(v.fooled[i]) for k, v in at.items()},
        success={k: bool(v.success[i]) for k, v in at.items()},
        violations={k: int(v.violations[i]) for k, v in at.items()},
        dist_linf={k: _num(float(v.dist_linf[i])) for k, v in at.items()},
        dist_l2={k: _num(float(v.dist_l2[i])) for k, v in at.items()},
        distance={k: _num(float(v[i])) for k, v in f.distance.items()},
        min_dist_linf={k: _num(float(lin[i])) if s[i] else None for k, (s, lin, _) in f.minimal.items()},
        min_dist_l2={k: _num(float(l2[i])) if s[i] else None for k, (s, _, l2) in f.minimal.items()},
        robust={label: bool(r[i]) for label, r in robust.items()},
        noise_correct={k: bool(v[0][i]) for k, v in f.noise.items()},
        noise_linf={k: _num(float(v[1][i])) for k, v in f.noise.items()},
        noise_l2={k: _num(float(v[2][i])) for k, v in f.noise.items()},
        noise_violation={k: bool(v[3][i]) for k, v in f.noise.items()},
        seconds={**{k: v.seconds / b for k, v in at.items()}, **{f"noise@{k}": v[4] / b for k, v in f.noise.items()}})
        for i, (index, label) in enumerate(zip(batch.index.tolist(), batch.y.tolist()))]


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Run the planned battery batch by batch; returns the ``analyses.attacks`` section.

    On Ctrl-C the finished batches are attached to the KeyboardInterrupt as
    ``exc.partial_section`` (marked ``"complete": false``) and it is re-raised.
    """
    import torch

    from robaudit.analyses.runner import collect_rows
    from robaudit.attacks.plan import make_plan
    from robaudit.attacks.summary import summarise
    from robaudit.errors import DataError

    data = ctx.require_data("attack")
    plan = make_plan(options, ctx.model.num_classes, float64=ctx.dtype == torch.float64)
    if len(data) == 0:
        raise DataError("attack: the dataset is empty")
    if (data.y < 0).any() or (data.y >= ctx.model.num_classes).any():
        raise DataError(f"attack: labels must be in 0..{ctx.model.num_classes - 1} for a "
                        f"{ctx.model.num_classes}-class model (unknown labels are -1)")
    n, model = len(data), ctx.model.module
    try:
        rows = collect_rows(ctx, "attacks", lambda b: compute_rows(model, b, plan, seed=ctx.seed, n_total=n,
                                                                   advance=lambda k: None),
                            description=f"attacks ({plan.prune.value})", work_per_sample=plan.runs + len(plan.sigmas),
                            freeze=True, parallel=True)
    except KeyboardInterrupt as exc:
        exc.partial_section = summarise(getattr(exc, "partial_rows", []), plan, seed=ctx.seed,  # type: ignore[attr-defined]
                                        per_sample=options.per_sample, complete=False)
        raise
    return summarise(rows, plan, seed=ctx.seed, per_sample=options.per_sample)


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
    if any(len(r.get("after") or []) > 1 for r in rows):
        out.append(Text("cascade: each attack ran only on the samples the attacks above it left unbroken, so its "
                        "robust accuracy counts theirs too (--prune per-attack: each attack alone)", style="dim"))
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

def _decimal_forms(label: str, value: float | None) -> list[str]:
    """Decimal spellings of an eps (6 and 4 significant digits) the gate also accepts."""
    forms = []
    if value is not None:
        for form in (f"{value:.6g}", f"{value:.4g}"):
            if form != label and form not in forms:
                forms.append(form)
    return forms


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """Canonical metric names, eps spelled as the user typed it: ``attacks.pgd@8/255.robust_accuracy``,
    ``attacks.worst_case@8/255``, ``attacks.clean_accuracy``, ``attacks.cw.median_l2``, ``attacks.noise@0.1.accuracy``.

    Accuracies and distances: higher is better; success rates and violations: lower is better.
    """
    out: dict[str, Metric] = {}
    if section.get("clean_accuracy") is not None:
        out["attacks.clean_accuracy"] = Metric(section["clean_accuracy"], Better.HIGHER)
    for r in section.get("results", []):
        key = r.get("eps_label") or f"{r['eps']:.6g}"
        ok = r.get("status") == "ok"
        out[f"attacks.{r['attack']}@{key}.robust_accuracy"] = Metric(r["robust_accuracy"] if ok else None,
                                                                       Better.HIGHER)
        if r.get("success_rate") is not None or not ok:
            out[f"attacks.{r['attack']}@{key}.success_rate"] = Metric(r.get("success_rate") if ok else None,
                                                                        Better.LOWER)
    worst = (section.get("worst_case") or {})
    for label, acc in worst.items():
        out[f"attacks.worst_case@{label}"] = Metric(acc, Better.HIGHER)
    if worst:
        # any missing worst case (an attack failed) leaves the minimum undefined, never optimistic
        values = list(worst.values())
        out["attacks.worst_case.min"] = Metric(None if any(v is None for v in values) else min(values), Better.HIGHER)
    for name, d in (section.get("distances") or {}).items():
        for stat in ("median_l2", "mean_l2", "median_linf", "mean_linf"):
            if stat in d:
                out[f"attacks.{name}.{stat}"] = Metric(d.get(stat), Better.HIGHER)
        if "success_rate" in d:
            out[f"attacks.{name}.success_rate"] = Metric(d.get("success_rate"), Better.LOWER)
    for r in section.get("noise") or []:
        out[f"attacks.noise@{r['sigma_label']}.accuracy"] = Metric(r.get("accuracy"), Better.HIGHER)
    out["attacks.violations"] = Metric(float(sum(r.get("violations") or 0 for r in section.get("results", []))),
                                       Better.LOWER, "samples")
    return out


def aliases(section: Mapping[str, Any]) -> dict[str, str]:
    """Decimal spellings of every eps-labelled metric (``attacks.pgd@0.0313725.robust_accuracy``) → canonical."""
    out: dict[str, str] = {}
    values = {e["label"]: e["value"] for e in section.get("eps", [])}
    for r in section.get("results", []):
        label = r.get("eps_label") or f"{r['eps']:.6g}"
        for form in _decimal_forms(label, r.get("eps")):
            for stat in ("robust_accuracy", "success_rate"):
                out[f"attacks.{r['attack']}@{form}.{stat}"] = f"attacks.{r['attack']}@{label}.{stat}"
    for label in (section.get("worst_case") or {}):
        for form in _decimal_forms(label, values.get(label)):
            out[f"attacks.worst_case@{form}"] = f"attacks.worst_case@{label}"
    for r in section.get("noise") or []:
        for form in _decimal_forms(r["sigma_label"], r.get("sigma")):
            out[f"attacks.noise@{form}.accuracy"] = f"attacks.noise@{r['sigma_label']}.accuracy"
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
    noise = [r for r in section.get("noise") or [] if r.get("accuracy") is not None]
    if noise:  # noise σ is not an ℓp budget: its own panel, beside the eps curves
        fig, (ax, nax) = plt.subplots(1, 2, figsize=(9.6, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    else:
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
        if noise:
            nax.plot([r["sigma"] for r in noise], [r["accuracy"] for r in noise], marker="s", color="tab:gray")
            if curve.get("clean_accuracy") is not None:
                nax.axhline(curve["clean_accuracy"], color="gray", linestyle=":")
            nax.set_xlabel("Gaussian noise std σ")
            nax.set_ylabel("accuracy")
            nax.set_title("random noise", fontsize=10)
            nax.set_ylim(-0.02, 1.02)
            nax.grid(alpha=0.3)
        if eps and len(eps) <= 8:
            ax.set_xticks(eps, labels, rotation=30)
        ax.set_xlabel(f"eps ({curve.get('norm', section.get('norm', ''))})")
        ax.set_ylabel("robust accuracy")
        ax.set_title(f"attacks: robust accuracy vs eps · n={section.get('n')}"
                     + (f" · battery {section.get('battery')}" if section.get("battery") else ""), fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def check(options: Options) -> None:
    """Reject invalid option combinations before any analysis runs (the model's class count and
    the run's dtype are checked in run)."""
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
    aliases=aliases,
    plot=plot,
    row=Row,
    sharded=True,
    # The audit's gate reads the worst case: its profiles attack only the survivors of the attacks already
    # run (AutoAttack's rule; the worst case is the same as without pruning). `full` keeps each attack's own
    # numbers exact, like the attack command.
    profiles={"quick": {"battery": "quick", "prune": "cascade"}, "standard": {"battery": "standard", "prune": "cascade"},
              "full": {"battery": "full"}},
)
