"""Differentiable power iteration and Lanczos (issue 14 §1): ∂σ_max/∂θ against finite differences, float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.linalg import JacobianOperator, power_iteration, top_singular

F64 = torch.float64


def smooth_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Softplus(), nn.Linear(5, 4)).double().eval()


def dense_sigma_max(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σᵢ σ_max(Jᵢ) from the dense Jacobian of every sample (the truth)."""
    total = torch.zeros((), dtype=F64)
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi)
        total = total + torch.linalg.svdvals(jac)[0]
    return total


def solve(method: str, model: nn.Module, x: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    op = JacobianOperator(model, x, create_graph=True)
    if method == "power":
        res = power_iteration(op, iters=3000, tol=1e-12, init=init, differentiable=True)
        assert res.converged.all()
        return res.sigma
    res = top_singular(op, k=1, iters=4, tol=1e-12, init=init[:, :4], differentiable=True)
    return res.sigma[:, 0]


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_gradient_of_sigma_max_matches_finite_differences(method):
    model = smooth_net()
    x = torch.rand(3, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    init = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    sigma = solve(method, model, x, init)
    torch.testing.assert_close(sigma.sum(), dense_sigma_max(model, x), rtol=1e-10, atol=0)
    params = list(model.parameters())
    grads = torch.autograd.grad(sigma.sum(), params, allow_unused=True)  # the last bias does not enter J
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    gen = torch.Generator().manual_seed(3)
    h = 1e-6
    checked = 0
    for p, g in zip(params, grads):
        for _ in range(2):  # two random entries of every parameter tensor
            i = int(torch.randint(p.numel(), (1,), generator=gen))
            flat = p.data.view(-1)
            orig = float(flat[i])
            flat[i] = orig + h
            up = float(dense_sigma_max(model, x))
            flat[i] = orig - h
            down = float(dense_sigma_max(model, x))
            flat[i] = orig
            fd = (up - down) / (2 * h)
            assert abs(float(g.view(-1)[i]) - fd) <= 1e-6 * max(1.0, abs(fd)), (method, p.shape, i, float(g.view(-1)[i]), fd)
            checked += 1
    assert checked == 2 * len(params)


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_measurement_mode_keeps_no_graph(method):
    model = smooth_net()
    x = torch.rand(2, 6, dtype=F64)
    op = JacobianOperator(model, x, create_graph=True)
    res = power_iteration(op, iters=50) if method == "power" else top_singular(op, k=1, iters=4)
    assert not res.sigma.requires_grad
    with pytest.raises(ValueError, match="create_graph=True"):
        if method == "power":
            power_iteration(JacobianOperator(model, x), differentiable=True)
        else:
            top_singular(JacobianOperator(model, x), differentiable=True)
