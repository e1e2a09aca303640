"""operator_norm (Lanczos through conv / conv_transpose) against dense truths, and its stopping rule.

Truths: dense SVD of unrolled layers (autograd Jacobian) and of explicit matrices with a prescribed spectrum;
invariants: the warm start is a top singular vector of the circular problem (‖Ax‖ = σ_circ exactly).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robaudit.bounds import conv, opnorm
from robaudit.bounds.geometry import ConvGeometry

from test_bounds_conv import CASES, dense_sigma

F64 = torch.float64


def matrix_with_spectrum(sigmas: list[float], n: int, seed: int) -> torch.Tensor:
    """U diag(σ) Vᵀ with random orthogonal U, V (n × n)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=gen))
    s = torch.zeros(n, dtype=F64)
    s[: len(sigmas)] = torch.tensor(sigmas, dtype=F64)
    s[len(sigmas):] = torch.linspace(0.5, 0.01, n - len(sigmas), dtype=F64)
    return u @ torch.diag(s) @ v.T


def step_change_power(w: torch.Tensor, tol: float, iters: int = 10_000, seed: int = 0) -> tuple[float, int]:
    """Plain power iteration on WᵀW stopped when σ changes by less than tol (the rule robaudit dropped)."""
    v = torch.randn(w.shape[1], dtype=F64, generator=torch.Generator().manual_seed(seed))
    v = v / v.norm()
    prev = 0.0
    for it in range(1, iters + 1):
        y = w.T @ (w @ v)
        sigma = math.sqrt(float(v @ y))
        v = y / y.norm()
        if it > 1 and abs(sigma - prev) <= tol * sigma:
            return sigma, it
        prev = sigma
    return sigma, iters


@pytest.mark.parametrize("gap", [0.99, 0.999])
def test_close_top_singular_values_converge_honestly(gap):
    w = matrix_with_spectrum([1.0, gap, 0.9 * gap], 60, seed=int(gap * 1000))
    truth = float(torch.linalg.svdvals(w)[0])
    tol = 1e-8
    fooled, _ = step_change_power(w, tol)
    assert truth - fooled > 10 * tol * truth  # the step-change rule stops early and calls it converged
    (est,) = opnorm.operator_norms([opnorm.LinearMap(w)], iters=300, tol=tol, restart=8)
    assert est.converged and est.residual <= tol
    assert est.value <= truth * (1 + 1e-13)  # a Rayleigh quotient: a lower bound
    assert truth - est.value <= max(est.error_bound, 1e-14) * est.value  # "converged" means within the bound
    (short,) = opnorm.operator_norms([opnorm.LinearMap(w)], iters=4, tol=tol, restart=8)
    assert not short.converged and short.iterations == 4
    assert truth - short.value <= short.error_bound * short.value  # the bound stays honest when not converged


def test_close_singular_values_on_a_convolution():
    # a 1×1 conv is I ⊗ W: its top singular values are those of W (each repeated per pixel)
    w = matrix_with_spectrum([1.0, 0.999], 12, seed=3).float().reshape(12, 12, 1, 1)
    layer = nn.Conv2d(12, 12, 1, bias=False)
    layer.weight.data.copy_(w)
    b = conv.conv_bounds(layer, (12, 5, 5), dtype=torch.float32)
    truth = float(torch.linalg.svdvals(w.double().reshape(12, 12))[0])
    assert b.converged and b.operator_norm == pytest.approx(truth, rel=1e-5)
    assert b.upper >= truth


@pytest.fixture(scope="module", params=sorted(CASES))
def case32(request):
    build, shape = CASES[request.param]
    module = build()
    b = conv.conv_bounds(module.float(), shape, dtype=torch.float32, iters=200)
    return request.param, b, dense_sigma(module.double(), shape)


def test_float32_operator_norm_and_upper_bounds_against_dense(case32):
    name, b, exact = case32
    assert b.converged and b.error_bound <= 1e-5, name
    assert b.operator_norm == pytest.approx(exact, rel=1e-5), name
    for key in ("circular_upper", "singla_bound", "gram_bound", "strided_exact", "upper"):
        value = getattr(b, key)
        if value is not None:  # float32 arithmetic, yet every certified upper bound dominates the float64 truth
            assert value >= exact, (name, key)
    assert b.circular_exact >= exact * (1 - 1e-5)  # the computed circular value itself: exact up to rounding


def test_layers_of_one_shape_batch_into_one_grouped_call():
    torch.manual_seed(4)
    layers = [nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=False).double() for _ in range(3)]
    shape = (4, 7, 7)
    maps = [opnorm.ConvMap(m.weight.detach(), ConvGeometry.of(m, shape), shape) for m in layers]
    batched = opnorm.operator_norms(maps, iters=300, tol=1e-11)
    for m, est in zip(layers, batched):
        (alone,) = opnorm.operator_norms([opnorm.ConvMap(m.weight.detach(), ConvGeometry.of(m, shape), shape)],
                                         iters=300, tol=1e-11)
        assert est.value == pytest.approx(alone.value, rel=1e-9)
        assert est.value == pytest.approx(dense_sigma(m, shape), rel=1e-9)


@pytest.mark.parametrize("build", [
    lambda: nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular"),
    lambda: nn.Conv2d(6, 2, 3, padding=2, dilation=2, padding_mode="circular", groups=2),
    lambda: nn.Conv1d(3, 4, 5, padding=2, padding_mode="circular"),
    lambda: nn.Conv2d(3, 4, 3, padding=1, stride=2, padding_mode="circular"),
    lambda: nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),  # square: output-side Gram blocks
    lambda: nn.Conv2d(5, 3, 3, padding=1, padding_mode="circular"),  # c_out < c_in
])
def test_warm_start_is_a_top_singular_vector_of_circular_layers(build):
    torch.manual_seed(7)
    module = build().double()
    shape = (module.in_channels,) + ((8, 8) if isinstance(module, nn.Conv2d) else (12,))
    w = module.weight.detach()
    geom = ConvGeometry.of(module, shape)
    circ = conv.circular(w, geom)
    x = conv.warm_start(w, geom, circ)
    assert x.shape == shape and float(x.norm()) == pytest.approx(1.0, rel=1e-12)
    y = module._conv_forward(x.unsqueeze(0), w, None)
    target = circ.strided.upper if circ.strided else circ.exact
    assert float(y.norm()) == pytest.approx(target, rel=1e-8)  # the layer *is* the circular one here
    assert float(y.norm()) == pytest.approx(dense_sigma(module, shape), rel=1e-8)


def test_adjoint_is_the_transpose_for_every_geometry():
    gen = torch.Generator().manual_seed(2)
    for name, (build, shape) in sorted(CASES.items()):
        module = build()
        w = module.weight.detach()
        m = opnorm.ConvMap(w, ConvGeometry.of(module, shape), shape)
        x = torch.randn(1, *shape, dtype=F64, generator=gen)
        y = m.forward(x, w, module.groups)
        z = torch.randn(y.shape, dtype=F64, generator=gen)
        assert y.shape == module._conv_forward(x, w, None).shape, name
        assert torch.allclose(y, module._conv_forward(x, w, None), atol=1e-12), name
        lhs, rhs = float((y * z).sum()), float((x * m.adjoint(z, w, module.groups)).sum())
        assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12), name
