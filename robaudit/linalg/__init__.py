"""Model-agnostic numerics for per-sample Jacobians and input Hessians: products, exact, power, Lanczos,
Hutchinson, Hessian-vector products.

Usage as a library::

    from robaudit.linalg import JacobianOperator, exact, power_iteration, top_singular, hutchinson, sigma_max

    op = JacobianOperator(model, x)            # one forward pass, (B, C) outputs
    res = exact(op)                            # res.spectral, res.frobenius, res.singular_values
    sig = sigma_max(model, x)                  # (B,) exact σ_max of the logit Jacobians
    hop = HessianOperator(model, x, y, "margin")  # input Hessians of z_y − z_t, by HVPs
    top_eigenvalues(hop, k=3).eigenvalues         # (B, 3), largest |λ| first, with sign

    # training: keep the graph, so a loss on σ backpropagates to the parameters
    op = JacobianOperator(model, x, create_graph=True)
    loss = power_iteration(op, iters=1, differentiable=True).sigma.square().mean()

Every solver returns a small frozen dataclass of tensors saying what it
converged to and how: iterations, a ``converged`` flag that means the
residual-based ``error_bound`` is within the tolerance, and the bound itself.
The one default tolerance is :func:`default_tol` (1e-10 in float64, 1e-5 otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robaudit.errors import ModelLoadError
from robaudit.kinds import EXACT_MAX_CLASSES
from robaudit.linalg.exact import (ExactResult, batch_rows_for_budget, exact, jacobian, right_singular,
                                    singular_values_of)
from robaudit.linalg.hessian import CurvatureResult, HessianOperator, HvpMode, classify_activations, top_eigenvalues
from robaudit.linalg.hutchinson import HutchinsonResult, hutchinson
from robaudit.linalg.lanczos import LanczosResult, TopSingular, Which, lanczos, top_singular
from robaudit.linalg.power import EigenPower, PowerResult, power_iteration, power_method
from robaudit.linalg.products import JacobianOperator, JvpMode, Target, apply_target, eval_mode
from robaudit.linalg.tol import default_tol

# EXACT_MAX_CLASSES (largest C for which the exact Jacobian is the default) lives in robaudit.kinds (torch-free).
# Samples per Lanczos batch in sigma_max (bounds the retained graph and the Lanczos basis).
LANCZOS_ROWS = 32
# Samples per exact batch in sigma_max (bounds the retained forward graph).
EXACT_ROWS = 512


def sigma_max(model: nn.Module, x: torch.Tensor, *, target: Target | str = Target.LOGITS,
              tol: float | None = None, max_iters: int = 300) -> torch.Tensor:
    """Per-sample σ_max of the Jacobian of ``model`` at each row of ``x``.

    Exact (C VJPs, then eigvalsh of JJᵀ) when C ≤ 64, otherwise Lanczos to
    relative tolerance ``tol``. The model is put in eval mode for the call and
    its modes are restored afterwards.

    Args:
        model: (B, *input) → logits (B, C).
        x: (B, *input) inputs.
        target: logits | probs | logprobs.
        tol: Lanczos tolerance (default 1e-10 in float64, 1e-5 in float32).
        max_iters: Lanczos step cap.

    Returns:
        (B,) σ_max in x's dtype (NaN where the Jacobian is not finite).
    """
    if x.shape[0] == 0:
        return torch.empty(0, dtype=x.dtype, device=x.device)
    out = []
    with eval_mode(model):
        with torch.no_grad():  # C from one row, so the chunk size is known before any graph is built
            probe = model(x[:1])
        if probe.dim() != 2:
            raise ModelLoadError(f"model output must be logits of shape (N, C); got shape {tuple(probe.shape)}")
        c, d = int(probe.shape[1]), math.prod(x.shape[1:])
        if c <= EXACT_MAX_CLASSES:
            chunk = min(EXACT_ROWS, batch_rows_for_budget(c, d, x.element_size()))
        else:
            chunk = LANCZOS_ROWS
        for start in range(0, x.shape[0], chunk):
            op = JacobianOperator(model, x[start: start + chunk], target=target)
            if c <= EXACT_MAX_CLASSES:
                sig = exact(op).spectral
            else:
                sig = top_singular(op, k=1, iters=max_iters, tol=tol).spectral
            op.release()
            out.append(sig.to(x.dtype))
    return torch.cat(out)


__all__ = [
    "JacobianOperator", "JvpMode", "Target", "apply_target", "eval_mode",
    "ExactResult", "exact", "jacobian", "singular_values_of", "right_singular", "batch_rows_for_budget",
    "EigenPower", "PowerResult", "power_method", "power_iteration",
    "LanczosResult", "TopSingular", "Which", "lanczos", "top_singular",
    "HutchinsonResult", "hutchinson",
    "HessianOperator", "HvpMode", "CurvatureResult", "top_eigenvalues", "classify_activations",
    "sigma_max", "default_tol", "EXACT_MAX_CLASSES",
]
