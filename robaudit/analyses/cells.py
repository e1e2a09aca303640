"""``robaudit cells``: distances from each correctly classified sample to the decision boundary.

Four columns per sample, all ℓ2 in pixel units ([0,1] images):

* **sphere**: M points uniform on concentric spheres, binary search on the radius
  (Johansson et al. 2022, Sec. 4.2.3, Fig. 4);
* **random_line**: the smallest step along K random directions that flips the class
  (Hoffman et al. 2019, App. F(i));
* **adversarial**: the smallest verified ℓ2 adversarial example of DeepFool, FAB and CW (CW inside
  a binary search over c, :mod:`robaudit.geometry.cw_search`), each pulled back to the boundary
  along its segment and re-checked;
* **certified**: margin / (√2 · L_upper), a lower bound (Tsuzuku et al. 2018).

They must come out ordered certified ≤ adversarial ≤ sphere and adversarial ≤ random_line;
every exception is listed (an attack missed a closer boundary, or a bound is wrong).
The engine is :mod:`robaudit.geometry.cells`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from rich.table import Table
from rich.text import Text

from robaudit.analyses.base import Analysis, Fraction, Metric, opt
from robaudit.errors import UsageError
from robaudit.kinds import Better
from robaudit.numfmt import fmt
from robaudit.stats import quantile
from robaudit.stats import summary as summarize

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.analyses.runner import Batch
    from robaudit.context import AuditContext

METHODS = ("certified", "adversarial", "sphere", "random_line")
ATTACKS = ("deepfool", "fab", "cw")
DEFAULT_STEPS = {"deepfool": 50, "fab": 50, "cw": 100}
DEFAULT_CW_SEARCH = 6
DEFAULT_CW_TARGETS = 3
DEFAULT_SAMPLES = 256
DEFAULT_DIRECTIONS = 16
# The pairs that must hold (a ≤ b). certified ≤ sphere / random_line are checked only when there is
# no adversarial distance (else they follow from the chain, and one bad number would count twice).
CHAIN = (("certified", "adversarial"), ("adversarial", "sphere"), ("adversarial", "random_line"))
FALLBACK = (("certified", "sphere"), ("certified", "random_line"))
# Slack of the ordering check: the distances are float64 sizes of float32 points on the boundary.
ORDER_RTOL, ORDER_ATOL = 1e-5, 1e-6
QUANTILES = (("p05", 0.05), ("p25", 0.25), ("p75", 0.75))
# Samples whose logits give the Lipschitz bound its input shape (values do not matter: the bound is global).
PROBE = 4


@dataclass(frozen=True)
class Options:
    max_samples: int | None = opt(None, "Use at most this many samples (the first ones) [default: all].",
                                  kind=int, min=1)
    max_radius: float = opt(16.0, "Largest ℓ2 radius searched (sphere and line) and FAB's cap; a sample not "
                            "flipped within it is reported as '> max'.", kind=Fraction, min=0.0)
    precision: float = opt(0.01, "Absolute ℓ2 width at which the sphere and line bisections stop.",
                           kind=Fraction, min=0.0)
    sphere: bool = opt(True, "Sphere search (Johansson et al. 2022, Sec. 4.2.3).")
    samples_per_sphere: int | None = opt(None, f"Points per sphere, evaluated as one batch [default: "
                                         f"{DEFAULT_SAMPLES}].", kind=int, min=1)
    random_line: bool = opt(True, "Random line search (Hoffman et al. 2019, App. F).")
    directions: int | None = opt(None, f"Random directions per sample for the line search [default: "
                                 f"{DEFAULT_DIRECTIONS}].", kind=int, min=1)
    deepfool: bool = opt(True, "Minimal ℓ2 distance by DeepFool.")
    fab: bool = opt(True, "Minimal ℓ2 distance by FAB (float32 only).")
    cw: bool = opt(False, "Minimal ℓ2 distance by CW inside a binary search over c (slow).")
    deepfool_steps: int | None = opt(None, f"DeepFool steps [default: {DEFAULT_STEPS['deepfool']}].", kind=int,
                                     min=1)
    fab_steps: int | None = opt(None, f"FAB steps [default: {DEFAULT_STEPS['fab']}].", kind=int, min=1)
    cw_steps: int | None = opt(None, f"CW steps per value of c [default: {DEFAULT_STEPS['cw']}].", kind=int, min=1)
    cw_search_steps: int | None = opt(None, f"Values of c tried per sample and target [default: "
                                      f"{DEFAULT_CW_SEARCH}].", kind=int, min=1)
    cw_targets: int | None = opt(None, f"Target classes per sample for CW, the nearest by a first-order estimate "
                                 f"[default: {DEFAULT_CW_TARGETS}; capped at C−1].", kind=int, min=1)
    certified: bool = opt(True, "Certified lower bound margin / (√2·L_upper) (L_upper from the layers analysis "
                          "when it ran in the same report, else computed).")
    max_points: int = opt(8192, "Sphere points held in memory at once (the directions of a group of samples); "
                          "one sphere is never split.", min=1)
    per_sample: bool = opt(True, "Include one row per sample in the report.")
    plot: str | None = opt(None, "Write the histograms and the adversarial-vs-sphere scatter to this PNG.",
                           kind=str)


@dataclass(frozen=True)
class Plan:
    """The options resolved: which methods run and with what settings."""

    sphere: bool
    random_line: bool
    attacks: tuple[str, ...]
    certified: bool
    steps: Mapping[str, int]
    cw_search_steps: int
    cw_targets: int
    samples: int
    directions: int
    precision: float
    max_radius: float
    max_points: int


@dataclass(frozen=True)
class Row:
    """One sample. Distances are None when skipped, not run, or nothing found within max_radius."""

    index: int
    label: int
    pred: int
    skipped: str | None
    margin: float | None
    certified: float | None
    adversarial: float | None
    adversarial_by: str | None
    attacks: dict
    sphere: float | None
    sphere_beyond_max: bool
    random_line: float | None
    random_line_beyond_max: bool
    recheck_failures: list


def check(options: Options) -> None:
    """Refuse option combinations that would silently do nothing."""
    if options.max_radius <= 0:
        raise UsageError("--max-radius: expected a positive ℓ2 radius, got 0")
    if options.precision <= 0 or options.precision >= options.max_radius:
        raise UsageError(f"--precision: expected a width in (0, --max-radius {options.max_radius}), "
                         f"got {options.precision}")
    for name, flag in (("deepfool_steps", "deepfool"), ("fab_steps", "fab"), ("cw_steps", "cw"),
                       ("cw_search_steps", "cw"), ("cw_targets", "cw")):
        if getattr(options, name) is not None and not getattr(options, flag):
            raise UsageError(f"--{name.replace('_', '-')} applies to --{flag}, which is off")
    if not options.sphere and options.samples_per_sphere is not None:
        raise UsageError("--samples-per-sphere applies to the sphere search, which is off (--no-sphere)")
    if not options.random_line and options.directions is not None:
        raise UsageError("--directions applies to the random line search, which is off (--no-random-line)")
    if not (options.sphere or options.random_line or options.deepfool or options.fab or options.cw
            or options.certified):
        raise UsageError("cells: every method is off; enable at least one of --sphere, --random-line, "
                         "--deepfool, --fab, --cw, --certified")


def plan(options: Options) -> Plan:
    """What will run (pure)."""
    check(options)
    attacks = tuple(a for a in ATTACKS if getattr(options, a))
    steps = {a: getattr(options, f"{a}_steps") or DEFAULT_STEPS[a] for a in attacks}
    return Plan(sphere=options.sphere, random_line=options.random_line, attacks=attacks,
                certified=options.certified, steps=steps,
                cw_search_steps=options.cw_search_steps or DEFAULT_CW_SEARCH,
                cw_targets=options.cw_targets or DEFAULT_CW_TARGETS,
                samples=options.samples_per_sphere or DEFAULT_SAMPLES,
                directions=options.directions or DEFAULT_DIRECTIONS, precision=options.precision,
                max_radius=options.max_radius,
                max_points=max(options.max_points, options.samples_per_sphere or DEFAULT_SAMPLES))


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def adversarial_distances(model, x, y, p: Plan, *, n_classes: int, seed: int,
                          failures: dict[str, str]) -> dict[str, tuple[list, list]]:
    """Per attack: (distances, re-check failures) over the batch.

    Each output is first pushed across the boundary if it stopped on it (:func:`extend_segment`),
    then pulled back to the boundary along its segment (:func:`refine_segment`); the final point is
    re-checked (class changed, in [0,1]) and its distance measured by the re-check.

    An attack that raises is recorded in ``failures`` (name → reason) and gives no distances.
    """
    import torch

    from robaudit.attacks.run import Budget, attack_batch, verify
    from robaudit.errors import AttackError
    from robaudit.geometry.cells import extend_segment, refine_segment
    from robaudit.geometry.cw_search import cw_search

    out: dict[str, tuple[list, list]] = {}
    b = x.shape[0]
    for name in p.attacks:
        try:
            if name == "cw":
                res = cw_search(model, x, y, steps=p.steps["cw"], search_steps=p.cw_search_steps,
                                targets=p.cw_targets, seed=seed)
                x_adv, ok, bad = res.x_adv, res.success, torch.zeros(b, dtype=torch.bool)
            else:
                x_adv, chk = attack_batch(model, x, y, name, norm="l2", eps=p.max_radius, steps=p.steps[name],
                                          n_classes=n_classes, seed=seed)
                ok, bad = chk.success, chk.violation
        except AttackError as exc:  # the library raised: a result (listed), not a crash of the audit
            failures.setdefault(name, str(exc))
            continue
        # an output that failed the re-check (outside [0,1], not finite) is not a direction to follow
        x_adv = torch.where(bad.view(-1, *[1] * (x.dim() - 1)), x, x_adv)
        x_adv, ok = extend_segment(model, x, x_adv, y, ok)
        x_ref = refine_segment(model, x, x_adv, y, ok)
        chk2 = verify(model, x, y, x_ref, Budget(None, None))
        # The pulled-back point is kept only if it passes the same re-check as the attack's own output.
        good = ok & chk2.success
        dist = torch.where(good, chk2.dist_l2, torch.full_like(chk2.dist_l2, math.nan))
        out[name] = ([_num(float(v)) for v in dist.tolist()],
                     [bool(v) for v in (bad | (ok & ~chk2.success)).tolist()])
    return out


def compute_rows(model, batch: "Batch", p: Plan, *, n_classes: int, seed: int, lipschitz: Callable[[list[int]], list],
                 failures: dict[str, str]) -> list[Row]:
    """All four distances for the correctly classified samples of one batch."""
    import torch

    from robaudit.attacks.run import seed_for
    from robaudit.geometry.cells import certified_radius, line_search, margin, sphere_search

    idx, x, y = batch
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(dim=1)
    correct = (y >= 0) & (pred == y)
    sel = correct.nonzero().flatten()
    xs, ys, keys = x[sel], y[sel], idx[sel]
    n = int(sel.numel())
    nan = [None] * n
    cert = sphere = line = nan
    s_beyond = l_beyond = [False] * n
    marg = margin(logits[sel], ys) if n else torch.zeros(0)
    if p.certified and n:
        lip = torch.tensor([math.nan if v is None or not v > 0 else float(v)
                            for v in lipschitz([int(k) for k in keys.tolist()])], dtype=torch.float64)
        cert = [_num(v) for v in certified_radius(marg, lip).tolist()]
    if p.sphere and n:
        res = sphere_search(model, xs, ys, keys, seed=seed_for(seed, "cells.sphere"), samples=p.samples,
                            precision=p.precision, max_radius=p.max_radius, max_points=p.max_points)
        sphere = [_num(v) for v in res.distance.tolist()]
        s_beyond = [v is None for v in sphere]
    if p.random_line and n:
        res = line_search(model, xs, ys, keys, seed=seed_for(seed, "cells.line"), directions=p.directions,
                          precision=p.precision, max_radius=p.max_radius)
        line = [_num(v) for v in res.distance.tolist()]
        l_beyond = [v is None for v in line]
    adv = adversarial_distances(model, xs, ys, p, n_classes=n_classes, seed=seed, failures=failures) if n else {}
    rows: dict[int, Row] = {}
    for j in range(n):
        found = {a: adv[a][0][j] for a in adv}
        best = min(((d, a) for a, d in found.items() if d is not None), default=(None, None))
        rows[int(sel[j])] = Row(index=int(keys[j]), label=int(ys[j]), pred=int(ys[j]), skipped=None,
                                margin=_num(float(marg[j])), certified=cert[j], adversarial=best[0],
                                adversarial_by=best[1], attacks=found, sphere=sphere[j],
                                sphere_beyond_max=p.sphere and s_beyond[j], random_line=line[j],
                                random_line_beyond_max=p.random_line and l_beyond[j],
                                recheck_failures=[a for a in adv if adv[a][1][j]])
    out = []
    for i in range(x.shape[0]):
        if i in rows:
            out.append(rows[i])
            continue
        why = "unlabelled" if int(y[i]) < 0 else "misclassified"
        out.append(Row(index=int(idx[i]), label=int(y[i]), pred=int(pred[i]), skipped=why, margin=None,
                       certified=None, adversarial=None, adversarial_by=None, attacks={}, sphere=None,
                       sphere_beyond_max=False, random_line=None, random_line_beyond_max=False,
                       recheck_failures=[]))
    return out


def _lipschitz_source(ctx: "AuditContext", model, p: Plan) -> tuple[Callable[[list[int]], list], dict[str, Any]]:
    """Per-sample L_upper lookup and where it came from.

    Per-sample local upper bounds (``ctx.cache["lipschitz_local"]``: {dataset index: L_i}) win when
    an analysis of the same report left them; else the global bound the layers analysis cached;
    else the global bound computed here through :func:`robaudit.bounds.lipschitz_bound`.
    """
    if not p.certified:
        return (lambda keys: [None] * len(keys)), {"source": None}
    local = ctx.cache.get("lipschitz_local")
    if local:
        return (lambda keys: [local.get(k) for k in keys]), {"source": "local (per sample)"}
    if "lipschitz_upper" in ctx.cache:
        upper, source = ctx.cache["lipschitz_upper"], "layers analysis (same report)"
    else:
        from robaudit.analyses.layers import wrapper_rules
        from robaudit.bounds import RuleOptions, lipschitz_bound

        probe = ctx.require_data("cells").images(slice(0, PROBE), device=ctx.device, dtype=ctx.dtype)
        rules, chains = wrapper_rules()  # robaudit's own wrappers (normalisation, output selection)
        with ctx.progress("cells: global Lipschitz bound", None):
            upper = lipschitz_bound(model, probe, opts=RuleOptions(seed=ctx.seed), allow_unbounded=True,
                                    rules=rules, chains=chains).lipschitz_upper
        source = "robaudit.bounds.lipschitz_bound"
    upper = float(upper) if upper is not None and math.isfinite(float(upper)) else None
    info: dict[str, Any] = {"source": source, "lipschitz_upper": upper}
    if upper is None:
        ctx.warn("cells: no finite global Lipschitz upper bound (unbounded layers); certified radii are not reported")
        info["reason"] = "no finite Lipschitz upper bound"
    return (lambda keys: [upper] * len(keys)), info


def run(ctx: "AuditContext", options: Options) -> dict[str, Any]:
    """Distances to the boundary, batch by batch (the model is in eval mode inside the runner)."""
    from robaudit.analyses.runner import run_rows

    import dataclasses

    import torch

    p = plan(options)
    failures: dict[str, str] = {}
    if "fab" in p.attacks and ctx.dtype == torch.float64:
        failures["fab"] = "FAB in torchattacks computes in float32 only; not run (use --dtype float32)"
        p = dataclasses.replace(p, attacks=tuple(a for a in p.attacks if a != "fab"))
    model = ctx.model.module
    c = int(ctx.model.num_classes)
    lipschitz, lip_info = _lipschitz_source(ctx, model, p)
    return run_rows(ctx, "cells",
                    lambda b: compute_rows(model, b, p, n_classes=c, seed=ctx.seed, lipschitz=lipschitz,
                                           failures=failures),
                    lambda rows: summarise(rows, p, options, lip_info, failures, warn=ctx.warn),
                    limit=options.max_samples)


def ordering_violations(row: Row | Mapping[str, Any], methods: tuple[str, ...]) -> list[dict[str, Any]]:
    """Pairs (a ≤ b) that fail for one sample: [{index, pair, values}] (pure).

    A missing value on the left (an attack found nothing where a search found a flip) is a
    violation too; a missing value on the right ("> max") is not.
    """
    get = (lambda k: row.get(k)) if isinstance(row, Mapping) else (lambda k: getattr(row, k))
    pairs = list(CHAIN)
    if get("adversarial") is None:
        pairs += FALLBACK
    out = []
    for a, b in pairs:
        if a not in methods or b not in methods:
            continue
        va, vb = get(a), get(b)
        if vb is None:
            continue
        if va is None:
            if a == "adversarial":  # the searches found a flip the attacks missed
                out.append({"index": get("index"), "pair": f"{a}<={b}", "values": [None, vb]})
            continue
        if va > vb * (1 + ORDER_RTOL) + ORDER_ATOL:
            out.append({"index": get("index"), "pair": f"{a}<={b}", "values": [va, vb]})
    return out


def _method_stats(rows: list[Row], key: str, beyond: str | None, max_radius: float) -> dict[str, Any]:
    """Summary of one column; '> max' samples enter the quantiles at max_radius (a lower bound of theirs)."""
    found = [getattr(r, key) for r in rows if getattr(r, key) is not None]
    censored = sum(1 for r in rows if beyond and getattr(r, beyond))
    vals = found + [max_radius] * censored
    stats: dict[str, Any] = {"n": len(found), "beyond_max": censored, **summarize(vals)}
    for name, q in QUANTILES:
        stats[name] = quantile(vals, q)
    return stats


def summarise(rows: list[Row], p: Plan, options: Options, lip_info: Mapping[str, Any],
              failures: Mapping[str, str], warn=lambda message: None) -> dict[str, Any]:
    """The cells section from the rows (pure apart from warnings)."""
    from robaudit.analyses.runner import row_dict

    done = [r for r in rows if r.skipped is None]
    methods = tuple(m for m, on in (("certified", p.certified), ("adversarial", bool(p.attacks)),
                                    ("sphere", p.sphere), ("random_line", p.random_line)) if on)
    violations = [v for r in done for v in ordering_violations(r, methods)]
    if violations:
        warn(f"cells: {len(violations)} ordering violation(s) in {len({v['index'] for v in violations})} "
             f"sample(s), e.g. index {violations[0]['index']} ({violations[0]['pair']})")
    for name, why in failures.items():
        warn(f"cells: {name} failed ({why}); it is left out of the adversarial distance")
    beyond = {"sphere": "sphere_beyond_max", "random_line": "random_line_beyond_max"}
    summary = {m: _method_stats(done, m, beyond.get(m), p.max_radius) for m in methods}
    ratios = [r.adversarial / r.sphere for r in done if r.adversarial is not None and r.sphere]
    recheck = {a: sum(1 for r in done if a in r.recheck_failures) for a in p.attacks}
    section: dict[str, Any] = {
        "n": len(rows), "evaluated": len(done),
        "skipped": {"misclassified": sum(1 for r in rows if r.skipped == "misclassified"),
                    "unlabelled": sum(1 for r in rows if r.skipped == "unlabelled"),
                    "indices": [r.index for r in rows if r.skipped is not None][:100]},
        "methods": list(methods),
        "settings": {"max_radius": p.max_radius, "precision": p.precision,
                     "samples_per_sphere": p.samples if p.sphere else None,
                     "directions": p.directions if p.random_line else None,
                     "attacks": {a: {"steps": p.steps[a], **({"search_steps": p.cw_search_steps, "targets": p.cw_targets} if a == "cw" else {})}
                                 for a in p.attacks},
                     "clip": "points clipped to [0,1]; searches report the radius / step"},
        "certified_from": dict(lip_info),
        "summary": summary,
        "adversarial_by": {a: sum(1 for r in done if r.adversarial_by == a) for a in p.attacks},
        "attack_failures": dict(failures),
        "recheck_failures": recheck,
        "ratio_adversarial_sphere": {"median": quantile(ratios, 0.5), "mean": summarize(ratios)["mean"],
                                     "n": len(ratios)},
        "ordering_violations": violations,
        "violating_samples": len({v["index"] for v in violations}),
    }
    if options.per_sample:
        section["per_sample"] = [row_dict(r) for r in done]
    return section


def render(section: Mapping[str, Any]) -> list:
    """Per-method table, attack credits, skipped samples and ordering violations (JSON only)."""
    out: list = []
    st = section.get("settings") or {}
    skipped = section.get("skipped") or {}
    out.append(Text(f"cells · ℓ2 distance to the decision boundary · {section.get('evaluated')} of "
                    f"{section.get('n')} samples (skipped: {skipped.get('misclassified', 0)} misclassified, "
                    f"{skipped.get('unlabelled', 0)} unlabelled) · max radius {fmt(st.get('max_radius'))}",
                    style="bold"))
    table = Table()
    for col, just in (("method", "left"), ("found", "right"), ("> max", "right"), ("mean", "right"),
                      ("p05", "right"), ("median", "right"), ("p95", "right"), ("max", "right")):
        table.add_column(col, justify=just)
    titles = {"certified": "certified (lower bound)", "adversarial": "adversarial (min over attacks)",
              "sphere": f"sphere search (M={st.get('samples_per_sphere')})",
              "random_line": f"random line (K={st.get('directions')})"}
    for m in section.get("methods") or []:
        s = (section.get("summary") or {}).get(m) or {}
        table.add_row(titles.get(m, m), fmt(s.get("n")), fmt(s.get("beyond_max")), fmt(s.get("mean")),
                      fmt(s.get("p05")), fmt(s.get("median")), fmt(s.get("p95")), fmt(s.get("max")))
    out.append(table)
    by = section.get("adversarial_by") or {}
    if by:
        out.append(Text("closest adversarial found by: " + ", ".join(f"{a} {n}" for a, n in by.items())))
    ratio = (section.get("ratio_adversarial_sphere") or {}).get("median")
    if ratio is not None:
        out.append(Text(f"adversarial / sphere distance: median {fmt(ratio)}"))
    cf = section.get("certified_from") or {}
    if cf.get("source"):
        out.append(Text(f"certified radius from {cf['source']}"
                        + (f", L_upper {fmt(cf.get('lipschitz_upper'))}" if cf.get("lipschitz_upper") else ""),
                        style="dim"))
    for name, why in (section.get("attack_failures") or {}).items():
        out.append(Text(f"{name} failed: {why}", style="yellow"))
    viol = section.get("ordering_violations") or []
    if viol:
        shown = "; ".join(f"{v['index']}: {v['pair']} {fmt(v['values'][0])} > {fmt(v['values'][1])}"
                          for v in viol[:10]) + (" …" if len(viol) > 10 else "")
        out.append(Text(f"{len(viol)} ordering violation(s): {shown}", style="bold red"))
    else:
        out.append(Text("ordering certified ≤ adversarial ≤ sphere, adversarial ≤ random line: holds for every "
                        "sample", style="green"))
    return out


def metrics(section: Mapping[str, Any]) -> dict[str, Metric]:
    """cells.<method>.median (higher is better), cells.ordering_violations (lower), cells.ratio (neutral)."""
    out: dict[str, Metric] = {}
    for m, s in (section.get("summary") or {}).items():
        out[f"cells.{m}.median"] = Metric(s.get("median"), Better.HIGHER, "l2")
    out["cells.ordering_violations"] = Metric(float(len(section.get("ordering_violations") or [])), Better.LOWER,
                                              "violations")
    if "adversarial" in (section.get("summary") or {}) and "sphere" in (section.get("summary") or {}):
        out["cells.ratio.adversarial_sphere"] = Metric((section.get("ratio_adversarial_sphere") or {}).get("median"),
                                                       Better.NEUTRAL)
    return out


def plot(section: Mapping[str, Any], path: str) -> None:
    """Left: histogram of each method's distances; right: adversarial against sphere distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section.get("per_sample") or []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        cols = {m: [r[m] for r in rows if r.get(m) is not None and r[m] > 0] for m in section.get("methods") or []}
        every = [v for vals in cols.values() for v in vals]
        if every:
            # log bins: certified radii and random-direction distances differ by orders of magnitude
            lo, hi = math.log10(min(every)), math.log10(max(every))
            bins = [10 ** (lo + (hi - lo + 1e-9) * k / 40) for k in range(41)]
            for m, vals in cols.items():
                if vals:
                    left.hist(vals, bins=bins, histtype="step", linewidth=1.5, label=f"{m} (n={len(vals)})")
            left.set_xscale("log")
        left.set_xlabel("ℓ2 distance to the decision boundary (log scale)")
        left.set_ylabel("samples")
        left.set_title("distance by method" if rows else "distance by method (no per-sample rows)")
        if rows:
            left.legend()
        pts = [(r["sphere"], r["adversarial"]) for r in rows
               if r.get("sphere") is not None and r.get("adversarial") is not None]
        if pts:
            xs, ys = zip(*pts)
            right.scatter(xs, ys, s=8, alpha=0.6)
            top = max(max(xs), max(ys))
            right.plot([0, top], [0, top], ls="--", color="grey", label="adversarial = sphere")
            right.legend()
        right.set_xlabel("sphere-search distance")
        right.set_ylabel("adversarial distance")
        right.set_title("adversarial vs random (sphere)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


ANALYSIS = Analysis(
    name="cells",
    help="Distances to the decision boundary: sphere search, random line search, minimal adversarial "
         "(DeepFool, FAB, CW), certified; with an ordering check.",
    options=Options,
    row=Row,
    sharded=True,
    required=("n", "evaluated", "skipped", "methods", "summary", "ordering_violations"),
    run=run,
    render=render,
    metrics=metrics,
    plot=plot,
    check=check,
    # Sizes: the standard audit of the sample model may grow by at most half of its time for cells
    # (benchmarks/RESULTS.md, "cells"). torchattacks' DeepFool loops over samples (~0.9 s each on the
    # sample LeNet) and FAB found the closer point on every sample there, so the profiles run FAB.
    profiles={"quick": {"max_samples": 16, "samples_per_sphere": 32, "directions": 4, "precision": 0.05,
                        "deepfool": False, "fab_steps": 20},
              "standard": {"max_samples": 100, "samples_per_sphere": 64, "directions": 8, "precision": 0.02,
                           "deepfool": False},
              "full": {"max_samples": 500, "cw": True}},
    metric_patterns=(r"cells\.(certified|adversarial|sphere|random_line)\.median", r"cells\.ordering_violations",
                     r"cells\.ratio\.adversarial_sphere"),
)
