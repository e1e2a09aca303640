"""Every solver against closed forms (linear models) and dense Jacobians (ReLU CNNs), float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.linalg import (JacobianOperator, exact, hutchinson, jacobian, power_iteration, sigma_max,
                             singular_values_of, top_singular)
from robaudit.linalg.lanczos import lanczos
from test_linalg_models import MODELS, build, dense_jacobians

RTOL = 1e-4


def linear_model(c: int = 6, d: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    lin = nn.Linear(d, c).double()
    return nn.Sequential(nn.Flatten(), lin)


# ---------------------------------------------------------------- closed forms

def test_linear_model_closed_form():
    model = linear_model()
    w = model[1].weight.detach()
    x = torch.rand(5, 3, 4, dtype=torch.float64)  # flattened to D = 12
    spec = torch.linalg.matrix_norm(w, ord=2)
    frob = torch.linalg.matrix_norm(w)
    ex = exact(JacobianOperator(model, x))
    torch.testing.assert_close(ex.spectral, spec.expand(5), rtol=1e-12, atol=0)
    torch.testing.assert_close(ex.frobenius, frob.expand(5), rtol=1e-12, atol=0)
    torch.testing.assert_close(ex.singular_values, torch.linalg.svdvals(w).expand(5, -1), rtol=1e-10, atol=1e-12)
    pw = power_iteration(JacobianOperator(model, x), iters=2000, tol=1e-13)
    assert pw.converged.all()
    torch.testing.assert_close(pw.sigma, spec.expand(5), rtol=RTOL, atol=0)
    assert (pw.sigma <= spec * (1 + 1e-12)).all()  # a lower bound at every step
    lz = top_singular(JacobianOperator(model, x), k=3, iters=6, tol=1e-10)
    torch.testing.assert_close(lz.sigma, torch.linalg.svdvals(w)[:3].expand(5, -1), rtol=RTOL, atol=0)
    torch.testing.assert_close(sigma_max(model, x), spec.expand(5), rtol=1e-12, atol=0)


@pytest.mark.parametrize("target", ["probs", "logprobs"])
def test_softmax_targets_closed_form(target):
    model = linear_model(c=5, d=8, seed=1)
    w = model[1].weight.detach()
    x = torch.rand(3, 8, dtype=torch.float64)
    p = torch.softmax(model(x), dim=1).detach()
    for i in range(3):
        if target == "probs":  # ∂softmax/∂z = diag(p) − ppᵀ
            expected = (torch.diag(p[i]) - torch.outer(p[i], p[i])) @ w
        else:  # ∂log softmax/∂z = I − 1pᵀ
            expected = (torch.eye(5, dtype=torch.float64) - p[i].expand(5, 5)) @ w
        jac = jacobian(JacobianOperator(model, x, target=target))[i]
        torch.testing.assert_close(jac, expected, rtol=1e-12, atol=1e-14)


def test_rank_deficient_jacobian_lanczos_restarts():
    # C = 6 outputs from a rank-2 map: Lanczos on JJᵀ breaks down after 2 steps and must continue correctly.
    torch.manual_seed(3)
    w = (torch.randn(6, 2) @ torch.randn(2, 10)).double()
    model = nn.Linear(10, 6, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w)
    x = torch.rand(2, 10, dtype=torch.float64)
    lz = top_singular(JacobianOperator(model, x), k=4, iters=6, tol=1e-10)
    expected = torch.linalg.svdvals(w)[:4]
    torch.testing.assert_close(lz.sigma, expected.expand(2, -1), rtol=RTOL, atol=1e-6)
    assert lz.converged.all()


def test_zero_jacobian():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[1].weight.zero_()
    x = torch.rand(2, 4, dtype=torch.float64)
    assert (exact(JacobianOperator(model, x)).spectral == 0).all()
    pw = power_iteration(JacobianOperator(model, x), iters=5, tol=1e-8)
    assert (pw.sigma == 0).all() and pw.converged.all()


# ---------------------------------------------------------------- dense ground truth

@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    model, x = build(request.param)
    dense = dense_jacobians(model, x)
    return request.param, model, x, dense, torch.linalg.svdvals(dense)


def test_exact_matches_dense(case):
    _, model, x, dense, sv = case
    op = JacobianOperator(model, x)
    torch.testing.assert_close(jacobian(op), dense, rtol=1e-10, atol=1e-12)
    ex = exact(op)
    torch.testing.assert_close(ex.spectral, sv[:, 0], rtol=RTOL, atol=0)
    torch.testing.assert_close(ex.frobenius, dense.flatten(1).norm(dim=1), rtol=RTOL, atol=0)
    torch.testing.assert_close(ex.singular_values, sv, rtol=RTOL, atol=1e-6)
    assert ex.converged.all() and ex.finite.all()


def test_exact_vmap_batched_classes_matches_dense(case):
    _, model, x, dense, _ = case
    torch.testing.assert_close(jacobian(JacobianOperator(model, x), classes_per_pass=4), dense,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["forward", "double_backward"])
def test_products_match_dense(case, mode):
    _, model, x, dense, _ = case
    op = JacobianOperator(model, x, mode=mode)
    torch.manual_seed(1)
    v = torch.randn(x.shape[0], op.dim, dtype=torch.float64)
    u = torch.randn(x.shape[0], op.num_outputs, dtype=torch.float64)
    torch.testing.assert_close(op.jvp(v), torch.einsum("bcd,bd->bc", dense, v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.vjp(u), torch.einsum("bcd,bc->bd", dense, u), rtol=1e-10, atol=1e-12)
    assert op.mode.value == mode


@pytest.mark.parametrize("mode", ["forward", "double_backward"])
def test_power_matches_dense_and_reaches_tol(case, mode):
    _, model, x, _, sv = case
    gen = torch.Generator().manual_seed(0)
    pw = power_iteration(JacobianOperator(model, x, mode=mode), iters=3000, tol=1e-10, generator=gen)
    assert pw.converged.all(), pw.iterations
    torch.testing.assert_close(pw.sigma, sv[:, 0], rtol=RTOL, atol=0)
    assert (pw.sigma <= sv[:, 0] * (1 + 1e-10)).all()
    assert (pw.residual < 1e-3).all()


def test_power_warm_start_needs_fewer_iterations(case):
    _, model, x, _, _ = case
    gen = torch.Generator().manual_seed(0)
    cold = power_iteration(JacobianOperator(model, x), iters=3000, tol=1e-8, generator=gen)
    warm = power_iteration(JacobianOperator(model, x), iters=3000, tol=1e-8, init=cold.vector)
    assert (warm.iterations <= 3).all()
    torch.testing.assert_close(warm.sigma, cold.sigma, rtol=1e-6, atol=0)


def test_lanczos_topk_matches_dense(case):
    _, model, x, _, sv = case
    k = min(3, sv.shape[1])
    gen = torch.Generator().manual_seed(0)
    lz = top_singular(JacobianOperator(model, x), k=k, iters=100, tol=1e-8, generator=gen, return_vectors=True)
    assert lz.converged.all()
    torch.testing.assert_close(lz.sigma, sv[:, :k], rtol=RTOL, atol=0)
    assert (lz.error_bound <= 1e-8).all()
    assert (lz.sigma <= sv[:, :k] * (1 + 1e-10)).all()  # Ritz values are lower bounds


def test_lanczos_right_vectors_match_dense(case):
    _, model, x, dense, _ = case
    _, s, vh = torch.linalg.svd(dense, full_matrices=False)
    lz = top_singular(JacobianOperator(model, x), k=1, iters=100, tol=1e-10, return_vectors=True,
                      generator=torch.Generator().manual_seed(0))
    cos = (lz.right_vectors[:, 0] * vh[:, 0]).sum(dim=1).abs()
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-6)


def test_sigma_max_matches_dense(case):
    _, model, x, _, sv = case
    torch.testing.assert_close(sigma_max(model, x), sv[:, 0], rtol=RTOL, atol=0)


def test_generic_lanczos_full_spectrum_of_random_psd():
    torch.manual_seed(0)
    a = torch.randn(3, 20, 20, dtype=torch.float64)
    a = a @ a.transpose(1, 2)
    res = lanczos(lambda q: torch.einsum("bij,bj->bi", a, q), torch.randn(3, 20, dtype=torch.float64), k=20,
                  iters=20, tol=1e-12)
    torch.testing.assert_close(res.values, torch.linalg.eigvalsh(a).flip(-1), rtol=1e-8, atol=1e-8)


def test_singular_values_gram_and_svd_agree(case):
    _, _, _, dense, sv = case
    gram, finite = singular_values_of(dense, method="gram")
    svd, _ = singular_values_of(dense, method="svd")
    assert finite.all()
    torch.testing.assert_close(svd, sv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gram[:, :3], sv[:, :3], rtol=1e-8, atol=0)


def test_hutchinson_on_dense(case):
    _, model, x, dense, _ = case
    hu = hutchinson(JacobianOperator(model, x), n_proj=200, generator=torch.Generator().manual_seed(0))
    frob = dense.flatten(1).norm(dim=1)
    # a single run with 200 projections lies within 4 standard errors
    assert ((hu.frobenius - frob).abs() <= 4 * hu.stderr).all(), (hu.frobenius, frob, hu.stderr)
