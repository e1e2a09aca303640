"""Benchmark: per-layer conv bounds on every conv of torchvision resnet18 (random init) at 224×224.

Methods, each timed per layer in the same run:
  naive           one batched torch.linalg.svdvals over all rfft2 frequency blocks (the baseline)
  circular_exact  robaudit.bounds.conv.circular_norm (autocorrelation Gram blocks + certified tournament)
  gram_bound      Gram blocks + Gram iteration with rescaling (Delattre et al. 2023)
  singla_bound    √(hw)·min of the four reshape norms (Singla & Feizi)

Targets (exit 1 if missed): circular_exact matches naive to rtol 1e-4 on every layer and is ≥ 1.5×
faster overall; gram_bound / circular_exact ≤ 1.01 on every layer (and ≥ 1: it is an upper bound).

Usage: python benchmarks/bench_layers.py [--repeat N] [--threads T] [--dtype float32|float64]

OMP_WAIT_POLICY defaults to PASSIVE here (before torch is imported): on a shared, loaded CPU, spinning
OpenMP threads make small LAPACK calls 10-100× slower and the timings meaningless for both methods.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torchvision  # noqa: E402

from robaudit.bounds.conv import ConvGeometry, circular_norm, fantastic_four, gram_blocks, gram_iteration


def naive_sigma(weight: torch.Tensor, fft_size: tuple[int, int]) -> float:
    """Baseline: rfft2 of the zero-padded kernel, all c_out×c_in blocks, one batched svdvals."""
    fft = torch.fft.rfft2(weight, s=fft_size)  # (c_out, c_in, M, M//2+1)
    blocks = fft.permute(2, 3, 0, 1).reshape(-1, weight.shape[0], weight.shape[1])
    return float(torch.linalg.svdvals(blocks).max())


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="timings per method per layer (min is kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape[1:])))
             for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, args.size, args.size))
    finally:
        for h in hooks:
            h.remove()

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"machine: {cpu_name()} · {os.cpu_count()} cores · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} · "
          f"load avg {load[0]:.2f} · python {platform.python_version()}")
    print(f"resnet18 (random init), input {args.size}×{args.size}, {args.dtype}, repeat {args.repeat}\n")
    head = (f"{'layer':22s} {'kernel':>16s} {'M':>4s} {'blocks':>6s} {'naive s':>8s} {'circ s':>7s} {'speed':>6s} "
            f"{'gram s':>7s} {'singla s':>8s} {'circular':>9s} {'rel.diff':>9s} {'gram/circ':>9s} {'singla/circ':>11s}")
    print(head)
    print("-" * len(head))
    tot = {"naive": 0.0, "circ": 0.0, "gram": 0.0, "singla": 0.0}
    one_naive = one_circ = 0.0
    ok = True
    worst_rel, worst_gram = 0.0, 0.0
    for name, module in net.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        w = module.weight.detach().to(dtype)
        geom = ConvGeometry.of(module, shapes[name])
        fft_size = geom.fft_size()
        t_naive, s_naive = timed(lambda: naive_sigma(w, fft_size), args.repeat)
        t_circ, (s_circ, info) = timed(lambda: circular_norm(w, fft_size, geom.dilation, geom.groups), args.repeat)
        t_gram, gram = timed(lambda: gram_iteration(gram_blocks(w, fft_size, geom.dilation, geom.groups)),
                             args.repeat)
        t_four, four = timed(lambda: fantastic_four(w, geom.groups), args.repeat)
        rel = abs(s_circ - s_naive) / s_naive
        g_ratio = gram.bound / s_circ
        worst_rel, worst_gram = max(worst_rel, rel), max(worst_gram, g_ratio)
        ok &= rel <= 1e-4 and 1.0 <= g_ratio <= 1.01
        for key, t in (("naive", t_naive), ("circ", t_circ), ("gram", t_gram), ("singla", t_four)):
            tot[key] += t
        if w.shape[2:] == (1, 1):
            one_naive, one_circ = one_naive + t_naive, one_circ + t_circ
        blocks = info.exact_blocks + info.certified_blocks
        print(f"{name:22s} {str(tuple(w.shape)):>16s} {fft_size[0]:4d} {blocks:6d} {t_naive:8.3f} {t_circ:7.3f} "
              f"{t_naive / t_circ:5.1f}× {t_gram:7.3f} {t_four:8.3f} {s_circ:9.5f} {rel:9.1e} {g_ratio:9.5f} "
              f"{four['singla_bound'] / s_circ:11.3f}", flush=True)
    speed = tot["naive"] / tot["circ"]
    print("-" * len(head))
    print(f"total: naive {tot['naive']:.2f} s · circular_exact {tot['circ']:.2f} s ({speed:.2f}× faster) · "
          f"gram_bound {tot['gram']:.2f} s · singla_bound {tot['singla']:.2f} s")
    print(f"max |circular − naive| / naive = {worst_rel:.1e} (target ≤ 1e-4) · max gram/circular = {worst_gram:.5f} "
          f"(target ≤ 1.01) · speed-up {speed:.2f}× (target ≥ 1.5×, aim 3×)")
    ok &= speed >= 1.5
    print(f"speed-up without the three 1×1 convs (whose blocks are all equal): "
          f"{(tot['naive'] - one_naive) / max(tot['circ'] - one_circ, 1e-9):.2f}×")
    print("targets:", "MET" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
