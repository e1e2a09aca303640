"""Batched Lanczos with full reorthogonalisation (Cui et al. 2022, Alg. 1; App. A).

Runs on A = JJᵀ (C×C) when C ≤ D, else on JᵀJ (D×D): both have eigenvalues σ².
Each step costs one JVP and one VJP. The Ritz values of the tridiagonal T are
lower bounds on the top eigenvalues (Cauchy interlacing) and converge much
faster than power iteration. Full reorthogonalisation (twice, "twice is
enough") keeps the Lanczos vectors orthogonal in finite precision, so no
spurious copies of converged eigenvalues appear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from robaudit.linalg.products import JacobianOperator


@dataclass(frozen=True)
class LanczosResult:
    """Top-k eigenvalues of a batch of symmetric PSD operators.

    Attributes:
        values: (B, k) Ritz values, descending (NaN where not finite).
        vectors: (B, k, n) Ritz vectors, or None if not requested.
        iterations: (B,) Lanczos steps (= operator applications) until convergence.
        converged: (B,) every top-k error estimate ≤ tol.
        error: (B, k) estimated relative error of √value (from the Ritz residual |βₘ sₘᵢ|).
        finite: (B,) whether the products stayed finite.
    """

    values: torch.Tensor
    vectors: torch.Tensor | None
    iterations: torch.Tensor
    converged: torch.Tensor
    error: torch.Tensor
    finite: torch.Tensor


@dataclass(frozen=True)
class TopSingular:
    """Top-k singular values of every Jᵢ from Lanczos.

    Attributes:
        sigma: (B, k) descending, lower bounds converging to the true values.
        iterations, converged, error, finite: as in :class:`LanczosResult` (error is relative, on σ).
        right_vectors: (B, k, D) unit right singular vectors, or None.
    """

    sigma: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    error: torch.Tensor
    finite: torch.Tensor
    right_vectors: torch.Tensor | None = None

    @property
    def spectral(self) -> torch.Tensor:
        return self.sigma[:, 0]


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w minus its projection on the rows of ``basis`` (B, j, n), applied twice."""
    for _ in range(2):
        w = w - torch.einsum("bjn,bj->bn", basis, torch.einsum("bjn,bn->bj", basis, w))
    return w


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, *, k: int = 1,
            iters: int = 100, tol: float = 1e-6, return_vectors: bool = False,
            generator: torch.Generator | None = None,
            callback: Callable[[int, torch.Tensor], None] | None = None) -> LanczosResult:
    """Top-k eigenpairs of B symmetric PSD n×n operators at once.

    Args:
        matvec: (B, n) → (B, n), the batched operator.
        init: (B, n) start vectors (any scale).
        k: how many top eigenvalues to return (k ≤ n).
        iters: maximum Krylov dimension (capped at n).
        tol: stop a sample when every top-k error estimate ≤ tol.
        return_vectors: also return Ritz vectors (B, k, n).
        generator: for restart vectors after an (exact) breakdown.
        callback: called after each step with (step, Ritz values (B, ≤k)), e.g. to trace convergence.

    Returns:
        :class:`LanczosResult`; each sample's values are frozen at its convergence step.
    """
    b, n = init.shape
    dtype, device = init.dtype, init.device
    m = max(1, min(iters, n))
    k = min(k, n)
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny
    q = init / init.norm(dim=1, keepdim=True).clamp_min(tiny)
    basis = torch.zeros(b, m, n, dtype=dtype, device=device)
    alpha = torch.zeros(b, m, dtype=dtype, device=device)
    beta = torch.zeros(b, m, dtype=dtype, device=device)  # beta[:, j] couples q_j and q_{j+1}
    scale = torch.zeros(b, dtype=dtype, device=device)     # running ‖T‖ estimate for breakdown tests

    values = torch.full((b, k), float("nan"), dtype=dtype, device=device)
    error = torch.full((b, k), float("inf"), dtype=dtype, device=device)
    vectors = torch.zeros(b, k, n, dtype=dtype, device=device) if return_vectors else None
    iterations = torch.zeros(b, dtype=torch.long, device=device)
    converged = torch.zeros(b, dtype=torch.bool, device=device)
    finite = torch.ones(b, dtype=torch.bool, device=device)

    for j in range(m):
        basis[:, j] = q
        w = matvec(q)
        finite &= torch.isfinite(w).all(dim=1)
        w = torch.where(finite[:, None], w, torch.zeros_like(w))
        a = (w * q).sum(dim=1)
        alpha[:, j] = a
        w = _orthogonalise(w, basis[:, : j + 1])
        bn = w.norm(dim=1)
        scale = torch.maximum(scale, a.abs() + bn + (beta[:, j - 1] if j > 0 else 0))
        broke = bn <= 100 * eps * scale.clamp_min(tiny)
        beta[:, j] = torch.where(broke, torch.zeros_like(bn), bn)

        # Ritz values of T_{j+1} and their residuals |β_j s_{j,i}|.
        size = j + 1
        t = torch.diag_embed(alpha[:, :size])
        if size > 1:
            off = beta[:, : size - 1]
            t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, s = torch.linalg.eigh(t)
        theta, s = theta.flip(-1), s.flip(-1)
        kk = min(k, size)
        top = theta[:, :kk].clamp_min(0)
        res = (beta[:, j, None] * s[:, -1, :kk]).abs()
        # relative error bound on σ = √λ from λ ∈ [θ, θ + res] (Ritz values are lower bounds)
        ratio = res / top.clamp_min(tiny)
        err = ratio / (torch.sqrt(1 + ratio) + 1)  # = √(1 + ratio) − 1 without cancellation
        err = torch.where(top > 0, err, torch.where(res > 0, torch.full_like(err, float("inf")), torch.zeros_like(err)))
        exhausted = size == n
        done_now = ~converged & finite & (size >= k) & (((err <= tol).all(dim=1)) | exhausted)
        upd = ~converged & finite
        new_values = torch.full((b, k), float("nan"), dtype=dtype, device=device)
        new_values[:, :kk] = top
        new_err = torch.full((b, k), float("inf"), dtype=dtype, device=device)
        new_err[:, :kk] = torch.where(torch.full_like(err, exhausted, dtype=torch.bool), torch.zeros_like(err), err)
        values = torch.where(upd[:, None], new_values, values)
        error = torch.where(upd[:, None], new_err, error)
        if vectors is not None:
            ritz = torch.einsum("bjn,bji->bin", basis[:, :size], s[:, :, :kk])
            vectors[:, :kk] = torch.where(upd[:, None, None], ritz, vectors[:, :kk])
        iterations = torch.where(upd, torch.full_like(iterations, size), iterations)
        converged |= done_now
        if callback is not None:
            callback(size, top)
        if bool((converged | ~finite).all()) or exhausted or j + 1 == m:
            break

        # Next Lanczos vector; after a breakdown the Krylov space is invariant, so continue
        # with a random vector orthogonal to it (T gets a zero off-diagonal: still exact).
        nxt = w / bn.clamp_min(tiny)[:, None]
        if bool(broke.any()):
            fresh = torch.randn(b, n, dtype=dtype, device=device, generator=generator)
            fresh = _orthogonalise(fresh, basis[:, : j + 1])
            fresh = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(tiny)
            nxt = torch.where(broke[:, None], fresh, nxt)
        # the three-term recurrence: next step subtracts beta_j q_j implicitly via reorthogonalisation
        q = nxt

    nan = torch.full_like(values, float("nan"))
    values = torch.where(finite[:, None], values, nan)
    return LanczosResult(values=values, vectors=vectors, iterations=iterations, converged=converged & finite,
                         error=error, finite=finite)


def top_singular(op: JacobianOperator, *, k: int = 1, iters: int = 100, tol: float = 1e-6,
                 init: torch.Tensor | None = None, return_vectors: bool = False,
                 generator: torch.Generator | None = None,
                 callback: Callable[[int, torch.Tensor], None] | None = None) -> TopSingular:
    """Top-k singular values of each Jᵢ by Lanczos on JᵢJᵢᵀ (or JᵢᵀJᵢ when D < C).

    Args:
        op: the batch's Jacobian operator.
        k: number of singular values (≤ min(C, D)).
        iters: maximum Lanczos steps (each = 1 JVP + 1 VJP).
        tol: relative error target for each of the top-k σ.
        init: (B, C) start vectors (or (B, D) when D < C); random if None.
        return_vectors: also return the right singular vectors (B, k, D).
        callback: called after each step with (step, current σ estimates (B, ≤k)).

    Returns:
        :class:`TopSingular` (Cui et al. 2022, Alg. 1).
    """
    b, c, d = op.batch, op.num_outputs, op.dim
    dtype, device = op.x.dtype, op.x.device
    in_output_space = c <= d
    n = c if in_output_space else d
    if init is None:
        init = torch.randn(b, n, dtype=dtype, device=device, generator=generator)
    init = init.to(dtype=dtype, device=device)
    trace = None if callback is None else (lambda step, values: callback(step, values.clamp_min(0).sqrt()))
    res = lanczos(op.gram if in_output_space else op.normal, init, k=k, iters=iters, tol=tol,
                  return_vectors=return_vectors, generator=generator, callback=trace)
    sigma = res.values.clamp_min(0).sqrt()
    right = None
    if return_vectors and res.vectors is not None:
        if in_output_space:  # v = Jᵀu / σ
            right = torch.stack([op.vjp(res.vectors[:, i]) for i in range(res.vectors.shape[1])], dim=1)
            right = right / right.norm(dim=2, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        else:
            right = res.vectors
    return TopSingular(sigma=sigma, iterations=res.iterations, converged=res.converged, error=res.error,
                       finite=res.finite, right_vectors=right)
