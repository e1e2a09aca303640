"""Per-sample Jacobian norms of a batch with a chosen method: the engine behind ``robaudit norms``.

Combines the solvers of this package into one call per batch and one result:
σ_max, top-k σ, ‖J‖_F (exact or Hutchinson), stable rank ‖J‖_F²/σ_max²,
iterations and convergence, per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robaudit.kinds import FrobeniusMethod, NormMethod
from robaudit.linalg.exact import exact
from robaudit.linalg.hutchinson import hutchinson
from robaudit.linalg.lanczos import top_singular
from robaudit.linalg.power import power_iteration
from robaudit.linalg.products import JacobianOperator
from robaudit.linalg.rng import keyed_normal, keyed_sphere


# One set of mode enums for the CLI layer and the engines (robaudit.kinds is torch-free).
Method = NormMethod


@dataclass(frozen=True)
class NormsBatch:
    """Norms of one batch (all float64, on the batch's device).

    Attributes:
        spectral: (B,) σ_max (NaN where J is not finite).
        top_k: (B, k) top singular values, descending.
        frobenius: (B,) ‖J‖_F (estimate for Hutchinson).
        frobenius_stderr: (B,) standard error of ``frobenius`` (0 when exact).
        stable_rank: (B,) ‖J‖_F² / σ_max².
        iterations: (B,) solver iterations (VJPs for exact; steps for power/lanczos).
        converged: (B,) bool: ``error_bound`` ≤ tol (always True for exact where finite).
        error_bound: (B,) relative bound on σ_max: the true value is within spectral·(1 + error_bound)
            (power/lanczos estimates are lower bounds); 0 for exact, NaN where not finite.
        finite: (B,) bool; False marks a NaN/Inf Jacobian.
        pred: (B,) argmax of the model output.
        vector: (B, D) top right singular vector from power iteration (warm start), else None.
    """

    spectral: torch.Tensor
    top_k: torch.Tensor
    frobenius: torch.Tensor
    frobenius_stderr: torch.Tensor
    stable_rank: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    finite: torch.Tensor
    pred: torch.Tensor
    error_bound: torch.Tensor
    vector: torch.Tensor | None = None


def jacobian_norms(op: JacobianOperator, *, method: Method | str = Method.EXACT,
                   frobenius: FrobeniusMethod | str = FrobeniusMethod.EXACT, k: int = 1, iters: int = 100,
                   tol: float | None = None, n_proj: int = 16, keys: torch.Tensor | None = None, seed: int = 0,
                   init: torch.Tensor | None = None) -> NormsBatch:
    """σ_max, top-k σ and ‖J‖_F of every sample of ``op``'s batch.

    Args:
        op: the batch's Jacobian operator.
        method: exact | power | lanczos (power gives k = 1 only).
        frobenius: exact (C VJPs, shared with ``exact``) | hutchinson (``n_proj`` VJPs).
        k: number of top singular values.
        iters, tol: iteration cap and residual tolerance of power/lanczos (default :func:`default_tol`).
        n_proj: Hutchinson projections per sample.
        keys: (B,) per-sample keys (dataset indices) for random vectors, so results
            do not depend on batch size or order; ``arange(B)`` if None.
        seed: base seed of the random vectors.
        init: (B, D) warm start for power iteration.

    Returns:
        :class:`NormsBatch`.
    """
    method, frobenius = Method(method), FrobeniusMethod(frobenius)
    b, c, d = op.batch, op.num_outputs, op.dim
    dtype, device = op.x.dtype, op.x.device
    if keys is None:
        keys = torch.arange(b)
    f64 = torch.float64
    frob = stderr = None
    vector = None
    if method is Method.EXACT or frobenius is FrobeniusMethod.EXACT:
        ex = exact(op)
        if frobenius is FrobeniusMethod.EXACT:
            frob, stderr = ex.frobenius, torch.zeros(b, dtype=f64, device=device)
    if method is Method.EXACT:
        top, iterations, converged, finite = ex.singular_values[:, :k], ex.iterations, ex.converged, ex.finite
        bound = torch.zeros(b, dtype=f64, device=device)
    elif method is Method.POWER:
        start = init if init is not None else keyed_normal(keys, (d,), seed=seed, dtype=dtype, device=device)
        pw = power_iteration(op, iters=iters, tol=tol, init=start)
        top, iterations, converged, finite = pw.sigma[:, None].to(f64), pw.iterations, pw.converged, pw.finite
        bound = pw.error_bound.to(f64)
        vector = pw.vector
    else:
        n = c if c <= d else d
        start = keyed_normal(keys, (n,), seed=seed, dtype=dtype, device=device)
        lz = top_singular(op, k=k, iters=iters, tol=tol, init=start)
        top, iterations, converged, finite = lz.sigma.to(f64), lz.iterations, lz.converged, lz.finite
        bound = lz.error_bound[:, 0].to(f64)
    if frobenius is FrobeniusMethod.HUTCHINSON:
        probes = keyed_sphere(keys, (n_proj, c), seed=seed + 1, dtype=dtype, device=device)
        hu = hutchinson(op, probes=probes)
        frob, stderr = hu.frobenius, hu.stderr
        finite = finite & hu.finite
    frob = frob.to(f64)
    finite = finite & torch.isfinite(frob) & torch.isfinite(top).all(dim=1)
    spectral = top[:, 0]
    nan = torch.full_like(spectral, float("nan"))
    spectral = torch.where(finite, spectral, nan)
    top = torch.where(finite[:, None], top, torch.full_like(top, float("nan")))
    frob = torch.where(finite, frob, nan)
    stable = torch.where(spectral > 0, frob.square() / spectral.square().clamp_min(torch.finfo(f64).tiny), nan)
    pred = op.value.argmax(dim=1)
    return NormsBatch(spectral=spectral, top_k=top, frobenius=frob, frobenius_stderr=stderr.to(f64),
                      stable_rank=stable, iterations=iterations, converged=converged & finite, finite=finite,
                      pred=pred, error_bound=torch.where(finite, bound, nan), vector=vector)
