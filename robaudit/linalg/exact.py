"""The exact per-sample Jacobian from C vector-Jacobian products, and its singular values.

Hoffman et al. 2019, eq. 6: row c of every Jᵢ is the gradient of output c, so
C backward passes over one retained forward graph give the whole batch of
Jacobians (B, C, D). σ then comes from the eigenvalues of JJᵀ (C×C) in float64
(or from ``svdvals``), and ‖J‖_F is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robaudit.linalg.products import JacobianOperator

# Bytes of Jacobian a single call may hold by default (callers chunk batches to stay below it).
DEFAULT_MEMORY_BUDGET = 512 * 2**20


@dataclass(frozen=True)
class ExactResult:
    """Exact singular values and Frobenius norms of a batch of Jacobians.

    Attributes:
        singular_values: (B, r) descending, r = min(C, D); NaN rows where J is not finite.
        frobenius: (B,) ‖Jᵢ‖_F (NaN/Inf where J is not finite).
        finite: (B,) bool, whether every entry of Jᵢ is finite.
        iterations: (B,) number of VJPs used (C for every sample).
        converged: (B,) bool, True where J is finite (the method is direct).
    """

    singular_values: torch.Tensor
    frobenius: torch.Tensor
    finite: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor

    @property
    def spectral(self) -> torch.Tensor:
        """(B,) σ_max."""
        return self.singular_values[:, 0]


def jacobian(op: JacobianOperator, *, classes_per_pass: int = 1) -> torch.Tensor:
    """All Jacobians of the batch, (B, C, D), from C VJPs over the retained graph.

    Args:
        op: the operator of the batch (its forward pass is reused).
        classes_per_pass: >1 batches that many output-basis vectors into one
            backward pass with ``is_grads_batched`` (vmap); falls back to one
            pass per class if the graph does not support it.

    Returns:
        J with J[i, c, :] = ∂ output_c / ∂ x_i (flattened input).
    """
    b, c, d = op.batch, op.num_outputs, op.dim
    out = torch.empty(b, c, d, dtype=op.x.dtype, device=op.x.device)
    eye = torch.eye(c, dtype=op.output.dtype, device=op.output.device)
    start = 0
    if classes_per_pass > 1:
        try:
            while start < c:
                stop = min(c, start + classes_per_pass)
                basis = eye[start:stop, None, :].expand(stop - start, b, c)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(op.output, op.x, grad_outputs=basis, retain_graph=True,
                                               is_grads_batched=True)
                op.n_vjp += stop - start
                out[:, start:stop] = g.reshape(stop - start, b, d).transpose(0, 1)
                start = stop
        except RuntimeError:
            pass  # vmap over this graph's backward is unsupported: finish one class at a time
    for k in range(start, c):
        out[:, k] = op.vjp(eye[k].expand(b, c))
    return out


def singular_values_of(jac: torch.Tensor, *, method: str = "gram") -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (B, min(C, D)) descending, and the finite mask (B,), computed in float64.

    Args:
        jac: (B, C, D).
        method: ``gram`` takes eigvalsh of the smaller Gram matrix (fast; small σ lose
            relative accuracy below ~1e-8·σ_max); ``svd`` uses ``svdvals`` (accurate).
    """
    b, c, d = jac.shape
    r = min(c, d)
    finite = torch.isfinite(jac).flatten(1).all(dim=1)
    sv = torch.full((b, r), float("nan"), dtype=torch.float64, device=jac.device)
    if finite.any():
        j = jac[finite].to(torch.float64)
        if method == "svd":
            vals = torch.linalg.svdvals(j)
        else:
            gram = j @ j.transpose(1, 2) if c <= d else j.transpose(1, 2) @ j
            vals = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).sqrt()
        sv[finite] = vals[:, :r]
    return sv, finite


def exact(op: JacobianOperator, *, method: str = "gram", classes_per_pass: int = 1) -> ExactResult:
    """Exact σ's and ‖J‖_F for the operator's batch (Hoffman et al. 2019, eq. 6).

    Returns:
        :class:`ExactResult`; values are float64.
    """
    jac = jacobian(op, classes_per_pass=classes_per_pass)
    sv, finite = singular_values_of(jac, method=method)
    frob = jac.to(torch.float64).flatten(1).norm(dim=1)
    b = op.batch
    return ExactResult(singular_values=sv, frobenius=frob, finite=finite,
                       iterations=torch.full((b,), op.num_outputs, dtype=torch.long, device=jac.device),
                       converged=finite.clone())


def batch_rows_for_budget(num_outputs: int, dim: int, itemsize: int, budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """How many samples' Jacobians (C×D each, plus float64 copies) fit in ``budget`` bytes (≥ 1)."""
    per_sample = num_outputs * dim * (itemsize + 8 * 2)
    return max(1, budget // max(per_sample, 1))


def right_singular(jac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full singular spectrum and right singular vectors of a batch of Jacobians, in float64.

    Args:
        jac: (B, C, D).

    Returns:
        (S, Vh, finite): S (B, r) descending, Vh (B, r, D) with rows the right singular
        vectors v_r (Roth et al. 2019, Sec. 5.2), finite (B,); NaN rows where J is not finite.
    """
    b, c, d = jac.shape
    r = min(c, d)
    finite = torch.isfinite(jac).flatten(1).all(dim=1)
    s = torch.full((b, r), float("nan"), dtype=torch.float64, device=jac.device)
    vh = torch.full((b, r, d), float("nan"), dtype=torch.float64, device=jac.device)
    if finite.any():
        _, sv, v = torch.linalg.svd(jac[finite].to(torch.float64), full_matrices=False)
        s[finite], vh[finite] = sv, v
    return s, vh, finite
