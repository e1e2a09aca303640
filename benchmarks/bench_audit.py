"""Wall time of `robaudit audit --profile quick` (target: < 60 s on a 2-core CPU,
sample model + 256 embedded samples), against running the same analyses as
separate commands in the same run (the work `audit` shares: one model load,
one data load, one process start, results passed between analyses).

    python benchmarks/bench_audit.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "robaudit", *args, "--quiet"], check=True,
                   stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def main() -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "r.json")
        audit_s = run(["audit", "--profile", "quick", "-o", report])
        with open(report) as fh:
            data = json.load(fh)
    names = list(data["analyses"])
    commands = {"attacks": "attack"}
    separate_s = 0.0
    from robaudit import analyses

    for name in names:
        options = analyses.get(name).profiles.get("quick", {})
        flags = []
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                flags += [flag] if value else []
            else:
                flags += [flag, str(value)]
        separate_s += run([commands.get(name, name), "--limit", "256", *flags])
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}")
    print(f"analyses in the quick profile: {', '.join(names)} (n = {data['data']['n']})")
    for name, seconds in data["timings"]["analyses"].items():
        print(f"  {name:10s} {seconds:7.2f} s inside the audit")
    print(f"robaudit audit --profile quick: {audit_s:.1f} s wall (target < 60 s: {'met' if audit_s < 60 else 'NOT met'})")
    print(f"same analyses as separate commands: {separate_s:.1f} s wall; audit/separate = {audit_s / separate_s:.2f}")


if __name__ == "__main__":
    main()
