"""Batched Lanczos with full reorthogonalisation (Cui et al. 2022, Alg. 1 and Sec. 3.4; App. A).

:func:`lanczos` finds extremal eigenpairs of B symmetric operators at once:
the largest (PSD operators such as JJᵀ, JᵀJ) or the largest in magnitude with
sign (indefinite ones such as input Hessians). Each step costs one operator
application. Full reorthogonalisation (twice, "twice is enough") keeps the
Lanczos vectors orthogonal in finite precision, so no spurious copies of
converged eigenvalues appear.

Convergence is decided on the Ritz residual ‖Ay − θy‖ = |βₘ sₘᵢ| of each
Ritz pair (θ, y), which is free from the tridiagonal T: an eigenvalue of A
lies within it of θ. A sample stops once every requested residual is within
tol of its reference scale (see :func:`lanczos`).

:func:`top_singular` runs it on JJᵀ (C×C) when C ≤ D, else on JᵀJ (D×D).

``differentiable=True`` keeps the autograd graph through the iteration (the
operator must keep it too), so a loss on the values backpropagates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import torch

from robaudit.linalg.products import JacobianOperator
from robaudit.linalg.tol import default_tol


class Which(str, enum.Enum):
    """Which end of the spectrum :func:`lanczos` returns."""

    LARGEST = "largest"      # algebraically largest, descending (PSD operators)
    MAGNITUDE = "magnitude"  # largest |λ|, with sign, sorted by |λ| descending (indefinite operators)


@dataclass(frozen=True)
class LanczosResult:
    """Top-k eigenvalues of a batch of symmetric operators.

    Attributes:
        values: (B, k) Ritz values, sorted as ``which`` asks (NaN where not finite).
        vectors: (B, k, n) Ritz vectors, or None if not requested.
        iterations: (B,) Lanczos steps (= operator applications) until convergence.
        converged: (B,) every top-k residual within tolerance.
        residual: (B, k) Ritz residual ‖Ay − θy‖: an eigenvalue lies in [θ − residual, θ + residual].
        error_bound: (B, k) residual / |θ| (relative bound on each value).
        finite: (B,) whether the products stayed finite.
    """

    values: torch.Tensor
    vectors: torch.Tensor | None
    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    error_bound: torch.Tensor
    finite: torch.Tensor


@dataclass(frozen=True)
class TopSingular:
    """Top-k singular values of every Jᵢ from Lanczos.

    Attributes:
        sigma: (B, k) descending, lower bounds converging to the true values.
        iterations, converged, finite: as in :class:`LanczosResult`.
        error_bound: (B, k) relative bound on each σ: σᵢ ∈ [sigma, sigma·(1 + error_bound)].
        right_vectors: (B, k, D) unit right singular vectors, or None.
    """

    sigma: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    error_bound: torch.Tensor
    finite: torch.Tensor
    right_vectors: torch.Tensor | None = None

    @property
    def spectral(self) -> torch.Tensor:
        return self.sigma[:, 0]


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w minus its projection on the rows of ``basis`` (B, j, n), applied twice."""
    for _ in range(2):  # bmm, not einsum: einsum copies the basis into another layout on every call
        coef = torch.bmm(basis, w.unsqueeze(-1))  # (B, j, 1)
        w = w - torch.bmm(coef.transpose(1, 2), basis).squeeze(1)
    return w


class _Basis:
    """The Lanczos vectors (B, j, n): a preallocated buffer, or a graph-keeping stack when differentiable."""

    def __init__(self, b: int, m: int, n: int, like: torch.Tensor, differentiable: bool) -> None:
        self.differentiable = differentiable
        self.rows: list[torch.Tensor] = []
        self.buf = None if differentiable else torch.zeros(b, m, n, dtype=like.dtype, device=like.device)
        self.stacked: torch.Tensor | None = None

    def append(self, q: torch.Tensor) -> None:
        if self.buf is not None:
            self.buf[:, len(self.rows)] = q
            self.rows.append(q)
        else:
            self.rows.append(q)
            self.stacked = torch.stack(self.rows, dim=1)

    def view(self) -> torch.Tensor:
        return self.buf[:, : len(self.rows)] if self.buf is not None else self.stacked


def _pad(x: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """Pad the last axis of (B, kk) or the middle axis of (B, kk, n) to k with ``fill``."""
    kk = x.shape[1]
    if kk == k:
        return x
    shape = (x.shape[0], k - kk, *x.shape[2:])
    return torch.cat([x, torch.full(shape, fill, dtype=x.dtype, device=x.device)], dim=1)


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, *, k: int = 1,
            iters: int = 100, tol: float | None = None, which: Which | str = Which.LARGEST,
            return_vectors: bool = False, differentiable: bool = False,
            generator: torch.Generator | None = None,
            callback: Callable[[int, torch.Tensor], None] | None = None) -> LanczosResult:
    """Top-k eigenpairs of B symmetric n×n operators at once.

    Args:
        matvec: (B, n) → (B, n), the batched operator.
        init: (B, n) start vectors (any scale).
        k: how many eigenvalues to return (k ≤ n).
        iters: maximum Krylov dimension (capped at n).
        tol: stop a sample when every top-k Ritz residual ≤ tol·ref, with ref = |θᵢ| for
            ``largest`` and ref = |θ₁| (the largest magnitude) for ``magnitude``, or when it
            is at the rounding floor eps·‖T‖; default :func:`default_tol` of the dtype.
        which: ``largest`` (descending) or ``magnitude`` (largest |λ| first, with sign).
        return_vectors: also return Ritz vectors (B, k, n).
        differentiable: keep the graph of the products (else each product is detached).
        generator: for restart vectors after an (exact) breakdown.
        callback: called after each step with (step, Ritz values (B, ≤k)), e.g. to trace convergence.

    Returns:
        :class:`LanczosResult`; each sample's values are frozen at its convergence step.
    """
    which = Which(which)
    b, n = init.shape
    dtype, device = init.dtype, init.device
    tol = default_tol(dtype) if tol is None else tol
    m = max(1, min(iters, n))
    k = min(k, n)
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny
    q = init / init.norm(dim=1, keepdim=True).clamp_min(tiny)
    if not differentiable:
        q = q.detach()
    basis = _Basis(b, m, n, init, differentiable)
    alpha: list[torch.Tensor] = []
    beta: list[torch.Tensor] = []   # beta[j] couples q_j and q_{j+1}
    scale = torch.zeros(b, dtype=dtype, device=device)  # running ‖T‖ estimate (breakdown test, residual floor)

    values = torch.full((b, k), float("nan"), dtype=dtype, device=device)
    residual = torch.full((b, k), float("inf"), dtype=dtype, device=device)
    # Ritz coefficients (B, m, k) of each sample at its last update; the vectors are formed once, at the end
    coeffs = torch.zeros(b, m, k, dtype=dtype, device=device) if return_vectors else None
    iterations = torch.zeros(b, dtype=torch.long, device=device)
    converged = torch.zeros(b, dtype=torch.bool, device=device)
    finite = torch.ones(b, dtype=torch.bool, device=device)

    for j in range(m):
        basis.append(q)
        w = matvec(q)
        if not differentiable:
            w = w.detach()
        finite = finite & torch.isfinite(w).all(dim=1)
        w = torch.where(finite[:, None], w, torch.zeros_like(w))
        a = (w * q).sum(dim=1)
        alpha.append(a)
        w = _orthogonalise(w, basis.view())
        bn = w.norm(dim=1)
        scale = torch.maximum(scale, (a.abs() + bn + (beta[j - 1] if j > 0 else 0)).detach())
        broke = bn.detach() <= 100 * eps * scale.clamp_min(tiny)
        beta.append(torch.where(broke, torch.zeros_like(bn), bn))

        # Ritz values of T_{j+1}; the residual of pair i is |β_j s_{j,i}| (no extra products).
        size = j + 1
        t = torch.diag_embed(torch.stack(alpha, dim=1))
        if size > 1:
            off = torch.stack(beta[: size - 1], dim=1)
            t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, s = torch.linalg.eigh(t)  # ascending
        if which is Which.LARGEST:
            order = torch.arange(size - 1, -1, -1, device=device).expand(b, size)
        else:
            order = theta.detach().abs().argsort(dim=1, descending=True, stable=True)
        kk = min(k, size)
        order = order[:, :kk]
        top = theta.gather(1, order)
        s_top = s.gather(2, order[:, None, :].expand(b, size, kk))
        exhausted = size == n  # the Krylov space is the whole space: Ritz values are eigenvalues
        # Rounding limits what a residual can show to about eps·‖T‖: that floor is part of the bound.
        floor = (eps * scale)[:, None].expand(b, kk)
        res = floor if exhausted else torch.maximum((beta[j].detach()[:, None] * s_top[:, -1, :].detach()).abs(), floor)
        mag = top.detach().abs()
        ref = mag if which is Which.LARGEST else mag[:, :1].expand(b, kk)
        within = (res <= torch.maximum(tol * ref, floor)).all(dim=1)
        done_now = ~converged & finite & (size >= k) & (within | exhausted)
        upd = ~converged & finite
        values = torch.where(upd[:, None], _pad(top, k, float("nan")), values)
        residual = torch.where(upd[:, None], _pad(res, k, float("inf")), residual)
        if coeffs is not None:
            full = torch.nn.functional.pad(s_top, (0, k - kk, 0, m - size))  # (B, m, k), zeros elsewhere
            coeffs = torch.where(upd[:, None, None], full, coeffs)
        iterations = torch.where(upd, torch.full_like(iterations, size), iterations)
        converged = converged | done_now
        if callback is not None:
            callback(size, top)
        if bool((converged | ~finite).all()) or exhausted or j + 1 == m:
            break

        # Next Lanczos vector; after a breakdown the Krylov space is invariant, so continue
        # with a random vector orthogonal to it (T gets a zero off-diagonal: still exact).
        # The three-term recurrence's −β q_{j−1} is subsumed by the full reorthogonalisation.
        q = w / bn.clamp_min(tiny)[:, None]
        if bool(broke.any()):
            fresh = torch.randn(b, n, dtype=dtype, device=device, generator=generator)
            fresh = _orthogonalise(fresh, basis.view().detach())
            fresh = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(tiny)
            q = torch.where(broke[:, None], fresh, q)

    vectors = None
    if coeffs is not None:
        rows = basis.view()
        vectors = torch.bmm(coeffs[:, : rows.shape[1]].transpose(1, 2), rows)  # (B, k, n)
    values = torch.where(finite[:, None], values, torch.full_like(values, float("nan")))
    mag = values.detach().abs()
    error_bound = torch.where(mag > 0, residual / mag.clamp_min(tiny),
                              torch.where(residual > 0, torch.full_like(residual, float("inf")), torch.zeros_like(residual)))
    return LanczosResult(values=values, vectors=vectors, iterations=iterations, converged=converged & finite,
                         residual=residual, error_bound=error_bound, finite=finite)


def top_singular(op: JacobianOperator, *, k: int = 1, iters: int = 100, tol: float | None = None,
                 init: torch.Tensor | None = None, return_vectors: bool = False, differentiable: bool = False,
                 generator: torch.Generator | None = None,
                 callback: Callable[[int, torch.Tensor], None] | None = None) -> TopSingular:
    """Top-k singular values of each Jᵢ by Lanczos on JᵢJᵢᵀ (or JᵢᵀJᵢ when D < C).

    Args:
        op: the batch's Jacobian operator (built with ``create_graph=True`` if ``differentiable``).
        k: number of singular values (≤ min(C, D)).
        iters: maximum Lanczos steps (each = 1 JVP + 1 VJP).
        tol: stop when every top-k Ritz residual of the Gram operator ≤ tol·σ², so each σ is
            within tol/2 relative (default :func:`default_tol`).
        init: (B, C) start vectors (or (B, D) when D < C); random if None.
        return_vectors: also return the right singular vectors (B, k, D).
        differentiable: keep the autograd graph, so ``sigma`` backpropagates to the parameters.
        callback: called after each step with (step, current σ estimates (B, ≤k)).

    Returns:
        :class:`TopSingular` (Cui et al. 2022, Alg. 1).
    """
    if differentiable and not getattr(op, "create_graph", False):
        raise ValueError("top_singular(differentiable=True) needs JacobianOperator(..., create_graph=True)")
    b, c, d = op.batch, op.num_outputs, op.dim
    dtype, device = op.x.dtype, op.x.device
    in_output_space = c <= d
    n = c if in_output_space else d
    if init is None:
        init = torch.randn(b, n, dtype=dtype, device=device, generator=generator)
    init = init.to(dtype=dtype, device=device)
    trace = None if callback is None else (lambda step, values: callback(step, values.clamp_min(0).sqrt()))
    res = lanczos(op.gram if in_output_space else op.normal, init, k=k, iters=iters, tol=tol,
                  which=Which.LARGEST, return_vectors=return_vectors, differentiable=differentiable,
                  generator=generator, callback=trace)
    lam = res.values.clamp_min(0)
    sigma = lam.sqrt()
    # λᵢ ∈ [θᵢ, θᵢ + rᵢ] (Ritz values are lower bounds): σ relative error ≤ √(1 + r/θ) − 1, without cancellation.
    ratio = res.residual / lam.detach().clamp_min(torch.finfo(dtype).tiny)
    error_bound = ratio / (torch.sqrt(1 + ratio) + 1)
    error_bound = torch.where(lam.detach() > 0, error_bound,
                              torch.where(res.residual > 0, torch.full_like(ratio, float("inf")), torch.zeros_like(ratio)))
    right = None
    if return_vectors and res.vectors is not None:
        if in_output_space:  # v = Jᵀu / σ
            right = torch.stack([op.vjp(res.vectors[:, i]) for i in range(res.vectors.shape[1])], dim=1)
            right = right / right.norm(dim=2, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        else:
            right = res.vectors
    return TopSingular(sigma=sigma, iterations=res.iterations, converged=res.converged, error_bound=error_bound,
                       finite=res.finite, right_vectors=right)
