"""Cost of one training step with each regularizer, as a ratio to a plain step measured in the same run.

LeNet (Johansson et al. 2022, App. A.1) on Fashion-MNIST training images, batch
128, float32, Adam: forward, loss, backward and optimiser step. Every
regularizer at its paper defaults (``robaudit.regularizers``). Targets:
``jacobian_spectral`` (1 power iteration) within 3× of a plain step (Johansson
et al. report about 2×). The machine is shared and noisy: variants are
interleaved round by round and the best round of ``--repeats`` is kept.

Usage: ``python benchmarks/bench_regularizers.py [--steps 20] [--repeats 3] [--threads 1]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

from robaudit.cli import allocator  # noqa: E402

# The process runs with the CLI's malloc settings, as `robaudit train` does (ROBAUDIT_MALLOC=default: glibc's own).
TUNED_MALLOC = allocator.tune()

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from robaudit.models.adapt import AuditModel, Normalize  # noqa: E402
from robaudit.models.zoo import build  # noqa: E402
from robaudit.regularizers import REGULARIZERS, make  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def batches(n_steps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if (FMNIST / "train-images-idx3-ubyte.gz").exists():
        from robaudit.data import load_data

        data = load_data("fashionmnist", split="train", limit=n_steps * batch)
        return [(x, y) for _, x, y in data.batches(batch)]
    print(f"({FMNIST} missing: using uniform random images)")
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_steps)]


def time_steps(name: str, data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds per step, from a fresh model, after one warm-up step."""
    torch.manual_seed(0)
    model = AuditModel(build("lenet"), Normalize((0.286,), (0.353,)))
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    reg = make(name)
    lam = reg.default_lam

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # as robaudit.train does it
        loss = reg.loss(model, x, y, lam)
        opt.zero_grad(set_to_none=True)
        loss.total.backward(inputs=params)
        opt.step()

    step(*data[0])
    start = time.perf_counter()
    for x, y in data[1:]:
        step(x, y)
    return (time.perf_counter() - start) / (len(data) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script deprecation inside forward AD
    data = batches(args.steps + 1, args.batch)
    names = list(REGULARIZERS)
    runs: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:  # interleaved: a noisy neighbour slows every variant of a round alike
            runs[name].append(time_steps(name, data))
    best = {n: min(v) for n, v in runs.items()}
    plain = best["none"]
    print(f"machine: {platform.machine()} · {os.cpu_count()} cores · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · Python {platform.python_version()} · "
          f"malloc {'robaudit (one heap, no mmap)' if TUNED_MALLOC else 'glibc defaults'}")
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"LeNet, batch {args.batch}, {args.steps} timed steps, best of {args.repeats} interleaved rounds\n")
    print(f"{'regularizer':28s} {'ms/step':>9s} {'× plain':>8s}   defaults")
    for name in names:
        reg = make(name)
        opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in reg.options().items())
        print(f"{name:28s} {best[name] * 1000:9.1f} {best[name] / plain:8.2f}   λ={reg.default_lam:g} {opts}")
    ratio = best["jacobian_spectral"] / plain
    print(f"\njacobian_spectral / plain = {ratio:.2f}   (target <= 3; Johansson et al. report ~2)")


if __name__ == "__main__":
    main()
