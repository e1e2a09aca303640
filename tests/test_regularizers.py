"""Regularizers against dense truths (float64), finite-difference gradients, and a few descent steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robaudit.bounds import fantastic_four, linear_norm
from robaudit.errors import UsageError
from robaudit.linalg import JacobianOperator, hutchinson, power_iteration
from robaudit.regularizers import (REGULARIZERS, AdversarialTraining, ConvSpectralBound, DataDependentSpectral,
                                   GlobalSpectralNorm, JacobianFrobenius, JacobianSpectral, JacobianSpectralLanczos,
                                   WeightDecay, make, pseudo_inference)

C, SHAPE = 4, (1, 6, 6)


def tiny(act: type[nn.Module] = nn.ReLU, seed: int = 0, bn: bool = False) -> nn.Module:
    """conv 3×3 (1→3) → act → [BN] → maxpool 2 → linear 27→C, float64."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 3, 3, padding=1), act()]
    if bn:
        layers.append(nn.BatchNorm2d(3))
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, C)]
    return nn.Sequential(*layers).double()


def batch(n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def dense_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, D) per-sample Jacobians, one sample at a time (independent of the batched operator)."""
    rows = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi)
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows)


# ---------------------------------------------------------------- values against dense truths

def test_frobenius_exact_is_dense_frobenius():
    model, (x, y) = tiny(), batch()
    truth = 0.5 * dense_jacobians(model, x).square().sum(dim=(1, 2)).mean()
    value = JacobianFrobenius(exact=True).penalty(model, x, y)
    torch.testing.assert_close(value, truth, rtol=1e-12, atol=0)


def test_frobenius_projections_unbiased():
    # Hoffman eq. 7: E[C‖vᵀJ‖²] = ‖J‖_F²; with n_proj = 4000 the relative std is ≈ √(2/n)/√B ≈ 1 %.
    model, (x, y) = tiny(), batch()
    truth = 0.5 * dense_jacobians(model, x).square().sum(dim=(1, 2)).mean()
    torch.manual_seed(3)
    value = JacobianFrobenius(n_proj=4000).penalty(model, x, y)
    torch.testing.assert_close(value, truth, rtol=0.06, atol=0)


def test_spectral_one_iteration_is_johansson_estimate():
    # Alg. 1 with N = 1: u = Jv/‖Jv‖, value = ‖Jᵀu‖ for a unit Gaussian v (the same draw as the regularizer's).
    model, (x, y) = tiny(), batch()
    jac = dense_jacobians(model, x)
    torch.manual_seed(7)
    v = torch.randn(x.shape[0], jac.shape[2], dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    u = torch.einsum("bcd,bd->bc", jac, v)
    u = u / u.norm(dim=1, keepdim=True)
    expected = torch.einsum("bcd,bc->bd", jac, u).norm(dim=1)
    torch.manual_seed(7)
    value = JacobianSpectral(n_iter=1).penalty(model, x, y)
    torch.testing.assert_close(value, expected.mean(), rtol=1e-10, atol=0)
    sigma = torch.linalg.matrix_norm(jac, ord=2)
    assert (expected <= sigma * (1 + 1e-12)).all()  # a lower bound on σ_max


@pytest.mark.parametrize("reg", [JacobianSpectral(n_iter=300), JacobianSpectralLanczos(n_iter=C),
                                 JacobianSpectralLanczos(n_iter=C, full_graph=True)], ids=["power", "lanczos", "lanczos_full"])
def test_spectral_converged_is_dense_sigma_max(reg):
    model, (x, y) = tiny(), batch()
    truth = torch.linalg.matrix_norm(dense_jacobians(model, x), ord=2).mean()
    torch.manual_seed(0)
    torch.testing.assert_close(reg.penalty(model, x, y), truth, rtol=1e-6, atol=0)


def test_conv_bound_matches_bounds_module():
    model = tiny()
    conv, lin = model[0], model[4]
    r = fantastic_four(conv.weight.detach())["R"]  # robaudit.bounds: √(hw)‖R‖₂ from a certified upper norm
    expected = r + linear_norm(lin.weight.detach())
    value = ConvSpectralBound().penalty(model, None, None)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # Singla & Feizi Thm. 1: R's bound is an upper bound on the conv's true operator norm
    from robaudit.bounds import conv_bounds

    assert r >= conv_bounds(conv, SHAPE).operator_norm * (1 - 1e-6)


def test_global_spectral_converges_to_svd():
    model = tiny()
    reg = GlobalSpectralNorm(n_iter=500)
    mats = [model[0].weight.reshape(3, -1), model[4].weight]
    truth = 0.5 * sum(torch.linalg.matrix_norm(m.detach(), ord=2) ** 2 for m in mats)
    torch.testing.assert_close(reg.penalty(model, None, None), truth, rtol=1e-8, atol=0)
    # one iteration per step converges across steps: the singular vectors persist between calls
    per_step = GlobalSpectralNorm(n_iter=1)
    torch.manual_seed(0)  # the random start vectors
    first = per_step.penalty(model, None, None).detach()
    for _ in range(400):
        value = per_step.penalty(model, None, None).detach()
    assert first < truth * (1 - 1e-3)  # one step from a random start is not there yet
    torch.testing.assert_close(value, truth, rtol=1e-8, atol=0)


def test_weight_decay_closed_form():
    model = tiny()
    truth = 0.5 * (model[0].weight.square().sum() + model[4].weight.square().sum())
    torch.testing.assert_close(WeightDecay().penalty(model, None, None), truth, rtol=1e-14, atol=0)


def test_data_dependent_linear_closed_form():
    # f(x) = Wx: f(x + εv) − f(x) = εWv with v the top right singular vector, so the value is ½ε²σ_max².
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, C)).double()
    x, y = batch()
    sigma = torch.linalg.matrix_norm(model[1].weight.detach(), ord=2)
    reg = DataDependentSpectral(eps=0.5, n_iter=300)
    torch.testing.assert_close(reg.penalty(model, x, y), 0.5 * 0.25 * sigma ** 2, rtol=1e-8, atol=0)


def test_data_dependent_direction_is_top_singular_vector():
    model, (x, _) = tiny(), batch()
    jac = dense_jacobians(model, x)
    v_true = torch.linalg.svd(jac).Vh[:, 0]
    v = DataDependentSpectral(n_iter=300).direction(JacobianOperator(model, x)).reshape(x.shape[0], -1)
    torch.testing.assert_close((v * v_true).sum(dim=1).abs(), torch.ones(x.shape[0], dtype=torch.float64),
                               rtol=0, atol=1e-6)


def test_adversarial_examples_in_ball_and_worse():
    model, (x, y) = tiny(), batch(8)
    reg = AdversarialTraining(eps=0.05, alpha=0.02, steps=5)
    torch.manual_seed(0)
    x_adv = reg.adversarial(model, x, y)
    assert ((x_adv - x).abs() <= 0.05 + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    clean = F.cross_entropy(model(x), y)
    torch.manual_seed(0)
    assert reg.penalty(model, x, y) >= clean  # PGD ascends the loss


def test_pseudo_inference_uses_batch_statistics_and_restores():
    model, (x, y) = tiny(bn=True), batch(6)
    bn = model[2]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(), bn.momentum)
    model.train()
    value = JacobianFrobenius(exact=True).penalty(model, x, y)
    # truth: BN in eval mode with the batch's own statistics (unbiased variance, as a momentum-1 update stores)
    ref = tiny(bn=True)
    with torch.no_grad():
        h = ref[1](ref[0](x))
        ref[2].running_mean.copy_(h.mean(dim=(0, 2, 3)))
        ref[2].running_var.copy_(h.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True))
    ref.eval()
    truth = 0.5 * dense_jacobians(ref, x).square().sum(dim=(1, 2)).mean()
    torch.testing.assert_close(value, truth, rtol=1e-10, atol=0)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2]) and bn.momentum == before[3]


def test_pseudo_inference_restores_on_error():
    model, (x, _) = tiny(bn=True), batch()
    model.train()
    mean = model[2].running_mean.clone()
    with pytest.raises(RuntimeError):
        with pseudo_inference(model, x):
            raise RuntimeError("boom")
    assert model.training and model[2].momentum == 0.1 and torch.equal(model[2].running_mean, mean)


# ---------------------------------------------------------------- gradients against finite differences

def _fd_check(reg, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
    params = [p for p in model.parameters()]
    g = torch.Generator().manual_seed(11)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]

    def value() -> torch.Tensor:
        torch.manual_seed(seed)  # the same random vectors at every evaluation
        return reg.penalty(model, x, y)

    grads = torch.autograd.grad(value(), params, allow_unused=True)  # e.g. the last bias does not move J
    analytic = sum((gr * d).sum() for gr, d in zip(grads, direction) if gr is not None)
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
    up = value().detach()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(2 * h * d)
    down = value().detach()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
    numeric = (up - down) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("reg", [
    JacobianFrobenius(exact=True), JacobianFrobenius(n_proj=2), JacobianSpectral(n_iter=1), JacobianSpectral(n_iter=3),
    JacobianSpectralLanczos(n_iter=C), JacobianSpectralLanczos(n_iter=2, full_graph=True),
    ConvSpectralBound(), WeightDecay()],
    ids=["frob_exact", "frob_proj", "spectral_1", "spectral_3", "lanczos", "lanczos_full", "conv_bound", "weight_decay"])
def test_gradient_matches_finite_differences(reg):
    model, (x, y) = tiny(nn.Tanh), batch()  # smooth activation: no kinks inside ±h
    _fd_check(reg, model, x, y)


def test_global_spectral_gradient_at_convergence():
    model = tiny(nn.Tanh)
    reg = GlobalSpectralNorm(n_iter=400)  # converged vectors: the gradient σuvᵀ is the true gradient of σ²/2
    _fd_check(reg, model, None, None)


def test_data_dependent_gradient_with_direction_fixed():
    # Roth et al.: v is a constant of the step (like an adversarial direction); differentiate with v fixed.
    model, (x, y) = tiny(nn.Tanh), batch()
    reg = DataDependentSpectral(eps=0.3, n_iter=5)
    fixed = reg.direction(JacobianOperator(model, x))
    reg.direction = lambda op: fixed
    _fd_check(reg, model, x, y)


def test_adversarial_gradient_with_example_fixed():
    model, (x, y) = tiny(nn.Tanh), batch()
    reg = AdversarialTraining(eps=0.05, alpha=0.02, steps=3)
    torch.manual_seed(0)
    fixed = reg.adversarial(model, x, y)
    reg.adversarial = lambda model, x, y: fixed
    _fd_check(reg, model, x, y)


# ---------------------------------------------------------------- descent and the registry

@pytest.mark.parametrize("name", [n for n in REGULARIZERS if n != "none"])
def test_few_steps_lower_the_quantity(name):
    model, (x, y) = tiny(), batch(16)
    reg = make(name)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def measured() -> float:
        torch.manual_seed(5)
        return float(reg.penalty(model, x, y).detach())

    start = measured()
    for _ in range(15):
        opt.zero_grad()
        torch.manual_seed(5)
        reg.penalty(model, x, y).backward()
        opt.step()
    assert measured() < 0.8 * start


@pytest.mark.parametrize("name", list(REGULARIZERS))
def test_registry_loss_shares_and_restores(name):
    model, (x, y) = tiny(bn=True), batch(8)
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    reg = make(name)
    step = reg.loss(model, x, y, lam=reg.default_lam)
    step.total.backward()
    torch.testing.assert_close(step.ce, F.cross_entropy(step.logits, y), rtol=1e-12, atol=0)
    assert math.isfinite(float(step.total.detach())) and step.total.item() == pytest.approx(
        float(step.ce) + reg.default_lam * float(step.penalty), rel=1e-10)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.training and flags == [p.requires_grad for p in model.parameters()]


def test_shared_forward_equals_separate():
    # Without BN/dropout, the Jacobian regularizers reuse the operator's forward pass for the cross-entropy.
    model, (x, y) = tiny(), batch()
    reg = JacobianFrobenius(exact=True)
    step = reg.loss(model, x, y, lam=0.3)
    torch.testing.assert_close(step.ce, F.cross_entropy(model(x), y).detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(step.penalty, reg.penalty(model, x, y).detach(), rtol=1e-14, atol=0)


def test_make_refuses_bad_names_and_options():
    with pytest.raises(UsageError, match="expected one of"):
        make("jacobian_magic")
    with pytest.raises(UsageError, match="n_iter"):
        make("jacobian_spectral", n_iter=0)
    with pytest.raises(UsageError):
        make("jacobian_spectral", bogus=1)


def test_measurement_mode_stays_detached():
    model, (x, _) = tiny(), batch()
    op = JacobianOperator(model, x)
    assert not op.jvp(torch.randn(5, 36, dtype=torch.float64)).requires_grad
    assert not op.vjp(torch.randn(5, C, dtype=torch.float64)).requires_grad
    assert not hutchinson(op, n_proj=2).frobenius_sq.requires_grad
    assert not power_iteration(op, iters=3).sigma.requires_grad
    with pytest.raises(ValueError, match="create_graph"):
        hutchinson(op, n_proj=2, differentiable=True)
