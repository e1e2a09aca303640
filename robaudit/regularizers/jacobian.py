"""Penalties on the input–logit Jacobian J(xᵢ) of each training sample.

Costs are per training step, in passes over the batch (F = forward, B = backward;
a JVP costs about one F, a graph-keeping VJP about one B, and backpropagating
through a product about doubles it).
"""

from __future__ import annotations

import torch
from torch import nn

from robaudit.linalg.hutchinson import hutchinson
from robaudit.linalg.lanczos import Which, lanczos
from robaudit.linalg.power import power_iteration, power_method
from robaudit.linalg.products import JacobianOperator
from robaudit.regularizers.base import JacobianRegularizer


def _positive_int(value: int, what: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{what}: expected an integer ≥ 1, got {value!r}")
    return int(value)


class JacobianFrobenius(JacobianRegularizer):
    """½·mean ‖J(xᵢ)‖_F² (Hoffman et al. 2019, eq. 5; random projections eq. 7–8, Alg. 1).

    Random mode: ``n_proj`` unit probes v in logit space, C·‖vᵀJ‖² each (unbiased);
    cost 1 F + n_proj graph-keeping VJPs (paper default n_proj = 1).
    Exact mode: the C rows of J (eq. 6), C graph-keeping VJPs.
    λ_JR = 0.01 (Hoffman et al. Sec. 3, LeNet' on MNIST).
    """

    name = "jacobian_frobenius"
    default_lam = 0.01
    reference = "Hoffman et al. 2019, eq. 5 and 8"

    def __init__(self, *, n_proj: int = 1, exact: bool = False) -> None:
        self.n_proj = _positive_int(n_proj, "n_proj")
        self.exact = bool(exact)

    def options(self) -> dict[str, object]:
        return {"n_proj": self.n_proj, "exact": self.exact}

    def frobenius_sq(self, op: JacobianOperator) -> torch.Tensor:
        """(B,) ‖Jᵢ‖_F², exact or estimated, with the graph kept."""
        if self.exact:
            eye = torch.eye(op.num_outputs, dtype=op.x.dtype, device=op.x.device)
            return sum(op.vjp(eye[k].expand(op.batch, -1)).square().sum(dim=1) for k in range(op.num_outputs))
        return hutchinson(op, n_proj=self.n_proj, differentiable=True).frobenius_sq.to(op.x.dtype)

    def jacobian_penalty(self, op: JacobianOperator, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.frobenius_sq(op).mean()


class JacobianSpectral(JacobianRegularizer):
    """mean σ_max(J(xᵢ)) by power iteration on JᵀJ (Johansson et al. 2022, eq. 6, Alg. 1).

    Each iteration is one JVP (forward mode) and one VJP, both keeping the graph,
    and the loss backpropagates through them: with ``n_iter`` = 1 (the paper's
    choice) a step costs about 1 F + 1 JVP + 1 VJP and their backward. The
    estimate ‖JᵀJv‖/‖Jv‖ is a lower bound on σ_max. BatchNorm in pseudo-inference
    mode (Sec. 3.2). λ: the paper searched {1e-4, …, 1e-1}; see the zoo README for ours.
    """

    name = "jacobian_spectral"
    default_lam = 0.01
    reference = "Johansson et al. 2022, eq. 6 and Alg. 1"

    def __init__(self, *, n_iter: int = 1) -> None:
        self.n_iter = _positive_int(n_iter, "n_iter")

    def options(self) -> dict[str, object]:
        return {"n_iter": self.n_iter}

    def jacobian_penalty(self, op: JacobianOperator, y: torch.Tensor) -> torch.Tensor:
        # tol = 0: run exactly n_iter steps (the paper's fixed budget), never stop early
        res = power_iteration(op, iters=self.n_iter, tol=0.0, differentiable=True)
        return res.sigma.mean()


class JacobianSpectralLanczos(JacobianRegularizer):
    """mean σ_max(J(xᵢ)) with the top eigenvector of JJᵀ from batched Lanczos (Cui et al. 2022, Sec. 3.1, Alg. 1).

    As in the paper, Lanczos finds the unit top eigenvector u of JJᵀ (C×C) without
    a graph (``n_iter`` steps, one JVP + one VJP each), then the loss is ‖Jᵀu‖ = σ_max,
    one graph-keeping VJP: cost 1 F + n_iter (JVP + VJP) + 1 VJP and its backward.
    ``full_graph=True`` backpropagates through every Lanczos step instead
    (:func:`robaudit.linalg.top_singular` with ``differentiable=True``). Cui et al.
    start at 2 iterations and double at each learning-rate decay; we have no decays
    and use a fixed ``n_iter`` = 4.
    """

    name = "jacobian_spectral_lanczos"
    default_lam = 0.01
    reference = "Cui et al. 2022, Sec. 3.1 and Alg. 1"

    def __init__(self, *, n_iter: int = 4, full_graph: bool = False) -> None:
        self.n_iter = _positive_int(n_iter, "n_iter")
        self.full_graph = bool(full_graph)

    def options(self) -> dict[str, object]:
        return {"n_iter": self.n_iter, "full_graph": self.full_graph}

    def jacobian_penalty(self, op: JacobianOperator, y: torch.Tensor) -> torch.Tensor:
        if self.full_graph:
            from robaudit.linalg.lanczos import top_singular

            return top_singular(op, k=1, iters=self.n_iter, tol=0.0, differentiable=True).spectral.mean()

        def gram(u: torch.Tensor) -> torch.Tensor:  # JJᵀu without a graph: u is a search direction
            return op.jvp(op.vjp(u, keep_graph=False), keep_graph=False)

        init = torch.randn(op.batch, op.num_outputs, dtype=op.x.dtype, device=op.x.device)
        res = lanczos(gram, init, k=1, iters=self.n_iter, tol=0.0, which=Which.LARGEST, return_vectors=True)
        u = res.vectors[:, 0].detach()
        return op.vjp(u).norm(dim=1).mean()


class DataDependentSpectral(JacobianRegularizer):
    """½·mean ‖f(xᵢ + ε vᵢ) − f(xᵢ)‖² with vᵢ the top right singular vector of J(xᵢ) (Roth et al. 2019, eq. 7 and 9).

    vᵢ comes from ``n_iter`` steps of power iteration on JᵀJ without a graph
    (eq. 7) and is then a constant; the loss needs one extra forward pass at
    x + εv. Cost: 2 F + n_iter (JVP + VJP) and one backward through both forwards.
    Defaults from Roth et al. Table (CIFAR-10): λ = 2·10⁻², ε = 1.75 (ℓ2, pixels
    in [0,1]), n_iter = 10.
    """

    name = "data_dependent_spectral"
    default_lam = 2e-2
    reference = "Roth et al. 2019, eq. 9"

    def __init__(self, *, eps: float = 1.75, n_iter: int = 10) -> None:
        if not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        self.eps = float(eps)
        self.n_iter = _positive_int(n_iter, "n_iter")

    def options(self) -> dict[str, object]:
        return {"eps": self.eps, "n_iter": self.n_iter}

    def direction(self, op: JacobianOperator) -> torch.Tensor:
        """(B, *input) unit top right singular vectors of each Jᵢ (no graph)."""
        def normal(v: torch.Tensor) -> torch.Tensor:
            return op.vjp(op.jvp(v, keep_graph=False), keep_graph=False)

        init = torch.randn(op.batch, op.dim, dtype=op.x.dtype, device=op.x.device)
        eig = power_method(normal, init, iters=self.n_iter, tol=0.0)
        return eig.vector.detach().reshape(op.batch, *op.input_shape)

    def _value(self, model: nn.Module, x: torch.Tensor, fx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(x + self.eps * v) - fx).square().sum(dim=1).mean()

    def jacobian_penalty(self, op: JacobianOperator, y: torch.Tensor) -> torch.Tensor:
        return self._value(op.model, op.x.detach(), op.output_with_graph, self.direction(op))
