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

from robaudit.analyses.base import Analysis, finite_or_none, opt
from robaudit.analyses.norms import TARGETS, summarize
from robaudit.errors import UsageError
from robaudit.report.terminal import fmt

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext


@dataclass(frozen=True)
class Options:
    eps: float = opt(0.5, "ℓ2 radius of the PGD perturbations, in pixel units ([0,1] images).", min=0.0)
    steps: int = opt(10, "PGD steps.", min=1)
    alpha: float | None = opt(None, "PGD step size [default: 2.5·eps/steps].", min=0.0)
    max_samples: int | None = opt(None, "Use at most this many samples (the first ones) [default: all].", min=1)
    target: str = opt("logits", "Differentiate the logits, the softmax probabilities or the log-probabilities.",
                      choices=TARGETS)
    per_sample: bool = opt(True, "Include each sample's spectrum and alignments in the report.")
    plot: str | None = opt(None, "Write the mean spectrum and the alignment by rank to this PNG file.")
    memory_mb: int = opt(512, "Memory budget (MB) for the Jacobians and singular vectors of one batch.", min=1)


def _mean_std(rows: list[list[float]], r: int) -> tuple[list[float | None], list[float | None]]:
    """Per-rank mean and standard deviation over rows, ignoring non-finite entries."""
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



def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Spectra and alignments, batch by batch."""
    import torch
    import torchattacks

    from robaudit.linalg import JacobianOperator, eval_mode, jacobian, right_singular
    from robaudit.linalg.rng import keyed_sphere

    data = ctx.require_data("spectrum")
    model = ctx.model.module
    torch.manual_seed(ctx.seed)
    c = int(ctx.model.num_classes)
    d = int(math.prod(data.sample_shape))
    r = min(c, d)
    if options.eps == 0:
        raise UsageError("--eps: expected a positive ℓ2 radius, got 0")
    alpha = options.alpha if options.alpha is not None else 2.5 * options.eps / options.steps
    itemsize = torch.empty((), dtype=ctx.dtype).element_size()
    # J (C×D) in the compute dtype, plus J and Vh (r×D) in float64
    per_row = d * (c * itemsize + 8 * c + 8 * r)
    rows_per_pass = max(1, min(ctx.batch_size, options.memory_mb * 2**20 // per_row))
    n_total = len(data) if options.max_samples is None else min(len(data), options.max_samples)

    index_l: list[int] = []
    label_l: list[int] = []
    pred_l: list[int] = []
    adv_pred_l: list[int] = []
    spectra: list[list[float]] = []
    align_adv: list[list[float | None]] = []
    align_rnd: list[list[float | None]] = []
    energy_adv: list[float] = []
    energy_rnd: list[float] = []
    delta_norms: list[float] = []
    nonfinite: list[int] = []
    seen = 0
    with eval_mode(model), ctx.progress("spectrum", n_total) as task:
        attack = torchattacks.PGDL2(model, eps=options.eps, alpha=alpha, steps=options.steps, random_start=False)
        for idx, x, y in data.batches(rows_per_pass, device=ctx.device, dtype=ctx.dtype):
            if seen >= n_total:
                break
            take = min(x.shape[0], n_total - seen)
            idx, x, y = idx[:take], x[:take], y[:take]
            seen += take
            op = JacobianOperator(model, x, target=options.target)
            jac = jacobian(op)
            pred = op.value.argmax(dim=1)
            op.release()
            s, vh, finite = right_singular(jac)
            del jac
            # attack the true label where known, else the prediction
            labels = torch.where(y >= 0, y.to(pred.device), pred)
            x_adv = attack(x, labels)
            with torch.no_grad():
                adv_pred = model(x_adv).argmax(dim=1)
            delta = (x_adv - x).flatten(1).to(torch.float64)
            dn = delta.norm(dim=1)
            rnd = keyed_sphere(idx, (d,), seed=ctx.seed, dtype=torch.float64, device=x.device)
            cos_adv = torch.einsum("brd,bd->br", vh, delta / dn.clamp_min(1e-300)[:, None]).abs()
            cos_adv = torch.where((dn > 0)[:, None], cos_adv, torch.full_like(cos_adv, float("nan")))
            cos_rnd = torch.einsum("brd,bd->br", vh, rnd).abs()
            index_l += [int(i) for i in idx.tolist()]
            label_l += [int(v) for v in y.tolist()]
            pred_l += pred.tolist()
            adv_pred_l += adv_pred.tolist()
            spectra += [[finite_or_none(v) for v in row] for row in s.tolist()]
            align_adv += [[finite_or_none(v) for v in row] for row in cos_adv.tolist()]
            align_rnd += [[finite_or_none(v) for v in row] for row in cos_rnd.tolist()]
            energy_adv += cos_adv.square().sum(dim=1).tolist()
            energy_rnd += cos_rnd.square().sum(dim=1).tolist()
            delta_norms += dn.tolist()
            nonfinite += [int(i) for i, ok in zip(idx.tolist(), finite.tolist()) if not ok]
            task.advance(take)

    n = len(index_l)
    if nonfinite:
        ctx.warn(f"spectrum: the Jacobian is NaN/Inf for {len(nonfinite)} sample(s), e.g. index {nonfinite[0]}; "
                 "they are listed under 'nonfinite' and left out of the means")
    bad = set(nonfinite)
    ok_rows = [i for i in range(n) if index_l[i] not in bad]
    sp_mean, sp_std = _mean_std([spectra[i] for i in ok_rows], r)
    normalized = [[(v / row[0]) if (v is not None and row[0]) else None for v in row]
                  for row in (spectra[i] for i in ok_rows)]
    norm_mean, _ = _mean_std(normalized, r)
    median = []
    for k in range(r):
        median.append(summarize([spectra[i][k] for i in ok_rows])["median"])
    adv_mean, adv_std = _mean_std([align_adv[i] for i in ok_rows], r)
    rnd_mean, rnd_std = _mean_std([align_rnd[i] for i in ok_rows], r)
    flipped = [i for i in ok_rows if adv_pred_l[i] != pred_l[i]]

    section: dict[str, Any] = {
        "n": n,
        "num_classes": c,
        "input_dim": d,
        "rank": r,
        "target": options.target,
        "spectrum": {"mean": sp_mean, "std": sp_std, "median": median, "normalized_mean": norm_mean},
        "alignment": {
            "attack": "pgd_l2",
            "eps": options.eps,
            "steps": options.steps,
            "alpha": alpha,
            "adversarial": {"mean": adv_mean, "std": adv_std},
            "random": {"mean": rnd_mean, "std": rnd_std},
            # fraction of ‖δ‖² inside the row space of J (Σ_r cos²); for a random direction ≈ r/D
            "row_space_energy": {"adversarial": summarize([energy_adv[i] for i in ok_rows])["mean"],
                                 "random": summarize([energy_rnd[i] for i in ok_rows])["mean"],
                                 "random_expected": r / d},
            "random_expected_abs_cos": math.sqrt(2 / (math.pi * d)),
            "prediction_changed": (len(flipped) / len(ok_rows)) if ok_rows else None,
            "mean_delta_norm": summarize([delta_norms[i] for i in ok_rows])["mean"],
        },
        "summary": {"sigma_max": summarize([spectra[i][0] for i in ok_rows]),
                    "sigma_min": summarize([spectra[i][r - 1] for i in ok_rows])},
        "nonfinite": nonfinite,
    }
    if options.per_sample:
        section["per_sample"] = [
            {"index": index_l[i], "label": label_l[i], "pred": pred_l[i], "adv_pred": adv_pred_l[i],
             "spectrum": spectra[i], "alignment_adversarial": align_adv[i], "alignment_random": align_rnd[i],
             "delta_norm": finite_or_none(delta_norms[i])}
            for i in range(n)
        ]
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


def metrics(section: Mapping[str, Any]) -> dict[str, float]:
    """Gate aliases: spectrum.sigma_max.*, spectrum.alignment.{adversarial,random}.top1, spectrum.energy.*."""
    al = section.get("alignment") or {}
    adv = (al.get("adversarial") or {}).get("mean") or [None]
    rnd = (al.get("random") or {}).get("mean") or [None]
    out: dict[str, Any] = {f"spectrum.sigma_max.{k}": v for k, v in ((section.get("summary") or {}).get("sigma_max") or {}).items()}
    out["spectrum.alignment.adversarial.top1"] = adv[0]
    out["spectrum.alignment.random.top1"] = rnd[0]
    energy = al.get("row_space_energy") or {}
    out["spectrum.energy.adversarial"] = energy.get("adversarial")
    out["spectrum.energy.random"] = energy.get("random")
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
                               alpha=0.2)
        right.set_xlabel("rank r of the right singular vector v_r")
        right.set_ylabel("|cos(δ, v_r)|")
        right.set_title("alignment with singular vectors")
        right.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


ANALYSIS = Analysis(
    name="spectrum",
    help="Per-sample singular spectra of the Jacobian; alignment of ℓ2 PGD perturbations with singular vectors.",
    options=Options,
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    profiles={"quick": {"max_samples": 32, "steps": 5, "per_sample": False},
              "standard": {"max_samples": 200}, "full": {}},
    metric_patterns=(r"spectrum\.sigma_max\.\w+", r"spectrum\.alignment\.(adversarial|random)\.top1",
                     r"spectrum\.energy\.(adversarial|random)"),
)
