"""Strong scaling of a sharded run: 2 ranks × 1 thread against 1 rank × 1 thread, same run.

Both sides run the same `robaudit audit -a norms,attacks` on N samples of the embedded
data; ranks are launched the way torchrun launches them (RANK/WORLD_SIZE/MASTER_*),
gloo on CPU. The per-sample part is read from the report's timings (`timings.analyses`);
the fixed cost (start-up, model/data load, process group, gather) is wall time minus that.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_distributed.py [--n 1000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, n: int, out: str) -> tuple[float, dict]:
    args = [sys.executable, "-m", "robaudit", "audit", "-a", "norms,attacks", "--limit", str(n), "--quiet",
            "-o", out, "-b", "50"]
    port = free_port()
    procs = []
    start = time.perf_counter()
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"rank failed ({p.returncode}): {err.decode()[-500:]}")
    wall = time.perf_counter() - start
    with open(out) as fh:
        report = json.load(fh)
    return wall, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    import torch

    print(f"# {platform.node()}: {os.cpu_count()} cores, torch {torch.__version__}, n={a.n}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeat):
            for world in (1, 2):
                wall, report = run(world, a.n, os.path.join(tmp, f"r{world}.json"))
                per_sample = sum(report["timings"]["analyses"].values())
                rows.append((rep, world, wall, per_sample))
                print(f"repeat {rep} world {world}: wall {wall:.2f} s, per-sample part {per_sample:.2f} s, "
                      f"fixed {wall - per_sample:.2f} s", flush=True)
    best = {w: min(r[3] for r in rows if r[1] == w) for w in (1, 2)}
    wall = {w: min(r[2] for r in rows if r[1] == w) for w in (1, 2)}
    print(f"per-sample speed-up 2 ranks / 1 rank: {best[1] / best[2]:.2f}x (target >= 1.7x); "
          f"whole-command speed-up {wall[1] / wall[2]:.2f}x")


if __name__ == "__main__":
    main()
