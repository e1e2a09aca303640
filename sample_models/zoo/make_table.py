"""The zoo table of sample_models/README.md, from robaudit's own audit of every zoo model.

    python sample_models/zoo/make_table.py --run --jobs 2   # audit every model (robaudit CLI), then write the table
    python sample_models/zoo/make_table.py                  # only rebuild the table from the saved reports

``--run`` calls robaudit's CLI once per model and analysis and saves the JSON
reports under ``sample_models/zoo/reports/``:

* ``robaudit norms MODEL --data fashionmnist --method exact --frobenius exact``  (σ_max, ‖J‖_F per image)
* ``robaudit layers MODEL --data fashionmnist --no-lower``                      (L_upper, data-independent)
* ``robaudit attack MODEL --data fashionmnist --pgd --eps 8/255 --steps 20``    (PGD ℓ∞ robust accuracy)

on the first ``--limit`` Fashion-MNIST test images (default: all 10,000), and the
two geometry analyses, which are much slower per image,

* ``robaudit cells MODEL --data fashionmnist --no-per-sample``        (adversarial/sphere boundary distances;
  FAB + DeepFool + sphere + random line + certified, CW off for time)
* ``robaudit linearity MODEL --data fashionmnist --no-per-sample``    (linearity radius, random and PGD directions)

on the first ``--geometry-limit`` test images only (default 300; the caption says
so). ``--jobs 2`` runs two audits at once (the machine has 2 cores). The
table and the checks of the papers' predictions are then computed from those
reports only, and replace the block between the markers in the README. Nothing
in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
README = REPO / "sample_models" / "README.md"
REPORTS = HERE / "reports"
START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"

sys.path.insert(0, str(REPO))
from robaudit.models.zoo_registry import ZOO_MODELS  # noqa: E402

COMMANDS = {
    "norms": ["norms", "--method", "exact", "--frobenius", "exact", "--no-per-sample"],
    "layers": ["layers", "--no-lower", "--no-per-sample"],
    "attack": ["attack", "--pgd", "--eps", "8/255", "--steps", "20"],
    # the geometry analyses (Johansson et al. 2022 Sec. 4.2; Hoffman et al. 2019 App. F): defaults, CW off
    "cells": ["cells", "--no-per-sample"],
    "linearity": ["linearity", "--no-per-sample"],
}
GEOMETRY = ("cells", "linearity")  # run on the first --geometry-limit images only


def run_audits(limit: int, geometry_limit: int, names: list[str], jobs: int = 1) -> None:
    REPORTS.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}
    todo: list[list[str]] = []
    for name in names:
        model = str((HERE / f"{name}.pt").relative_to(REPO))
        for key, args in COMMANDS.items():
            n = geometry_limit if key in GEOMETRY else limit
            out = REPORTS / f"{name}.{key}.json"
            if (out.exists() and out.stat().st_mtime > (HERE / f"{name}.pt").stat().st_mtime
                    and json.loads(out.read_text())["data"]["n"] == n):
                continue  # already audited this checkpoint on these images (a rerun resumes)
            todo.append([sys.executable, "-m", "robaudit", *args, model, "--data", "fashionmnist", "--seed", "0",
                         "-o", str(out.relative_to(REPO)), "-q", "--limit", str(n)])  # the commands default to 1,000

    def one(cmd: list[str]) -> str | None:
        print(" ".join(cmd[2:]), flush=True)
        ok = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL).returncode == 0
        return None if ok else " ".join(cmd[2:])

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on the subprocesses
        failed = [f for f in pool.map(one, todo) if f]
    if failed:  # the others ran; a rerun retries only what is missing
        raise SystemExit("failed:\n  " + "\n  ".join(failed))


def _load(name: str, key: str) -> dict:
    return json.loads((REPORTS / f"{name}.{key}.json").read_text())


def row(name: str) -> dict:
    """The table's numbers for one model, read from its three reports."""
    norms, layers, attack, cells, lin = (_load(name, k) for k in COMMANDS)
    summary = norms["analyses"]["norms"]["summary"]
    att = attack["analyses"]["attacks"]
    pgd = next(r for r in att["results"] if r["attack"] == "pgd")
    meta = json.loads((HERE / "train_log.json").read_text())["models"].get(name, {})
    return {
        "name": name, "lam": meta.get("lam"), "n": norms["data"]["n"], "n_attack": attack["data"]["n"],
        "clean": att["clean_accuracy"], "sigma_median": summary["spectral"]["median"],
        "sigma_p95": summary["spectral"]["p95"], "frob_median": summary["frobenius"]["median"],
        "l_upper": layers["analyses"]["layers"]["lipschitz_upper"], "pgd": pgd["robust_accuracy"],
        "pgd_steps": pgd["steps"], "pgd_alpha": pgd["alpha"], **geometry(cells, lin),
    }


def geometry(cells: dict, lin: dict) -> dict:
    """Boundary distances (``cells``) and linearity radius (``linearity``) of one model."""
    c, li = cells["analyses"]["cells"], lin["analyses"]["linearity"]
    rad = li["linearity_radius"]
    return {
        "n_geo": cells["data"]["n"], "n_lin": lin["data"]["n"], "evaluated": c["evaluated"],
        # median over the correctly classified samples where an attack found (and rechecked) a boundary point
        "adv_median": c["summary"]["adversarial"]["median"], "adv_found": c["summary"]["adversarial"]["n"],
        "sphere_median": c["summary"]["sphere"]["median"], "sphere_found": c["summary"]["sphere"]["n"],
        "sphere_beyond": c["summary"]["sphere"]["beyond_max"], "max_radius": c["settings"]["max_radius"],
        "lin_median": rad["median"], "lin_random": rad["by_kind"]["random"]["median"],
        "lin_adv": rad["by_kind"]["adversarial"]["median"], "lin_zero": li["zero_radius"], "lin_tol": li["tol"],
        "lin_censor": rad["censored_at"],
        # rough standard error of a median, 1/(2 f(m) √n) with the density f(m) ≈ ½ / IQR: IQR/√n
        "adv_se": _median_se(c["summary"]["adversarial"]), "sphere_se": _median_se(c["summary"]["sphere"]),
        "geo_seconds": cells["timings"]["total"] + lin["timings"]["total"],
    }


def _median_se(s: dict) -> float:
    n = s["n"] + s["beyond_max"]  # '> max' samples enter the quantiles at max_radius (cells._method_stats)
    return (s["p75"] - s["p25"]) / math.sqrt(n) if n else math.inf


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def _g(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


def checks(rows: dict[str, dict]) -> list[str]:
    """The issue's predictions, each stated with its numbers and whether our data agrees."""
    p, wd = rows["plain"], rows["weight_decay"]
    fro, spec = rows["jacobian_frobenius"], rows["jacobian_spectral"]
    out = []
    ratio = p["frob_median"] / fro["frob_median"]
    out.append(f"- **Hoffman et al.** (Table 1: about 30× smaller ‖J‖_F): `jacobian_frobenius` has median ‖J‖_F "
               f"{_g(fro['frob_median'])} vs {_g(p['frob_median'])} for `plain`, **{ratio:.1f}× smaller** "
               f"({'markedly smaller, as predicted' if ratio >= 2 else 'NOT markedly smaller'}; "
               f"{'far from' if ratio < 10 else 'comparable to'} their 30×).")
    ok = spec["sigma_median"] < p["sigma_median"] and spec["sigma_median"] < wd["sigma_median"]
    out.append(f"- **Johansson et al.**: `jacobian_spectral` median σ_max {_g(spec['sigma_median'])} vs `plain` "
               f"{_g(p['sigma_median'])} and `weight_decay` {_g(wd['sigma_median'])}: "
               f"{'smaller than both, as predicted' if ok else 'NOT smaller than both: the prediction fails here'}.")
    best = max(rows.values(), key=lambda r: r["pgd"])
    adv = rows["pgd_adversarial"]
    out.append(f"- **Madry et al.**: `pgd_adversarial` PGD robust accuracy {_pct(adv['pgd'])}; the highest is "
               f"`{best['name']}` ({_pct(best['pgd'])}): "
               f"{'as predicted' if best['name'] == 'pgd_adversarial' else 'the prediction fails here'}.")
    # Johansson et al.: spectral keeps accuracy better than Frobenius at equal σ_max reduction.
    def cost(r: dict) -> tuple[float, float]:
        return 1 - r["sigma_median"] / p["sigma_median"], p["clean"] - r["clean"]
    (rf, af), (rs, as_) = cost(fro), cost(spec)
    per_f = af / rf if rf > 0 else math.inf
    per_s = as_ / rs if rs > 0 else math.inf
    verdict = ("agrees (less accuracy lost per unit of σ_max reduction)" if per_s < per_f
               else "does NOT agree (spectral lost as much or more accuracy per unit of σ_max reduction)")
    out.append(f"- **Johansson et al.** (spectral preserves accuracy better than Frobenius at equal σ_max reduction): "
               f"`jacobian_frobenius` cut median σ_max by {100 * rf:.0f} % for {100 * af:+.2f} points of accuracy lost, "
               f"`jacobian_spectral` by {100 * rs:.0f} % for {100 * as_:+.2f} points. Our λs do not give equal "
               f"reductions, so the comparison is per unit of reduction (a linear reading): ours {verdict}. "
               f"One seed per model: differences of a few tenths of a point are within seed-to-seed variation "
               f"we did not measure.")
    out.append(boundary_check(rows))
    return out


def boundary_check(rows: dict[str, dict]) -> str:
    """The prediction "regularised models have larger median boundary distances than plain", both distances."""
    p = rows["plain"]
    reg = [r for n, r in rows.items() if n != "plain"]
    parts, verdicts, clear_sets = [], [], []
    for key, label in (("adv_median", "adversarial"), ("sphere_median", "sphere")):
        se = key.replace("median", "se")
        larger = [r for r in reg if r[key] > p[key]]
        smaller = [r for r in reg if r[key] <= p[key]]
        # "clearly" = by more than twice the rough standard error of the difference of the two medians
        clear = [r for r in larger if r[key] - p[key] > 2 * math.hypot(r[se], p[se])]
        verdicts.append(len(larger) == len(reg))
        clear_sets.append({r["name"] for r in clear})
        below = ", ".join(f"`{r['name']}` {_g(r[key])}" for r in smaller)
        parts.append(f"median {label} distance: {len(larger)} of {len(reg)} regularised models are above `plain` "
                     f"({_g(p[key])})"
                     + (f"; not above: {below}" if smaller else "")
                     + f"; range {_g(min(r[key] for r in reg))}–{_g(max(r[key] for r in reg))}; "
                     f"{len(clear)} of {len(reg)} above `plain` by more than twice the rough standard error "
                     f"(IQR/√n per median)" + (": " + ", ".join(f"`{r['name']}`" for r in clear) if clear else ""))
    verdict = ("holds on our data for both distances" if all(verdicts) else
               "holds for the adversarial distance but NOT for the sphere distance" if verdicts[0] else
               "holds for the sphere distance but NOT for the adversarial distance" if verdicts[1] else
               "does NOT hold on our data for either distance")
    both = [r["name"] for r in reg if all(r["name"] in c for c in clear_sets)]
    neither = [r["name"] for r in reg if not any(r["name"] in c for c in clear_sets)]
    verdict += (f". Clearly further than `plain` by both distances: {', '.join(f'`{n}`' for n in both) or 'none'}; "
                f"not distinguishable from `plain` by either: {', '.join(f'`{n}`' for n in neither) or 'none'}")
    return (f"- **Boundary distances** (regularised models further from the boundary than `plain`), on the first "
            f"{p['n_geo']:,} test images only: {parts[0]}; {parts[1]}. The prediction {verdict}. Each median is over a "
            f"model's own correctly classified images (and, for the adversarial distance, those where an attack's "
            f"boundary point passed the recheck), so the image sets differ slightly between models. Images where "
            f"no attack's boundary point passed the recheck are left out of the adversarial median (see *found*), "
            f"which biases it toward the easier images. The standard errors are a density approximation from the "
            f"reports' quartiles, not a measured confidence interval; one seed per model.")


def table(rows: dict[str, dict]) -> str:
    n = {r["n"] for r in rows.values()} | {r["n_attack"] for r in rows.values()}
    first = next(iter(rows.values()))
    mixed = n != {10000}  # then each row says how many images its numbers come from
    images = (f"all {next(iter(n)):,} Fashion-MNIST test images" if n == {10000}
              else f"the first {', '.join(f'{v:,}' for v in sorted(n))} Fashion-MNIST test images (NOT all 10,000)")
    geo = {r["n_geo"] for r in rows.values()} | {r["n_lin"] for r in rows.values()}
    n_geo = ", ".join(f"{v:,}" for v in sorted(geo))
    lin0 = sum(r["lin_random"] == 0 for r in rows.values())
    secs = sum(r["geo_seconds"] for r in rows.values())
    lines = [
        f"robaudit's own audit of every zoo model on {images}, from the reports in `sample_models/zoo/reports/` "
        f"(`python sample_models/zoo/make_table.py`). σ_max and ‖J‖_F: exact per-image Jacobians of the logits "
        f"(`robaudit norms --method exact`); L_upper: the global Lipschitz upper bound (`robaudit layers`); "
        f"PGD: ℓ∞, eps 8/255, {first['pgd_steps']} steps, step {_g(first['pgd_alpha'] * 255)}/255, one random start "
        f"(`robaudit attack --pgd`). λ: see *How λ was chosen*.",
        "",
        f"**The last three columns use only the first {n_geo} test images, not 10,000** (`robaudit cells` and "
        f"`robaudit linearity` are far slower per image; the nine models took {secs / 60:.0f} min of analysis time "
        f"together, as the reports' timings add up; two ran at a time). ℓ2 distances in pixel units ([0,1] images), over the "
        f"correctly classified images of each model: *adv.* is the median of the smallest boundary distance "
        f"found by DeepFool and FAB (over the images where one was found and rechecked; *found* says how many of "
        f"the correctly classified ones), *sphere* the median sphere-search radius "
        f"(searched up to {rows['plain']['max_radius']:g}; images not flipped within it count as {rows['plain']['max_radius']:g}, "
        f"a lower bound, and are counted as '> max'; `robaudit cells` defaults, CW off). The linearity radius "
        f"(`robaudit linearity`, tol {_g(rows['plain']['lin_tol'])}, radii up to {_g(rows['plain']['lin_censor'])}) "
        f"is the smallest ℓ2 radius at which the logits deviate from their first-order model by more than tol "
        f"relative; the columns give its median along random directions and along ℓ2 PGD directions, and *r=0* "
        f"how many images have radius 0 along some direction (a ReLU/max-pool kink exactly at the image, e.g. "
        f"constant backgrounds). The random-direction median is 0 for {lin0} of the {len(rows)} models, so the "
        f"adversarial-direction median is the informative one; both are shown as measured.",
        "",
        "| model | λ | clean acc. | median σ_max | p95 σ_max | median ‖J‖_F | L_upper | PGD robust acc. |"
        + (" images (norms / attack) |" if mixed else "")
        + " median adv. distance (found) | median sphere distance | median linearity radius, random / PGD dir. (r=0) |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if mixed else "") + "---|---|---|",
    ]
    for r in rows.values():
        lines.append(f"| `{r['name']}` | {_g(r['lam']) if r['lam'] else '—'} | {_pct(r['clean'])} | "
                     f"{_g(r['sigma_median'])} | {_g(r['sigma_p95'])} | {_g(r['frob_median'])} | "
                     f"{_g(r['l_upper'])} | {_pct(r['pgd'])} |"
                     + (f" {r['n']:,} / {r['n_attack']:,} |" if mixed else "")
                     + f" {_g(r['adv_median'])} ({r['adv_found']}/{r['evaluated']}) | "
                     + ("≥ " if r["sphere_median"] >= r["max_radius"] else "") + _g(r["sphere_median"])
                     + (f" ({r['sphere_beyond']} > max)" if r["sphere_beyond"] else "")
                     + f" | {_g(r['lin_random'])} / {_g(r['lin_adv'])} ({r['lin_zero']}/{r['n_lin']}) |")
    lines += ["", "What the papers predict, on our data:", "", *checks(rows), "", *lambdas()]
    return "\n".join(lines)


def lambdas() -> list[str]:
    """How λ was chosen and what training cost, from ``train_log.json`` (written by train_zoo.py)."""
    log = json.loads((HERE / "train_log.json").read_text())
    lines = ["**How λ was chosen.** The paper's value wherever the paper gives one for its regularizer; "
             "Johansson et al. (and Cui et al.) give only a search grid, so `train_zoo.py` ran a pilot: one epoch "
             f"on the first {next(iter(log['pilots'].values()), {}).get('limit', 0):,} training images per λ of the grid "
             f"{', '.join(f'{v:g}' for v in log['pilot_grid'])} (largest first), keeping the first λ whose pilot test "
             f"accuracy was within {100 * log['accuracy_slack']:.0f} points of a plain pilot's. No λ was tuned "
             "after seeing the audit.", "",
             "| model | λ | where λ comes from | clean acc. (train_zoo) | training time |", "|---|---|---|---|---|"]
    for name, m in log["models"].items():
        lines.append(f"| `{name}` | {_g(m['lam']) if m['lam'] else '—'} | {m['lam_source']} | "
                     f"{_pct(m['test_accuracy'])} | {m['train_seconds']:.0f} s |")
    for reg, pil in log["pilots"].items():
        runs = "; ".join(f"λ={r['lam']:g}: {_pct(r['test_accuracy'])}" for r in pil["runs"])
        lines.append(f"\nPilot for `{reg}` (plain pilot {_pct(pil['plain_accuracy'])}): {runs}.")
    total = log.get("total_seconds")
    summed = sum(m["wall_seconds_incl_pilot"] for m in log["models"].values())
    lines.append(f"\nAll {len(log['models'])} models, {log['epochs']} epochs each (Adam 1e-3, cosine decay, batch "
                 f"{log['batch_size']}, seed {log['seed']}, one thread each): "
                 + (f"{total / 60:.0f} min in one sequential run, pilots included." if total else
                    f"the per-model times above add up to {summed / 60:.0f} min including pilots (the models were "
                    f"trained by several `--only` runs of the script, some in parallel; see the note below the table)."))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the audits first (robaudit CLI), then write the table")
    ap.add_argument("--limit", type=int, default=10000, help="audit the first N test images (default: all 10,000)")
    ap.add_argument("--geometry-limit", type=int, default=300,
                    help="cells and linearity on the first N test images only (default 300: they are slow)")
    ap.add_argument("--only", nargs="*", help="with --run: audit only these models")
    ap.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="with --run: audits run at once (default 1)")
    args = ap.parse_args()
    given = [f for f, v, d in (("--limit", args.limit, 10000), ("--geometry-limit", args.geometry_limit, 300),
                               ("--only", args.only, None), ("--jobs", args.jobs, 1)) if v != d]
    if given and not args.run:  # they only choose what --run audits
        ap.error(f"{', '.join(given)} only with --run")
    if args.run:
        run_audits(args.limit, args.geometry_limit, args.only or list(ZOO_MODELS), args.jobs)
    rows = {name: row(name) for name in ZOO_MODELS}
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{README}: markers {START} … {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table(rows)}\n{END}{tail}")
    print(f"wrote the zoo table into {README}")


if __name__ == "__main__":
    main()
