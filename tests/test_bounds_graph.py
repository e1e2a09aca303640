"""AutoLip composition over the fx graph: closed forms, dense Jacobians on real models, refusals, hygiene."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robaudit.analyses.layers import wrapper_rules
from robaudit.bounds import compose as G
from robaudit.bounds import trace as T
from robaudit.bounds.rules import RuleOptions
from robaudit.errors import NumericalError, UnsupportedLayerError
from robaudit.models import zoo
from robaudit.models.adapt import adapt

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "assets"
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
FAST = RuleOptions(iters=0, dtype=F64)  # the composition only needs upper bounds

_RULES, _CHAINS = wrapper_rules()


def lb(model, x, **kw):
    """lipschitz_bound with robaudit's wrapper rules, as the layers analysis calls it."""
    kw.setdefault("opts", RuleOptions(dtype=F64))
    return G.lipschitz_bound(model, x, rules=_RULES, chains=_CHAINS, **kw)



def sigma_max(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample σ_max of the Jacobian, dense (vmap of jacrev, then SVD); independent of robaudit.linalg."""
    def one(v: torch.Tensor) -> torch.Tensor:
        return model(v.unsqueeze(0)).squeeze(0)

    out = []
    for chunk in x.split(20):
        jac = torch.func.vmap(torch.func.jacrev(one))(chunk)
        out.append(torch.linalg.svdvals(jac.reshape(chunk.shape[0], jac.shape[1], -1))[:, 0].detach())
    return torch.cat(out)


def fmnist(n: int, size: int | None = None, channels: int = 1) -> torch.Tensor:
    if not FMNIST.exists():
        pytest.skip(f"Fashion-MNIST not installed at {FMNIST}")
    from robaudit.data.idx import read_idx

    x = torch.from_numpy(read_idx(FMNIST)[:n].copy()).to(F64).div(255).unsqueeze(1)
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.repeat(1, channels, 1, 1)


# ---------------------------------------------------------------------------
# Closed forms


class Residual(nn.Module):
    """f(x) = x + α W x with W symmetric, eigenvalues in [-1, 0.5]: ‖I + αW‖ = max(1 + α/2, |1 − α|)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=gen))
        d = torch.tensor([0.5, 0.2, 0.0, -0.3, -0.7, -1.0], dtype=F64)
        self.lin = nn.Linear(6, 6, bias=False).double()
        self.lin.weight.data = q @ torch.diag(d) @ q.T
        self.alpha = alpha

    def forward(self, x):
        return x + self.alpha * self.lin(x)


@pytest.mark.parametrize("alpha", [0.5, 1.5])
def test_residual_closed_form(alpha):
    model = Residual(alpha)
    gb = lb(model, torch.zeros(2, 6, dtype=F64))
    assert gb.lipschitz_upper == pytest.approx(1 + alpha * 1.0, rel=1e-12)  # AutoLip: 1 + α‖W‖
    true = max(1 + alpha / 2, abs(1 - alpha))  # ‖I + αW‖ from the eigenvalues
    assert float(sigma_max(model, torch.randn(3, 6, dtype=F64))[0]) == pytest.approx(true, rel=1e-12)
    assert gb.lipschitz_upper >= true
    assert gb.additions == 1


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(5, 4).double()
        self.b = nn.Linear(5, 3).double()

    def forward(self, x):
        return torch.cat([self.a(x), F.relu(self.b(x))], dim=1) * 0.5


def test_concat_root_sum_of_squares_and_constant_scale():
    m = Branches()
    gb = lb(m, torch.zeros(2, 5, dtype=F64))
    na = float(torch.linalg.svdvals(m.a.weight.detach())[0])
    nb = float(torch.linalg.svdvals(m.b.weight.detach())[0])
    assert gb.lipschitz_upper == pytest.approx(0.5 * math.hypot(na, nb), rel=1e-12)
    assert gb.concats == 1
    assert float(sigma_max(m, torch.randn(50, 5, dtype=F64)).max()) <= gb.lipschitz_upper


class Functional(nn.Module):
    """Functional ops only: conv/linear weights are parameters used through F.*."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.w = nn.Parameter(torch.randn(4, 2, 3, 3, dtype=F64) * 0.5)
        self.fc = nn.Parameter(torch.randn(3, 4, dtype=F64))
        self.register_buffer("scale", torch.tensor([2.0, -3.0, 0.5, 1.0], dtype=F64).view(1, 4, 1, 1))

    def forward(self, x):
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.w)
        y = F.max_pool2d(F.gelu(y * self.scale), 2)
        a, b = torch.chunk(y, 2, dim=1)
        y = torch.cat([a.mean((2, 3)), F.avg_pool2d(b, 3).flatten(1)], dim=1)
        y = y.view(y.size(0), -1) / 4
        return F.linear(y, self.fc) - 1.0


def test_functional_ops_bound_dense():
    m = Functional()
    gb = lb(m, torch.zeros(2, 2, 6, 6, dtype=F64), opts=FAST)
    assert gb.lipschitz_upper is not None and not gb.unbounded
    x = torch.randn(100, 2, 6, 6, dtype=F64)
    assert float(sigma_max(m, x).max()) <= gb.lipschitz_upper


class Chain(nn.Sequential):
    pass


def test_sequential_product_is_the_product_of_rules():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 4))
    model = adapt(net, input_shape=(1, 4, 4), mean=(0.5,), std=(0.25,)).module.double()
    gb = lb(model, torch.rand(2, 1, 4, 4, dtype=F64), opts=FAST)
    product = math.prod(r.bound.upper for r in gb.layers)
    assert gb.lipschitz_upper == pytest.approx(product, rel=1e-12)
    assert [r.name for r in gb.layers][:2] == ["normalize", "net.0"]
    assert gb.layers[0].bound.exact == 4.0  # 1/std


# ---------------------------------------------------------------------------
# Real models: the bound dominates σ_max of the Jacobian at random and real inputs


def _lenet():
    ck = torch.load(REPO / "sample_models" / "lenet_fmnist.pt", weights_only=True)
    net = zoo.build(ck["arch"], **ck["arch_kwargs"])
    net.load_state_dict(ck["state_dict"])
    return adapt(net, input_shape=(1, 28, 28), mean=ck["meta"]["mean"], std=ck["meta"]["std"]).module.double()


def test_lenet_bound_dominates_jacobians():
    model = _lenet()
    gb = lb(model, torch.rand(2, 1, 28, 28, dtype=F64), opts=FAST)
    assert gb.method == "fx" and gb.lipschitz_upper is not None
    sig_random = sigma_max(model, torch.rand(100, 1, 28, 28, dtype=F64, generator=torch.Generator().manual_seed(0)))
    sig_real = sigma_max(model, fmnist(100))
    assert float(sig_random.max()) <= gb.lipschitz_upper
    assert float(sig_real.max()) <= gb.lipschitz_upper
    # the composition is exactly the product of the layer bounds (LeNet is a chain)
    assert gb.lipschitz_upper == pytest.approx(math.prod(r.bound.upper for r in gb.layers), rel=1e-12)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(6)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)
        self.bn3 = nn.BatchNorm1d(10)
        for bn in (self.bn1, self.bn2, self.bn3):
            c = bn.num_features
            bn.running_mean = torch.randn(c, generator=gen)
            bn.running_var = torch.rand(c, generator=gen) + 0.1
            bn.weight.data = 2 * torch.randn(c, generator=gen)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.fc(torch.flatten(self.pool(x), 1)))


def test_batchnorm_cnn_bound_dominates_jacobians_fused_or_not():
    torch.manual_seed(7)
    model = adapt(BNNet(), input_shape=(3, 16, 16), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)).module.double()
    x0 = torch.rand(2, 3, 16, 16, dtype=F64)
    fused = lb(model, x0, opts=FAST)
    plain = lb(model, x0, opts=FAST, fuse_bn=False)
    assert sum(1 for r in fused.layers if r.fused) == 3  # conv1+bn1, conv2+bn2, fc+bn3
    assert fused.lipschitz_upper <= plain.lipschitz_upper
    sig = torch.cat([sigma_max(model, torch.rand(100, 3, 16, 16, dtype=F64)), sigma_max(model, fmnist(100, 16, 3))])
    assert float(sig.max()) <= fused.lipschitz_upper


def _resnet20():
    path = SHARED / "cifar10-resnet20" / "resnet20-12fca82f.th"
    if not path.exists():
        pytest.skip(f"shared asset not present: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    net = zoo.build("resnet20")
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    entry = zoo.ZOO["resnet20"]
    return adapt(net, input_shape=entry.input_shape, mean=entry.mean, std=entry.std).module


def test_resnet20_real_weights_bound_dominates_jacobians():
    model = _resnet20()
    gb = lb(model, torch.rand(2, 3, 32, 32), opts=FAST)
    assert gb.method == "fx" and gb.additions == 9
    shortcuts = [r for r in gb.layers if r.type == "ShortcutA"]
    assert len(shortcuts) == 2 and all(r.bound.exact == 1.0 for r in shortcuts)
    assert sum(1 for r in gb.layers if r.fused) == 19
    gen = torch.Generator().manual_seed(8)
    sig = torch.cat([sigma_max(model, torch.rand(100, 3, 32, 32, generator=gen)),
                     sigma_max(model, fmnist(100, 32, 3).float())])
    assert bool(torch.isfinite(sig).all())
    assert float(sig.max()) <= gb.lipschitz_upper


# ---------------------------------------------------------------------------
# Refusals: every unsupported layer listed at once, or reported as unbounded


class Gate(nn.Module):
    """Data-dependent control flow: fx cannot trace it, and it has no rule."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


class Bad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)
        self.gate = Gate()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(self.gate(self.norm(x)) * x)


def test_unsupported_layers_are_listed_all_at_once():
    model = Bad().double()
    with pytest.raises(UnsupportedLayerError) as info:
        lb(model, torch.rand(2, 6, dtype=F64))
    msg = str(info.value)
    assert "3 layer(s)" in msg and "norm (LayerNorm)" in msg and "gate (Gate)" in msg and "mul" in msg
    assert info.value.exit_code == 3
    gb = lb(model, torch.rand(2, 6, dtype=F64), allow_unbounded=True)
    assert gb.lipschitz_upper is None
    reasons = {u.name: u.reason for u in gb.unbounded}
    assert "not globally Lipschitz" in reasons["norm"] and "no rule" in reasons["gate"]
    assert any("two input-dependent" in r for r in reasons.values())
    assert any("could not be traced" in n for n in gb.notes)


def test_untraceable_model_falls_back_to_sequential_only_when_valid(monkeypatch):
    def fail(model):
        raise RuntimeError("tracing is broken")

    monkeypatch.setattr(G, "trace", fail)
    torch.manual_seed(9)
    seq = adapt(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)), input_shape=(4,)).module.double()
    gb = lb(seq, torch.rand(2, 4, dtype=F64))
    assert gb.method == "sequential"
    norms = [float(torch.linalg.svdvals(seq.net[i].weight.detach())[0]) for i in (0, 2)]
    assert gb.lipschitz_upper == pytest.approx(norms[0] * norms[1], rel=1e-12)
    with pytest.raises(UnsupportedLayerError, match="not an nn.Sequential"):
        lb(adapt(Residual(0.5).float(), input_shape=(6,)).module.double(), torch.rand(2, 6, dtype=F64))


# ---------------------------------------------------------------------------
# Hygiene: hooks removed, modes and requires_grad restored, also after failures


def _state(model: nn.Module):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return hooks, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_model_left_as_found_after_success_and_failure(monkeypatch):
    model = adapt(BNNet(), input_shape=(3, 16, 16)).module.double()
    model.net.fc.train()  # an odd mix the bound must not "fix"
    model.net.conv1.weight.requires_grad_(False)
    before = _state(model)
    lb(model, torch.rand(2, 3, 16, 16, dtype=F64), opts=FAST)
    assert _state(model) == before

    calls = {"n": 0}
    original = T.Recorder.run_node

    def boom(self, n):
        calls["n"] += 1
        if calls["n"] == 4:
            raise NumericalError("injected")
        return original(self, n)

    monkeypatch.setattr(T.Recorder, "run_node", boom)
    with pytest.raises(NumericalError):
        lb(model, torch.rand(2, 3, 16, 16, dtype=F64), opts=FAST)
    assert _state(model) == before


# ---------------------------------------------------------------------------
# ONNX models (onnx2torch ops packaged as modules)


def test_onnx_lenet_matches_the_checkpoint_bound():
    from robaudit.models import load_model

    model = load_model(str(REPO / "sample_models" / "lenet_fmnist.onnx")).module.double()
    gb = lb(model, torch.rand(2, 1, 28, 28, dtype=F64), opts=FAST)
    ref = lb(_lenet(), torch.rand(2, 1, 28, 28, dtype=F64), opts=FAST)
    assert gb.lipschitz_upper == pytest.approx(ref.lipschitz_upper, rel=1e-5)  # float32 export of the same weights
    assert float(sigma_max(model, fmnist(50)).max()) <= gb.lipschitz_upper


def test_onnx_mnist8_bound_dominates_jacobians():
    path = SHARED / "onnx" / "mnist-8-opt.onnx"
    images = SHARED / "mnist" / "t10k-images-idx3-ubyte.gz"
    if not path.exists() or not images.exists():
        pytest.skip(f"shared asset not present: {path}")
    from robaudit.data.idx import read_idx
    from robaudit.models import load_model

    model = load_model(str(path)).module.double()
    gb = lb(model, torch.rand(2, 1, 28, 28, dtype=F64), opts=FAST)
    assert [r.type for r in gb.layers if r.bound.kind == "linear"] == ["OnnxGemm"]
    real = torch.from_numpy(read_idx(images)[:100].copy()).to(F64).div(255).unsqueeze(1)
    sig = torch.cat([sigma_max(model, real), sigma_max(model, torch.rand(100, 1, 28, 28, dtype=F64))])
    assert float(sig.max()) <= gb.lipschitz_upper
