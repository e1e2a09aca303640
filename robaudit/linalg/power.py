"""Batched power iteration (Johansson et al. 2022, Alg. 1; Roth et al. 2019, eq. 7).

:func:`power_method` iterates v ← Av/‖Av‖ on B symmetric operators at once and
stops a sample on its eigen-residual: with θ = vᵀAv (unit v), some eigenvalue
of A lies within r = ‖Av − θv‖ of θ, so r ≤ tol·|θ| bounds the error, unlike a
small change between steps, which a slow decay (σ₂/σ₁ near 1) also produces.
The bound is about the eigenvalue the iterate has found; a random start finds
the dominant one with probability one.

:func:`power_iteration` applies it to JᵀJ (one JVP and one VJP per step) for
σ_max of every Jᵢ. Its estimate ‖JᵀJv‖/‖Jv‖ never exceeds σ_max.

``differentiable=True`` keeps the autograd graph through every step (the
operator must keep it too, e.g. ``JacobianOperator(..., create_graph=True)``),
so a loss on the result backpropagates to the model's parameters. Measurement
(the default) detaches each product, so no graph grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from robaudit.linalg.products import JacobianOperator
from robaudit.linalg.tol import default_tol


@dataclass(frozen=True)
class EigenPower:
    """Dominant (largest-magnitude) eigenvalue of B symmetric operators by power iteration.

    Attributes:
        value: (B,) Rayleigh quotient θ = vᵀAv, with sign (NaN where not finite).
        vector: (B, n) the next unit iterate Av/‖Av‖ (a warm start).
        iterations: (B,) operator applications until convergence (or the cap).
        converged: (B,) residual ≤ tol·|θ|.
        residual: (B,) ‖Av − θv‖ (absolute): an eigenvalue lies in [θ − residual, θ + residual].
        error_bound: (B,) residual / |θ| (relative; 0 when A v = 0).
        norm_av: (B,) ‖Av‖ at the reported step.
        finite: (B,) whether the products stayed finite.
    """

    value: torch.Tensor
    vector: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    error_bound: torch.Tensor
    norm_av: torch.Tensor
    finite: torch.Tensor


@dataclass(frozen=True)
class PowerResult:
    """What power iteration on JᵀJ converged to, per sample.

    Attributes:
        sigma: (B,) lower bound on σ_max (NaN where J is not finite).
        vector: (B, D) unit estimate of the top right singular vector (use as a warm start).
        iterations: (B,) steps taken until convergence (or the cap).
        converged: (B,) ‖JᵀJv − ρv‖ ≤ tol·ρ with ρ = ‖Jv‖² (so error_bound ≤ tol/2).
        residual: (B,) ‖JᵀJv − ρv‖ / ρ (relative eigen-residual of JᵀJ).
        error_bound: (B,) relative bound on σ: σ_max ∈ [sigma, sigma·(1 + error_bound)].
        finite: (B,) bool, whether the products stayed finite.
    """

    sigma: torch.Tensor
    vector: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    error_bound: torch.Tensor
    finite: torch.Tensor


def power_method(matvec: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, *, iters: int = 100,
                 tol: float | None = None, differentiable: bool = False,
                 estimate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 callback: Callable[[int, torch.Tensor], None] | None = None) -> EigenPower:
    """Largest-magnitude eigenvalue of B symmetric n×n operators by power iteration.

    Args:
        matvec: (B, n) → (B, n), the batched operator.
        init: (B, n) start vectors (any scale).
        iters: maximum number of operator applications.
        tol: stop a sample once ‖Av − θv‖ ≤ tol·|θ| (default :func:`default_tol` of the dtype).
        differentiable: keep the graph of every product (else each product is detached).
        estimate: maps (θ, ‖Av‖) to the per-step value passed to ``callback`` (default θ).
        callback: called after each step with (step, estimates (B,)).

    Returns:
        :class:`EigenPower`; a sample's values are frozen at the step it converged, so they
        do not depend on the other samples of the batch.
    """
    b, n = init.shape
    dtype, device = init.dtype, init.device
    tol = default_tol(dtype) if tol is None else tol
    tiny = torch.finfo(dtype).tiny
    v = init / init.norm(dim=1, keepdim=True).clamp_min(tiny)
    if not differentiable:
        v = v.detach()
    zeros = torch.zeros(b, dtype=dtype, device=device)
    value, norm_av = zeros, zeros
    residual = torch.full((b,), float("inf"), dtype=dtype, device=device)
    iterations = torch.zeros(b, dtype=torch.long, device=device)
    converged = torch.zeros(b, dtype=torch.bool, device=device)
    finite = torch.ones(b, dtype=torch.bool, device=device)
    out_v = v
    for step in range(1, iters + 1):
        w = matvec(v)
        if not differentiable:
            w = w.detach()
        theta = (w * v).sum(dim=1)
        wn = w.norm(dim=1)
        # the residual is only a diagnostic: no gradient flows through it
        res = (w - theta[:, None] * v).detach().norm(dim=1)
        new_v = torch.where((wn > 0)[:, None], w / wn.clamp_min(tiny)[:, None], v)
        ok = torch.isfinite(theta) & torch.isfinite(new_v).all(dim=1)
        active = ~converged & finite  # frozen samples keep the values of their convergence step
        done_now = active & ok & (res <= tol * theta.detach().abs())
        value = torch.where(active, theta, value)
        norm_av = torch.where(active, wn, norm_av)
        residual = torch.where(active, res, residual)
        out_v = torch.where(active[:, None], new_v, out_v)
        iterations = torch.where(active, torch.full_like(iterations, step), iterations)
        finite = finite & (ok | ~active)
        converged = converged | done_now
        if callback is not None:
            callback(step, theta if estimate is None else estimate(theta, wn))
        v = torch.where(torch.isfinite(new_v), new_v, torch.zeros_like(new_v))
        if bool((converged | ~finite).all()):
            break
    nan = torch.full_like(value, float("nan"))
    mag = value.detach().abs()
    error_bound = torch.where(mag > 0, residual / mag.clamp_min(tiny),
                              torch.where(residual > 0, torch.full_like(residual, float("inf")), torch.zeros_like(residual)))
    return EigenPower(value=torch.where(finite, value, nan), vector=out_v, iterations=iterations,
                      converged=converged & finite, residual=residual, error_bound=error_bound,
                      norm_av=norm_av, finite=finite)


def _sigma_estimate(theta: torch.Tensor, norm_av: torch.Tensor) -> torch.Tensor:
    """‖JᵀJv‖/‖Jv‖ from θ = ‖Jv‖² and ‖JᵀJv‖ (0 for J v = 0): a lower bound on σ_max."""
    root = theta.clamp_min(0).sqrt()
    return torch.where(root > 0, norm_av / root.clamp_min(torch.finfo(theta.dtype).tiny), torch.zeros_like(root))


def power_iteration(op: JacobianOperator, *, iters: int = 100, tol: float | None = None,
                    init: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    differentiable: bool = False,
                    callback: Callable[[int, torch.Tensor], None] | None = None) -> PowerResult:
    """σ_max of each Jᵢ by power iteration on JᵢᵀJᵢ.

    Args:
        op: the batch's Jacobian operator (built with ``create_graph=True`` if ``differentiable``).
        iters: maximum number of steps (each = 1 JVP + 1 VJP).
        tol: stop a sample once ‖JᵀJv − ρv‖ ≤ tol·ρ, ρ = ‖Jv‖² (default :func:`default_tol`).
        init: (B, D) warm start (e.g. a previous ``vector``); random normal if None.
        generator: for the random start.
        differentiable: keep the autograd graph, so ``sigma`` backpropagates to the parameters.
        callback: called after each step with (step, current estimates (B,)), e.g. to trace convergence.

    Returns:
        :class:`PowerResult`. A sample's values are frozen at the step it converged.
    """
    if differentiable and not getattr(op, "create_graph", False):
        raise ValueError("power_iteration(differentiable=True) needs JacobianOperator(..., create_graph=True)")
    b, d = op.batch, op.dim
    dtype, device = op.x.dtype, op.x.device
    if init is None:
        init = torch.randn(b, d, dtype=dtype, device=device, generator=generator)
    init = init.reshape(b, d).to(dtype=dtype, device=device)
    eig = power_method(op.normal, init, iters=iters, tol=tol, differentiable=differentiable,
                       estimate=_sigma_estimate, callback=callback)
    theta = eig.value.clamp_min(0)
    sigma = _sigma_estimate(theta, eig.norm_av)
    sig = sigma.detach()
    # σ_max² ≤ θ + r (the eigenvalue near θ is the top one) and σ_max ≥ sigma.
    upper = (theta.detach() + eig.residual).sqrt()
    error_bound = torch.where(sig > 0, (upper / sig.clamp_min(torch.finfo(dtype).tiny) - 1).clamp_min(0),
                              torch.where(eig.residual > 0, torch.full_like(sig, float("inf")), torch.zeros_like(sig)))
    residual = torch.where(theta.detach() > 0, eig.error_bound, torch.zeros_like(sig))
    nan = torch.full_like(sigma, float("nan"))
    return PowerResult(sigma=torch.where(eig.finite, sigma, nan), vector=eig.vector, iterations=eig.iterations,
                       converged=eig.converged, residual=residual,
                       error_bound=torch.where(eig.finite, error_bound, nan), finite=eig.finite)
