"""``robaudit norms``: per-sample spectral and Frobenius norms of the input–output Jacobian.

σ_max(J(x)) is the local Lipschitz constant of the logits at x (Johansson et
al. 2022; Roth et al. 2019, eq. 7); ‖J‖_F is Hoffman et al.'s (2019)
regulariser. Methods: exact (C VJPs), power iteration, batched Lanczos, and the
Hutchinson Frobenius estimator; all from :mod:`robaudit.linalg`.

Streaming: batches are processed one at a time; only per-sample scalars are
kept, so memory grows with N by a few numbers per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, finite_or_none, opt
from robaudit.errors import UsageError
from robaudit.report.terminal import fmt

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext

METHODS = ("auto", "exact", "power", "lanczos")
FROBENIUS = ("auto", "exact", "hutchinson")
TARGETS = ("logits", "probs", "logprobs")
EXACT_MAX_CLASSES = 64  # mirrors robaudit.linalg.EXACT_MAX_CLASSES (kept here to avoid importing torch)
DEFAULT_ITERS = 100
DEFAULT_N_PROJ = 16
DEFAULT_TOP_K = 3
EXACT_MIN_ROWS = 32  # auto picks exact above 64 classes only if this many samples' Jacobians fit --memory-mb


@dataclass(frozen=True)
class Options:
    method: str = opt("auto", "How σ is computed: exact Jacobian (C backward passes), power iteration, or "
                      "batched Lanczos. auto: exact when C ≤ 64 or the Jacobians fit --memory-mb, else lanczos.",
                      choices=METHODS)
    frobenius: str = opt("auto", "How ‖J‖_F is computed: exact, or the Hutchinson random-projection estimate with "
                         "a standard error. auto: exact when the method is exact or C ≤ 64.", choices=FROBENIUS)
    n_proj: int | None = opt(None, f"Random projections per sample for --frobenius hutchinson [default: {DEFAULT_N_PROJ}].",
                             min=2)
    iters: int | None = opt(None, f"Iteration cap for power/lanczos [default: {DEFAULT_ITERS}].", min=1)
    tol: float | None = opt(None, "Relative tolerance for power/lanczos [default: 1e-5 in float32, 1e-8 in float64].",
                            min=0.0)
    target: str = opt("logits", "Differentiate the logits, the softmax probabilities or the log-probabilities.",
                      choices=TARGETS)
    top_k: int | None = opt(None, f"Top singular values per sample [default: {DEFAULT_TOP_K}, capped at min(C, D); "
                            "1 for power].", min=1)
    per_sample: bool = opt(True, "Include one row per sample in the report.")
    memory_mb: int = opt(512, "Memory budget (MB) for exact Jacobians of one batch; auto uses it to choose.", min=1)


@dataclass(frozen=True)
class NormsPlan:
    """The options resolved against the model: what will actually run."""

    method: str
    method_requested: str
    reason: str
    frobenius: str
    top_k: int
    iters: int | None
    tol: float | None
    n_proj: int | None
    target: str


def plan(options: Options, *, num_classes: int, input_dim: int, batch_size: int, itemsize: int,
         float64: bool) -> NormsPlan:
    """Resolve ``auto`` choices and reject options that do not apply (UsageError, exit 2).

    Pure: no torch, so it is cheap to test exhaustively.
    """
    c, d = num_classes, input_dim
    budget = options.memory_mb * 2**20
    # exact chunks a batch to the budget; it is worth it while a chunk still holds a few dozen samples
    jac_bytes = min(batch_size, EXACT_MIN_ROWS) * c * d * (itemsize + 16)  # J plus its float64 working copies
    if options.method == "auto":
        if c <= EXACT_MAX_CLASSES:
            method, reason = "exact", f"C = {c} ≤ {EXACT_MAX_CLASSES}"
        elif jac_bytes <= budget:
            method, reason = "exact", f"Jacobians of {EXACT_MIN_ROWS} samples fit --memory-mb {options.memory_mb}"
        else:
            method, reason = "lanczos", f"C = {c} > {EXACT_MAX_CLASSES} and Jacobians exceed --memory-mb {options.memory_mb}"
    else:
        method, reason = options.method, "requested"
    if method == "exact" and (options.iters is not None or options.tol is not None):
        flag = "--iters" if options.iters is not None else "--tol"
        hint = " (auto chose exact; pass --method power|lanczos)" if options.method == "auto" else ""
        raise UsageError(f"{flag} applies to --method power|lanczos, not exact{hint}")
    frob = options.frobenius
    if frob == "auto":
        frob = "exact" if method == "exact" or c <= EXACT_MAX_CLASSES else "hutchinson"
    if frob == "exact" and options.n_proj is not None:
        raise UsageError("--n-proj applies to --frobenius hutchinson, not exact")
    rank = min(c, d)
    if options.top_k is not None:
        if options.top_k > rank:
            raise UsageError(f"--top-k: expected at most min(C, D) = {rank}, got {options.top_k}")
        if method == "power" and options.top_k > 1:
            raise UsageError("--top-k > 1 needs --method exact or lanczos (power iteration gives σ_max only)")
        top_k = options.top_k
    else:
        top_k = 1 if method == "power" else min(DEFAULT_TOP_K, rank)
    iters = tol = None
    if method in ("power", "lanczos"):
        iters = options.iters if options.iters is not None else DEFAULT_ITERS
        if method == "lanczos":
            iters = min(iters, rank if c <= d else d)
            iters = max(iters, top_k)
        tol = options.tol if options.tol is not None else (1e-8 if float64 else 1e-5)
    n_proj = (options.n_proj or DEFAULT_N_PROJ) if frob == "hutchinson" else None
    return NormsPlan(method=method, method_requested=options.method, reason=reason, frobenius=frob, top_k=top_k,
                     iters=iters, tol=tol, n_proj=n_proj, target=options.target)


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """mean, median, p95 and max of the finite values (None when there are none).

    Quantiles interpolate linearly between order statistics (numpy's default).
    """
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if not xs:
        return {"mean": None, "median": None, "p95": None, "max": None}

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"mean": math.fsum(xs) / len(xs), "median": q(0.5), "p95": q(0.95), "max": xs[-1]}



def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Norms of every sample of ``ctx.data``, batch by batch."""
    import torch

    from robaudit.linalg import JacobianOperator, batch_rows_for_budget, eval_mode
    from robaudit.linalg.norms import jacobian_norms

    data = ctx.require_data("norms")
    model = ctx.model.module
    torch.manual_seed(ctx.seed)
    c = int(ctx.model.num_classes)
    d = int(math.prod(data.sample_shape))
    itemsize = torch.empty((), dtype=ctx.dtype).element_size()
    p = plan(options, num_classes=c, input_dim=d, batch_size=ctx.batch_size, itemsize=itemsize,
             float64=ctx.dtype == torch.float64)
    needs_jac = p.method == "exact" or p.frobenius == "exact"
    rows_per_pass = ctx.batch_size
    if needs_jac:
        rows_per_pass = min(ctx.batch_size, batch_rows_for_budget(c, d, itemsize, options.memory_mb * 2**20))

    n_total = len(data)
    index_l: list[int] = []
    label_l: list[int] = []
    pred_l: list[int] = []
    spec_l: list[float] = []
    frob_l: list[float] = []
    stable_l: list[float] = []
    stderr_l: list[float] = []
    iters_l: list[int] = []
    conv_l: list[bool] = []
    topk_l: list[list[float]] = []
    sigma_chunks = []
    with eval_mode(model), ctx.progress(f"norms ({p.method})", n_total) as task:
        for idx, x, y in data.batches(ctx.batch_size, device=ctx.device, dtype=ctx.dtype):
            for start in range(0, x.shape[0], rows_per_pass):
                sl = slice(start, start + rows_per_pass)
                op = JacobianOperator(model, x[sl], target=p.target)
                if op.num_outputs != c:
                    raise UsageError(f"model output has {op.num_outputs} classes, expected {c}")
                res = jacobian_norms(op, method=p.method, frobenius=p.frobenius, k=p.top_k,
                                     iters=p.iters or 1, tol=p.tol or 0.0, n_proj=p.n_proj or 2,
                                     keys=idx[sl], seed=ctx.seed)
                op.release()
                sigma_chunks.append(res.spectral.detach().cpu())
                index_l += [int(i) for i in idx[sl].tolist()]
                label_l += [int(v) for v in y[sl].tolist()]
                pred_l += res.pred.tolist()
                spec_l += res.spectral.tolist()
                frob_l += res.frobenius.tolist()
                stable_l += res.stable_rank.tolist()
                stderr_l += res.frobenius_stderr.tolist()
                iters_l += res.iterations.tolist()
                conv_l += res.converged.tolist()
                topk_l += res.top_k.tolist()
                task.advance(int(x[sl].shape[0]))

    n = len(index_l)
    sigma = torch.cat(sigma_chunks) if sigma_chunks else torch.empty(0, dtype=torch.float64)
    if p.target == "logits":
        # Reused by the layers analysis as the empirical Lipschitz lower bound (max over data of σ_max).
        ctx.cache["norms.sigma_max"] = sigma
        ctx.cache["norms.index"] = torch.tensor(index_l, dtype=torch.long)
        ctx.cache["norms.method"] = p.method  # exact, or power/lanczos (lower bounds on σ_max)
    nonfinite = [index_l[i] for i in range(n) if not math.isfinite(spec_l[i])]
    if nonfinite:
        ctx.warn(f"norms: the Jacobian is NaN/Inf for {len(nonfinite)} sample(s), e.g. index {nonfinite[0]}; "
                 "they are listed under 'nonfinite' and left out of the summary")
    not_conv = sum(1 for i in range(n) if not conv_l[i] and math.isfinite(spec_l[i]))
    if not_conv and p.method in ("power", "lanczos"):
        ctx.warn(f"norms: {p.method} did not reach --tol {p.tol} within {p.iters} iterations for {not_conv} "
                 "sample(s); their σ is a lower bound")

    summary = {"spectral": summarize(spec_l), "frobenius": summarize(frob_l), "stable_rank": summarize(stable_l)}
    per_class: dict[str, Any] = {}
    names = getattr(data, "class_names", None) or getattr(ctx.model, "class_names", None)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(label_l):
        groups.setdefault(label, []).append(i)
    for label, rows in sorted(groups.items()):
        entry: dict[str, Any] = {"n": len(rows),
                                 "spectral": summarize([spec_l[i] for i in rows]),
                                 "frobenius": summarize([frob_l[i] for i in rows]),
                                 "stable_rank": summarize([stable_l[i] for i in rows])}
        if names and 0 <= label < len(names):
            entry["name"] = names[label]
        per_class[str(label)] = entry
    finite_rows = [i for i in range(n) if math.isfinite(spec_l[i])]
    worst = None
    if finite_rows:
        w = max(finite_rows, key=lambda i: spec_l[i])
        worst = {"index": index_l[w], "label": label_l[w], "pred": pred_l[w], "spectral": spec_l[w],
                 "frobenius": finite_or_none(frob_l[w]), "stable_rank": finite_or_none(stable_l[w])}

    section: dict[str, Any] = {
        "method": p.method,
        "method_requested": p.method_requested,
        "method_reason": p.reason,
        "frobenius_method": p.frobenius,
        "target": p.target,
        "n": n,
        "num_classes": c,
        "input_dim": d,
        "top_k": p.top_k,
        "iters": p.iters,
        "tol": p.tol,
        "n_proj": p.n_proj,
        "summary": summary,
        "per_class": per_class,
        "worst": worst,
        "accuracy": (sum(1 for i in range(n) if pred_l[i] == label_l[i]) / n) if n else None,
        "convergence": {
            "not_converged": not_conv,
            "mean_iterations": (sum(iters_l) / n) if n else None,
            "max_iterations": max(iters_l) if n else None,
        },
        "nonfinite": nonfinite,
    }
    if options.per_sample:
        rows_out = []
        for i in range(n):
            row = {"index": index_l[i], "label": label_l[i], "pred": pred_l[i], "spectral": finite_or_none(spec_l[i]),
                   "frobenius": finite_or_none(frob_l[i]), "top_k": [finite_or_none(v) for v in topk_l[i]],
                   "stable_rank": finite_or_none(stable_l[i]), "iterations": int(iters_l[i]), "converged": bool(conv_l[i])}
            if p.frobenius == "hutchinson":
                row["frobenius_stderr"] = finite_or_none(stderr_l[i])
            rows_out.append(row)
        section["per_sample"] = rows_out
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
            name = f"{label} {entry['name']}" if entry.get("name") else label
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
                        f"iterations (tol {section.get('tol')})", style="dim"))
    nonfinite = section.get("nonfinite") or []
    if nonfinite:
        shown = ", ".join(str(i) for i in nonfinite[:10]) + (" …" if len(nonfinite) > 10 else "")
        out.append(Text(f"NaN/Inf Jacobian for {len(nonfinite)} sample(s): indices {shown}", style="bold red"))
    return out


def metrics(section: Mapping[str, Any]) -> dict[str, float]:
    """Gate aliases: norms.spectral.*, norms.frobenius.*, norms.stable_rank.mean, norms.nonfinite."""
    out: dict[str, Any] = {}
    summary = section.get("summary") or {}
    for key in ("spectral", "frobenius"):
        for stat in ("mean", "median", "p95", "max"):
            out[f"norms.{key}.{stat}"] = (summary.get(key) or {}).get(stat)
    out["norms.stable_rank.mean"] = (summary.get("stable_rank") or {}).get("mean")
    out["norms.nonfinite"] = float(len(section.get("nonfinite") or []))
    return out


ANALYSIS = Analysis(
    name="norms",
    help="Per-sample Jacobian spectral and Frobenius norms (exact, power iteration, Lanczos, Hutchinson).",
    options=Options,
    run=run,
    render=render,
    metrics=metrics,
    profiles={"quick": {"method": "exact", "top_k": 1}, "standard": {}, "full": {}},
    metric_patterns=(r"norms\.(spectral|frobenius)\.(mean|median|p95|max)", r"norms\.stable_rank\.mean",
                     r"norms\.nonfinite"),
)
