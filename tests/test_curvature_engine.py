"""Input-Hessian eigenvalues by HVP + Lanczos (issue 13) against dense truths, float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robaudit.kinds import CurvatureMethod, CurvatureTarget
from robaudit.linalg import JacobianOperator, jacobian
from robaudit.linalg.hessian import (HessianOperator, HvpMode, classify_activations, second_order_radius,
                                     target_values, top_eigenvalues)
from robaudit.linalg.rng import keyed_normal
from robaudit.models import zoo

F64 = torch.float64


def softplus_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Softplus(beta=2.0), nn.Linear(10, 4)).double().eval()


def gelu_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.GELU(), nn.Conv2d(3, 4, 3, stride=2), nn.GELU(), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 5)).double().eval()


def relu_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 5),
                         nn.ReLU(), nn.Linear(5, 4)).double().eval()


SMOOTH = {"softplus_mlp": (softplus_mlp, (12,)), "gelu_cnn": (gelu_cnn, (1, 7, 7))}


def dense_hessians(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: CurvatureTarget) -> torch.Tensor:
    """(B, D, D) from torch.autograd.functional.hessian, one sample at a time (the truth)."""
    out = []
    for xi, yi in zip(x, y):
        other = None
        if target is CurvatureTarget.MARGIN:  # the runner-up is fixed at x, as in the operator
            z = model(xi[None]).detach()
            z[0, yi] = float("-inf")
            other = z.argmax(dim=1)

        def f(z, yi=yi, other=other):
            return target_values(model(z[None]), yi[None], target, other)[0]

        h = torch.autograd.functional.hessian(f, xi)
        out.append(h.reshape(xi.numel(), xi.numel()))
    return torch.stack(out)


def by_magnitude(values: torch.Tensor, k: int) -> torch.Tensor:
    return values.gather(1, values.abs().argsort(dim=1, descending=True)[:, :k])


def batch(shape, n=3, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, dtype=F64, generator=g), torch.randint(classes, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(SMOOTH))
@pytest.mark.parametrize("target", list(CurvatureTarget))
@pytest.mark.parametrize("mode", list(HvpMode))
def test_lanczos_matches_dense_hessian_on_smooth_nets(name, target, mode):
    build, shape = SMOOTH[name]
    model = build()
    x, y = batch(shape)
    truth = by_magnitude(torch.linalg.eigvalsh(dense_hessians(model, x, y, target)), 3)
    op = HessianOperator(model, x, y, target, mode=mode)
    res = top_eigenvalues(op, k=3, iters=60, tol=1e-10, init=keyed_normal(torch.arange(3), (op.dim,), dtype=F64))
    assert res.converged.all() and (res.error_bound <= 1e-10).all()
    torch.testing.assert_close(res.eigenvalues, truth, rtol=1e-4, atol=0)
    assert int(res.iterations.max()) == op.n_hvp  # the batch runs until its slowest sample stops
    assert ((res.eigenvalues - truth).abs() <= res.residual + 1e-12).all()  # the reported residual bounds the error
    ex = top_eigenvalues(HessianOperator(model, x, y, target, mode=mode), k=3, method=CurvatureMethod.EXACT)
    torch.testing.assert_close(ex.eigenvalues, truth, rtol=1e-9, atol=1e-12)


def test_relu_loss_hessian_is_softmax_curvature_and_margin_hessian_is_zero():
    model = relu_cnn()
    x, y = batch((1, 6, 6), n=4)
    assert classify_activations(model).piecewise_linear is True
    j = jacobian(JacobianOperator(model, x))                      # (B, C, D), exact
    p = torch.softmax(model(x), dim=1).detach()
    curv = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    expected = j.transpose(1, 2) @ curv @ j                        # Jᵀ(diag(p) − ppᵀ)J
    op = HessianOperator(model, x, y, CurvatureTarget.LOSS)
    torch.testing.assert_close(op.dense(), expected, rtol=1e-6, atol=1e-12)
    truth = by_magnitude(torch.linalg.eigvalsh(expected), 3)
    res = top_eigenvalues(HessianOperator(model, x, y, CurvatureTarget.LOSS), k=3, iters=36, tol=1e-10,
                          generator=torch.Generator().manual_seed(0))
    assert res.converged.all()
    torch.testing.assert_close(res.eigenvalues, truth, rtol=1e-6, atol=1e-12)
    assert (res.eigenvalues[:, 0] > 0).all()  # the softmax curvature is PSD
    margin = HessianOperator(model, x, y, CurvatureTarget.MARGIN)
    assert (margin.dense() == 0).all()
    res = top_eigenvalues(margin, k=2, generator=torch.Generator().manual_seed(0))
    assert (res.eigenvalues == 0).all() and res.converged.all()
    assert torch.isinf(second_order_radius(res.value, res.lambda_max)).all()


class Quadratic(nn.Module):
    """Logits (xᵀAx, 0): with label 0 the margin against class 1 is exactly xᵀAx."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x):
        q = torch.einsum("bi,ij,bj->b", x, self.a, x)
        return torch.stack([q, torch.zeros_like(q)], dim=1)


@pytest.mark.parametrize("method", list(CurvatureMethod))
def test_quadratic_model_gives_eigenvalues_of_a_plus_a_transpose(method):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(6, 6, dtype=F64, generator=g)  # not symmetric
    model = Quadratic(a).eval()
    x = torch.randn(3, 6, dtype=F64, generator=g)
    y = torch.zeros(3, dtype=torch.long)
    k = 1 if method is CurvatureMethod.POWER else 6
    res = top_eigenvalues(HessianOperator(model, x, y, CurvatureTarget.MARGIN), k=k, method=method, iters=2000,
                          tol=1e-12, generator=torch.Generator().manual_seed(5))
    truth = by_magnitude(torch.linalg.eigvalsh(a + a.T)[None], k).expand(3, -1)
    assert res.converged.all()
    torch.testing.assert_close(res.eigenvalues, truth, rtol=1e-9 if method is CurvatureMethod.POWER else 1e-12, atol=1e-12)
    assert (res.other == 1).all()
    margin = torch.einsum("bi,ij,bj->b", x, a, x)
    torch.testing.assert_close(res.value, margin, rtol=1e-12, atol=0)
    # ½ r² |λ_max| = |margin|
    r = second_order_radius(res.value, res.lambda_max)
    torch.testing.assert_close(0.5 * r.square() * res.lambda_max.abs(), margin.abs(), rtol=1e-12, atol=0)


def smooth_cnn() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softplus(), nn.Conv2d(4, 6, 3, stride=2), nn.SiLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 10)).double().eval()


def test_lanczos_needs_fewer_hvps_than_power_iteration():
    model = smooth_cnn()
    x, y = batch((1, 11, 11), n=4, classes=10, seed=7)
    truth = by_magnitude(torch.linalg.eigvalsh(HessianOperator(model, x, y).dense()), 1)[:, 0]
    init = keyed_normal(torch.arange(4), (121,), dtype=F64)

    def steps_to(method):
        trace: list[torch.Tensor] = []
        top_eigenvalues(HessianOperator(model, x, y), k=1, method=method, iters=300, tol=-1.0, init=init,
                        callback=lambda s, est: trace.append(est[:, 0].clone()))
        rel = torch.stack([(t - truth).abs() / truth.abs() for t in trace])  # (steps, B)
        hit = rel <= 1e-3
        assert hit.any(dim=0).all(), method
        return (hit.to(torch.int8).argmax(dim=0) + 1).tolist()  # first step within 1e-3

    power, lz = steps_to(CurvatureMethod.POWER), steps_to(CurvatureMethod.LANCZOS)
    print(f"HVPs to 1e-3 on a smooth CNN: power {power}, lanczos {lz}")
    assert sum(lz) < sum(power) and all(a <= b for a, b in zip(lz, power)), (lz, power)


def test_batch_invariance_with_keyed_starts():
    model = gelu_cnn()
    x, y = batch((1, 7, 7), n=5, classes=5, seed=8)
    keys = torch.arange(10, 15)

    def run(sl):
        op = HessianOperator(model, x[sl], y[sl])
        return top_eigenvalues(op, k=2, iters=40, tol=1e-8, init=keyed_normal(keys[sl], (op.dim,), dtype=F64))

    whole = run(slice(0, 5))
    parts = [run(slice(i, i + 2)) for i in range(0, 5, 2)]
    torch.testing.assert_close(torch.cat([p.eigenvalues for p in parts]), whole.eigenvalues, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.cat([p.iterations for p in parts]), whole.iterations)


def test_classify_activations():
    assert classify_activations(zoo.build("lenet")).piecewise_linear is True
    smooth = classify_activations(softplus_mlp())
    assert smooth.piecewise_linear is False and smooth.curved == ("Softplus",)

    class Odd(nn.Module):
        def forward(self, x):
            return torch.sin(x)

    odd = classify_activations(nn.Sequential(nn.Linear(3, 3), Odd()))
    assert odd.piecewise_linear is None and odd.unknown == ("Odd",)


def test_nonfinite_sample_is_flagged():
    class NanRow(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3).double()

        def forward(self, x):
            bad = (x[:, :1] > 0.5).to(x.dtype)
            return torch.nn.functional.softplus(self.lin(x)) * torch.sqrt(1 - 2 * bad)

    x = torch.rand(3, 4, dtype=F64) * 0.5
    x[1, 0] = 0.9
    res = top_eigenvalues(HessianOperator(NanRow(), x, torch.zeros(3, dtype=torch.long)), k=1, iters=10)
    assert res.finite.tolist() == [True, False, True]
    assert torch.isnan(res.eigenvalues[1]).all() and not bool(res.converged[1])


def test_float32_confident_samples_keep_their_curvature():
    # p_y ≈ 1 − 1e-4: in float32, p − e_y and p_y(1 − p_y) lose ~3 digits unless the target is
    # formed in float64 from the logits (float32 products then agree with float64 to ~1e-6).
    torch.manual_seed(9)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.Softplus(), nn.Linear(16, 5)).eval()
    with torch.no_grad():
        model[3].bias[0] += 10.0  # class 0 wins by ~10 logits: 1 − p_y ≈ 1e-4
    x = torch.rand(6, 20, generator=torch.Generator().manual_seed(10))
    y = model(x).argmax(dim=1)
    p = torch.softmax(model(x).double(), dim=1).max(dim=1).values
    assert (p > 1 - 1e-2).all() and (p < 1 - 1e-7).all()
    m64 = copy.deepcopy(model).double()
    truth = top_eigenvalues(HessianOperator(m64, x.double(), y), k=2, method=CurvatureMethod.EXACT).eigenvalues
    for method in (CurvatureMethod.EXACT, CurvatureMethod.LANCZOS):
        got = top_eigenvalues(HessianOperator(model, x, y), k=2, method=method, iters=20,
                              init=keyed_normal(torch.arange(6), (20,))).eigenvalues.double()
        rel = (got - truth).abs() / truth[:, :1].abs()
        assert (rel <= 1e-5).all(), (method, rel)
