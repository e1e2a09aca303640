"""Cost of ``robaudit cells`` on the sample LeNet, split per method, and the batched sphere search
against a point-by-point loop.

1. 200 embedded Fashion-MNIST test images, float32, batches of 100: the time of each method alone
   on the correctly classified samples — certified (global bound + margins), sphere search
   (M points per sphere), random line search (K directions), DeepFool, FAB and CW inside the
   binary search over c (each attack including the pull-back to the boundary and the re-check) —
   and the ordering violations of the combined result.
2. Sphere search with its M points in one forward against the same search evaluating the points one
   by one (``chunk=1``), in the same run, on the same samples; the radii must agree. Target ≥ 10×.

Usage: ``python benchmarks/bench_cells.py [--n 200] [--loop-samples 4] [--repeats 3]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

from robaudit.cli import allocator  # noqa: E402

# The process runs with the CLI's malloc settings, as `robaudit cells` does (ROBAUDIT_MALLOC=default: glibc's own).
TUNED_MALLOC = allocator.tune()

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def machine() -> str:
    return (f"{platform.machine()} · {os.cpu_count()} cores · torch {torch.__version__} · "
            f"{torch.get_num_threads()} threads · Python {platform.python_version()} · "
            f"malloc {'robaudit (one heap, no mmap)' if TUNED_MALLOC else 'glibc defaults'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--samples", type=int, default=256, help="points per sphere")
    ap.add_argument("--directions", type=int, default=16)
    ap.add_argument("--precision", type=float, default=0.01)
    ap.add_argument("--loop-samples", type=int, default=4)
    ap.add_argument("--loop-precision", type=float, default=1e-2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attacks", default="deepfool,fab,cw", help="comma-separated subset of deepfool,fab,cw")
    ap.add_argument("--skip-loop", action="store_true", help="skip part 2")
    ap.add_argument("--only-loop", action="store_true", help="run part 2 only")
    args = ap.parse_args()

    from robaudit.analyses import cells as A
    from robaudit.attacks.run import seed_for
    from robaudit.analyses.layers import wrapper_rules
    from robaudit.bounds import RuleOptions, lipschitz_bound
    from robaudit.data import load_data
    from robaudit.geometry.cells import certified_radius, line_search, margin, sphere_search
    from robaudit.models import load_model

    loaded = load_model(None, device="cpu")
    model = loaded.module.eval()
    data = load_data(None, limit=args.n)
    x_all = data.images(slice(None))
    y_all = data.y
    keys_all = data.indices
    with torch.no_grad():
        pred = model(x_all).argmax(1)
    ok = pred == y_all
    x, y, keys = x_all[ok], y_all[ok], keys_all[ok]
    print(f"machine: {machine()}")
    print(f"{int(ok.sum())} of {args.n} samples correctly classified; batches of {args.batch}")
    opts = A.ANALYSIS.make_options({"cw": True, "samples_per_sphere": args.samples, "directions": args.directions,
                                    "precision": args.precision})
    p = A.plan(opts)
    if args.only_loop:
        loop(args, model, x, y, keys, p.samples, p.max_radius)
        return
    batches = [slice(s, s + args.batch) for s in range(0, len(x), args.batch)]
    times: dict[str, float] = {}
    results: dict[str, list] = {m: [] for m in ("certified", "sphere", "random_line", "deepfool", "fab", "cw")}
    for m in ("deepfool", "fab", "cw"):
        results[m] = [None] * int(ok.sum()) if m not in args.attacks.split(",") else []

    t = time.perf_counter()
    rules, chains = wrapper_rules()
    upper = lipschitz_bound(model, x[:4], opts=RuleOptions(seed=0), allow_unbounded=True, rules=rules,
                            chains=chains).lipschitz_upper
    for sl in batches:
        with torch.no_grad():
            mg = margin(model(x[sl]), y[sl])
        lip = upper if upper is not None else math.nan
        results["certified"] += certified_radius(mg, lip).tolist()
    times["certified"] = time.perf_counter() - t

    t = time.perf_counter()
    for sl in batches:
        r = sphere_search(model, x[sl], y[sl], keys[sl], seed=seed_for(0, "cells.sphere"), samples=p.samples,
                          precision=p.precision, max_radius=p.max_radius, max_points=p.max_points)
        results["sphere"] += r.distance.tolist()
    times["sphere"] = time.perf_counter() - t

    t = time.perf_counter()
    for sl in batches:
        r = line_search(model, x[sl], y[sl], keys[sl], seed=seed_for(0, "cells.line"), directions=p.directions,
                        precision=p.precision, max_radius=p.max_radius)
        results["random_line"] += r.distance.tolist()
    times["random_line"] = time.perf_counter() - t

    import dataclasses

    attacks = [a for a in args.attacks.split(",") if a]
    for name in attacks:
        one = dataclasses.replace(p, attacks=(name,))
        failures: dict[str, str] = {}
        t = time.perf_counter()
        for sl in batches:
            out = A.adversarial_distances(model, x[sl], y[sl], one, n_classes=10, seed=0, failures=failures)
            results[name] += out[name][0] if name in out else [None] * len(x[sl])
        times[name] = time.perf_counter() - t
        if failures:
            print(f"{name} failed: {failures}")

    n = len(x)
    total = sum(times.values())
    print("\n| method | seconds | ms per sample | share | found | median distance |")
    print("|---|---|---|---|---|---|")
    for m, s in times.items():
        vals = [v for v in results[m] if v is not None and math.isfinite(v)]
        med = sorted(vals)[len(vals) // 2] if vals else None
        print(f"| {m} | {s:.2f} | {1000 * s / n:.1f} | {100 * s / total:.0f} % | {len(vals)}/{n} | "
              f"{med if med is None else round(med, 4)} |")
    print(f"| all | {total:.2f} | {1000 * total / n:.1f} | 100 % | | |")

    viol = 0
    viol_samples = 0
    for i in range(n):
        advs = [results[a][i] for a in ("deepfool", "fab", "cw")
                if results[a][i] is not None and math.isfinite(results[a][i])]
        row = {"index": int(keys[i]), "certified": results["certified"][i], "adversarial": min(advs) if advs else None,
               "sphere": results["sphere"][i], "random_line": results["random_line"][i]}
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        v = A.ordering_violations(row, A.METHODS)
        viol += len(v)
        viol_samples += bool(v)
    print(f"ordering violations: {viol} in {viol_samples} of {n} samples")

    if not args.skip_loop:
        loop(args, model, x, y, keys, p.samples, p.max_radius)


def loop(args, model, x, y, keys, samples: int, max_radius: float) -> None:
    """Part 2: one forward per sphere against a per-point loop, interleaved, best of --repeats."""
    from robaudit.geometry.cells import sphere_search

    k = args.loop_samples
    kw = dict(seed=1, samples=samples, precision=args.loop_precision, max_radius=max_radius)
    best_b = best_l = math.inf
    for _ in range(args.repeats):
        t = time.perf_counter()
        rb = sphere_search(model, x[:k], y[:k], keys[:k], max_points=samples, **kw)
        best_b = min(best_b, time.perf_counter() - t)
        t = time.perf_counter()
        rl = sphere_search(model, x[:k], y[:k], keys[:k], max_points=samples, chunk=1, **kw)
        best_l = min(best_l, time.perf_counter() - t)
    same = torch.allclose(rb.distance, rl.distance, equal_nan=True, atol=args.loop_precision)
    print(f"\nsphere search, {k} samples × M={samples} points, precision {args.loop_precision}: one forward per "
          f"sphere {best_b:.3f} s, per-point loop {best_l:.3f} s → {best_l / best_b:.1f}× (radii agree: {same})")


if __name__ == "__main__":
    main()
