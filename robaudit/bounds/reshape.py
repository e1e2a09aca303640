"""Bounds from reshapes of the kernel: Singla & Feizi's four norms and Miyato's heuristic.

* ``singla_bound``: √(hw)·min(‖R‖, ‖S‖, ‖T‖, ‖U‖) over four reshapes of the kernel
  (Singla & Feizi 2019, Theorem 1; "Fantastic Four", 2021). It bounds the circular
  convolution at every size, hence never beats Sedghi's exact circular value.
* ``heuristic``: Miyato et al.'s c_out × c_in·h·w reshape norm. Not a bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robaudit.bounds.fourier import rounding_margin
from robaudit.linalg.lanczos import lanczos


def grouped_kernel(weight: Tensor, groups: int) -> Tensor:
    """(c_out, c_in/g, *k) → (g, c_out/g, c_in/g, kh, kw); 1-D kernels get kh = 1."""
    w = weight if weight.dim() == 4 else weight.unsqueeze(2)
    co, cig, kh, kw = w.shape
    return w.reshape(groups, co // groups, cig, kh, kw)


def top_ritz(gram: Tensor, *, steps: int = 48, seed: int = 0) -> Tensor:
    """Largest Ritz values (≤ λ_max) of a batch of real symmetric PSD matrices, by robaudit's Lanczos.

    Args:
        gram: (B, n, n) real symmetric.

    Returns:
        (B,) lower bounds on λ_max.
    """
    b, n, _ = gram.shape
    init = torch.randn(b, n, generator=torch.Generator().manual_seed(seed), dtype=gram.dtype).to(gram.device)
    res = lanczos(lambda q: (gram @ q.unsqueeze(-1)).squeeze(-1), init, k=1, iters=min(steps, n))
    return torch.nan_to_num(res.values[:, 0], nan=0.0).clamp_min(0)


def spectral_norm_upper(mat: Tensor, *, exact_below: int = 256) -> Tensor:
    """A certified upper bound on ‖A‖₂ for each matrix of a batch, tight to ~1e-6 relative.

    Small matrices: svdvals. Large ones: Lanczos on the smaller Gram matrix gives
    θ ≤ λ_max; a Cholesky factorisation of μI − AᵀA with μ = θ(1+δ) certifies
    λ_max < μ (δ grows if it fails; eigvalsh as the last resort).

    Args:
        mat: (B, r, c) real.

    Returns:
        (B,) upper bounds (rounding slack included).
    """
    r, c = mat.shape[-2:]
    margin = 1.0 + rounding_margin(mat.dtype, max(r, c))
    if min(r, c) <= exact_below:
        return torch.linalg.matrix_norm(mat, ord=2) * margin
    gram = mat.mT @ mat if r >= c else mat @ mat.mT
    theta = top_ritz(gram)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    delta = 1e-9 if mat.dtype == torch.float64 else 1e-5
    mu = theta * (1 + delta) + torch.finfo(theta.dtype).tiny
    for _ in range(4):
        _, info = torch.linalg.cholesky_ex(mu[:, None, None] * eye - gram)
        if bool((info == 0).all()):
            return mu.sqrt() * margin
        mu = torch.where(info == 0, mu, mu * (1 + 100 * delta))
        delta *= 100
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt() * margin


def fantastic_four(weight: Tensor, groups: int = 1) -> dict[str, float]:
    """The four reshape bounds √(hw)·‖·‖₂ and their minimum (Singla & Feizi 2019 Thm. 1; 2021).

    R: (c_out·h) × (c_in·w), S: (c_out·w) × (c_in·h), T: c_out × (c_in·h·w),
    U: c_in × (c_out·h·w). For grouped convolutions the layer is block diagonal,
    so each bound is the max over groups and ``singla_bound`` is the max over
    groups of the per-group minimum. Dilation does not change the bound.

    Returns:
        {"R", "S", "T", "U", "singla_bound"} (floats, certified upper bounds).
    """
    w = grouped_kernel(weight, groups)
    g, co, ci, kh, kw = w.shape
    mats = {
        "R": w.permute(0, 1, 3, 2, 4).reshape(g, co * kh, ci * kw),
        "S": w.permute(0, 1, 4, 2, 3).reshape(g, co * kw, ci * kh),
        "T": w.reshape(g, co, ci * kh * kw),
        "U": w.permute(0, 2, 1, 3, 4).reshape(g, ci, co * kh * kw),
    }
    scale = math.sqrt(kh * kw)
    per_group = {name: spectral_norm_upper(m) * scale for name, m in mats.items()}  # (g,)
    stacked = torch.stack(list(per_group.values()))  # (4, g)
    out = {name: float(v.max()) for name, v in per_group.items()}
    out["singla_bound"] = float(stacked.min(0).values.max())
    return out


def heuristic(weight: Tensor, groups: int = 1) -> float:
    """Miyato et al.'s c_out × c_in·h·w reshape norm (max over groups). NOT an upper bound."""
    w = grouped_kernel(weight, groups)
    g, co = w.shape[:2]
    return float(torch.linalg.matrix_norm(w.reshape(g, co, -1), ord=2).max())


__all__ = ["grouped_kernel", "top_ritz", "spectral_norm_upper", "fantastic_four", "heuristic"]
