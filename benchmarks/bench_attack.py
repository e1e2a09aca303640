"""robaudit's overhead over calling torchattacks.PGD directly (target: <= 5 % for PGD-20).

Same model (the sample LeNet), same data (the embedded Fashion-MNIST sample),
same settings (eps 8/255, alpha 2.5·eps/20, 20 steps, random start, batch size,
seed) in the same process. Three timings, interleaved, medians reported:

* robaudit: ``robaudit attack --pgd --steps 20 --prune exhaustive`` minus model/data loading
  (ANALYSIS.run: clean pass + gradient check, PGD on every sample, re-check of every example, rows, summary);
* robaudit pruned: the same with the default pruning (misclassified samples not attacked), for information;
* direct + accuracy: a user's script giving the same numbers (clean forward,
  torchattacks.PGD, forward on the adversarial examples);
* direct PGD only: the bare torchattacks.PGD calls.

The headline ratio is robaudit / (direct + accuracy): both produce clean and
robust accuracy. Both use the same per-batch seeds, so their robust accuracies must agree.

Usage: python benchmarks/bench_attack.py [--n 1000] [--reps 7] [--batch-size 128] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torchattacks

from robaudit.analyses.attacks import ANALYSIS
from robaudit.attacks.run import seed_for
from robaudit.context import AuditContext
from robaudit.data import load_data
from robaudit.models import load_model

EPS, STEPS = 8 / 255, 20
ALPHA = 2.5 * EPS / STEPS


def robaudit_run(ctx: AuditContext, prune: str = "exhaustive") -> float:
    # exhaustive: every sample attacked, as the direct loop does (the default prunes; see "pruned")
    section = ANALYSIS.run(ctx, ANALYSIS.make_options({"pgd": True, "steps": STEPS, "prune": prune}))
    return section["results"][0]["robust_accuracy"]


def direct_run(model, data, batch_size: int, seed: int, with_accuracy: bool) -> float | None:
    atk = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
    robust = 0
    for idx, x, y in data.batches(batch_size):
        torch.manual_seed(seed_for(seed, "pgd", int(idx[0])))  # robaudit's per-batch seed: the same starts
        if with_accuracy:
            with torch.no_grad():
                correct = model(x).argmax(1) == y
        adv = atk(x, y)
        if with_accuracy:
            with torch.no_grad():
                robust += int((correct & (model(adv).argmax(1) == y)).sum())
    return robust / len(data) if with_accuracy else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(None, device="cpu")
    data = load_data(None, limit=args.n)
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float32, seed=0,
                       batch_size=args.batch_size)
    model = loaded.module
    seed = 0  # robaudit's base seed; direct_run derives the same per-batch seeds

    jobs = {
        "robaudit": lambda: robaudit_run(ctx),
        "robaudit pruned": lambda: robaudit_run(ctx, "cascade"),
        "direct + accuracy": lambda: direct_run(model, data, args.batch_size, seed, True),
        "direct PGD only": lambda: direct_run(model, data, args.batch_size, seed, False),
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    results: dict[str, float | None] = {}
    for name, job in jobs.items():  # warm-up
        results[name] = job()
    for rep in range(args.reps):
        names = list(jobs)
        names = names[rep % len(names):] + names[:rep % len(names)]  # rotate the order each repetition
        for name in names:
            start = time.perf_counter()
            jobs[name]()
            times[name].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), torchattacks {torchattacks.__version__}, "
          f"python {platform.python_version()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"PGD-20, eps 8/255, n={len(data)}, batch {args.batch_size}, {args.reps} interleaved reps (medians)")
    for name, value in med.items():
        spread = f"min {min(times[name]):.3f} s, max {max(times[name]):.3f} s"
        print(f"  {name:<18} {value:8.3f} s   ({spread})")
    print(f"robust accuracy: robaudit {results['robaudit']:.4f}, direct {results['direct + accuracy']:.4f} "
          f"({'identical' if results['robaudit'] == results['direct + accuracy'] else 'DIFFERENT'})")
    best = {k: min(v) for k, v in times.items()}
    overhead = med["robaudit"] / med["direct + accuracy"] - 1
    print(f"overhead vs direct + accuracy: {100 * overhead:+.1f} % (medians), "
          f"{100 * (best['robaudit'] / best['direct + accuracy'] - 1):+.1f} % (minima)  "
          f"(target <= +5 %: {'PASS' if overhead <= 0.05 else 'FAIL'})")
    print(f"overhead vs bare PGD calls:    {100 * (med['robaudit'] / med['direct PGD only'] - 1):+.1f} % (medians), "
          f"{100 * (best['robaudit'] / best['direct PGD only'] - 1):+.1f} % (minima)")
    print("(on a shared machine the minima are the less noisy estimate of the work done)")


if __name__ == "__main__":
    main()
