"""Batched power iteration for σ_max of every Jᵢ (Johansson et al. 2022, Alg. 1; Roth et al. 2019, eq. 7).

v ← JᵀJv / ‖JᵀJv‖, one JVP and one VJP per step. The estimate
‖JᵀJv‖/‖Jv‖ (≥ ‖Jv‖ for unit v) never exceeds σ_max, so it is a lower bound
at every step; it converges to σ_max when the start vector is not orthogonal
to the top right singular vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from robaudit.linalg.products import JacobianOperator


@dataclass(frozen=True)
class PowerResult:
    """What power iteration converged to, per sample.

    Attributes:
        sigma: (B,) lower bound on σ_max (NaN where J is not finite).
        vector: (B, D) unit estimate of the top right singular vector (use as a warm start).
        iterations: (B,) steps taken until convergence (or the cap).
        converged: (B,) relative change of sigma fell below tol.
        residual: (B,) ‖JᵀJv − θv‖ / θ with θ = ‖Jv‖² (relative eigen-residual).
        finite: (B,) bool, whether the products stayed finite.
    """

    sigma: torch.Tensor
    vector: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    finite: torch.Tensor


def power_iteration(op: JacobianOperator, *, iters: int = 100, tol: float = 1e-6,
                    init: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    callback: Callable[[int, torch.Tensor], None] | None = None) -> PowerResult:
    """σ_max of each Jᵢ by power iteration on JᵢᵀJᵢ.

    Args:
        op: the batch's Jacobian operator.
        iters: maximum number of steps (each = 1 JVP + 1 VJP).
        tol: stop a sample once |σₜ − σₜ₋₁| ≤ tol·σₜ.
        init: (B, D) warm start (e.g. a previous ``vector``); random normal if None.
        generator: for the random start.
        callback: called after each step with (step, current estimates (B,)), e.g. to trace convergence.

    Returns:
        :class:`PowerResult`. A sample's values are frozen at the step it converged,
        so they do not depend on the other samples of the batch.
    """
    b, d = op.batch, op.dim
    dtype, device = op.x.dtype, op.x.device
    if init is None:
        init = torch.randn(b, d, dtype=dtype, device=device, generator=generator)
    v = init.reshape(b, d).to(dtype=dtype, device=device)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    sigma = torch.zeros(b, dtype=dtype, device=device)
    residual = torch.full((b,), float("inf"), dtype=dtype, device=device)
    iterations = torch.zeros(b, dtype=torch.long, device=device)
    converged = torch.zeros(b, dtype=torch.bool, device=device)
    finite = torch.ones(b, dtype=torch.bool, device=device)
    prev = torch.full((b,), float("nan"), dtype=dtype, device=device)
    out_v = v.clone()
    tiny = torch.finfo(dtype).tiny
    for step in range(1, iters + 1):
        u = op.jvp(v)
        w = op.vjp(u)
        un, wn = u.norm(dim=1), w.norm(dim=1)
        theta = un.square()
        est = torch.where(un > 0, wn / un.clamp_min(tiny), torch.zeros_like(un))
        res = (w - theta[:, None] * v).norm(dim=1) / theta.clamp_min(tiny)
        new_v = torch.where((wn > 0)[:, None], w / wn.clamp_min(tiny)[:, None], v)
        ok = torch.isfinite(est) & torch.isfinite(new_v).all(dim=1)
        active = ~converged & finite
        done_now = active & ok & ((est - prev).abs() <= tol * est)
        # J = 0 (or v in its null space): σ estimate 0 and nothing to iterate on.
        done_now |= active & ok & (wn == 0)
        upd = active  # frozen samples keep the values from their convergence step
        sigma = torch.where(upd, est, sigma)
        residual = torch.where(upd, torch.where(theta > 0, res, torch.zeros_like(res)), residual)
        out_v = torch.where(upd[:, None], new_v, out_v)
        iterations = torch.where(upd, torch.full_like(iterations, step), iterations)
        finite &= ok | ~active
        converged |= done_now
        prev = est
        if callback is not None:
            callback(step, est)
        v = torch.where(torch.isfinite(new_v), new_v, torch.zeros_like(new_v))
        if bool((converged | ~finite).all()):
            break
    sigma = torch.where(finite, sigma, torch.full_like(sigma, float("nan")))
    return PowerResult(sigma=sigma, vector=out_v, iterations=iterations, converged=converged,
                       residual=residual, finite=finite)
