"""Invariants: batch size and sample order, NaN reporting, model state, forward-mode fallback, Hutchinson statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.errors import ModelLoadError
from robaudit.linalg import JacobianOperator, exact, hutchinson, sigma_max
from robaudit.linalg.norms import jacobian_norms
from robaudit.linalg.products import _NO_FORWARD_MODE
from test_linalg_models import BatchNormCNN, build, dense_jacobians


def _norms(model, x, keys, method, **kw):
    return jacobian_norms(JacobianOperator(model, x), method=method, keys=keys, **kw)


@pytest.mark.parametrize("method,frob", [("exact", "exact"), ("power", "hutchinson"), ("lanczos", "hutchinson")])
def test_batch_size_and_order_invariance(method, frob):
    model, _ = build("maxpool")
    torch.manual_seed(5)
    x = torch.rand(9, 1, 10, 10, dtype=torch.float64)
    keys = torch.arange(100, 109)
    kw = dict(frobenius=frob, k=1, iters=40, tol=1e-6, n_proj=6, seed=3)
    whole = _norms(model, x, keys, method, **kw)
    # in batches of 2 (the last one of 1)
    parts = [_norms(model, x[i:i + 2], keys[i:i + 2], method, **kw) for i in range(0, 9, 2)]
    for field in ("spectral", "frobenius", "frobenius_stderr"):
        torch.testing.assert_close(torch.cat([getattr(p, field) for p in parts]), getattr(whole, field),
                                   rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.cat([p.iterations for p in parts]), whole.iterations)
    perm = torch.randperm(9)
    shuffled = _norms(model, x[perm], keys[perm], method, **kw)
    for field in ("spectral", "frobenius", "stable_rank"):
        torch.testing.assert_close(getattr(shuffled, field), getattr(whole, field)[perm], rtol=1e-9, atol=1e-12)


class NanOnNegativeFirstPixel(nn.Module):
    """Linear model whose output is NaN for samples with x[0] > 0.5 (a bad input row)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3).double()

    def forward(self, x):
        out = self.lin(x)
        bad = (x[:, :1] > 0.5).to(x.dtype)
        return out * torch.sqrt(1 - 2 * bad)  # sqrt(-1) = NaN on bad rows


@pytest.mark.parametrize("method", ["exact", "power", "lanczos"])
def test_nonfinite_jacobian_is_reported_per_sample(method):
    torch.manual_seed(0)
    model = NanOnNegativeFirstPixel()
    x = torch.rand(5, 4, dtype=torch.float64) * 0.5
    x[2, 0] = 0.9
    res = _norms(model, x, torch.arange(5), method, frobenius="exact", k=1, iters=50, tol=1e-10)
    assert res.finite.tolist() == [True, True, False, True, True]
    assert torch.isnan(res.spectral[2]) and torch.isnan(res.frobenius[2])
    good = torch.tensor([0, 1, 3, 4])
    w = model.lin.weight.detach()
    torch.testing.assert_close(res.spectral[good], torch.linalg.matrix_norm(w, 2).expand(4), rtol=1e-6, atol=0)
    assert not res.converged[2]


def test_model_state_restored_after_sigma_max():
    model = BatchNormCNN().double().train()
    model.conv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 10, 10, dtype=torch.float64)
    sig = sigma_max(model, x)
    assert model.training and model.bn.training
    assert not model.conv.weight.requires_grad and model.fc.weight.requires_grad
    for k, v in model.state_dict().items():  # eval mode was used: running stats untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    model.eval()
    dense = dense_jacobians(model, x)
    torch.testing.assert_close(sig, torch.linalg.svdvals(dense)[:, 0], rtol=1e-8, atol=0)
    assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in model.modules())


def test_model_mode_restored_after_failure():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(x)[:, :, None]  # 3-D output: not logits

    model = Broken().train()
    with pytest.raises(ModelLoadError, match=r"\(N, C\)"):
        sigma_max(model, torch.rand(4, 3))
    assert model.training and model.bn.training


class _NoForwardAD(torch.autograd.Function):
    """tanh with a backward formula but no forward-mode (jvp) formula, like some converted ops."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class NoForwardModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5).double()
        self.b = nn.Linear(5, 4).double()

    def forward(self, x):
        return self.b(_NoForwardAD.apply(self.a(x)))


def test_forward_mode_failure_falls_back_to_double_backward_once():
    torch.manual_seed(0)
    model = NoForwardModel()
    x = torch.rand(3, 6, dtype=torch.float64)
    op = JacobianOperator(model, x)
    v = torch.randn(3, 6, dtype=torch.float64)
    dense = dense_jacobians(model, x)
    torch.testing.assert_close(op.jvp(v), torch.einsum("bcd,bd->bc", dense, v), rtol=1e-10, atol=1e-12)
    assert op.mode.value == "double_backward"
    assert model in _NO_FORWARD_MODE
    assert JacobianOperator(model, x).mode.value == "double_backward"  # detected once, remembered
    res = jacobian_norms(JacobianOperator(model, x), method="power", frobenius="exact", iters=500, tol=1e-12)
    torch.testing.assert_close(res.spectral, torch.linalg.svdvals(dense)[:, 0], rtol=1e-4, atol=0)


def test_hutchinson_mean_over_seeds_within_three_standard_errors():
    # 400 independent runs of the estimator on one sample (replicated rows get independent probes).
    model, x = build("lenet")
    runs = 400
    xs = x[:1].expand(runs, *x.shape[1:]).contiguous()
    exact_sq = exact(JacobianOperator(model, x[:1])).frobenius[0] ** 2
    hu = hutchinson(JacobianOperator(model, xs), n_proj=4, generator=torch.Generator().manual_seed(0))
    mean = hu.frobenius_sq.mean()
    se_of_mean = hu.frobenius_sq.std() / runs ** 0.5
    assert (mean - exact_sq).abs() <= 3 * se_of_mean, (float(mean), float(exact_sq), float(se_of_mean))
    # the reported per-run standard error matches the spread across runs
    ratio = hu.stderr_sq.pow(2).mean().sqrt() / hu.frobenius_sq.std()
    assert 0.75 < float(ratio) < 1.33, float(ratio)
