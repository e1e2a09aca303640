"""``robaudit spectrum``: the full singular spectrum of J(x) per sample, and how adversarial
perturbations align with its right singular vectors (Roth et al. 2019, Sec. 5.2, Fig. 1).

Per sample: the exact Jacobian (C VJPs), its SVD J = U S Vᵀ, an ℓ2 PGD
perturbation δ (torchattacks.PGDL2, no random start) and a random direction of
the same dimension; the alignment of a perturbation with rank r is
|cos(δ, v_r)|. Adversarial perturbations of a normally trained network align
with the dominant singular vectors; random ones are spread evenly
(E|cos| ≈ √(2/(πD))).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, Fraction, Metric, opt
from robaudit.analyses.runner import row_dict
from robaudit.errors import UsageError
from robaudit.kinds import Better, JacTarget
from robaudit.numfmt import fmt
from robaudit.stats import quantile
from robaudit.stats import summary as summarize

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext


@dataclass(frozen=True)
class Options:
    eps: float = opt(0.5, "ℓ2 radius of the PGD perturbations, in pixel units ([0,1] images); fractions "
                     "such as 128/255 allowed.", kind=Fraction, min=0.0)
    steps: int = opt(10, "PGD steps.", min=1)
    alpha: float | None = opt(None, "PGD step size [default: 2.5·eps/steps].", kind=Fraction, min=0.0)
    max_samples: int | None = opt(None, "Use at most this many samples (the first ones) [default: all].",
                                  kind=int, min=1)
    target: JacTarget = opt(JacTarget.LOGITS, "Differentiate the logits, the softmax probabilities or the "
                            "log-probabilities.")
    per_sample: bool = opt(True, "Include each sample's spectrum and alignments in the report.")
    plot: str | None = opt(None, "Write the mean spectrum and the alignment by rank to this PNG file.", kind=str)
    memory_mb: int = opt(512, "Memory budget (MB) for the Jacobians and singular vectors of one batch.", min=1)


@dataclass(frozen=True)
class Row:
    """One sample's singular spectrum and the alignment of a PGD and a random direction with it."""

    index: int
    label: int
    pred: int
    adv_pred: int | None
    spectrum: list
    alignment_adversarial: list
    alignment_random: list
    delta_norm: float | None
    energy_adversarial: float | None
    energy_random: float | None
    finite: bool


def _mean_std(rows: list[list[float]], r: int) -> tuple[list[float | None], list[float | None]]:
    """Per-rank mean and standard deviation over rows, ignoring missing entries."""
    means, stds = [], []
    for k in range(r):
        col = [row[k] for row in rows if row[k] is not None and math.isfinite(row[k])]
        if not col:
            means.append(None)
            stds.append(None)
            continue
        m = math.fsum(col) / len(col)
        var = math.fsum((v - m) ** 2 for v in col) / (len(col) - 1) if len(col) > 1 else 0.0
        means.append(m)
        stds.append(math.sqrt(var))
    return means, stds


def check(options: Options) -> None:
    if options.eps == 0:
        raise UsageError("--eps: expected a positive ℓ2 radius, got 0")


def _values(t) -> list:
    return [v if math.isfinite(v) else None for v in t.tolist()]


def compute_rows(model, batch, options: Options, *, alpha: float, seed: int, n_classes: int) -> list[Row]:
    """Spectra by the exact Jacobian, PGD-ℓ2 directions through the re-checked attack path."""
    import torch

    from robaudit.attacks.run import attack_batch
    from robaudit.linalg import JacobianOperator, jacobian, right_singular
    from robaudit.linalg.rng import keyed_sphere

    idx, x, y = batch
    d = int(math.prod(x.shape[1:]))
    op = JacobianOperator(model, x, target=options.target.value)
    jac = jacobian(op)
    pred = op.value.argmax(dim=1)
    op.release()
    s, vh, finite = right_singular(jac)
    del jac
    labels = torch.where(y >= 0, y.to(pred.device), pred)  # attack the true label where known
    x_adv, chk = attack_batch(model, x, labels, "pgdl2", norm="l2", eps=options.eps, steps=options.steps,
                              alpha=alpha, n_classes=n_classes, seed=seed, random_start=False)
    delta = (x_adv - x).flatten(1).to(torch.float64)
    dn = delta.norm(dim=1)
    usable = (dn > 0) & ~chk.violation  # a direction that broke the budget is not trusted
    rnd = keyed_sphere(idx, (d,), seed=seed, dtype=torch.float64, device=x.device)
    cos_adv = torch.einsum("brd,bd->br", vh, delta / dn.clamp_min(1e-300)[:, None]).abs()
    cos_adv = torch.where(usable[:, None], cos_adv, torch.full_like(cos_adv, float("nan")))
    cos_rnd = torch.einsum("brd,bd->br", vh, rnd).abs()
    e_adv, e_rnd = cos_adv.square().sum(dim=1), cos_rnd.square().sum(dim=1)
    rows = []
    for i in range(x.shape[0]):
        rows.append(Row(index=int(idx[i]), label=int(y[i]), pred=int(pred[i]), adv_pred=int(chk.pred[i]),
                        spectrum=_values(s[i]), alignment_adversarial=_values(cos_adv[i]),
                        alignment_random=_values(cos_rnd[i]), delta_norm=_values(dn[i:i + 1])[0],
                        energy_adversarial=_values(e_adv[i:i + 1])[0], energy_random=_values(e_rnd[i:i + 1])[0],
                        finite=bool(finite[i])))
    return rows


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Spectra and alignments, batch by batch."""
    import torch

    from robaudit.analyses.runner import run_rows

    data = ctx.require_data("spectrum")
    c, d = int(ctx.model.num_classes), int(math.prod(data.sample_shape))
    r = min(c, d)
    alpha = options.alpha if options.alpha is not None else 2.5 * options.eps / options.steps
    itemsize = torch.empty((), dtype=ctx.dtype).element_size()
    per_row = d * (c * itemsize + 8 * c + 8 * r)  # J in the compute dtype, plus J and Vh (r×D) in float64
    rows_per_pass = max(1, min(ctx.batch_size, options.memory_mb * 2**20 // per_row))
    model = ctx.model.module
    return run_rows(ctx, "spectrum",
                    lambda b: compute_rows(model, b, options, alpha=alpha, seed=ctx.seed, n_classes=c),
                    lambda rows: summarise(rows, options, alpha=alpha, num_classes=c, input_dim=d, warn=ctx.warn),
                    batch_size=rows_per_pass, limit=options.max_samples)


def summarise(rows: list[Row], options: Options, *, alpha: float, num_classes: int, input_dim: int,
              warn=lambda message: None) -> dict[str, Any]:
    """The spectrum section from the rows (pure)."""
    c, d = num_classes, input_dim
    r = min(c, d)
    nonfinite = [row.index for row in rows if not row.finite]
    if nonfinite:
        warn(f"spectrum: the Jacobian is NaN/Inf for {len(nonfinite)} sample(s), e.g. index {nonfinite[0]}; "
             "they are listed under 'nonfinite' and left out of the means")
    ok = [row for row in rows if row.finite]
    sp_mean, sp_std = _mean_std([row.spectrum for row in ok], r)
    normalized = [[(v / row.spectrum[0]) if (v is not None and row.spectrum[0]) else None for v in row.spectrum]
                  for row in ok]
    norm_mean, _ = _mean_std(normalized, r)
    median = [quantile([row.spectrum[k] for row in ok], 0.5) for k in range(r)]
    adv_mean, adv_std = _mean_std([row.alignment_adversarial for row in ok], r)
    rnd_mean, rnd_std = _mean_std([row.alignment_random for row in ok], r)
    flipped = [row for row in ok if row.adv_pred != row.pred]
    section: dict[str, Any] = {
        "n": len(rows), "num_classes": c, "input_dim": d, "rank": r, "target": options.target.value,
        "spectrum": {"mean": sp_mean, "std": sp_std, "median": median, "normalized_mean": norm_mean},
        "alignment": {
            "attack": "pgd_l2", "eps": options.eps, "steps": options.steps, "alpha": alpha,
            "adversarial": {"mean": adv_mean, "std": adv_std},
            "random": {"mean": rnd_mean, "std": rnd_std},
            # fraction of ‖δ‖² inside the row space of J (Σ_r cos²); for a random direction ≈ r/D
            "row_space_energy": {"adversarial": summarize(row.energy_adversarial for row in ok)["mean"],
                                 "random": summarize(row.energy_random for row in ok)["mean"],
                                 "random_expected": r / d},
            "random_expected_abs_cos": math.sqrt(2 / (math.pi * d)),
            "prediction_changed": (len(flipped) / len(ok)) if ok else None,
            "mean_delta_norm": summarize(row.delta_norm for row in ok)["mean"],
        },
        "summary": {"sigma_max": summarize(row.spectrum[0] for row in ok),
                    "sigma_min": summarize(row.spectrum[r - 1] for row in ok)},
        "nonfinite": nonfinite,
    }
    if options.per_sample:
        section["per_sample"] = [row_dict(row) for row in rows]
    return section


def render(section: Mapping[str, Any]) -> list:
    """Mean spectrum and alignment by rank (first and last ranks), from the JSON section only."""
    out: list = []
    al = section.get("alignment") or {}
    out.append(Text(f"spectrum · Jacobian of the {section.get('target', 'logits')} · n={section.get('n')} · "
                    f"rank {section.get('rank')} · ℓ2 PGD eps={al.get('eps')}, {al.get('steps')} steps", style="bold"))
    spec = section.get("spectrum") or {}
    adv = (al.get("adversarial") or {}).get("mean") or []
    rnd = (al.get("random") or {}).get("mean") or []
    mean = spec.get("mean") or []
    r = len(mean)
    ranks = list(range(r)) if r <= 12 else list(range(8)) + list(range(r - 3, r))
    table = Table()
    for col in ("rank", "mean σ_r", "median σ_r", "σ_r/σ_1", "|cos| adversarial", "|cos| random"):
        table.add_column(col, justify="right")
    prev = -1
    for k in ranks:
        if k != prev + 1:
            table.add_row("…", "", "", "", "", "")
        prev = k
        table.add_row(str(k + 1), fmt(mean[k]), fmt((spec.get("median") or [None] * r)[k]),
                      fmt((spec.get("normalized_mean") or [None] * r)[k]),
                      fmt(adv[k] if k < len(adv) else None), fmt(rnd[k] if k < len(rnd) else None))
    out.append(table)
    energy = al.get("row_space_energy") or {}
    out.append(Text(f"share of ‖δ‖² in the row space of J: adversarial {fmt(energy.get('adversarial'))}, "
                    f"random {fmt(energy.get('random'))} (expected {fmt(energy.get('random_expected'))}); "
                    f"PGD changed the prediction for {fmt(al.get('prediction_changed'))} of samples"))
    nonfinite = section.get("nonfinite") or []
    if nonfinite:
        shown = ", ".join(str(i) for i in nonfinite[:10]) + (" …" if len(nonfinite) > 10 else "")
        out.append(Text(f"NaN/Inf Jacobian for {len(nonfinite)} sample(s): indices {shown}", style="bold red"))
    return out


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """spectrum.sigma_max.* (lower is better); alignments and energies (neutral: descriptive)."""
    al = section.get("alignment") or {}
    adv = (al.get("adversarial") or {}).get("mean") or [None]
    rnd = (al.get("random") or {}).get("mean") or [None]
    out: dict[str, Metric] = {}
    poisoned = bool(section.get("nonfinite"))
    for k, v in ((section.get("summary") or {}).get("sigma_max") or {}).items():
        out[f"spectrum.sigma_max.{k}"] = Metric(None if poisoned else v, Better.LOWER)
    out["spectrum.alignment.adversarial.top1"] = Metric(adv[0], Better.NEUTRAL)
    out["spectrum.alignment.random.top1"] = Metric(rnd[0], Better.NEUTRAL)
    energy = al.get("row_space_energy") or {}
    out["spectrum.energy.adversarial"] = Metric(energy.get("adversarial"), Better.NEUTRAL)
    out["spectrum.energy.random"] = Metric(energy.get("random"), Better.NEUTRAL)
    return out


def plot(section: Mapping[str, Any], path: str) -> None:
    """Two panels (Roth et al. 2019, Fig. 1): mean σ_r by rank; mean |cos(δ, v_r)| by rank, PGD vs random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = section.get("spectrum") or {}
    al = section.get("alignment") or {}
    mean = [float("nan") if v is None else v for v in spec.get("mean") or []]
    ranks = list(range(1, len(mean) + 1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        left.plot(ranks, mean, marker="o", ms=3, label="mean σ_r")
        median = spec.get("median") or []
        if median:
            left.plot(ranks, [float("nan") if v is None else v for v in median], ls="--", label="median σ_r")
        if any(v > 0 for v in mean if v == v):
            left.set_yscale("log")
        left.set_xlabel("rank r")
        left.set_ylabel("singular value of J(x)")
        left.set_title(f"singular spectrum (n={section.get('n')})")
        left.legend()
        for key, label in (("adversarial", f"ℓ2 PGD, eps={al.get('eps')}"), ("random", "random direction")):
            entry = al.get(key) or {}
            m = [float("nan") if v is None else v for v in entry.get("mean") or []]
            sd = [0.0 if v is None else v for v in entry.get("std") or []]
            right.plot(ranks[: len(m)], m, marker="o", ms=3, label=label)
            right.fill_between(ranks[: len(m)], [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                               alpha=0.2, label=f"{key}: mean ± 1 std over samples")
        right.set_xlabel("rank r of the right singular vector v_r")
        right.set_ylabel("|cos(δ, v_r)|")
        right.set_title("alignment with singular vectors")
        right.legend(fontsize=8, title="lines: mean; bands: ± 1 std", title_fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


ANALYSIS = Analysis(
    name="spectrum",
    help="Per-sample singular spectra of the Jacobian; alignment of ℓ2 PGD perturbations with singular vectors.",
    options=Options,
    row=Row,
    sharded=True,
    required=("n", "spectrum", "alignment", "summary", "nonfinite"),
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    check=check,
    profiles={"quick": {"max_samples": 32, "steps": 5, "per_sample": False},
              "standard": {"max_samples": 200}, "full": {}},
    metric_patterns=(r"spectrum\.sigma_max\.\w+", r"spectrum\.alignment\.(adversarial|random)\.top1",
                     r"spectrum\.energy\.(adversarial|random)"),
)
