"""Penalties on the weights alone (no extra pass over the batch).

Each costs one plain step plus work on the weight matrices, independent of the batch size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robaudit.regularizers.base import Regularizer

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of every Conv and Linear layer, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS)]


def singla_r(weight: torch.Tensor) -> torch.Tensor:
    """Singla & Feizi's reshape R: (c_out, c_in, h, w) → (c_out·h) × (c_in·w) (2019, Thm. 1)."""
    co, ci, kh, kw = weight.shape
    return weight.permute(0, 2, 1, 3).reshape(co * kh, ci * kw)


def layer_bound(module: nn.Module) -> torch.Tensor:
    """Singla & Feizi's differentiable per-layer bound: √(hw)‖R‖₂ for a 2-D conv, ‖W‖₂ for a linear layer.

    ‖·‖₂ is the exact top singular value (differentiable through the SVD); the
    matrices are small (LeNet's largest R is 80×30), so this costs about what one
    power iteration does in Python overhead.
    """
    w = module.weight
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"conv_bound: grouped convolutions are not supported (groups={module.groups})")
        kh, kw = w.shape[2:]
        return math.sqrt(kh * kw) * torch.linalg.matrix_norm(singla_r(w), ord=2)
    if isinstance(module, nn.Linear):
        return torch.linalg.matrix_norm(w, ord=2)
    raise ValueError(f"conv_bound: expected Conv2d or Linear, got {type(module).__name__}")


class WeightDecay(Regularizer):
    """½ Σ ‖W‖_F² over the Conv/Linear weights (Krogh & Hertz 1991); λ_WD = 5·10⁻⁴ (Hoffman et al. Sec. 3).

    Added to the loss (coupled L2), not decoupled in the optimiser. Cost: one plain step.
    """

    name = "weight_decay"
    default_lam = 5e-4
    reference = "Krogh & Hertz 1991; λ from Hoffman et al. 2019 Sec. 3"

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * sum(m.weight.square().sum() for _, m in weight_layers(model))


class ConvSpectralBound(Regularizer):
    """β Σ_layers u⁽ˡ⁾: √(hw)‖R‖₂ per conv layer, ‖W‖₂ per linear layer (Singla & Feizi 2019, eq. 2).

    The per-layer value is the R component of their Theorem 1 bound, as the
    paper regularises it; its dense truth is :func:`robaudit.bounds.fantastic_four`.
    Cost: one plain step plus one small SVD per layer. β = 1.4·10⁻³ (their best
    without weight decay, Table 3).
    """

    name = "conv_bound"
    default_lam = 1.4e-3
    reference = "Singla & Feizi 2019, Thm. 1 and eq. 2"

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(layer_bound(m) for _, m in weight_layers(model))


class GlobalSpectralNorm(Regularizer):
    """½ Σ_l σ(W_l)² with σ by one power iteration per step (Yoshida & Miyato 2017; Roth et al. eq. 6).

    Conv kernels are reshaped to c_out × (c_in·h·w), as Yoshida & Miyato do. The
    singular vectors persist between steps, so one iteration per step tracks σ;
    σ = uᵀWv with u, v constants, whose gradient is σ·u vᵀ (the paper's update).
    Cost: one plain step plus two matrix-vector products per layer.
    λ = 3·10⁻⁴, 1 iteration (Roth et al. Table 1).
    """

    name = "global_spectral"
    default_lam = 3e-4
    reference = "Yoshida & Miyato 2017; Roth et al. 2019 eq. 6"

    def __init__(self, *, n_iter: int = 1) -> None:
        if int(n_iter) != n_iter or n_iter < 1:
            raise ValueError(f"n_iter: expected an integer ≥ 1, got {n_iter!r}")
        self.n_iter = int(n_iter)
        self._u: dict[int, torch.Tensor] = {}  # id(weight) → left singular vector estimate

    def options(self) -> dict[str, object]:
        return {"n_iter": self.n_iter}

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """σ(W) estimate (differentiable w.r.t. W), advancing the stored vectors by ``n_iter`` steps."""
        mat = weight.reshape(weight.shape[0], -1)
        u = self._u.get(id(weight))
        if u is None or u.shape[0] != mat.shape[0]:
            u = torch.randn(mat.shape[0], dtype=mat.dtype, device=mat.device)
        with torch.no_grad():
            for _ in range(self.n_iter):
                v = mat.t() @ u
                v = v / v.norm().clamp_min(torch.finfo(mat.dtype).tiny)
                u = mat @ v
                u = u / u.norm().clamp_min(torch.finfo(mat.dtype).tiny)
        self._u[id(weight)] = u
        return u @ mat @ v

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * sum(self.sigma(m.weight).square() for _, m in weight_layers(model))
