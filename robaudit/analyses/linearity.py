"""``robaudit linearity``: deviation from local linearity along random and adversarial directions
(Roth et al. 2019, Sec. 5.3, Fig. 2), σ_max of the logit Jacobian along the same paths, and a
per-sample linearity radius users can gate on.

The engine is :mod:`robaudit.geometry.linearity`; this module types the options, streams the data
through the shared batch loop and turns the per-sample rows into a section, metrics and a plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, Fractions, Metric, opt
from robaudit.errors import UsageError
from robaudit.kinds import Better
from robaudit.numfmt import fmt
from robaudit.stats import quantile
from robaudit.stats import summary as summarize

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.analyses.runner import Batch
    from robaudit.context import AuditContext

KINDS = ("random", "adversarial")
#: Quantiles kept per radius (the plot draws the 25–75 % and 5–95 % bands).
BANDS = (("p05", 0.05), ("p25", 0.25), ("p75", 0.75))
#: Memory budget (bytes) for the directions and points of one batch.
POINT_BUDGET = 256 * 2**20


@dataclass(frozen=True)
class Options:
    radii: tuple = opt((0.1, 0.25, 0.5, 1.0, 2.0), "ℓ2 radii of the perturbations in pixel units ([0,1] images), "
                       "increasing; fractions such as 64/255 allowed.", kind=Fractions, min=0.0)
    tol: float = opt(0.1, "Relative deviation above which the linear model fails: the linearity radius is the "
                     "smallest radius where ‖φ(x+rz)−φ(x)−J·rz‖ / ‖φ(x+rz)−φ(x)‖ exceeds it.", min=0.0)
    bisection_steps: int = opt(10, "Bisection steps refining the linearity radius between grid radii.", min=0)
    adversarial: bool = opt(True, "Also measure along ℓ2 PGD directions (one attack per radius).")
    steps: int = opt(10, "PGD steps for the adversarial directions (step size 2.5·r/steps, no random start).",
                     min=1)
    sigma_max: bool = opt(True, "Compute σ_max of the logit Jacobian at every point (C backward passes each).")
    layer: str | None = opt(None, "φ = the output of this named layer (as 'robaudit info' lists it, e.g. "
                            "net.fc2 or fc2) instead of the logits.", kind=str)
    max_samples: int | None = opt(None, "Use at most this many samples (the first ones) [default: all].",
                                  kind=int, min=1)
    per_sample: bool = opt(True, "Include one row per sample in the report.")
    plot: str | None = opt(None, "Write deviation, relative deviation and σ_max against radius to this PNG.",
                           kind=str)


@dataclass(frozen=True)
class Row:
    """One sample: its linearity radius and, per direction kind, one entry per radius."""

    index: int
    label: int
    pred: int
    linearity_radius: float | None
    beyond_max: bool
    radius_by: str | None
    random_radius: float | None
    adversarial_radius: float | None
    random: list
    adversarial: list


def check(options: Options) -> None:
    """Reject option values that cannot work whatever the model (UsageError, exit 2)."""
    radii = options.radii
    if any(r <= 0 for r in radii):
        raise UsageError(f"--radii: expected positive radii, got {','.join(f'{r:g}' for r in radii)}")
    if any(b <= a for a, b in zip(radii, radii[1:])):
        raise UsageError(f"--radii: expected strictly increasing radii, got {','.join(f'{r:g}' for r in radii)}")
    if options.tol <= 0:
        raise UsageError("--tol: expected a positive relative deviation, got 0")


def _label(r: float) -> str:
    return f"{r:.6g}"


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def compute_rows(model, phi, batch: "Batch", spec) -> list[Row]:
    """The engine on one batch, as rows."""
    from robaudit.geometry.linearity import measure

    res = measure(model, phi, batch.x, batch.y, batch.index, spec)
    kinds = spec.kinds
    rows = []
    for i in range(batch.x.shape[0]):
        per_kind: dict[str, list] = {k: [] for k in KINDS}
        radius: dict[str, float | None] = {k: None for k in KINDS}
        finite: dict[str, float] = {}
        for k, kind in enumerate(kinds):
            for j, r in enumerate(spec.radii):
                entry = {"radius": r, "deviation": _num(res.deviation[i, k, j]),
                         "relative": _num(res.relative[i, k, j]), "sigma_max": _num(res.sigma_max[i, k, j])}
                if kind == "adversarial":
                    entry["trusted"] = bool(res.trusted[i, k, j])
                per_kind[kind].append(entry)
            value = float(res.radius[i, k])
            radius[kind] = _num(value)
            if math.isfinite(value):
                finite[kind] = value
        by = min(finite, key=finite.get) if finite else None
        rows.append(Row(index=int(batch.index[i]), label=int(batch.y[i]), pred=int(res.pred[i]),
                        linearity_radius=finite[by] if by else None, beyond_max=by is None, radius_by=by,
                        random_radius=radius["random"], adversarial_radius=radius["adversarial"],
                        random=per_kind["random"], adversarial=per_kind["adversarial"]))
    return rows


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Linearity of the first ``max_samples`` samples, batch by batch."""
    from robaudit.analyses.runner import run_rows
    from robaudit.geometry.common import feature_map
    from robaudit.geometry.linearity import LinearitySpec

    data = ctx.require_data("linearity")
    model = ctx.model.module
    phi = feature_map(model, options.layer)  # unknown layer: UsageError before any work
    spec = LinearitySpec(radii=tuple(options.radii), tol=options.tol, bisection_steps=options.bisection_steps,
                         pgd_steps=options.steps if options.adversarial else 0, sigma=options.sigma_max,
                         seed=ctx.seed)
    d = math.prod(data.sample_shape)
    per_row = 2 * len(spec.radii) * d * 4 * 8  # directions, points and their activations (float32, rough)
    rows_per_pass = max(1, min(ctx.batch_size, POINT_BUDGET // per_row))
    section = run_rows(ctx, "linearity", lambda b: compute_rows(model, phi, b, spec),
                       lambda rows: summarise(rows, options, spec.kinds), batch_size=rows_per_pass,
                       limit=options.max_samples)
    # the curvature analysis shows its second-order prediction beside the measured radius
    ctx.cache["linearity.radius"] = {int(r["index"]): r.get("linearity_radius")
                                     for r in section.get("per_sample") or []}
    return section


def _stats(values: list) -> dict[str, float | None]:
    out = summarize(values)
    for name, q in BANDS:
        out[name] = quantile(values, q)
    return out


def summarise(rows: list[Row], options: Options, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """The linearity section from the rows (pure)."""
    from robaudit.analyses.runner import row_dict

    radii = list(options.radii)
    r_max = radii[-1]
    curves: dict[str, list] = {}
    for kind in kinds:
        curve = []
        for j, r in enumerate(radii):
            entries = [getattr(row, kind)[j] for row in rows]
            used = [e for e in entries if e.get("trusted", True)]
            curve.append({"radius": r, "label": _label(r), "n": len(used),
                          "deviation": _stats([e["deviation"] for e in used]),
                          "relative": _stats([e["relative"] for e in used]),
                          "sigma_max": _stats([e["sigma_max"] for e in used]) if options.sigma_max else None})
        curves[kind] = curve
    beyond = [row.index for row in rows if row.beyond_max]
    # a sample never over tol has radius > r_max: censor it at r_max, so mean and median are lower bounds
    censored = [r_max if row.beyond_max else row.linearity_radius for row in rows]
    untrusted = sum(1 for row in rows for e in row.adversarial if not e.get("trusted", True))
    section: dict[str, Any] = {
        "radii": radii, "tol": options.tol, "bisection_steps": options.bisection_steps,
        "kinds": list(kinds), "phi": options.layer or "logits", "n": len(rows),
        "pgd_steps": options.steps if "adversarial" in kinds else None,
        "sigma_max_computed": options.sigma_max,
        "curves": curves,
        "linearity_radius": {**_stats(censored), "censored_at": r_max, "beyond_max": len(beyond),
                             "by_kind": {k: _stats(_censored_radii(rows, k, r_max)) for k in kinds}},
        "beyond_max": beyond,
        # over tol at every radius tried, down to the bisection's resolution: a kink exactly at x
        "zero_radius": sum(1 for row in rows if row.linearity_radius == 0),
        "untrusted_adversarial": untrusted,
    }
    if options.per_sample:
        section["per_sample"] = [row_dict(row) for row in rows]
    return section


def _censored_radii(rows: list[Row], kind: str, r_max: float) -> list[float]:
    """The ``kind`` linearity radii, r_max for samples never over tol; samples without any usable
    direction of that kind (every adversarial example untrusted) are left out."""
    out = []
    for row in rows:
        value = getattr(row, f"{kind}_radius")
        if value is not None:
            out.append(value)
        elif any(e.get("trusted", True) for e in getattr(row, kind)):
            out.append(r_max)
    return out


def render(section: Mapping[str, Any]) -> list:
    """Per-kind tables of deviation by radius, and the linearity radius, from the JSON section only."""
    head = f"linearity · φ = {section.get('phi')} · n={section.get('n')} · tol {fmt(section.get('tol'))}"
    out: list = [Text(head, style="bold")]
    for kind, curve in (section.get("curves") or {}).items():
        table = Table(title=f"{kind} directions", title_justify="left")
        for col in ("radius", "n", "deviation median", "deviation p95", "relative median", "relative p95",
                    "σ_max median"):
            table.add_column(col, justify="right")
        for e in curve:
            sig = (e.get("sigma_max") or {}).get("median")
            table.add_row(e["label"], str(e["n"]), fmt(e["deviation"].get("median")), fmt(e["deviation"].get("p95")),
                          fmt(e["relative"].get("median")), fmt(e["relative"].get("p95")), fmt(sig))
        out.append(table)
    lr = section.get("linearity_radius") or {}
    n, beyond = section.get("n") or 0, lr.get("beyond_max") or 0
    text = (f"linearity radius (relative deviation > {fmt(section.get('tol'))}): median {fmt(lr.get('median'))}, "
            f"p05 {fmt(lr.get('p05'))}, mean {fmt(lr.get('mean'))}")
    if beyond:
        text += f"; {beyond} of {n} sample(s) stay within tol up to the largest radius {fmt(lr.get('censored_at'))} " \
                "(counted at it: the statistics are lower bounds)"
    out.append(Text(text))
    by_kind = lr.get("by_kind") or {}
    if by_kind:
        out.append(Text("by direction: " + ", ".join(f"{k} median {fmt((v or {}).get('median'))}"
                                                     for k, v in by_kind.items()), style="dim"))
    if section.get("zero_radius"):
        out.append(Text(f"{section['zero_radius']} of {n} sample(s) have linearity radius 0: along some direction the "
                        "relative deviation exceeds tol at every radius tried, so φ has a kink exactly at x (a ReLU "
                        "input or a max-pool tie at exactly x, e.g. constant image backgrounds)", style="yellow"))
    if section.get("untrusted_adversarial"):
        out.append(Text(f"{section['untrusted_adversarial']} adversarial direction(s) failed the re-check "
                        "(outside [0,1], over budget, or no move) and were left out", style="yellow"))
    return out


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """linearity.radius.median and .p05 (the minimum over direction kinds), linearity.radius.KIND.median
    (higher is better); per kind and radius the median deviation, relative deviation and σ_max (lower is
    better); linearity.untrusted (lower is better). Radii never over tol count as the largest radius."""
    out: dict[str, Metric] = {}
    lr = section.get("linearity_radius") or {}
    out["linearity.radius.median"] = Metric(lr.get("median"), Better.HIGHER)
    out["linearity.radius.p05"] = Metric(lr.get("p05"), Better.HIGHER)
    for kind, stats in (lr.get("by_kind") or {}).items():
        out[f"linearity.radius.{kind}.median"] = Metric((stats or {}).get("median"), Better.HIGHER)
    for kind, curve in (section.get("curves") or {}).items():
        for e in curve:
            for stat in ("deviation", "relative", "sigma_max"):
                if e.get(stat) is not None:
                    out[f"linearity.{kind}@{e['label']}.{stat}"] = Metric(e[stat].get("median"), Better.LOWER)
    out["linearity.untrusted"] = Metric(float(section.get("untrusted_adversarial") or 0), Better.LOWER, "directions")
    return out


def plot(section: Mapping[str, Any], path: str) -> None:
    """Deviation, relative deviation and σ_max against radius (Roth et al. 2019, Fig. 2): medians with
    25–75 % and 5–95 % quantile bands, random and adversarial directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("deviation", "‖φ(x+rz) − φ(x) − J·rz‖"), ("relative", "relative deviation")]
    if section.get("sigma_max_computed"):
        panels.append(("sigma_max", "σ_max(J(x+rz))"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    colours = {"random": "tab:blue", "adversarial": "tab:red"}

    def nums(values: list) -> list[float]:
        return [math.nan if v is None else float(v) for v in values]

    try:
        for ax, (stat, ylabel) in zip(axes, panels):
            for kind, curve in (section.get("curves") or {}).items():
                r = [e["radius"] for e in curve]
                s = [e.get(stat) or {} for e in curve]
                ax.plot(r, nums([x.get("median") for x in s]), marker="o", ms=3, color=colours.get(kind),
                        label=f"{kind} (median)")
                ax.fill_between(r, nums([x.get("p25") for x in s]), nums([x.get("p75") for x in s]),
                                color=colours.get(kind), alpha=0.25, lw=0)
                ax.fill_between(r, nums([x.get("p05") for x in s]), nums([x.get("p95") for x in s]),
                                color=colours.get(kind), alpha=0.1, lw=0)
            if stat == "relative":
                ax.axhline(section.get("tol") or 0, color="grey", ls=":", lw=1, label="tol")
            by_kind = (section.get("linearity_radius") or {}).get("by_kind") or {}
            for kind, stats in by_kind.items():
                if (stats or {}).get("median") is not None:
                    ax.axvline(stats["median"], color=colours.get(kind), ls="--", lw=0.9,
                               label=f"{kind}: median linearity radius" if stat == "relative" else None)
            ax.set_xlabel("ℓ2 radius r (pixel units)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        axes[1].legend(fontsize=7)
        fig.suptitle(f"linearity of φ = {section.get('phi')} (n={section.get('n')}; bands: 25–75 %, 5–95 %)",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


ANALYSIS = Analysis(
    name="linearity",
    help="Deviation from local linearity along random and ℓ2 PGD directions, σ_max along the paths, "
         "and a per-sample linearity radius.",
    options=Options,
    row=Row,
    sharded=True,
    required=("radii", "n", "curves", "linearity_radius"),
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    check=check,
    profiles={"standard": {"max_samples": 100}, "full": {}},
    metric_patterns=(r"linearity\.radius\.(median|p05)", r"linearity\.radius\.(random|adversarial)\.median",
                     r"linearity\.(random|adversarial)@[0-9.e+-]+\.(deviation|relative|sigma_max)",
                     r"linearity\.untrusted"),
)
