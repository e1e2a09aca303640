"""``robaudit norms``: per-sample spectral and Frobenius norms of the input–output Jacobian.

σ_max(J(x)) is the local Lipschitz constant of the logits at x (Johansson et
al. 2022; Roth et al. 2019, eq. 7); ‖J‖_F is Hoffman et al.'s (2019)
regulariser. Methods: exact (C VJPs), power iteration, batched Lanczos, and the
Hutchinson Frobenius estimator; all from :mod:`robaudit.linalg`.

Streaming: batches are processed one at a time; only per-sample rows are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, Metric, opt
from robaudit.errors import UsageError
from robaudit.kinds import EXACT_MAX_CLASSES, Better, default_tol, FrobeniusMethod, JacTarget, NormMethod
from robaudit.numfmt import fmt
from robaudit.stats import summary as summarize

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.analyses.runner import Batch
    from robaudit.context import AuditContext

DEFAULT_ITERS = 100
DEFAULT_N_PROJ = 16
DEFAULT_TOP_K_EXACT = 3  # exact gives every σ for free; iterative methods default to σ_max alone
EXACT_MIN_ROWS = 32  # auto picks exact above 64 classes only if this many samples' Jacobians fit --memory-mb


@dataclass(frozen=True)
class Options:
    method: NormMethod = opt(NormMethod.AUTO, "How σ is computed: exact Jacobian (C backward passes), power "
                             "iteration, or batched Lanczos. auto: exact when C ≤ 64 or the Jacobians fit "
                             "--memory-mb, else lanczos.")
    frobenius: FrobeniusMethod = opt(FrobeniusMethod.AUTO, "How ‖J‖_F is computed: exact, or the Hutchinson "
                                     "random-projection estimate with a standard error. auto: exact when the "
                                     "method is exact or C ≤ 64.")
    n_proj: int | None = opt(None, f"Random projections per sample for --frobenius hutchinson [default: {DEFAULT_N_PROJ}].",
                             kind=int, min=2)
    iters: int | None = opt(None, f"Iteration cap for power/lanczos [default: {DEFAULT_ITERS}].", kind=int, min=1)
    tol: float | None = opt(None, "Relative tolerance for power/lanczos, on the residual error bound "
                            "[default: 1e-5 in float32, 1e-10 in float64].", kind=float, min=0.0)
    target: JacTarget = opt(JacTarget.LOGITS, "Differentiate the logits, the softmax probabilities or the "
                            "log-probabilities.")
    top_k: int | None = opt(None, f"Top singular values per sample [default: {DEFAULT_TOP_K_EXACT} for exact, 1 for "
                            "power and lanczos; capped at min(C, D)].", kind=int, min=1)
    per_sample: bool = opt(True, "Include one row per sample in the report.")
    memory_mb: int = opt(512, "Memory budget (MB) for exact Jacobians of one batch; auto uses it to choose.", min=1)
    skip_nonfinite: bool = opt(False, "Leave samples with a NaN/Inf Jacobian out of the metrics instead of failing "
                               "every norms metric in the gate.")


@dataclass(frozen=True)
class NormsPlan:
    """The options resolved against the model: what will actually run."""

    method: NormMethod
    method_requested: NormMethod
    reason: str
    frobenius: FrobeniusMethod
    top_k: int
    iters: int | None
    tol: float | None
    n_proj: int | None
    target: JacTarget
    rows_per_pass: int


@dataclass(frozen=True)
class Row:
    """One sample's norms (None where the Jacobian is not finite)."""

    index: int
    label: int
    pred: int
    spectral: float | None
    frobenius: float | None
    top_k: list
    stable_rank: float | None
    iterations: int
    converged: bool
    frobenius_stderr: float | None
    error_bound: float | None


def plan(options: Options, *, num_classes: int, input_dim: int, batch_size: int, itemsize: int,
         float64: bool) -> NormsPlan:
    """Resolve ``auto`` choices and reject options that do not apply (UsageError, exit 2).

    Pure: no torch, so it is cheap to test exhaustively.
    """
    c, d = num_classes, input_dim
    budget = options.memory_mb * 2**20
    # exact chunks a batch to the budget; it is worth it while a chunk still holds a few dozen samples
    jac_bytes = min(batch_size, EXACT_MIN_ROWS) * c * d * (itemsize + 16)  # J plus its float64 working copies
    if options.method is NormMethod.AUTO:
        if c <= EXACT_MAX_CLASSES:
            method, reason = NormMethod.EXACT, f"C = {c} ≤ {EXACT_MAX_CLASSES}"
        elif jac_bytes <= budget:
            method, reason = NormMethod.EXACT, f"Jacobians of {EXACT_MIN_ROWS} samples fit --memory-mb {options.memory_mb}"
        else:
            method, reason = NormMethod.LANCZOS, (f"C = {c} > {EXACT_MAX_CLASSES} and Jacobians exceed "
                                                  f"--memory-mb {options.memory_mb}")
    else:
        method, reason = options.method, "requested"
    if method is NormMethod.EXACT and (options.iters is not None or options.tol is not None):
        flag = "--iters" if options.iters is not None else "--tol"
        hint = " (auto chose exact; pass --method power|lanczos)" if options.method is NormMethod.AUTO else ""
        raise UsageError(f"{flag} applies to --method power|lanczos, not exact{hint}")
    frob = options.frobenius
    if frob is FrobeniusMethod.AUTO:
        frob = FrobeniusMethod.EXACT if method is NormMethod.EXACT or c <= EXACT_MAX_CLASSES else FrobeniusMethod.HUTCHINSON
    if frob is FrobeniusMethod.EXACT and options.n_proj is not None:
        raise UsageError("--n-proj applies to --frobenius hutchinson, not exact")
    rank = min(c, d)
    if options.top_k is not None:
        if options.top_k > rank:
            raise UsageError(f"--top-k: expected at most min(C, D) = {rank}, got {options.top_k}")
        if method is NormMethod.POWER and options.top_k > 1:
            raise UsageError("--top-k > 1 needs --method exact or lanczos (power iteration gives σ_max only)")
        top_k = options.top_k
    else:
        top_k = min(DEFAULT_TOP_K_EXACT, rank) if method is NormMethod.EXACT else 1
    iters = tol = None
    if method in (NormMethod.POWER, NormMethod.LANCZOS):
        iters = options.iters if options.iters is not None else DEFAULT_ITERS
        if method is NormMethod.LANCZOS:
            iters = min(iters, rank if c <= d else d)
            iters = max(iters, top_k)
        tol = options.tol if options.tol is not None else default_tol("float64" if float64 else "float32")
    n_proj = (options.n_proj or DEFAULT_N_PROJ) if frob is FrobeniusMethod.HUTCHINSON else None
    rows_per_pass = batch_size
    if method is NormMethod.EXACT or frob is FrobeniusMethod.EXACT:
        # J of one pass must fit the budget: (rows, C, D) plus float64 working copies
        rows_per_pass = max(1, min(batch_size, budget // max(1, c * d * (itemsize + 16))))
    return NormsPlan(method=method, method_requested=options.method, reason=reason, frobenius=frob, top_k=top_k,
                     iters=iters, tol=tol, n_proj=n_proj, target=options.target, rows_per_pass=rows_per_pass)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def compute_rows(model, batch: "Batch", p: NormsPlan, *, num_classes: int, seed: int) -> list[Row]:
    """Norms of one batch, in slices of ``p.rows_per_pass`` samples."""
    from robaudit.linalg import JacobianOperator
    from robaudit.linalg.norms import jacobian_norms

    rows: list[Row] = []
    for start in range(0, batch.x.shape[0], p.rows_per_pass):
        sl = slice(start, start + p.rows_per_pass)
        op = JacobianOperator(model, batch.x[sl], target=p.target.value)
        if op.num_outputs != num_classes:
            raise UsageError(f"model output has {op.num_outputs} classes, expected {num_classes}")
        res = jacobian_norms(op, method=p.method.value, frobenius=p.frobenius.value, k=p.top_k,
                             iters=p.iters or 1, tol=p.tol or 0.0, n_proj=p.n_proj or 2,
                             keys=batch.index[sl], seed=seed)
        op.release()
        hutch = p.frobenius is FrobeniusMethod.HUTCHINSON
        for i, (index, label) in enumerate(zip(batch.index[sl].tolist(), batch.y[sl].tolist())):
            rows.append(Row(index=int(index), label=int(label), pred=int(res.pred[i]),
                            spectral=_finite(float(res.spectral[i])), frobenius=_finite(float(res.frobenius[i])),
                            top_k=[_finite(float(v)) for v in res.top_k[i].tolist()],
                            stable_rank=_finite(float(res.stable_rank[i])), iterations=int(res.iterations[i]),
                            converged=bool(res.converged[i]),
                            frobenius_stderr=_finite(float(res.frobenius_stderr[i])) if hutch else None,
                            error_bound=_finite(float(res.error_bound[i]))))
    return rows


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Norms of every sample of ``ctx.data``, batch by batch."""
    import torch

    from robaudit.analyses.runner import collect_rows

    data = ctx.require_data("norms")
    c, d = int(ctx.model.num_classes), int(math.prod(data.sample_shape))
    p = plan(options, num_classes=c, input_dim=d, batch_size=ctx.batch_size,
             itemsize=torch.empty((), dtype=ctx.dtype).element_size(), float64=ctx.dtype == torch.float64)
    model = ctx.model.module
    try:
        rows = collect_rows(ctx, "norms", lambda b: compute_rows(model, b, p, num_classes=c, seed=ctx.seed),
                            description=f"norms ({p.method.value})")
    except KeyboardInterrupt as exc:
        exc.partial_section = summarise(getattr(exc, "partial_rows", []), p, options, ctx)  # type: ignore[attr-defined]
        raise
    if p.target is JacTarget.LOGITS:
        # Reused by the layers analysis as the empirical Lipschitz lower bound (max over data of σ_max).
        ctx.cache["norms.sigma_max"] = torch.tensor([math.nan if r.spectral is None else r.spectral for r in rows],
                                                    dtype=torch.float64)
        ctx.cache["norms.index"] = torch.tensor([r.index for r in rows], dtype=torch.long)
    return summarise(rows, p, options, ctx)


def summarise(rows: list[Row], p: NormsPlan, options: Options, ctx: "AuditContext | None" = None) -> dict[str, Any]:
    """The norms section from the rows (pure apart from warnings through ``ctx``)."""
    n = len(rows)
    warn = ctx.warn if ctx is not None else (lambda message: None)
    nonfinite = [r.index for r in rows if r.spectral is None]
    if nonfinite:
        how = ("they are left out of the metrics (--skip-nonfinite)" if options.skip_nonfinite else
               "every norms metric fails the gate (pass --skip-nonfinite to leave them out)")
        warn(f"norms: the Jacobian is NaN/Inf for {len(nonfinite)} sample(s), e.g. index {nonfinite[0]}; {how}")
    iterative = p.method in (NormMethod.POWER, NormMethod.LANCZOS)
    not_conv = sum(1 for r in rows if not r.converged and r.spectral is not None)
    if not_conv and iterative:
        warn(f"norms: {p.method.value} did not reach --tol {p.tol} within {p.iters} iterations for {not_conv} "
             "sample(s); their σ is a lower bound")
    names = None
    if ctx is not None:
        names = getattr(ctx.data, "class_names", None) or getattr(ctx.model, "class_names", None)

    def stats(subset: list[Row]) -> dict[str, Any]:
        return {"spectral": summarize(r.spectral for r in subset),
                "frobenius": summarize(r.frobenius for r in subset),
                "stable_rank": summarize(r.stable_rank for r in subset)}

    per_class: dict[str, Any] = {}
    for label in sorted({r.label for r in rows}):
        subset = [r for r in rows if r.label == label]
        entry: dict[str, Any] = {"n": len(subset), **stats(subset)}
        if names and 0 <= label < len(names):
            entry["name"] = names[label]
        per_class[str(label)] = entry
    finite_rows = [r for r in rows if r.spectral is not None]
    worst = None
    if finite_rows:
        w = max(finite_rows, key=lambda r: r.spectral)
        worst = {"index": w.index, "label": w.label, "pred": w.pred, "spectral": w.spectral,
                 "frobenius": w.frobenius, "stable_rank": w.stable_rank}
    iters = [r.iterations for r in rows]
    section: dict[str, Any] = {
        "method": p.method.value, "method_requested": p.method_requested.value, "method_reason": p.reason,
        "frobenius_method": p.frobenius.value, "target": p.target.value, "n": n,
        "num_classes": int(ctx.model.num_classes) if ctx is not None else None,
        "input_dim": int(math.prod(ctx.data.sample_shape)) if ctx is not None and ctx.data is not None else None,
        "top_k": p.top_k, "iters": p.iters, "tol": p.tol, "n_proj": p.n_proj,
        "summary": stats(rows), "per_class": per_class, "worst": worst,
        "accuracy": (sum(1 for r in rows if r.pred == r.label) / n) if n else None,
        "convergence": {"not_converged": not_conv, "mean_iterations": (sum(iters) / n) if n else None,
                        "max_iterations": max(iters) if n else None,
                        # σ_max lies in [σ, σ·(1 + bound)]: the residual bound, not a step change
                        "max_error_bound": max((r.error_bound for r in rows if r.error_bound is not None),
                                               default=None)},
        "nonfinite": nonfinite,
        "skip_nonfinite": options.skip_nonfinite,
    }
    if options.per_sample:
        from robaudit.analyses.runner import row_dict

        out = []
        for r in rows:
            row = row_dict(r)
            if p.frobenius is not FrobeniusMethod.HUTCHINSON:
                row.pop("frobenius_stderr")
            out.append(row)
        section["per_sample"] = out
    return section


def render(section: Mapping[str, Any]) -> list:
    """Summary table, per-class table, worst sample and diagnostics, from the JSON section only."""
    out: list = []
    method = section.get("method")
    how = method
    if section.get("method_requested") == "auto":
        how = f"{method} (auto: {section.get('method_reason')})"
    out.append(Text(f"norms · Jacobian of the {section.get('target', 'logits')} · n={section.get('n')}", style="bold"))
    out.append(Text(f"σ by {how} · ‖J‖_F by {section.get('frobenius_method')}", style="dim"))
    table = Table()
    table.add_column("norm")
    for col in ("mean", "median", "p95", "max"):
        table.add_column(col, justify="right")
    labels = {"spectral": "spectral σ_max", "frobenius": "Frobenius ‖J‖_F", "stable_rank": "stable rank ‖J‖_F²/σ²"}
    summary = section.get("summary") or {}
    for key, label in labels.items():
        stats = summary.get(key) or {}
        table.add_row(label, *(fmt(stats.get(c)) for c in ("mean", "median", "p95", "max")))
    out.append(table)

    per_class = section.get("per_class") or {}
    if per_class:
        pc = Table(title="per class (true label)", title_justify="left")
        for col, just in (("class", "left"), ("n", "right"), ("σ mean", "right"), ("σ p95", "right"),
                          ("σ max", "right"), ("‖J‖_F mean", "right"), ("stable rank", "right")):
            pc.add_column(col, justify=just)
        for label, entry in per_class.items():
            name = Text(f"{label} {entry['name']}" if entry.get("name") else label)
            s, f, r = entry.get("spectral") or {}, entry.get("frobenius") or {}, entry.get("stable_rank") or {}
            pc.add_row(name, str(entry.get("n")), fmt(s.get("mean")), fmt(s.get("p95")), fmt(s.get("max")),
                       fmt(f.get("mean")), fmt(r.get("mean")))
        out.append(pc)

    worst = section.get("worst")
    if worst:
        out.append(Text(f"worst sample: index {worst['index']} (label {worst['label']}, pred {worst['pred']}): "
                        f"σ_max {fmt(worst['spectral'])}, ‖J‖_F {fmt(worst.get('frobenius'))}"))
    conv = section.get("convergence") or {}
    if conv.get("not_converged"):
        out.append(Text(f"{conv['not_converged']} sample(s) did not converge within {section.get('iters')} "
                        f"iterations (tol {section.get('tol')}); their σ is a lower bound", style="yellow"))
    elif method in ("power", "lanczos") and conv.get("mean_iterations") is not None:
        out.append(Text(f"{method}: all converged, mean {conv['mean_iterations']:.1f} / max {conv['max_iterations']} "
                        f"iterations (tol {section.get('tol')}; relative error bound ≤ "
                        f"{fmt(conv.get('max_error_bound'))})", style="dim"))
    nonfinite = section.get("nonfinite") or []
    if nonfinite:
        shown = ", ".join(str(i) for i in nonfinite[:10]) + (" …" if len(nonfinite) > 10 else "")
        out.append(Text(f"NaN/Inf Jacobian for {len(nonfinite)} sample(s): indices {shown}", style="bold red"))
    return out


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """norms.spectral.*, norms.frobenius.*, norms.stable_rank.mean (lower is better), norms.nonfinite.

    A section with NaN/Inf samples makes every norm metric missing (so the gate fails it),
    unless the run was made with --skip-nonfinite.
    """
    out: dict[str, Metric] = {}
    summary = section.get("summary") or {}
    poisoned = bool(section.get("nonfinite")) and not section.get("skip_nonfinite")
    for key in ("spectral", "frobenius"):
        for stat in ("mean", "median", "p95", "max"):
            value = None if poisoned else (summary.get(key) or {}).get(stat)
            out[f"norms.{key}.{stat}"] = Metric(value, Better.LOWER)
    value = None if poisoned else (summary.get("stable_rank") or {}).get("mean")
    out["norms.stable_rank.mean"] = Metric(value, Better.NEUTRAL)
    out["norms.nonfinite"] = Metric(float(len(section.get("nonfinite") or [])), Better.LOWER, "samples")
    return out


def plot(section: Mapping[str, Any], path: str) -> None:
    """Histograms of σ_max and ‖J‖_F, one outline per class (true label), from ``per_sample``.

    Without per-sample rows (``--no-per-sample``) the per-class mean, p95 and max are drawn instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = section.get("per_class") or {}
    rows = section.get("per_sample") or []
    labels = sorted(per_class, key=int)

    def name(label: str) -> str:
        entry = per_class.get(label) or {}
        return f"{label} {entry['name']}" if entry.get("name") else str(label)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
        for ax, key, title in ((axes[0], "spectral", "spectral norm σ_max(J)"),
                               (axes[1], "frobenius", "Frobenius norm ‖J‖_F")):
            if rows:
                values = [r[key] for r in rows if r.get(key) is not None]
                if values:
                    lo, hi = min(values), max(values)
                    nb = min(30, max(8, len(values) // 25))
                    bins = [lo + (hi - lo) * i / nb for i in range(nb + 1)] if hi > lo else nb
                    for k, label in enumerate(labels):
                        vals = [r[key] for r in rows if str(r.get("label")) == label and r.get(key) is not None]
                        if vals:  # outlines, so ten classes stay readable on one axis
                            ax.hist(vals, bins=bins, histtype="step", linewidth=1.4, color=cmap(k % cmap.N),
                                    label=name(label))
                ax.set_ylabel("samples")
            else:
                xs = list(range(len(labels)))
                for stat, marker in (("mean", "o"), ("p95", "^"), ("max", "v")):
                    ys = [((per_class[lb].get(key) or {}).get(stat)) for lb in labels]
                    ax.plot(xs, [float("nan") if y is None else y for y in ys], marker=marker, linestyle="", label=stat)
                ax.set_xticks(xs, [name(lb) for lb in labels], rotation=45, ha="right", fontsize=7)
                ax.set_ylabel(title)
            ax.set_xlabel(title)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, title="true class" if rows else None, title_fontsize=7)
        fig.suptitle(f"norms: Jacobian of the {section.get('target', 'logits')}, n={section.get('n')}, "
                     f"σ by {section.get('method')}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


ANALYSIS = Analysis(
    name="norms",
    help="Per-sample Jacobian spectral and Frobenius norms (exact, power iteration, Lanczos, Hutchinson).",
    options=Options,
    row=Row,
    sharded=True,
    required=("method", "summary", "n", "nonfinite"),
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    profiles={"quick": {"method": "exact", "top_k": 1}, "standard": {}, "full": {}},
    metric_patterns=(r"norms\.(spectral|frobenius)\.(mean|median|p95|max)", r"norms\.stable_rank\.mean",
                     r"norms\.nonfinite"),
)
