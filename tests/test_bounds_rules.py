"""Layer rules against dense Jacobians, grids of derivatives and closed forms (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robaudit.bounds import rules as R
from robaudit.analyses.layers import wrapper_rules
from robaudit.models.adapt import Normalize, SelectOutput
from robaudit.models.zoo import ShortcutA

F64 = torch.float64



def jac_sigma(module: nn.Module, x: torch.Tensor) -> float:
    """σ_max of the Jacobian of ``module`` at one sample ``x`` (no batch dim), dense."""
    jac = torch.autograd.functional.jacobian(lambda v: module(v.unsqueeze(0)).squeeze(0), x)
    return float(torch.linalg.svdvals(jac.reshape(-1, x.numel()))[0])


WRAPPER_RULES, _ = wrapper_rules()  # robaudit's wrappers: the layers analysis passes these rules


def bound(module: nn.Module, in_shape: tuple, out_shape: tuple | None = None) -> R.LayerBound:
    if out_shape is None:
        with torch.no_grad():
            out_shape = tuple(module(torch.zeros(1, *in_shape, dtype=F64)).shape[1:])
    return R.bound_module(module, in_shape, out_shape, R.RuleOptions(iters=200, tol=1e-10, dtype=F64),
                          rules={**R.RULES, **WRAPPER_RULES})


# ---------------------------------------------------------------------------
# Activations


ACTIVATION_CASES = {
    "ReLU": (nn.ReLU(), 1.0), "ReLU6": (nn.ReLU6(), 1.0), "LeakyReLU": (nn.LeakyReLU(0.1), 1.0),
    "LeakyReLU2": (nn.LeakyReLU(2.0), 2.0), "ELU": (nn.ELU(), 1.0), "ELU2": (nn.ELU(alpha=2.0), 2.0),
    "CELU": (nn.CELU(0.5), 1.0), "SELU": (nn.SELU(), R.SELU), "GELU": (nn.GELU(), R.GELU_ERF),
    "GELUtanh": (nn.GELU(approximate="tanh"), R.GELU_TANH), "SiLU": (nn.SiLU(), R.SILU),
    "Mish": (nn.Mish(), R.MISH), "Hardswish": (nn.Hardswish(), 1.5), "Hardsigmoid": (nn.Hardsigmoid(), 1 / 6),
    "Hardtanh": (nn.Hardtanh(), 1.0), "Sigmoid": (nn.Sigmoid(), 0.25), "Tanh": (nn.Tanh(), 1.0),
    "Softplus": (nn.Softplus(beta=3.0), 1.0), "Softsign": (nn.Softsign(), 1.0), "Tanhshrink": (nn.Tanhshrink(), 1.0),
    "Softshrink": (nn.Softshrink(), 1.0), "LogSigmoid": (nn.LogSigmoid(), 1.0),
    "RReLU": (nn.RReLU(0.1, 0.3).eval(), 1.0),
}


@pytest.mark.parametrize("name", sorted(ACTIVATION_CASES))
def test_elementwise_activation_constant_is_sup_of_derivative(name):
    module, expected = ACTIVATION_CASES[name]
    value = bound(module, (5,)).upper
    assert value == pytest.approx(expected, rel=1e-9)
    x = torch.linspace(-12, 12, 480_001, dtype=F64)
    with torch.no_grad():
        y = module(x)
    sup = float(((y[1:] - y[:-1]) / (x[1:] - x[:-1])).abs().max())  # slopes of chords
    assert sup <= value * (1 + 1e-9)  # a valid bound (mean value theorem)
    assert sup >= value - 2e-3  # and tight (the sup is approached on the grid)


def test_prelu_uses_its_learned_slopes():
    m = nn.PReLU(num_parameters=3).double()
    m.weight.data = torch.tensor([0.2, -1.7, 0.5], dtype=F64)
    assert bound(m, (3, 4)).upper == pytest.approx(1.7)
    x = -torch.rand(3, 4, dtype=F64) - 0.1
    assert jac_sigma(m, x) == pytest.approx(1.7)


@pytest.mark.parametrize("cls", [nn.Softmax, nn.Softmin])
def test_softmax_half(cls):
    m = cls(dim=1)
    assert bound(m, (6,)).upper == 0.5
    gen = torch.Generator().manual_seed(0)
    worst = max(jac_sigma(m, 4 * torch.randn(6, dtype=F64, generator=gen)) for _ in range(200))
    assert worst <= 0.5 + 1e-12
    two = torch.tensor([3.0, 3.0, -40, -40, -40, -40], dtype=F64)  # p ≈ (1/2, 1/2, 0, …)
    sign = -1 if cls is nn.Softmin else 1
    assert jac_sigma(m, sign * two) == pytest.approx(0.5, rel=1e-9)


def test_log_softmax_sqrt_n():
    m = nn.LogSoftmax(dim=1)
    b = bound(m, (7,))
    assert b.upper == pytest.approx(math.sqrt(7))
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        assert jac_sigma(m, 5 * torch.randn(7, dtype=F64, generator=gen)) <= b.upper
    vertex = torch.tensor([60.0, 0, 0, 0, 0, 0, 0], dtype=F64)
    assert jac_sigma(m, vertex) == pytest.approx(math.sqrt(7), rel=1e-6)


# ---------------------------------------------------------------------------
# BatchNorm, Normalize, identities


def _bn(cls, c: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    bn = cls(c).double()
    bn.running_mean = torch.randn(c, dtype=F64, generator=gen)
    bn.running_var = torch.rand(c, dtype=F64, generator=gen) + 0.05
    bn.weight.data = torch.randn(c, dtype=F64, generator=gen)
    bn.bias.data = torch.randn(c, dtype=F64, generator=gen)
    return bn.eval()


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (4,)), (nn.BatchNorm1d, (4, 3)), (nn.BatchNorm2d, (4, 3, 3))])
def test_batchnorm_eval_is_max_scale(cls, shape):
    bn = _bn(cls, 4, 2)
    b = bound(bn, shape)
    x = torch.randn(shape, dtype=F64)
    assert b.exact == b.upper == pytest.approx(jac_sigma(bn, x), rel=1e-12)


def test_batchnorm_with_batch_statistics_is_unbounded():
    bn = _bn(nn.BatchNorm2d, 3, 3)
    bn.train()
    b = bound(bn, (3, 2, 2))
    assert b.upper is None and "training mode" in b.reason
    nostats = nn.BatchNorm2d(3, track_running_stats=False).double().eval()
    b = R.bound_module(nostats, (3, 2, 2), (3, 2, 2))
    assert b.upper is None and "running statistics" in b.reason


def test_normalize_select_shortcut():
    assert not any(t in R.RULES for t in (Normalize, SelectOutput, ShortcutA))  # the engine does not know them
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0)).double()
    b = bound(norm, (3, 2, 2))
    assert b.exact == pytest.approx(4.0)
    assert jac_sigma(norm, torch.rand(3, 2, 2, dtype=F64)) == pytest.approx(4.0)
    assert bound(SelectOutput(None), (10,), (10,)).upper == 1.0
    sc = ShortcutA(8)
    b = bound(sc, (4, 6, 6))
    assert b.exact == 1.0
    assert jac_sigma(sc, torch.rand(4, 6, 6, dtype=F64)) == pytest.approx(1.0)


@pytest.mark.parametrize("module", [nn.Identity(), nn.Flatten(), nn.Unflatten(1, (2, 6)), nn.Dropout(0.5).eval(),
                                    nn.Dropout2d().eval(), nn.ZeroPad2d(2)])
def test_identity_like_layers(module):
    shape = (12,) if isinstance(module, nn.Unflatten) else (3, 4, 4)
    b = bound(module, shape)
    assert b.upper == 1.0
    assert jac_sigma(module, torch.rand(shape, dtype=F64)) == pytest.approx(1.0)


def test_dropout_in_training_mode_is_unbounded():
    assert bound(nn.Dropout(0.3).train(), (4,)).upper is None


@pytest.mark.parametrize("module", [nn.ReflectionPad2d(2), nn.ReplicationPad2d((1, 3, 0, 2)), nn.ReflectionPad1d(3),
                                    nn.CircularPad2d(2)])
def test_padding_layers_exact(module):
    shape = (2, 7) if isinstance(module, nn.ReflectionPad1d) else (2, 5, 6)
    b = bound(module, shape)
    # a copy map: PᵀP is diagonal, so the Jacobian norm is √(max copies) everywhere
    assert b.exact == pytest.approx(jac_sigma(module, torch.rand(shape, dtype=F64)), rel=1e-12)


# ---------------------------------------------------------------------------
# Pooling


AVG_CASES = [
    nn.AvgPool2d(2), nn.AvgPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    nn.AvgPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(3, 2, 1, ceil_mode=True,
                                                                              count_include_pad=False),
    nn.AvgPool2d((2, 3), (1, 2), (1, 0), divisor_override=4), nn.AvgPool1d(3, 2, 1), nn.AvgPool1d(4, 1, 2),
    nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((3, 2)), nn.AdaptiveAvgPool1d(4),
]


@pytest.mark.parametrize("module", AVG_CASES, ids=repr)
def test_average_pooling_exact(module):
    shape = (2, 9) if "1d" in type(module).__name__ else (2, 7, 5)
    b = bound(module, shape)
    truth = jac_sigma(module, torch.rand(shape, dtype=F64))  # linear: same Jacobian everywhere
    assert b.exact == pytest.approx(truth, rel=1e-10)


MAX_CASES = [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 1), nn.MaxPool2d(2, 1, dilation=2),
             nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool1d(3, 1, 1), nn.AdaptiveMaxPool2d((3, 2)),
             nn.AdaptiveMaxPool2d(1)]


@pytest.mark.parametrize("module", MAX_CASES, ids=repr)
def test_max_pooling_exact(module):
    one_d = "1d" in type(module).__name__
    shape = (2, 9) if one_d else (2, 7, 7)
    b = bound(module, shape)
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):  # valid: every Jacobian is below it
        assert jac_sigma(module, torch.randn(shape, dtype=F64, generator=gen)) <= b.upper * (1 + 1e-12)
    # attained: make the pixel that lies in the most windows win all of them
    counts = _window_counts(module, shape)
    where = torch.nonzero(counts == counts.max())[0]
    x = -torch.rand(shape, dtype=F64, generator=gen) - 1.0
    x[tuple(where.tolist())] = 5.0
    assert jac_sigma(module, x) == pytest.approx(b.exact, rel=1e-12)
    assert b.exact == pytest.approx(math.sqrt(float(counts.max())), rel=1e-12)


def _window_counts(module: nn.Module, shape: tuple) -> torch.Tensor:
    """How many windows contain each pixel: pixel i is in window w iff a one-hot at i makes w output 1."""
    counts = torch.zeros(math.prod(shape), dtype=F64)
    for i in range(math.prod(shape)):
        x = torch.zeros(1, *shape, dtype=F64)
        x.view(-1)[i] = 1.0
        counts[i] = float((module(x) == 1.0).sum())
    return counts.reshape(shape)


# ---------------------------------------------------------------------------
# Registry behaviour


def test_every_registered_type_has_a_working_rule():
    # smoke test over the whole registry: each rule returns a LayerBound on a plausible shape
    for t, rule in R.RULES.items():
        try:
            module = t(**_ctor_kwargs(t))
        except TypeError:
            continue
        shape = _shape_for(t)
        module = module.double().eval() if hasattr(module, "double") else module
        with torch.no_grad():
            out = module(torch.rand(1, *shape, dtype=F64))
        b = rule(module, shape, tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else shape,
                 R.RuleOptions(iters=5))
        assert isinstance(b, R.LayerBound), t
        assert b.upper is None or (b.upper >= 0 and math.isfinite(b.upper)), t


def _ctor_kwargs(t: type) -> dict:
    table = {nn.Conv1d: dict(in_channels=2, out_channels=3, kernel_size=3), nn.Conv2d: dict(in_channels=2,
             out_channels=3, kernel_size=3), nn.Linear: dict(in_features=4, out_features=3),
             nn.BatchNorm1d: dict(num_features=2), nn.BatchNorm2d: dict(num_features=2),
             nn.BatchNorm3d: dict(num_features=2), nn.Unflatten: dict(dim=1, unflattened_size=(2, 2)),
             nn.MaxPool1d: dict(kernel_size=2), nn.MaxPool2d: dict(kernel_size=2), nn.AvgPool1d: dict(kernel_size=2),
             nn.AvgPool2d: dict(kernel_size=2), nn.AdaptiveAvgPool1d: dict(output_size=2),
             nn.AdaptiveAvgPool2d: dict(output_size=2), nn.AdaptiveMaxPool1d: dict(output_size=2),
             nn.AdaptiveMaxPool2d: dict(output_size=2), nn.Softmax: dict(dim=1), nn.Softmin: dict(dim=1),
             nn.LogSoftmax: dict(dim=1), Normalize: dict(mean=(0.0, 0.0), std=(0.5, 1.0)),
             SelectOutput: dict(key=None), ShortcutA: dict(planes=4)}
    for pad in (nn.ZeroPad1d, nn.ZeroPad2d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d,
                nn.ReplicationPad2d, nn.CircularPad1d, nn.CircularPad2d):
        table[pad] = dict(padding=1)
    table[nn.ConstantPad1d] = table[nn.ConstantPad2d] = dict(padding=1, value=0.5)
    return table.get(t, {})


def _shape_for(t: type) -> tuple:
    name = t.__name__
    if t in (nn.Linear,) or name in ("Softmax", "Softmin", "LogSoftmax", "Unflatten"):
        return (4,)
    if "1d" in name or t in (nn.Conv1d,):
        return (2, 6)
    if name == "BatchNorm3d":
        return (2, 3, 3, 3)
    return (2, 6, 6)


class _Custom(nn.Module):
    def forward(self, x):
        return x * 2


class _SubReLU(nn.ReLU):
    pass


class _ScaledReLU(nn.ReLU):
    def forward(self, x):
        return 3 * super().forward(x)


def test_lookup_respects_overridden_forward():
    assert R.bound_module(_SubReLU(), (3,), (3,)).upper == 1.0  # inherits forward: inherits the rule
    b = R.bound_module(_ScaledReLU(), (3,), (3,))  # changes forward: no rule
    assert b.upper is None and "_ScaledReLU" in b.reason
    b = R.bound_module(_Custom(), (3,), (3,))
    assert b.upper is None and "no rule for" in b.reason
    b = R.bound_module(nn.LayerNorm(3), (3,), (3,))
    assert b.upper is None and "not globally Lipschitz" in b.reason


def test_linear_rule_exact_and_power():
    torch.manual_seed(5)
    lin = nn.Linear(9, 4).double()
    b = bound(lin, (9,))
    exact = float(torch.linalg.svdvals(lin.weight.detach())[0])
    assert b.exact == b.upper == pytest.approx(exact, rel=1e-12)
    assert b.info["operator_norm"] == pytest.approx(exact, rel=1e-8)
    assert jac_sigma(lin, torch.rand(9, dtype=F64)) == pytest.approx(exact, rel=1e-12)


def test_small_layers_run_single_threaded_and_restore_the_thread_count(monkeypatch):
    seen = []

    def probe(module, in_shape, out_shape, opts):
        seen.append(torch.get_num_threads())
        raise RuntimeError("injected")

    monkeypatch.setitem(R.RULES, _Custom, probe)
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            R.bound_module(_Custom(), (3, 4, 4), (3, 4, 4))
        assert seen == [1] and torch.get_num_threads() == 2
        big = (R.SMALL_LAYER,)
        with pytest.raises(RuntimeError):
            R.bound_module(_Custom(), big, big)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
