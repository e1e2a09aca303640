""""converged" means the error is within the tolerance (issue 10 §6).

Linear models with a chosen spectrum (σ₂/σ₁ = 0.99 and 0.999), where a small
change between steps does not mean a small error: every test checks the
reported bound against the closed-form σ_max, and shows that the step-change
rule would have stopped early with an error above the tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.kinds import EXACT_MAX_CLASSES as KINDS_EXACT_MAX_CLASSES
from robaudit import linalg
from robaudit.linalg import JacobianOperator, Which
from robaudit.linalg.norms import jacobian_norms

TOL = 1e-5
F64 = torch.float64


def linear_with_spectrum(sv: list[float], c: int, d: int, seed: int = 0) -> nn.Module:
    """A bias-free linear model whose weight (= Jacobian everywhere) has singular values ``sv``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    s = torch.zeros(c, d, dtype=F64)
    s[range(len(sv)), range(len(sv))] = torch.tensor(sv, dtype=F64)
    model = nn.Linear(d, c, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(u @ s @ v.T)
    return model


def spectrum(ratio: float, c: int) -> list[float]:
    return [1.0, ratio] + torch.linspace(0.9, 0.05, c - 2).tolist()


def step_change_stop(trace: list[torch.Tensor], i: int, tol: float) -> int:
    """Index of the first step where the old rule |σₜ − σₜ₋₁| ≤ tol·σₜ would have stopped sample i."""
    return next(s for s in range(1, len(trace)) if abs(float(trace[s][i] - trace[s - 1][i])) <= tol * float(trace[s][i]))


@pytest.mark.parametrize("ratio", [0.99, 0.999])
def test_power_iteration_stops_on_residual_not_step_change(ratio):
    model = linear_with_spectrum(spectrum(ratio, 12), c=12, d=16)
    x = torch.rand(2, 16, dtype=F64)
    trace: list[torch.Tensor] = []
    pw = linalg.power_iteration(JacobianOperator(model, x), iters=20000, tol=TOL,
                                generator=torch.Generator().manual_seed(1),
                                callback=lambda step, est: trace.append(est.clone()))
    err = 1.0 - pw.sigma  # σ_max = 1; the estimate is a lower bound
    assert pw.converged.all()
    assert (err >= -1e-12).all()
    assert (err <= pw.error_bound).all(), (err, pw.error_bound)  # the reported bound holds
    assert (pw.error_bound <= TOL).all()                           # and is within the tolerance
    assert (pw.residual <= TOL).all()
    for i in range(2):  # the old rule stops where the error is still far above the tolerance
        stop = step_change_stop(trace, i, TOL)
        assert 1.0 - float(trace[stop][i]) > 10 * TOL


def test_power_iteration_bound_holds_when_not_converged():
    model = linear_with_spectrum(spectrum(0.999, 12), c=12, d=16)
    x = torch.rand(3, 16, dtype=F64)
    pw = linalg.power_iteration(JacobianOperator(model, x), iters=60, tol=TOL, generator=torch.Generator().manual_seed(2))
    assert not pw.converged.any()
    assert (pw.iterations == 60).all()
    assert (pw.error_bound > TOL).all()
    # Before convergence the residual bound is about the singular value nearest the iterate
    # (here often σ₂ = 0.999, not σ₁): some σᵢ lies within 2·error_bound of the estimate.
    sv = torch.linalg.svdvals(model.weight.detach())
    dist = (sv[None, :] - pw.sigma[:, None]).abs().min(dim=1).values
    assert (dist <= 2 * pw.error_bound * pw.sigma).all()


@pytest.mark.parametrize("ratio", [0.99, 0.999])
def test_lanczos_stops_on_ritz_residual(ratio):
    c, d = 40, 60
    model = linear_with_spectrum(spectrum(ratio, c), c=c, d=d)
    x = torch.rand(3, d, dtype=F64)
    trace: list[torch.Tensor] = []
    lz = linalg.top_singular(JacobianOperator(model, x), k=1, iters=c - 1, tol=TOL,
                             generator=torch.Generator().manual_seed(1),
                             callback=lambda step, est: trace.append(est[:, 0].clone()))
    assert lz.converged.all() and (lz.iterations < c - 1).all()  # stopped by the residual, not by exhausting C
    err = 1.0 - lz.sigma[:, 0]
    assert (err >= -1e-12).all()
    assert (err <= lz.error_bound[:, 0]).all()
    assert (lz.error_bound[:, 0] <= TOL / 2 * (1 + 1e-9)).all()  # residual ≤ tol·σ² ⇒ σ within tol/2
    if ratio == 0.999:  # the step-change rule is fooled here for every sample
        for i in range(3):
            stop = step_change_stop(trace, i, TOL)
            assert 1.0 - float(trace[stop][i]) > 10 * TOL


def test_lanczos_not_converged_bound_holds():
    c, d = 40, 60
    model = linear_with_spectrum(spectrum(0.999, c), c=c, d=d)
    x = torch.rand(2, d, dtype=F64)
    lz = linalg.top_singular(JacobianOperator(model, x), k=2, iters=6, tol=TOL, generator=torch.Generator().manual_seed(3))
    assert not lz.converged.any()
    assert (lz.error_bound > TOL / 2).any(dim=1).all()
    sv = torch.linalg.svdvals(model.weight.detach())
    assert (lz.sigma <= sv[:2] * (1 + 1e-12)).all()  # Ritz values are lower bounds (interlacing)
    dist = (sv[None, None, :] - lz.sigma[:, :, None]).abs().min(dim=2).values
    assert (dist <= 2 * lz.error_bound * lz.sigma).all()


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_norms_engine_reports_the_bound(method):
    model = linear_with_spectrum(spectrum(0.99, 12), c=12, d=16)
    x = torch.rand(2, 16, dtype=F64)
    res = jacobian_norms(JacobianOperator(model, x), method=method, iters=5000, tol=TOL, keys=torch.tensor([4, 9]))
    assert res.converged.all()
    assert ((1.0 - res.spectral) <= res.error_bound + 1e-14).all() and (res.error_bound <= TOL).all()
    ex = jacobian_norms(JacobianOperator(model, x), method="exact")
    assert (ex.error_bound == 0).all()


def test_symmetric_indefinite_largest_magnitude():
    # A = Q diag(λ) Qᵀ with the largest |λ| negative: both solvers must return it with its sign.
    n = 50
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(2, n, n, generator=g, dtype=F64))
    lam = torch.linspace(-0.8, 0.8, n, dtype=F64).expand(2, n).clone()
    lam[0, 0], lam[1, 0] = -2.0, 2.0
    lam[0, 1], lam[1, 1] = 1.5, -1.5
    a = q @ torch.diag_embed(lam) @ q.transpose(1, 2)

    def matvec(v):
        return torch.einsum("bij,bj->bi", a, v)

    init = torch.randn(2, n, generator=g, dtype=F64)
    lz = linalg.lanczos(matvec, init, k=3, iters=n - 1, tol=1e-10, which=Which.MAGNITUDE)
    expected = torch.tensor([[-2.0, 1.5, 0.8], [2.0, -1.5, 0.8]], dtype=F64)
    expected[1, 2] = 0.8  # |±0.8| tie: compare magnitudes for the third
    torch.testing.assert_close(lz.values[:, :2], expected[:, :2], rtol=1e-9, atol=0)
    torch.testing.assert_close(lz.values[:, 2].abs(), expected[:, 2], rtol=1e-9, atol=0)
    assert lz.converged.all()
    # each value is within its reported residual of a true eigenvalue
    dist = (lz.values[:, :, None] - lam[:, None, :]).abs().min(dim=2).values
    assert (dist <= lz.residual + 1e-13).all()  # A = QΛQᵀ itself carries ~1e-15 rounding
    pm = linalg.power_method(matvec, init, iters=2000, tol=1e-8)
    torch.testing.assert_close(pm.value, expected[:, 0], rtol=1e-7, atol=0)
    assert pm.converged.all() and ((pm.value - expected[:, 0]).abs() <= pm.residual).all()


def test_zero_operator_converges_at_zero():
    lz = linalg.lanczos(lambda v: torch.zeros_like(v), torch.randn(2, 7, dtype=F64), k=3, which="magnitude")
    assert (lz.values == 0).all() and lz.converged.all() and (lz.iterations == 3).all()
    pm = linalg.power_method(lambda v: torch.zeros_like(v), torch.randn(2, 7, dtype=F64))
    assert (pm.value == 0).all() and pm.converged.all() and (pm.iterations == 1).all()


def test_one_default_tolerance_and_one_exact_limit():
    assert linalg.default_tol(torch.float64) == linalg.default_tol("float64") == 1e-10
    assert linalg.default_tol(torch.float32) == linalg.default_tol("float32") == 1e-5
    assert linalg.EXACT_MAX_CLASSES is KINDS_EXACT_MAX_CLASSES
