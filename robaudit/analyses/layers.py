"""``robaudit layers``: per-layer operator norms and bounds, the global Lipschitz bracket, certified radii.

* Per layer (input shapes from forward hooks on one batch): the operator norm
  of the real layer by Lanczos through conv / conv_transpose (a lower bound,
  with its residual error bound), Sedghi's exact circular value, the
  Singla/Fantastic-Four bound, the Gram-iteration bound (Delattre et al. 2023,
  with ``--gram`` only) and Miyato's heuristic (not a bound); ‖W‖₂ for Linear;
  exact constants for BatchNorm, activations, pooling. Convolutions called as
  ``F.conv2d`` inside custom modules are found and bounded like ``nn.Conv2d``.
* Global: ``lipschitz_upper`` composes per-layer upper bounds over the fx graph
  (AutoLip, Scaman & Virmaux 2018); ``lipschitz_lower`` is the max over the data
  of the per-sample σ_max of the Jacobian (reused from the norms analysis when
  it ran). The normalisation layer counts (1/min std).
* Certified ℓ2 radius per sample: margin / (√2 · L_upper) (Tsuzuku et al. 2018),
  and the certified accuracy at a grid of radii.

Numerics live in :mod:`robaudit.bounds`; this module imports torch only in ``run``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Metric, Analysis, finite_or_none, opt
from robaudit.errors import UsageError
from robaudit.kinds import Better, LabelledFractions
from robaudit.numfmt import fmt

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext

DEFAULT_RADII = tuple((text, float(text)) for text in ("0.01", "0.05", "0.1", "0.25", "0.5", "1"))
PROBE_BATCH = 2  # samples used to record layer shapes (only shapes matter)


@dataclass(frozen=True)
class Options:
    iters: int = opt(100, "Lanczos cap (products AᵀA·v) per conv/linear layer for operator_norm (0 skips it).",
                     min=0)
    tol: float = opt(1e-3, "Residual tolerance of operator_norm: stop once ‖AᵀAv − θv‖ ≤ tol·θ, so σ is within "
                     "tol/2 of a singular value (reported per layer as error_bound).", min=0.0)
    gram: bool = opt(False, "Also compute the Gram-iteration bound (Delattre et al. 2023) per conv layer "
                     "(it never beats the exact circular value, so it only compares methods).")
    gram_iters: int | None = opt(None, "Maximum Gram-iteration squarings per conv layer (default 12; needs --gram).",
                                 kind=int, min=0)
    gram_tol: float | None = opt(None, "Stop the Gram iteration once bound / lower bound − 1 is below this "
                                 "(default 5e-3; needs --gram).", kind=float, min=0.0)
    fuse_bn: bool = opt(True, "Bound each conv→BatchNorm pair as one linear map (tighter, still valid).")
    allow_unbounded: bool = opt(False, "Report layers without a rule as unbounded (no lipschitz_upper) "
                                "instead of failing.")
    radii: tuple = opt(DEFAULT_RADII, "Comma-separated ℓ2 radii (pixel units, fractions like 36/255 allowed) "
                       "for the certified accuracy.", kind=LabelledFractions)
    lower: bool = opt(True, "With data: lower bound = max per-sample σ_max of the Jacobian.")
    per_sample: bool = opt(True, "With data: one row per sample (margin, certified radius).")
    precision: str = opt("auto", "Dtype of the bound computations (auto: the run's --dtype). Upper bounds "
                         "carry the rounding slack of this dtype.", choices=("auto", "float32", "float64"))


@dataclass(frozen=True)
class Row:
    """One sample: its logit margin, certified radius margin / (√2·L_upper) and σ_max (the lower bound)."""

    index: int
    label: int
    pred: int
    margin: float | None
    certified_radius: float | None
    sigma_max: float | None


def check(options: Options) -> None:
    if not options.gram and (options.gram_iters is not None or options.gram_tol is not None):
        raise UsageError("--gram-iters / --gram-tol set the Gram iteration, which runs only with --gram: "
                         "add --gram or drop them")


def _layer_row(rec: Any) -> dict[str, Any]:
    b = rec.bound
    info = b.info or {}
    row: dict[str, Any] = {
        "name": rec.name, "type": rec.type, "kind": b.kind,
        "input_shape": list(rec.input_shape), "output_shape": list(rec.output_shape),
        "operator_norm": info.get("operator_norm"), "iterations": info.get("iterations"),
        "converged": info.get("converged"),
        "circular_exact": info.get("circular_exact"), "singla_bound": info.get("singla_bound"),
        "gram_bound": info.get("gram_bound"), "heuristic": info.get("heuristic"),
        "exact": b.exact, "upper": b.upper, "method": b.method,
    }
    if b.kind in ("conv", "linear") and "residual" in info:
        # operator_norm's Ritz residual ‖AᵀAv − θv‖/θ and the bound it gives: σ is within error_bound (relative)
        row["residual"], row["error_bound"] = info["residual"], info["error_bound"]
    if b.kind == "conv":
        for key in ("circular_upper", "circular_is_exact", "strided_exact", "fft_size", "pad_factor", "reshape_bounds",
                    "gram_steps"):
            row[key] = info.get(key)
    if "ratios" in info:
        row["ratios"] = info["ratios"]
    if rec.fused:
        row["fused"] = dict(rec.fused)
    if b.upper is None:
        row["unbounded_reason"] = b.reason
    return row


def wrapper_rules() -> tuple[dict, dict]:
    """Rules for robaudit's own wrapper modules, and the wrapper's chain (for the sequential fallback).

    The bounds engine knows nothing of robaudit's model wrappers; the analysis tells it.
    """
    from robaudit.bounds.rules import constant
    from robaudit.models.adapt import AuditModel, Normalize, SelectOutput
    from robaudit.models.zoo import ShortcutA

    def normalize(module, in_shape, out_shape, opts):
        return constant("normalize", float(1.0 / module.std.detach().double().abs().min()), "1/min(std)")

    def select(module, in_shape, out_shape, opts):
        return constant("reshape", 1.0, "picks the logits")

    def shortcut(module, in_shape, out_shape, opts):
        return constant("reshape", 1.0, "subsample + zero channels (a projection)")

    return ({Normalize: normalize, SelectOutput: select, ShortcutA: shortcut},
            {AuditModel: ("normalize", "net", "select")})


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Per-layer table and Lipschitz bracket; with data, margins, certified radii and the lower bound."""
    section = _bounds_part(ctx, options)
    if ctx.data is None or not len(ctx.data):
        return section
    from robaudit.analyses.runner import collect_rows

    upper = section["lipschitz_upper"]
    sigma_of = _cached_sigma(ctx) if options.lower else {}
    compute_sigma = options.lower and not sigma_of
    model = ctx.model.module
    rows = collect_rows(ctx, "layers", lambda b: _rows(model, b, upper, sigma_of, compute_sigma),
                        description="layers: margins" + (" and σ_max" if compute_sigma else ""))
    return summarise(rows, options, section, ctx.warn)


def _bounds_part(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """The per-layer bounds composed over the graph (AutoLip): needs the model only."""
    import torch

    from robaudit.bounds.compose import lipschitz_bound
    from robaudit.bounds.rules import RuleOptions
    from robaudit.models.guard import preserved

    torch.manual_seed(ctx.seed)
    if ctx.data is not None and len(ctx.data):
        probe = ctx.data.images(slice(0, PROBE_BATCH), device=ctx.device, dtype=ctx.dtype)
    else:
        probe = torch.rand((PROBE_BATCH, *ctx.model.input_shape), device=ctx.device, dtype=ctx.dtype)
    precision = options.precision if options.precision != "auto" else str(ctx.dtype).removeprefix("torch.")
    if precision == "float64" and getattr(ctx.device, "type", str(ctx.device)) == "mps":
        ctx.warn("layers: MPS has no float64; bounds are computed in float32 (with float32 rounding margins)")
        precision = "float32"
    rule_opts = RuleOptions(iters=options.iters, tol=options.tol, gram=options.gram,
                            gram_iters=12 if options.gram_iters is None else options.gram_iters,
                            gram_tol=5e-3 if options.gram_tol is None else options.gram_tol,
                            dtype=getattr(torch, precision), seed=ctx.seed)
    rules, chains = wrapper_rules()
    with preserved(ctx.model.module, eval=True), ctx.progress("layers: per-layer bounds", None):
        gb = lipschitz_bound(ctx.model.module, probe, opts=rule_opts, allow_unbounded=options.allow_unbounded,
                             fuse_bn=options.fuse_bn, rules=rules, chains=chains)
    upper = gb.lipschitz_upper
    ctx.cache["lipschitz_upper"] = upper
    rows = [_layer_row(r) for r in gb.layers]
    not_conv = [r["name"] for r in rows if r.get("converged") is False]
    if not_conv:
        ctx.warn(f"layers: the operator-norm residual did not reach --tol {rule_opts.residual_tol:g} in "
                 f"{options.iters} iterations for {', '.join(not_conv)}; their operator_norm is a lower bound "
                 "(see error_bound)")
    if gb.unbounded:
        ctx.warn(f"layers: {len(gb.unbounded)} layer(s) have no Lipschitz bound; lipschitz_upper is not reported")
    for note in gb.notes:
        ctx.warn(f"layers: {note}")
    return {
        "method": gb.method, "layers": rows,
        "lipschitz_upper": finite_or_none(upper) if upper is not None else None,
        "lipschitz_lower": None, "ratio": None,
        "unbounded": [{"name": u.name, "type": u.type, "reason": u.reason} for u in gb.unbounded],
        "graph": {"additions": gb.additions, "concats": gb.concats, "fuse_bn": options.fuse_bn},
        "notes": list(gb.notes), "certified": None, "n": 0,
    }


def _cached_sigma(ctx: "AuditContext") -> dict[int, float]:
    """σ_max per dataset index from the norms analysis of the same run (same data, same numbers)."""
    cached, index = ctx.cache.get("norms.sigma_max"), ctx.cache.get("norms.index")
    if cached is None:
        return {}
    keys = index.tolist() if index is not None else list(range(len(cached)))
    return {int(i): float(v) for i, v in zip(keys, cached.tolist())}


def _rows(model, batch, upper: float | None, sigma_of: Mapping[int, float], compute_sigma: bool) -> list[Row]:
    import torch

    with torch.no_grad():
        logits = model(batch.x).double()
    top2 = logits.topk(min(2, logits.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, 1] if top2.shape[1] > 1 else torch.full_like(top2[:, 0], math.inf)
    if compute_sigma:
        from robaudit.linalg import sigma_max

        sigma = [float(v) for v in sigma_max(model, batch.x).tolist()]
    else:
        sigma = [sigma_of.get(int(i), math.nan) if sigma_of else math.nan for i in batch.index.tolist()]
    rows = []
    for i, (index, label) in enumerate(zip(batch.index.tolist(), batch.y.tolist())):
        m = float(margin[i])
        radius = m / (math.sqrt(2.0) * upper) if upper else None
        rows.append(Row(index=int(index), label=int(label), pred=int(logits[i].argmax()), margin=finite_or_none(m),
                        certified_radius=finite_or_none(radius), sigma_max=finite_or_none(sigma[i])))
    return rows


def summarise(rows: list[Row], options: Options, section: dict[str, Any], warn=lambda message: None) -> dict[str, Any]:
    """Add the data part (lower bound, certified accuracy, per-sample rows) to the bounds section."""
    from robaudit.analyses.runner import row_dict
    from robaudit.stats import finite, median

    n = len(rows)
    upper = section["lipschitz_upper"]
    section = {**section, "n": n}
    sigmas = finite(r.sigma_max for r in rows)
    if options.lower and sigmas:
        lower = max(sigmas)
        section["lipschitz_lower"] = lower
        if upper is not None and lower > 0:
            section["ratio"] = upper / lower
        if upper is not None and lower > upper * (1 + 1e-6):
            warn(f"layers: lipschitz_lower {lower:.6g} exceeds lipschitz_upper {upper:.6g}: "
                 "a rule is wrong for this model; please report it")
    correct = [r.pred == r.label for r in rows]
    labels = [label for label, _ in options.radii]
    if upper is not None and upper > 0:
        radius = [r.certified_radius if r.certified_radius is not None else math.inf for r in rows]
        acc = {label: (sum(1 for c, rr in zip(correct, radius) if c and rr >= value and (value > 0 or rr > 0)) / n
                       if n else None) for label, value in options.radii}
        found = finite(radius)
        section["certified"] = {
            "available": True, "radii": labels, "accuracy": acc,
            "clean_accuracy": (sum(correct) / n) if n else None,
            "radius": {"median": median(found), "max": max(found) if found else None,
                       "mean": (math.fsum(found) / len(found)) if found else None},
            "formula": "margin / (√2 · lipschitz_upper)",
        }
    else:
        section["certified"] = {"available": False, "radii": labels,
                                "reason": "no valid lipschitz_upper (unbounded layers)",
                                "clean_accuracy": (sum(correct) / n) if n else None}
    if options.per_sample:
        per = []
        for r in rows:
            d = row_dict(r)
            if not options.lower:
                d.pop("sigma_max")
            per.append(d)
        section["per_sample"] = per
    return section


# ---------------------------------------------------------------------------
# Rendering (from the JSON section only)



def _ratio(row: Mapping[str, Any], key: str) -> str:
    r = (row.get("ratios") or {}).get(key)
    return f"{r:.3g}×" if isinstance(r, (int, float)) else ""


def render(section: Mapping[str, Any]) -> list:
    """Layer table, Lipschitz bracket, certified accuracy; every 'upper' column holds only valid bounds."""
    out: list = []
    layers = section.get("layers") or []
    fused = sum(1 for r in layers if r.get("fused"))
    graph = section.get("graph") or {}
    how = f"composition over the {'fx graph' if section.get('method') == 'fx' else 'nn.Sequential chain'}"
    if graph.get("additions"):
        how += f", {graph['additions']} residual additions"
    if fused:
        how += f", {fused} conv→BatchNorm pairs bounded jointly"
    out.append(Text(f"layers · {len(layers)} layers · {how}", style="bold"))
    table = Table(caption="operator norm: power iteration on the real layer (a lower bound that converges to the "
                  "exact value). circular, Singla, Gram: upper bounds, ×ratio to the operator norm. "
                  "heuristic*: Miyato's reshape norm, NOT a bound. upper: the bound used in the composition.",
                  caption_justify="left")
    for col, just in (("layer", "left"), ("type", "left"), ("input", "left"), ("operator norm", "right"),
                      ("circular", "right"), ("Singla", "right"), ("Gram", "right"), ("heuristic*", "right"),
                      ("upper", "right")):
        table.add_column(col, justify=just, no_wrap=True)
    for row in section.get("layers") or []:
        shape = "×".join(str(s) for s in row.get("input_shape") or [])
        op = row.get("operator_norm")
        op_text = fmt(op) if op is not None else ""
        if op is not None and row.get("converged") is False:
            op_text += " (not converged)"

        def cell(key: str) -> str:
            v = row.get(key)
            return "" if v is None else f"{fmt(v)} {_ratio(row, key)}".strip()

        if row.get("upper") is None:
            used: Any = Text("unbounded", style="bold red")
        else:
            used = fmt(row["upper"])
            if row.get("fused"):
                used += f" (with BN {fmt(row['fused']['upper'])})"
            elif row.get("exact") is not None and row.get("kind") != "conv":
                used += " exact"
        trivial = row.get("kind") in ("activation", "reshape") and row.get("upper") == 1.0
        table.add_row(row.get("name", ""), row.get("type", ""), shape, op_text, cell("circular_exact"),
                      cell("singla_bound"), cell("gram_bound"), cell("heuristic"), used,
                      style="dim" if trivial else None)
    out.append(table)

    up, lo = section.get("lipschitz_upper"), section.get("lipschitz_lower")
    if up is None:
        out.append(Text("Lipschitz upper bound: not available (unbounded layers below)", style="bold red"))
    bracket = Text("Lipschitz bracket: ")
    bracket.append(f"{fmt(lo) if lo is not None else '–'}", style="bold")
    bracket.append(" (max σ_max over data)" if lo is not None else " (no data)")
    bracket.append(" ≤ L ≤ ")
    bracket.append(fmt(up), style="bold")
    bracket.append(" (AutoLip)")
    if section.get("ratio") is not None:
        bracket.append(f" · ratio {fmt(section['ratio'])}")
    out.append(bracket)
    for u in section.get("unbounded") or []:
        out.append(Text(f"unbounded: {u.get('name')} ({u.get('type')}): {u.get('reason')}", style="red"))
    cert = section.get("certified")
    if cert and cert.get("available"):
        ct = Table(title=f"certified ℓ2 accuracy ({cert.get('formula')}), n={section.get('n')}", title_justify="left")
        ct.add_column("radius")
        ct.add_column("certified accuracy", justify="right")
        ct.add_row("0 (clean)", fmt(cert.get("clean_accuracy")))
        for text in cert.get("radii") or []:
            ct.add_row(text, fmt((cert.get("accuracy") or {}).get(text)))
        out.append(ct)
        rad = cert.get("radius") or {}
        out.append(Text(f"certified radius: median {fmt(rad.get('median'))}, max {fmt(rad.get('max'))}", style="dim"))
    elif cert:
        out.append(Text(f"certified radii: not available ({cert.get('reason')})", style="yellow"))
    for note in section.get("notes") or []:
        out.append(Text(note, style="dim"))
    return out


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """lipschitz_upper, lipschitz_lower, layers.lipschitz_gap, certified_accuracy@<r>, … with directions."""
    out: dict[str, Metric] = {
        "lipschitz_upper": Metric(section.get("lipschitz_upper"), Better.LOWER),
        # the empirical lower bound is a measurement of the model: a larger one is a less robust model
        "lipschitz_lower": Metric(section.get("lipschitz_lower"), Better.LOWER),
        "layers.lipschitz_gap": Metric(section.get("ratio"), Better.NEUTRAL),
        "layers.unbounded": Metric(float(len(section.get("unbounded") or [])), Better.LOWER, "layers"),
    }
    rows = [r for r in section.get("layers") or [] if r.get("upper") is not None]
    if rows:
        out["layers.max_upper"] = Metric(max(float(r["upper"]) for r in rows), Better.LOWER)
    cert = section.get("certified") or {}
    if cert.get("available"):
        for text, acc in (cert.get("accuracy") or {}).items():
            out[f"certified_accuracy@{text}"] = Metric(acc, Better.HIGHER)
        out["layers.certified_radius.median"] = Metric((cert.get("radius") or {}).get("median"), Better.HIGHER)
    return out


def plot(section: Mapping[str, Any], path: str) -> None:
    """Per-layer operator norms and upper bounds on a log scale, with the global Lipschitz bracket.

    Markers: the operator norm (power iteration, a lower estimate), each upper bound the run
    computed, Miyato's heuristic (not a bound, hollow), and the bound the composition used (bar).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section.get("layers") or []
    xs = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(rows) + 2.5), 4.6))
    try:
        used = [r.get("upper") for r in rows]
        ax.bar([x for x, u in zip(xs, used) if u], [u for u in used if u], color="#c9d6ea", width=0.7,
               label="upper bound used", zorder=1)
        for key, label, style in (("operator_norm", "operator norm (power iteration)", dict(marker="o", color="black")),
                                  ("circular_exact", "circular (Sedghi)", dict(marker="s", color="tab:blue")),
                                  ("singla_bound", "Singla", dict(marker="^", color="tab:orange")),
                                  ("gram_bound", "Gram", dict(marker="v", color="tab:green")),
                                  ("heuristic", "heuristic (NOT a bound)", dict(marker="x", color="tab:red"))):
            pts = [(x, r[key]) for x, r in zip(xs, rows) if isinstance(r.get(key), (int, float)) and r[key] > 0]
            if pts:
                ax.scatter(*zip(*pts), label=label, zorder=3, s=28, **style)
        for x, r in zip(xs, rows):
            if r.get("upper") is None:
                ax.annotate("unbounded", (x, 1.0), rotation=90, ha="center", va="bottom", color="red", fontsize=7)
        positive = [v for v in used if v] + [r["operator_norm"] for r in rows if r.get("operator_norm")]
        if positive:
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 2, 5, 10 rather than 2×10⁰
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xticks(xs, [str(r.get("name", "")) for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("layer norm / bound (log scale)")
        lo, up = section.get("lipschitz_lower"), section.get("lipschitz_upper")
        ax.set_title(f"layers: Lipschitz bracket {fmt(lo) if lo is not None else '–'} ≤ L ≤ "
                     f"{fmt(up) if up is not None else '∞'} (AutoLip product of the bars)", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


ANALYSIS = Analysis(
    name="layers",
    help="Per-layer operator norms and bounds (Sedghi, Singla, Gram), global Lipschitz bracket, certified radii.",
    options=Options,
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    check=check,
    row=Row,
    required=("layers", "lipschitz_upper", "lipschitz_lower"),
    needs_data=False,
    profiles={"quick": {"iters": 50}, "standard": {}, "full": {}},
    metric_patterns=(r"lipschitz_upper", r"lipschitz_lower", r"layers\.lipschitz_gap", r"certified_accuracy@.+",
                     r"layers\.unbounded", r"layers\.max_upper", r"layers\.certified_radius\.median"),
)

