"""``robaudit curvature``: the top input-Hessian eigenvalues per sample, by HVPs and Lanczos.

For each sample, the k eigenvalues largest in magnitude (with sign) of the input
Hessian of the cross-entropy at the true label (``--target loss``) or of the
logit margin z_y − z_t against the runner-up t (``--target margin``), matrix-free:
Hessian-vector products inside the batched Lanczos of :mod:`robaudit.linalg`
(Cui et al. 2022, Sec. 3.1 and 3.4), with a Ritz-residual convergence flag per
sample. Singla & Feizi (2022, Sec. 4.3) bound the same curvature for smooth nets.

The second-order radius r = √(2·|margin| / |λ_max|) of the margin Hessian is
where ½·r²·|λ_max|, the quadratic term of the margin's Taylor expansion, reaches
the margin itself: a prediction of how far the model stays linear around x.

For piecewise-linear networks (ReLU, max-pool) the margin Hessian is 0 almost
everywhere, and the loss Hessian is Jᵀ(diag(p) − ppᵀ)J: the section says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, Metric, finite_or_none, opt
from robaudit.errors import UsageError
from robaudit.kinds import Better, CurvatureMethod, CurvatureTarget
from robaudit.numfmt import fmt
from robaudit.stats import summary as summarize

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.analyses.runner import Batch
    from robaudit.context import AuditContext

DEFAULT_ITERS = 100
EXACT_MAX_DIM = 1024        # the dense mode costs D HVPs and D² memory per sample: for small inputs and checks
EXACT_MEMORY = 256 * 2**20  # bytes of dense Hessians per pass
WORST = 5                   # samples whose spectra the section keeps beside the summary
PIECEWISE_LINEAR_NOTE = ("piecewise-linear network: the margin Hessian is 0 almost everywhere (the logits are "
                         "linear between kinks), and the loss Hessian is Jᵀ(diag(p) − ppᵀ)J, the softmax's "
                         "curvature seen through the Jacobian")


@dataclass(frozen=True)
class Options:
    target: CurvatureTarget = opt(CurvatureTarget.LOSS, "Whose input Hessian: the cross-entropy loss at the true "
                                  "label, or the logit margin z_y − z_t against the runner-up class t.")
    k: int = opt(3, "Eigenvalues per sample, largest in magnitude first, with sign.", short="-k", min=1)
    method: CurvatureMethod = opt(CurvatureMethod.LANCZOS, "lanczos (Hessian-vector products; the default), "
                                  "power (|λ_max| only, k = 1) or exact (the dense Hessian from D products, for "
                                  f"checking; inputs of at most {EXACT_MAX_DIM} values).")
    iters: int | None = opt(None, f"Cap on Hessian-vector products per sample for lanczos/power "
                            f"[default: {DEFAULT_ITERS}].", kind=int, min=1)
    tol: float | None = opt(None, "Residual tolerance for lanczos/power: each eigenvalue within tol·|λ_max| "
                            "[default: 1e-5 in float32, 1e-10 in float64].", kind=float, min=0.0)
    radius: bool = opt(True, "Report the second-order radius √(2|margin|/|λ_max|) of the margin Hessian "
                       "(with --target loss this runs a second, k = 1 solve on the margin).")
    per_sample: bool = opt(True, "Include one row per sample in the report.")


@dataclass(frozen=True)
class Plan:
    """The options resolved against the input size."""

    target: CurvatureTarget
    method: CurvatureMethod
    k: int
    iters: int | None
    tol: float | None
    radius: bool
    extra_margin: bool  # a second solve on the margin Hessian for the radius


@dataclass(frozen=True)
class Row:
    """One sample (None where a value is missing or not finite)."""

    index: int
    label: int
    pred: int
    runner_up: int
    value: float | None            # the target at x: CE loss, or the margin
    eigenvalues: list               # top-k by |λ|, with sign
    converged: bool
    error_bound: float | None       # max Ritz residual / |λ_max| (0 for exact)
    hvps: int                       # Hessian-vector products for this sample (target solve)
    margin: float | None            # z_y − z_t
    margin_lambda_max: float | None  # λ_max of the margin Hessian (radius on)
    margin_converged: bool | None
    radius: float | None            # √(2|margin|/|λ_max|); None when λ_max = 0 (flat) or radius off
    flat: bool | None               # margin Hessian exactly 0 at x (piecewise-linear region)
    linearity_radius: float | None  # measured by the linearity analysis of the same run, when present
    finite: bool


def check(options: Options) -> None:
    """Option combinations that are invalid whatever the model."""
    if options.method is CurvatureMethod.POWER and options.k > 1:
        raise UsageError("-k > 1 needs --method lanczos or exact (power iteration gives |λ_max| only)")
    if options.method is CurvatureMethod.EXACT and (options.iters is not None or options.tol is not None):
        flag = "--iters" if options.iters is not None else "--tol"
        raise UsageError(f"{flag} applies to --method lanczos|power, not exact")
    if options.tol is not None and not options.tol > 0:
        raise UsageError(f"--tol: expected a positive number, got {options.tol}")


def plan(options: Options, *, input_dim: int) -> Plan:
    """Resolve defaults against D and refuse what cannot run (UsageError, exit 2). Pure, no torch."""
    check(options)
    d = input_dim
    if options.k > d:
        raise UsageError(f"-k: expected at most D = {d} (the input size), got {options.k}")
    if options.method is CurvatureMethod.EXACT and d > EXACT_MAX_DIM:
        raise UsageError(f"--method exact forms the dense {d}×{d} Hessian per sample; it is for inputs of at most "
                         f"{EXACT_MAX_DIM} values: use --method lanczos")
    iters = None
    if options.method is not CurvatureMethod.EXACT:
        iters = options.iters if options.iters is not None else DEFAULT_ITERS
        if options.method is CurvatureMethod.LANCZOS:
            if iters < options.k:
                raise UsageError(f"--iters: Lanczos needs at least -k = {options.k} steps, got {iters}")
            iters = min(iters, d)
    return Plan(target=options.target, method=options.method, k=options.k, iters=iters, tol=options.tol,
                radius=options.radius, extra_margin=options.radius and options.target is CurvatureTarget.LOSS)


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compute_rows(model, batch: "Batch", p: Plan, *, tol: float, seed: int,
                 measured: Mapping[int, float | None] | None = None) -> list[Row]:
    """Curvature of one batch (in passes small enough for dense Hessians with --method exact)."""
    import torch

    from robaudit.linalg.hessian import HessianOperator, second_order_radius, top_eigenvalues
    from robaudit.linalg.rng import keyed_normal

    d = int(batch.x[0].numel())
    rows_per_pass = batch.x.shape[0]
    if p.method is CurvatureMethod.EXACT:
        rows_per_pass = max(1, min(rows_per_pass, EXACT_MEMORY // (2 * d * d * batch.x.element_size())))
    rows: list[Row] = []
    for start in range(0, batch.x.shape[0], rows_per_pass):
        sl = slice(start, start + rows_per_pass)
        idx, x, y = batch.index[sl], batch.x[sl], batch.y[sl]

        def solve(target: CurvatureTarget, k: int, key_seed: int):
            op = HessianOperator(model, x, y, target)
            init = keyed_normal(idx, (d,), seed=key_seed, dtype=x.dtype, device=x.device)
            res = top_eigenvalues(op, k=k, method=p.method, iters=p.iters or 1, tol=tol, init=init)
            op.release()
            return op, res

        op, res = solve(p.target, p.k, seed)
        logits = op.logits.to(torch.float64)
        margin = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, op.other[:, None])[:, 0]
        mres = None
        if p.radius:
            mres = res if p.target is CurvatureTarget.MARGIN else solve(CurvatureTarget.MARGIN, 1, seed + 1)[1]
            radius = second_order_radius(margin, mres.lambda_max.to(torch.float64))
        pred = logits.argmax(dim=1)
        for i in range(x.shape[0]):
            index = int(idx[i])
            row_radius = flat = m_lam = m_conv = None
            if mres is not None:
                m_lam = _num(float(mres.lambda_max[i]))
                m_conv = bool(mres.converged[i])
                flat = m_lam == 0.0  # every product was exactly 0: no second-order path from x to the margin
                row_radius = _num(float(radius[i]))
            rows.append(Row(
                index=index, label=int(y[i]), pred=int(pred[i]), runner_up=int(op.other[i]),
                value=_num(float(res.value[i])), eigenvalues=[_num(float(v)) for v in res.eigenvalues[i].tolist()],
                converged=bool(res.converged[i]), error_bound=_num(float(res.error_bound[i])),
                hvps=int(res.iterations[i]), margin=_num(float(margin[i])), margin_lambda_max=m_lam,
                margin_converged=m_conv, radius=row_radius, flat=flat,
                linearity_radius=finite_or_none(measured.get(index)) if measured else None,
                finite=bool(res.finite[i]) and (mres is None or bool(mres.finite[i]))))
    return rows


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Top-k input-Hessian eigenvalues of every sample, batch by batch."""
    from robaudit.analyses.runner import run_rows
    from robaudit.linalg.hessian import classify_activations
    from robaudit.linalg.tol import default_tol

    data = ctx.require_data("curvature")
    if int(ctx.model.num_classes) < 2:
        raise UsageError(f"curvature needs a classifier with at least 2 classes (a margin against a runner-up); "
                         f"the model has {ctx.model.num_classes}")
    p = plan(options, input_dim=int(math.prod(data.sample_shape)))
    tol = p.tol if p.tol is not None else default_tol(ctx.dtype)
    acts = classify_activations(ctx.model.module)
    activations = {"piecewise_linear": acts.piecewise_linear, "curved": list(acts.curved), "unknown": list(acts.unknown)}
    measured = ctx.cache.get("linearity.radius")  # {dataset index: measured radius}, when linearity ran first
    model = ctx.model.module
    return run_rows(ctx, "curvature",
                    lambda b: compute_rows(model, b, p, tol=tol, seed=ctx.seed, measured=measured),
                    lambda rows: summarise(rows, p, options, tol=tol, activations=activations, ctx=ctx),
                    description=f"curvature ({p.target.value}, {p.method.value})")


def _abs_stats(values: list[float | None]) -> dict[str, Any]:
    return {"abs_lambda_max": summarize(abs(v) for v in values if v is not None),
            "lambda_max": summarize(values)}


def summarise(rows: list, p: Plan, options: Options, *, tol: float | None, activations: Mapping[str, Any],
              ctx: "AuditContext | None" = None) -> dict[str, Any]:
    """The curvature section from the rows (pure apart from warnings through ``ctx``)."""
    warn = ctx.warn if ctx is not None else (lambda message: None)
    n = len(rows)
    nonfinite = [r.index for r in rows if not r.finite]
    if nonfinite:
        warn(f"curvature: NaN/Inf Hessian products for {len(nonfinite)} sample(s), e.g. index {nonfinite[0]}; "
             "every curvature metric fails the gate")
    iterative = p.method is not CurvatureMethod.EXACT
    not_conv = sum(1 for r in rows if r.finite and (not r.converged or r.margin_converged is False))
    if iterative and not_conv:
        warn(f"curvature: {p.method.value} did not reach --tol {tol} within {p.iters} products for {not_conv} "
             "sample(s); see error_bound")
    ok = [r for r in rows if r.finite]
    lam = [r.eigenvalues[0] if r.eigenvalues else None for r in ok]
    summary: dict[str, Any] = {p.target.value: _abs_stats(lam)}
    if p.radius and p.target is CurvatureTarget.LOSS:
        summary[CurvatureTarget.MARGIN.value] = _abs_stats([r.margin_lambda_max for r in ok])
    flats = [r.flat for r in ok if r.flat is not None]
    act = dict(activations)
    act["margin_flat"] = all(flats) if flats else None  # observed: margin Hessian exactly 0 at every sample
    # The module scan cannot see functional activations (F.gelu in a forward): what was observed wins.
    if act["margin_flat"] is False and act["piecewise_linear"]:
        act["piecewise_linear"] = False
        act["evidence"] = "the margin Hessian is not 0: a curved operation outside the model's modules"
    elif act["margin_flat"] is True and act["piecewise_linear"] is None:
        act["piecewise_linear"] = True
        act["evidence"] = "the margin Hessian is exactly 0 at every sample"
    if act["piecewise_linear"]:
        warn(f"curvature: {PIECEWISE_LINEAR_NOTE}")
    worst = sorted((r for r in ok if r.eigenvalues and r.eigenvalues[0] is not None),
                   key=lambda r: abs(r.eigenvalues[0]), reverse=True)[:WORST]
    hvps = [r.hvps for r in rows]
    section: dict[str, Any] = {
        "target": p.target.value, "method": p.method.value, "k": p.k, "iters": p.iters,
        "tol": tol if iterative else None, "n": n, "activations": act,
        "note": PIECEWISE_LINEAR_NOTE if act["piecewise_linear"] else None,
        "summary": summary,
        "convergence": {"not_converged": not_conv if iterative else 0,
                        "mean_hvps": (sum(hvps) / n) if n else None, "max_hvps": max(hvps) if n else None,
                        "max_error_bound": max((r.error_bound for r in ok if r.error_bound is not None), default=None)},
        "worst": [{"index": r.index, "label": r.label, "eigenvalues": r.eigenvalues} for r in worst],
        "nonfinite": nonfinite,
    }
    if p.radius:
        radii = [r.radius for r in ok]
        section["radius"] = {**summarize(radii), "flat": sum(1 for r in ok if r.flat)}
        pairs = [(r.radius, r.linearity_radius) for r in ok if r.linearity_radius is not None]
        if pairs:
            section["linearity"] = {"n": len(pairs), "predicted_median": summarize(a for a, _ in pairs)["median"],
                                    "measured_median": summarize(b for _, b in pairs)["median"]}
    if options.per_sample:
        from robaudit.analyses.runner import row_dict

        section["per_sample"] = [row_dict(r) for r in rows]
    return section


def render(section: Mapping[str, Any]) -> list:
    """Summary per target, radius, convergence, the worst samples' spectra, from the JSON section only."""
    out: list = []
    target = section.get("target")
    out.append(Text(f"curvature · input Hessian of the {target} · {section.get('method')} · "
                    f"k={section.get('k')} · n={section.get('n')}", style="bold"))
    if section.get("note"):
        out.append(Text(str(section["note"]), style="yellow"))
    table = Table()
    table.add_column("")
    for col in ("mean", "median", "p95", "max"):
        table.add_column(col, justify="right")
    for name, stats in (section.get("summary") or {}).items():
        s = (stats or {}).get("abs_lambda_max") or {}
        table.add_row(Text(f"|λ_max| {name}"), *(fmt(s.get(c)) for c in ("mean", "median", "p95", "max")))
    radius = section.get("radius")
    if radius:
        table.add_row("second-order radius √(2|m|/|λ|)", *(fmt(radius.get(c)) for c in ("mean", "median", "p95", "max")))
    out.append(table)
    if radius and radius.get("flat"):
        out.append(Text(f"{radius['flat']} sample(s) with a flat margin (λ = 0): infinite radius, left out",
                        style="dim"))
    lin = section.get("linearity")
    if lin:
        out.append(Text(f"linearity radius, median over {lin['n']} samples: predicted {fmt(lin['predicted_median'])} "
                        f"· measured {fmt(lin['measured_median'])}"))
    worst = section.get("worst") or []
    if worst:
        wt = Table(title="largest |λ_max|", title_justify="left")
        wt.add_column("index", justify="right")
        wt.add_column("label", justify="right")
        wt.add_column("eigenvalues (by |λ|)")
        for w in worst:
            wt.add_row(str(w.get("index")), str(w.get("label")), ", ".join(fmt(v) for v in w.get("eigenvalues") or []))
        out.append(wt)
    conv = section.get("convergence") or {}
    if conv.get("not_converged"):
        out.append(Text(f"{conv['not_converged']} sample(s) did not converge within {section.get('iters')} products "
                        f"(tol {section.get('tol')}); largest error bound {fmt(conv.get('max_error_bound'))}",
                        style="yellow"))
    elif section.get("method") != "exact" and conv.get("mean_hvps") is not None:
        out.append(Text(f"{section.get('method')}: all converged, mean {conv['mean_hvps']:.1f} / max "
                        f"{conv['max_hvps']} Hessian-vector products (tol {section.get('tol')})", style="dim"))
    nonfinite = section.get("nonfinite") or []
    if nonfinite:
        shown = ", ".join(str(i) for i in nonfinite[:10]) + (" …" if len(nonfinite) > 10 else "")
        out.append(Text(f"NaN/Inf Hessian products for {len(nonfinite)} sample(s): indices {shown}", style="bold red"))
    return out


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """curvature.<target>.abs_lambda_max.{median,p95} (lower is better), curvature.radius.median (higher),
    curvature.not_converged and curvature.nonfinite (lower). NaN/Inf samples make the curvature values missing."""
    out: dict[str, Metric] = {}
    poisoned = bool(section.get("nonfinite"))
    for name, stats in (section.get("summary") or {}).items():
        for stat in ("median", "p95"):
            value = None if poisoned else ((stats or {}).get("abs_lambda_max") or {}).get(stat)
            out[f"curvature.{name}.abs_lambda_max.{stat}"] = Metric(value, Better.LOWER)
    if "radius" in section:
        out["curvature.radius.median"] = Metric(None if poisoned else (section["radius"] or {}).get("median"),
                                                Better.HIGHER)
    conv = section.get("convergence") or {}
    out["curvature.not_converged"] = Metric(float(conv.get("not_converged") or 0), Better.LOWER, "samples")
    out["curvature.nonfinite"] = Metric(float(len(section.get("nonfinite") or [])), Better.LOWER, "samples")
    return out


def plot(section: Mapping[str, Any], path: str) -> None:
    """Histogram of |λ_max| per target, and the top-k spectra of the worst samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section.get("per_sample") or []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    target = section.get("target")
    series = {target: [abs(r["eigenvalues"][0]) for r in rows if r.get("eigenvalues") and r["eigenvalues"][0] is not None]}
    if target == "loss" and "margin" in (section.get("summary") or {}):
        series["margin"] = [abs(r["margin_lambda_max"]) for r in rows if r.get("margin_lambda_max") is not None]
    for name, values in series.items():
        if values:
            ax1.hist(values, bins=min(30, max(5, len(values) // 3)), alpha=0.6, label=f"{name} (n={len(values)})")
    ax1.set_xlabel("|λ_max| of the input Hessian")
    ax1.set_ylabel("samples")
    ax1.set_title("curvature per sample")
    if any(series.values()):
        ax1.legend()
    for w in section.get("worst") or []:
        values = [v for v in (w.get("eigenvalues") or []) if v is not None]
        ax2.plot(range(1, len(values) + 1), values, marker="o", label=f"index {w.get('index')}")
    ax2.axhline(0.0, color="grey", linewidth=0.5)
    ax2.set_xticks(range(1, int(section.get("k") or 1) + 1))
    ax2.set_xlabel("rank (by |λ|)")
    ax2.set_ylabel("eigenvalue (signed)")
    ax2.set_title(f"top-{section.get('k')} spectrum, largest |λ_max|")
    if section.get("worst"):
        ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


ANALYSIS = Analysis(
    name="curvature",
    help="Per-sample top input-Hessian eigenvalues (loss or margin) by Hessian-vector products and Lanczos.",
    options=Options,
    row=Row,
    sharded=True,
    required=("target", "method", "summary", "n", "nonfinite"),
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    check=check,
    profiles={"full": {}},
    metric_patterns=(r"curvature\.(loss|margin)\.abs_lambda_max\.(median|p95)", r"curvature\.radius\.median",
                     r"curvature\.(not_converged|nonfinite)"),
)
