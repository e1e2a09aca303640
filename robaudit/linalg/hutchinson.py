"""Random-projection estimate of ‖J‖_F with its standard error (Hoffman et al. 2019, eq. 7–8, App. B).

For v uniform on the unit sphere of the output space, E[C·‖vᵀJ‖²] = ‖J‖_F².
Averaging n such projections (one VJP each) gives an unbiased estimate of
‖J‖_F²; the spread of the n terms gives its standard error.

``differentiable=True`` (with ``JacobianOperator(..., create_graph=True)``) keeps
the graph, so ``frobenius_sq`` is Hoffman et al.'s training loss (eq. 8): it
backpropagates to the parameters. The default detaches every projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robaudit.linalg.products import JacobianOperator


@dataclass(frozen=True)
class HutchinsonResult:
    """Frobenius estimates per sample.

    Attributes:
        frobenius_sq: (B,) unbiased estimate of ‖J‖_F².
        stderr_sq: (B,) standard error of ``frobenius_sq`` (sample std / √n).
        frobenius: (B,) √frobenius_sq.
        stderr: (B,) standard error of ``frobenius`` by the delta method (stderr_sq / 2‖J‖_F).
        n_proj: number of projections per sample.
        finite: (B,) whether every projection was finite.
    """

    frobenius_sq: torch.Tensor
    stderr_sq: torch.Tensor
    frobenius: torch.Tensor
    stderr: torch.Tensor
    n_proj: int
    finite: torch.Tensor


def hutchinson(op: JacobianOperator, *, n_proj: int = 8, probes: torch.Tensor | None = None,
               generator: torch.Generator | None = None, differentiable: bool = False) -> HutchinsonResult:
    """‖Jᵢ‖_F by random projections in output space.

    Args:
        op: the batch's Jacobian operator.
        n_proj: projections per sample (≥ 2, for a standard error).
        probes: (B, n_proj, C) unit vectors to use instead of random ones.
        generator: for the random probes.
        differentiable: keep the autograd graph (the operator must be built with ``create_graph=True``).

    Returns:
        :class:`HutchinsonResult`.
    """
    if differentiable and not getattr(op, "create_graph", False):
        raise ValueError("hutchinson(differentiable=True) needs JacobianOperator(..., create_graph=True)")
    b, c = op.batch, op.num_outputs
    dtype, device = op.x.dtype, op.x.device
    if probes is None:
        z = torch.randn(b, n_proj, c, dtype=dtype, device=device, generator=generator)
        probes = z / z.norm(dim=2, keepdim=True)
    n_proj = int(probes.shape[1])
    terms = torch.stack([c * op.vjp(probes[:, k].to(dtype)).to(torch.float64).square().sum(dim=1)
                         for k in range(n_proj)], dim=1)  # (B, n) each an unbiased estimate of ‖J‖_F²
    if not differentiable:
        terms = terms.detach()
    finite = torch.isfinite(terms).all(dim=1)
    est = terms.mean(dim=1)
    # the standard error is a diagnostic: no gradient flows through it
    se = terms.detach().std(dim=1, correction=1) / n_proj ** 0.5 if n_proj > 1 else torch.full_like(est, float("nan"))
    frob = est.clamp_min(0).sqrt()
    se_frob = torch.where(frob > 0, se / (2 * frob), se.sqrt())
    nan = torch.full_like(est, float("nan"))
    return HutchinsonResult(frobenius_sq=torch.where(finite, est, nan), stderr_sq=torch.where(finite, se, nan),
                            frobenius=torch.where(finite, frob, nan), stderr=torch.where(finite, se_frob, nan),
                            n_proj=n_proj, finite=finite)
