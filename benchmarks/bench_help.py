"""How fast `robaudit --help` starts (target: < 0.5 s), against bare Python start-up.

    python benchmarks/bench_help.py [--repeat 10]

Baseline, measured in the same run: `python -c pass` (interpreter start-up) and
`python -c "import torch"` (what --help would cost if it imported torch).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    py = sys.executable
    help_s = timed([py, "-m", "robaudit", "--help"], args.repeat)
    bare_s = timed([py, "-c", "pass"], args.repeat)
    torch_s = timed([py, "-c", "import torch"], max(3, args.repeat // 3))
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"python -c pass         {bare_s:.3f} s (median of {args.repeat})")
    print(f"python -c 'import torch' {torch_s:.3f} s")
    print(f"robaudit --help        {help_s:.3f} s  (target < 0.5 s: {'met' if help_s < 0.5 else 'NOT met'}; "
          f"{help_s - bare_s:.3f} s over bare start-up)")


if __name__ == "__main__":
    main()
