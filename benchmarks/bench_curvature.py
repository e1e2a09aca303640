"""Input-Hessian curvature cost: HVP + Lanczos per sample, as a ratio to one forward + backward pass.

1. Sample LeNet (ReLU) and the same weights with Softplus(β=5) activations (smooth), Fashion-MNIST test
   images, float32, batch 32: for each target (loss, margin) and HVP mode (double backward,
   forward over reverse), the time of the top-1 eigenvalue by Lanczos to tol 1e-5 against one
   forward + backward pass of the same batch (measured in the same run, interleaved), and the
   HVPs to convergence (mean, max per sample).
2. A smooth CNN (float64): HVPs power iteration and Lanczos need to reach 1e-3 relative error of
   |λ_max|, against the dense Hessian's eigenvalues.

Usage: ``python benchmarks/bench_curvature.py [--n 256] [--repeats 3]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import argparse  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from robaudit.data.idx import read_idx  # noqa: E402
from robaudit.kinds import CurvatureMethod, CurvatureTarget  # noqa: E402
from robaudit.linalg.hessian import HessianOperator, HvpMode, top_eigenvalues  # noqa: E402
from robaudit.linalg.rng import keyed_normal  # noqa: E402
from robaudit.models import zoo  # noqa: E402
from robaudit.models.adapt import adapt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
FB_LOOPS = 5


def machine() -> str:
    return (f"{platform.machine()} · {os.cpu_count()} cores · torch {torch.__version__} · "
            f"{torch.get_num_threads()} threads · Python {platform.python_version()}")


def lenet(smooth: bool) -> nn.Module:
    ck = torch.load(REPO / "sample_models" / "lenet_fmnist.pt", weights_only=True)
    net = zoo.build(ck["arch"], **ck["arch_kwargs"])
    net.load_state_dict(ck["state_dict"])
    if smooth:
        net = copy.deepcopy(net)
        for name, module in list(net.named_modules()):
            if isinstance(module, nn.ReLU):
                setattr(net, name, nn.Softplus(beta=5.0))
    return adapt(net, input_shape=(1, 28, 28), mean=ck["meta"]["mean"], std=ck["meta"]["std"]).module.eval()


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = FMNIST / "t10k-images-idx3-ubyte.gz", FMNIST / "t10k-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        x = torch.from_numpy(read_idx(images)[:n].copy()).float()[:, None] / 255.0
        return x, torch.from_numpy(read_idx(labels)[:n].copy()).long()
    print(f"({FMNIST} missing: uniform random images, random labels)")
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(10, (n,), generator=g)


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    xr = x.detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xr), y)
    torch.autograd.grad(loss, xr)


def curvature(model, x, y, target, mode, keys) -> tuple[list[int], bool]:
    op = HessianOperator(model, x, y, target, mode=mode)
    res = top_eigenvalues(op, k=1, iters=100, tol=1e-5, init=keyed_normal(keys, (op.dim,), dtype=x.dtype))
    op.release()
    return res.iterations.tolist(), bool(res.converged.all())


def part1(n: int, batch: int, repeats: int) -> None:
    x, y = data(n)
    keys = torch.arange(n)
    print(f"\n[1] sample LeNet weights, {n} Fashion-MNIST test images, batch {batch}, float32, top-1 |λ| by Lanczos "
          f"to tol 1e-5 (best of {repeats}, interleaved with the forward+backward baseline)")
    print(f"    {'model':<16}{'target':<8}{'HVP mode':<22}{'fwd+bwd s':>10}{'curv. s':>9}{'ratio':>8}"
          f"{'HVPs mean':>11}{'max':>5}{'ratio/HVP':>11}  converged")
    for smooth in (False, True):
        model = lenet(smooth)
        name = "LeNet-softplus" if smooth else "LeNet (ReLU)"
        for target in CurvatureTarget:
            for mode in HvpMode:
                curvature(model, x[:batch], y[:batch], target, mode, keys[:batch])  # warm-up
                t_fb, t_c = [], []
                iters: list[int] = []
                conv = True
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    for _ in range(FB_LOOPS):  # the baseline is short: average a few passes against timer noise
                        for s in range(0, n, batch):
                            forward_backward(model, x[s:s + batch], y[s:s + batch])
                    t_fb.append((time.perf_counter() - t0) / FB_LOOPS)
                    t0 = time.perf_counter()
                    iters = []
                    for s in range(0, n, batch):
                        it, ok = curvature(model, x[s:s + batch], y[s:s + batch], target, mode, keys[s:s + batch])
                        iters += it
                        conv &= ok
                    t_c.append(time.perf_counter() - t0)
                ratio = min(t_c) / min(t_fb)
                mean_it = statistics.mean(iters)
                print(f"    {name:<16}{target.value:<8}{mode.value:<22}{min(t_fb):10.3f}{min(t_c):9.3f}{ratio:8.1f}"
                      f"{mean_it:11.1f}{max(iters):5d}{ratio / mean_it:11.2f}  {conv}")


def smooth_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.Softplus(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.GELU(),
                         nn.Flatten(), nn.Linear(16 * 11 * 11, 10)).double().eval()


def part2(batch: int, max_steps: int, rel: float) -> None:
    model = smooth_cnn()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, 1, 28, 28, dtype=torch.float64, generator=g), torch.randint(10, (batch,), generator=g)
    t0 = time.perf_counter()
    dense = HessianOperator(model, x, y).dense()
    truth = torch.linalg.eigvalsh(dense)
    truth = truth.gather(1, truth.abs().argmax(dim=1, keepdim=True))[:, 0]
    t_dense = time.perf_counter() - t0
    init = keyed_normal(torch.arange(batch), (784,), dtype=torch.float64)
    steps = {}
    for method in (CurvatureMethod.POWER, CurvatureMethod.LANCZOS):
        trace: list[torch.Tensor] = []
        top_eigenvalues(HessianOperator(model, x, y), k=1, method=method, iters=max_steps, tol=-1.0, init=init,
                        callback=lambda s, est: trace.append(est[:, 0].clone()))
        hit = torch.stack([(t - truth).abs() / truth.abs() <= rel for t in trace])
        steps[method] = [int(hit[:, i].to(torch.int8).argmax()) + 1 if hit[:, i].any() else None for i in range(batch)]
    p, lz = steps[CurvatureMethod.POWER], steps[CurvatureMethod.LANCZOS]
    print(f"\n[2] smooth CNN (softplus/GELU, 28×28, C = 10), {batch} inputs, float64, CE-loss Hessian: HVPs to "
          f"{rel:g} relative error of λ_max (dense Hessian from 784 HVPs, {t_dense:.1f} s)")
    print(f"    λ_max per sample : {', '.join(f'{float(v):.4g}' for v in truth)}")
    print(f"    power iteration  : {p}")
    print(f"    lanczos          : {lz}")
    pm = [s if s is not None else max_steps + 1 for s in p]
    lm = [s if s is not None else max_steps + 1 for s in lz]
    print(f"    mean HVPs: power {statistics.mean(pm):.1f}, lanczos {statistics.mean(lm):.1f} "
          f"(lanczos/power = {statistics.mean(lm) / statistics.mean(pm):.2f}); None = not within {max_steps}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cnn-batch", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=200)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    part1(args.n, args.batch, args.repeats)
    part2(args.cnn_batch, args.max_steps, 1e-3)


if __name__ == "__main__":
    main()
