"""Per-sample Jacobian speed: exact vs the "analytical" baseline, and Lanczos vs power iteration.

1. Sample LeNet, 1,000 Fashion-MNIST test images, float32:
   * baseline (Johansson et al. 2022, Fig. 5 "analytical"): a Python loop over samples,
     each ``torch.autograd.functional.jacobian`` then ``svdvals``;
   * ``exact`` (robaudit.linalg): C backward passes over one retained forward graph per batch;
   * floor: C plain forward+backward passes over the same batches.
   Prints baseline/exact (target ≥ 5), exact/floor (aim ≤ 1.5), seconds per 1,000 samples.
2. torchvision resnet18 (random init, 1,000 classes, 3×32×32 inputs): the number of
   JVP+VJP pairs power iteration and Lanczos need to reach 1e-3 relative error of σ_max,
   against the exact σ_max from the full Jacobian (target: Lanczos ≤ half of power).

The machine is shared and noisy: timed variants are interleaved and the best of
``--repeats`` runs is kept. Usage: ``python benchmarks/bench_jacobian.py [--repeats 3] [--n 1000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from robaudit.data.idx import read_idx
from robaudit.linalg import JacobianOperator, exact, power_iteration, top_singular
from robaudit.models import zoo
from robaudit.models.adapt import adapt

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def machine() -> str:
    return (f"{platform.machine()} · {os.cpu_count()} cores · torch {torch.__version__} · "
            f"{torch.get_num_threads()} threads · Python {platform.python_version()}")


def lenet() -> torch.nn.Module:
    ck = torch.load(REPO / "sample_models" / "lenet_fmnist.pt", weights_only=True)
    net = zoo.build(ck["arch"], **ck["arch_kwargs"])
    net.load_state_dict(ck["state_dict"])
    return adapt(net, input_shape=(1, 28, 28), mean=ck["meta"]["mean"], std=ck["meta"]["std"]).module


def images(n: int) -> torch.Tensor:
    if FMNIST.exists():
        return torch.from_numpy(read_idx(FMNIST)[:n].copy()).float()[:, None] / 255.0
    print(f"({FMNIST} missing: using uniform random images)")
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def baseline(model, x: torch.Tensor) -> torch.Tensor:
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi)
        out.append(torch.linalg.svdvals(jac.reshape(jac.shape[0], -1))[0])
    return torch.stack(out)


def batched_exact(model, x: torch.Tensor, batch: int, classes_per_pass: int = 1) -> torch.Tensor:
    out = []
    for start in range(0, len(x), batch):
        op = JacobianOperator(model, x[start:start + batch])
        out.append(exact(op, classes_per_pass=classes_per_pass).spectral)
        op.release()
    return torch.cat(out)


def floor(model, x: torch.Tensor, batch: int, classes: int) -> None:
    """C plain forward+backward passes per batch (the cost of C VJPs without a shared forward)."""
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        for c in range(classes):
            xr = xb.detach().requires_grad_(True)
            y = model(xr)
            g = torch.zeros_like(y)
            g[:, c] = 1
            torch.autograd.grad(y, xr, grad_outputs=g)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def part1(n: int, batch: int, repeats: int, baseline_n: int) -> None:
    model = lenet()
    x = images(n)
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    xb = x[:baseline_n]
    ref = baseline(model, xb[:8])  # warm-up and agreement check
    got = batched_exact(model, xb[:8], batch)
    assert torch.allclose(ref, got.float(), rtol=1e-4), (ref, got)
    batched_exact(model, x[:batch], batch, classes_per_pass=classes)  # warm-up vmap path
    times: dict[str, list[float]] = {"baseline": [], "exact": [], "exact_vmap": [], "floor": []}
    for _ in range(repeats):  # interleaved so that load spikes hit every variant alike
        times["baseline"].append(timed(lambda: baseline(model, xb)) * n / baseline_n)
        times["exact"].append(timed(lambda: batched_exact(model, x, batch)))
        times["exact_vmap"].append(timed(lambda: batched_exact(model, x, batch, classes_per_pass=classes)))
        times["floor"].append(timed(lambda: floor(model, x, batch, classes)))
    best = {k: min(v) for k, v in times.items()}
    per1000 = {k: v * 1000 / n for k, v in best.items()}
    print(f"\n[1] sample LeNet, {n} Fashion-MNIST test images, batch {batch}, C = {classes}, float32 "
          f"(best of {repeats}; baseline timed on {baseline_n} samples and scaled)")
    for k in ("baseline", "exact", "exact_vmap", "floor"):
        print(f"    {k:<11} {per1000[k]:8.3f} s / 1,000 samples   (runs: {', '.join(f'{t:.2f}' for t in times[k])} s)")
    print(f"    speed-up exact vs baseline      : {best['baseline'] / best['exact']:.1f}x   (target >= 5)")
    print(f"    speed-up exact_vmap vs baseline : {best['baseline'] / best['exact_vmap']:.1f}x")
    print(f"    exact / floor (C fwd+bwd passes): {best['exact'] / best['floor']:.2f}      (aim <= 1.5)")
    print(f"    exact_vmap / floor              : {best['exact_vmap'] / best['floor']:.2f}")


def part2(batch: int, size: int, max_steps: int, rel: float) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    x = torch.rand(batch, 3, size, size)
    op = JacobianOperator(model, x)
    t0 = time.perf_counter()
    truth = exact(op).spectral  # from the full 1000×D Jacobian (1,000 VJPs)
    t_exact = time.perf_counter() - t0
    op.release()

    def steps_to(trace: list[torch.Tensor]) -> list[int | None]:
        out = []
        for i in range(batch):
            hit = next((s for s, est in trace if abs(float(est[i]) / float(truth[i]) - 1) <= rel), None)
            out.append(hit)
        return out

    power_trace: list = []
    op = JacobianOperator(model, x)
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    power_iteration(op, iters=max_steps, tol=-1.0, generator=gen,
                    callback=lambda s, est: power_trace.append((s, est.double().clone())))
    t_power = time.perf_counter() - t0
    power_products = (op.n_jvp, op.n_vjp)
    op.release()

    lanczos_trace: list = []
    op = JacobianOperator(model, x)
    t0 = time.perf_counter()
    top_singular(op, k=1, iters=max_steps, tol=-1.0, generator=gen,
                 callback=lambda s, est: lanczos_trace.append((s, est[:, 0].double().clone())))
    t_lanczos = time.perf_counter() - t0
    lanczos_products = (op.n_jvp, op.n_vjp)
    op.release()

    p, lz = steps_to(power_trace), steps_to(lanczos_trace)
    print(f"\n[2] torchvision resnet18, random init, 1000 classes, {batch} inputs 3x{size}x{size}, float32; "
          f"JVP+VJP pairs to reach {rel:g} relative error of sigma_max (exact sigma_max from the full Jacobian, "
          f"{t_exact:.1f} s)")
    print(f"    sigma_max per sample  : {', '.join(f'{float(s):.4g}' for s in truth)}")
    print(f"    power iteration pairs : {p}  (ran {power_products[0]} JVP + {power_products[1]} VJP, {t_power:.1f} s)")
    print(f"    lanczos pairs         : {lz}  (ran {lanczos_products[0]} JVP + {lanczos_products[1]} VJP, {t_lanczos:.1f} s)")
    if None in p or None in lz:
        print(f"    (None = not reached within {max_steps} steps)")
    pm = [s if s is not None else max_steps + 1 for s in p]
    lm = [s if s is not None else max_steps + 1 for s in lz]
    print(f"    mean pairs: power {statistics.mean(pm):.1f}, lanczos {statistics.mean(lm):.1f}; "
          f"max: power {max(pm)}, lanczos {max(lm)}; lanczos/power (mean) = {statistics.mean(lm) / statistics.mean(pm):.2f}"
          f"   (target <= 0.5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--baseline-n", type=int, default=200, help="samples the slow baseline is timed on (scaled to --n)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resnet-batch", type=int, default=8)
    ap.add_argument("--resnet-size", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-lenet", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    if not args.skip_lenet:
        part1(args.n, args.batch, args.repeats, args.baseline_n)
    if not args.skip_resnet:
        part2(args.resnet_batch, args.resnet_size, args.max_steps, 1e-3)


if __name__ == "__main__":
    main()
