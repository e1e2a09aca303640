"""Layers found by what they compute: F.conv2d inside custom modules, pad folding, BN fusion, refusals, lazy ONNX."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robaudit.bounds.compose import lipschitz_bound
from robaudit.bounds.rules import RuleOptions
from robaudit.errors import UnsupportedLayerError

F64 = torch.float64
OPTS = RuleOptions(dtype=F64, iters=200, tol=1e-10)


class SameConv(nn.Conv2d):
    """TF-style 'same' convolution (as in EfficientNet ports, timm's Conv2dSame): explicit F.pad, then F.conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StdConv(nn.Conv2d):
    """Weight-standardised convolution: the kernel is computed from the parameters on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def net(conv: type, *, stride2_pad: int = 1) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(conv(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      conv(8, 6, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(6 * 8 * 8, 4)).double().eval()
    gen = torch.Generator().manual_seed(1)
    bn = m[1]
    bn.running_var.copy_(torch.rand(8, generator=gen, dtype=F64) + 0.5)
    bn.weight.data.copy_(torch.rand(8, generator=gen, dtype=F64) * 2)
    return m


def rows(gb) -> list[tuple]:
    out = []
    for r in gb.layers:
        info = r.bound.info or {}
        out.append((r.name, r.type, r.input_shape, r.output_shape, r.bound.upper, r.bound.kind,
                    info.get("operator_norm"), info.get("circular_exact"), info.get("singla_bound"),
                    (r.fused or {}).get("upper")))
    return out


def test_same_padding_conv_gets_the_rows_and_bound_of_its_plain_twin():
    plain, same = net(nn.Conv2d), net(SameConv)
    same.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 8, 8, dtype=F64)
    assert torch.allclose(plain(x), same(x), atol=1e-12)  # twins: the same function
    a = lipschitz_bound(plain, x, opts=OPTS)
    b = lipschitz_bound(same, x, opts=OPTS)
    ra, rb = rows(a), rows(b)
    assert [r[:4] for r in ra] == [r[:4] for r in rb]
    for u, v in zip(ra, rb):
        for p, q in zip(u[4:], v[4:]):
            assert p == pytest.approx(q, rel=1e-9), (u[0], u, v)
    assert b.lipschitz_upper == pytest.approx(a.lipschitz_upper, rel=1e-12)
    assert [r.name for r in b.layers if r.fused] == ["0"]  # the functional conv is fused with its BatchNorm


def test_weight_standardised_conv_is_found_bounded_and_fused():
    model = net(StdConv)
    x = torch.rand(2, 3, 8, 8, dtype=F64)
    gb = lipschitz_bound(model, x, opts=OPTS)
    convs = [r for r in gb.layers if r.type == "Conv2d"]
    assert [r.name for r in convs] == ["0", "3"] and convs[0].fused is not None
    for r in convs:  # the bound is for the standardised kernel the layer really applies
        mod = model.get_submodule(r.name)
        w = mod.weight.detach()
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        jac = torch.autograd.functional.jacobian(lambda v: F.conv2d(v[None], w, None, 1, 1)[0],
                                                 torch.zeros(r.input_shape, dtype=F64))
        exact = float(torch.linalg.svdvals(jac.reshape(-1, math.prod(r.input_shape)))[0])
        assert r.bound.info["operator_norm"] == pytest.approx(exact, rel=1e-8)
        assert r.bound.upper >= exact


class Odd(nn.Module):
    """Two parameterised ops robaudit has no rule for, inside one module."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(4, 4, dtype=F64))
        self.g = nn.Parameter(torch.ones(4, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("bi,ij->bj", x, self.a)
        return F.layer_norm(x, (4,), self.g)


def test_every_unsupported_parameterised_op_is_listed_at_once():
    with pytest.raises(UnsupportedLayerError) as info:
        lipschitz_bound(Odd(), torch.rand(2, 4, dtype=F64), opts=OPTS)
    text = str(info.value)
    assert "2 layer(s)" in text and "einsum" in text and "layer_norm" in text


def test_bounding_a_torch_model_does_not_import_onnx2torch():
    code = ("import sys, torch\n"
            "from robaudit.bounds import lipschitz_bound, RuleOptions\n"
            "m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())\n"
            "lipschitz_bound(m, torch.rand(1, 1, 5, 5), opts=RuleOptions(iters=3))\n"
            "print('onnx2torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_onnx_model_registers_its_op_rules_on_use_and_matches_its_torch_twin(tmp_path):
    pytest.importorskip("onnx2torch")
    from robaudit.analyses.layers import wrapper_rules
    from robaudit.models import load_model
    from robaudit.models.zoo import LeNet

    torch.manual_seed(0)
    net = LeNet().eval()
    path = tmp_path / "lenet.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), str(path), dynamo=False)
    rules, chains = wrapper_rules()
    x = torch.rand(2, 1, 28, 28, dtype=F64)
    onnx = lipschitz_bound(load_model(str(path)).module.double(), x, opts=OPTS, rules=rules, chains=chains)
    ref = lipschitz_bound(net.double(), x, opts=OPTS)
    assert onnx.lipschitz_upper == pytest.approx(ref.lipschitz_upper, rel=1e-9)
    assert sum(r.type == "Conv2d" for r in onnx.layers) == 2
