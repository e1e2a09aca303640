"""Gram iteration with rescaling on the Fourier blocks of a convolution (Delattre et al. 2023).

An upper bound at every step. robaudit computes Sedghi's exact circular value
anyway, which the Gram bound can never beat, so it runs only on request
(``layers --gram``) to compare the methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from robaudit.bounds.fourier import rounding_margin
from robaudit.bounds.reshape import top_ritz


@dataclass(frozen=True)
class GramResult:
    """Gram-iteration bound on σ_max over all blocks.

    Attributes:
        bound: a valid upper bound on max_b σ_max(G_b).
        lower: a valid lower bound from the same iterates.
        steps: Gram squarings performed.
    """

    bound: float
    lower: float
    steps: int


def hermitian_top_ritz(h: Tensor, *, steps: int = 32) -> float:
    """Largest Ritz value (≤ λ_max) over complex Hermitian blocks, via their real embedding.

    [[Re H, −Im H], [Im H, Re H]] is real symmetric with H's eigenvalues, each twice.
    """
    re, im = h.real, h.imag
    emb = torch.cat([torch.cat([re, -im], -1), torch.cat([im, re], -1)], -2)
    return float(top_ritz(emb, steps=steps).max())


def gram_iteration(h: Tensor, *, iters: int = 12, tol: float = 5e-3, probe: int = 8) -> GramResult:
    """Gram iteration with rescaling on H_b = G_bᴴG_b, per block.

    After t squarings H_b^(t) = H_b^p / c_b with p = 2^t. Since λ^{2p} ≤
    tr(H^{2p}) = ‖H^p‖_F², σ_max ≤ ‖H^p‖_F^{1/(2p)} at every step; and since
    tr(H^{2p}) ≤ λ_max^p tr(H^p), σ_max ≥ (‖H^p‖_F² / tr(H^p))^{1/(2p)}. A
    second lower bound comes from Lanczos on the ``probe`` most promising blocks.
    The iteration stops when bound/lower ≤ 1+tol. Blocks whose upper bound falls
    below the best lower bound are dropped. Rescaling by the Frobenius norm keeps
    the iterates finite; log c_b tracks it.

    Args:
        h: (B, m, m) Hermitian PSD Gram blocks.
        iters: maximum squarings; tol: target ratio bound/lower − 1 on σ.
        probe: blocks given a Lanczos lower bound (0 to skip).

    Returns:
        GramResult (σ units), the bound inflated by a rounding margin.
    """
    real_dtype = h.real.dtype
    m = h.shape[-1]
    tiny = torch.finfo(real_dtype).tiny
    logc = torch.zeros(h.shape[0], dtype=torch.float64, device=h.device)
    log_probe = -math.inf
    if probe and m > 1:
        fro2 = torch.view_as_real(h).square().sum((-3, -2, -1))
        tr = torch.diagonal(h, dim1=-2, dim2=-1).real.sum(-1)
        top = torch.argsort(fro2 / tr.clamp_min(tiny), descending=True)[:probe]
        ritz = hermitian_top_ritz(h[top])
        log_probe = math.log(ritz) if ritz > 0 else -math.inf
    cur = h
    p = 1
    steps = 0
    log_up = log_lo = 0.0
    while True:
        fro2 = torch.view_as_real(cur).square().sum((-3, -2, -1)).to(torch.float64)
        tr = torch.diagonal(cur, dim1=-2, dim2=-1).real.sum(-1).to(torch.float64)
        zero = fro2 <= 0
        lfro2 = torch.log(fro2.clamp_min(tiny))
        up = (0.5 * lfro2 + logc) / p  # log λ upper, per block
        lo = (lfro2 - torch.log(tr.clamp_min(tiny)) + logc) / p  # log λ lower
        up = torch.where(zero, torch.full_like(up, -math.inf), up)
        lo = torch.where(zero, torch.full_like(lo, -math.inf), lo)
        log_lo = max(float(lo.max()), log_probe)
        log_up = float(up.max())
        if not math.isfinite(log_up):  # every block is zero
            return GramResult(0.0, 0.0, steps)
        if log_up - log_lo <= 2 * math.log1p(tol) or steps >= iters:
            break
        keep = up >= log_lo
        cur, logc, fro2 = cur[keep], logc[keep], fro2[keep]
        scale = fro2.to(real_dtype)  # divide by ‖H‖_F² so the square has Frobenius norm ≤ 1
        cur = (cur @ cur) / scale[:, None, None]
        logc = 2 * logc + torch.log(fro2)
        p *= 2
        steps += 1
    margin = 1.0 + rounding_margin(real_dtype, m) * (steps + 1)
    return GramResult(math.exp(log_up / 2) * margin, math.exp(log_lo / 2), steps)


__all__ = ["GramResult", "gram_iteration", "hermitian_top_ritz"]
