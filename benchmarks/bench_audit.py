"""Wall time of `robaudit audit` (default profile, 1,000 samples) and `robaudit audit --profile quick`
(256 samples) against a baseline checkout, in the same run (issue 16: targets ≤ 0.7× and ≤ 0.6×,
at the same or lower robust accuracy).

The baseline is another checkout of robaudit (e.g. ``git worktree add /tmp/base <commit>``),
run with ``PYTHONPATH`` pointing at it; runs alternate A, B, A, B so drift hits both.

    python benchmarks/bench_audit.py --base /tmp/base --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere

HERE = Path(__file__).resolve().parents[1]


def run(root: Path, args: list[str]) -> tuple[float, dict]:
    """Wall seconds of one ``robaudit`` process from ``root`` and its report."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "robaudit", *args, "--quiet", "-o", out], check=True, env=env,
                       stdout=subprocess.DEVNULL, cwd=tmp)
        seconds = time.perf_counter() - start
        return seconds, json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="baseline checkout (its robaudit/ is imported)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=("default", "quick", "default-4", "quick-4", "attack-standard", "attack-quick"), default=None)
    args = parser.parse_args()
    import torch

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    # The attack command alone isolates the attack battery (the audits also run analyses added since the
    # baseline); the new code's exhaustive run is the reference for "same or lower robust accuracy",
    # since it draws the same random starts per batch as the pruned default.
    # "…-4" runs the four analyses the baseline's profiles ran (norms, spectrum, layers, attacks): the
    # like-for-like comparison, since the profiles now also run linearity and cells.
    four = ["--analyses", "norms,spectrum,layers,attacks"]
    cases = {"default": ["audit"], "quick": ["audit", "--profile", "quick"],
             "default-4": ["audit", *four], "quick-4": ["audit", "--profile", "quick", *four],
             "attack-standard": ["attack", "--battery", "standard", "--limit", "1000"],
             "attack-quick": ["attack", "--battery", "quick", "--limit", "256"]}
    for name, cli in cases.items():
        if args.only and name not in args.only:
            continue
        variants = [("base", Path(args.base), cli), ("new", HERE, cli)]
        if name.startswith("attack"):
            variants.append(("new --prune exhaustive", HERE, [*cli, "--prune", "exhaustive"]))
        else:  # the reference for "same or lower robust accuracy"
            variants.append(("new --prune exhaustive", HERE, [*cli, "--set", "analyses.attacks.prune=exhaustive"]))
        times: dict[str, list[float]] = {v[0]: [] for v in variants}
        attack_s: dict[str, list[float]] = {v[0]: [] for v in variants}
        worst: dict[str, dict] = {}
        work: dict[str, int] = {}
        for _ in range(args.reps):
            for label, root, command in variants:
                seconds, report = run(root, command)
                times[label].append(seconds)
                attack_s[label].append(report["timings"]["analyses"].get("attacks", float("nan")))
                worst[label] = report["analyses"]["attacks"]["worst_case"]
                # attack work in sample × iterations (the baseline attacked every sample at every eps)
                work[label] = sum(r.get("attacked", report["analyses"]["attacks"]["n"]) * (r["steps"] or 1)
                                  for r in report["analyses"]["attacks"]["results"])
        ratio = statistics.median(times["new"]) / statistics.median(times["base"])
        print(f"\nrobaudit {' '.join(cli)} (n = {report['data']['n']}), {args.reps} alternating repetitions, medians:")
        for label in times:
            print(f"  {label}: wall {statistics.median(times[label]):6.1f} s (runs {', '.join(f'{t:.1f}' for t in times[label])}); "
                  f"attacks section {statistics.median(attack_s[label]):6.1f} s")
        print(f"  new / base wall = {ratio:.2f}; attacks section new / base = "
              f"{statistics.median(attack_s['new']) / statistics.median(attack_s['base']):.2f}")
        print("  attack work (samples × iterations): " + ", ".join(f"{k} {v}" for k, v in work.items())
              + f"; new / base = {work['new'] / work['base']:.2f}")
        ref = "new --prune exhaustive" if "new --prune exhaustive" in worst else "base"
        if ref != "base":
            print(f"  new / exhaustive wall = {statistics.median(times['new']) / statistics.median(times[ref]):.2f}")
        for eps in worst["base"]:
            b, n, r = worst["base"][eps], worst["new"].get(eps), worst[ref].get(eps)
            print(f"  worst-case robust accuracy @{eps}: base {b:.4f}, new {n:.4f}, {ref} {r:.4f} "
                  f"(new vs {ref}: {'same or lower' if n is not None and n <= r else 'HIGHER'})")


if __name__ == "__main__":
    main()
