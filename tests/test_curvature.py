"""``robaudit curvature``: plan, the JSON section against dense Hessians, ReLU note, render, metrics, plot, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from robaudit.analyses import curvature
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.errors import UsageError
from robaudit.models.adapt import adapt

F64 = torch.float64


def _plan(d=784, **values):
    return curvature.plan(curvature.ANALYSIS.make_options(values), input_dim=d)


@pytest.mark.parametrize("values, method, k, iters, extra", [
    ({}, "lanczos", 3, 100, True),
    ({"target": "margin"}, "lanczos", 3, 100, False),
    ({"radius": False}, "lanczos", 3, 100, False),
    ({"method": "power", "k": 1, "iters": 500}, "power", 1, 500, True),
    ({"method": "exact"}, "exact", 3, None, True),
    ({"iters": 5000}, "lanczos", 3, 784, True),  # Krylov dimension capped at D
])
def test_plan(values, method, k, iters, extra):
    p = _plan(**values)
    assert (p.method, p.k, p.iters, p.extra_margin) == (method, k, iters, extra)


@pytest.mark.parametrize("values, d, pattern", [
    ({"method": "power"}, 784, "power iteration"),            # k = 3 by default
    ({"method": "exact", "iters": 5}, 784, "--iters"),
    ({"method": "exact", "tol": 1e-3}, 784, "--tol"),
    ({"method": "exact"}, 3072, "at most 1024"),
    ({"k": 5}, 4, "D = 4"),
    ({"iters": 2}, 784, "at least -k = 3"),
    ({"tol": 0.0}, 784, "positive"),
])
def test_plan_refuses(values, d, pattern):
    with pytest.raises(UsageError, match=pattern):
        _plan(d, **values)


def smooth_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.GELU(), nn.Linear(12, 5))


def relu_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))


def setup(net: nn.Module, n: int = 7):
    loaded = adapt(net, input_shape=(1, 4, 4))
    loaded.module.double().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(n, 1, 4, 4, dtype=F64, generator=g)
    y = torch.randint(5, (n,), generator=g)
    data = AuditData(name="t", split="test", x=x, y=y, indices=torch.arange(20, 20 + n))
    return loaded, data


def _ctx(loaded, data, batch_size=3, cache=None):
    warnings: list[str] = []
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=F64, batch_size=batch_size,
                       warn=warnings.append)
    if cache:
        ctx.cache.update(cache)
    return ctx, warnings


def dense(model, x, y, target):
    """Dense input Hessians per sample from torch.autograd.functional.hessian (runner-up fixed at x)."""
    out = []
    for xi, yi in zip(x, y):
        z = model(xi[None]).detach()[0]
        other = int(torch.cat([z[:yi], torch.tensor([-np.inf], dtype=F64), z[yi + 1:]]).argmax())

        def f(v, yi=int(yi), other=other):
            logits = model(v[None])[0]
            if target == "loss":
                return -torch.log_softmax(logits, 0)[yi]
            return logits[yi] - logits[other]

        out.append(torch.autograd.functional.hessian(f, xi).reshape(xi.numel(), xi.numel()))
    return torch.linalg.eigvalsh(torch.stack(out))


def by_magnitude(values, k):
    return values.gather(1, values.abs().argsort(dim=1, descending=True)[:, :k])


@pytest.mark.parametrize("target", ["loss", "margin"])
def test_section_matches_dense_hessians(target):
    loaded, data = setup(smooth_net())
    ctx, warnings = _ctx(loaded, data, cache={"linearity.radius": {20: 0.5, 21: None}})
    section = curvature.run(ctx, curvature.ANALYSIS.make_options({"target": target, "tol": 1e-10}))
    json.dumps(section, allow_nan=False)
    rows = section["per_sample"]
    assert [r["index"] for r in rows] == list(range(20, 27))
    truth = by_magnitude(dense(loaded.module, data.x, data.y, target), 3).numpy()
    np.testing.assert_allclose([r["eigenvalues"] for r in rows], truth, rtol=1e-4)
    assert all(r["converged"] and r["error_bound"] <= 1e-10 for r in rows) and not warnings
    margin_truth = by_magnitude(dense(loaded.module, data.x, data.y, "margin"), 1)[:, 0].numpy()
    np.testing.assert_allclose([r["margin_lambda_max"] for r in rows], margin_truth, rtol=1e-4)
    z = loaded.module(data.x).detach()
    zy = z.gather(1, data.y[:, None])[:, 0]
    zt = z.scatter(1, data.y[:, None], -np.inf).max(dim=1).values
    margin = (zy - zt).numpy()
    np.testing.assert_allclose([r["margin"] for r in rows], margin, rtol=1e-10)
    np.testing.assert_allclose([r["radius"] for r in rows], np.sqrt(2 * np.abs(margin) / np.abs(margin_truth)), rtol=1e-4)
    abs_max = np.abs(truth[:, 0])
    s = section["summary"][target]["abs_lambda_max"]
    np.testing.assert_allclose([s["median"], s["p95"]], [np.median(abs_max), np.percentile(abs_max, 95)], rtol=1e-4)
    assert set(section["summary"]) == ({"loss", "margin"} if target == "loss" else {"margin"})
    assert section["worst"][0]["index"] == 20 + int(np.argmax(abs_max))
    assert section["activations"]["piecewise_linear"] is False and section["activations"]["curved"] == ["GELU"]
    assert section["note"] is None
    assert rows[0]["linearity_radius"] == 0.5 and rows[1]["linearity_radius"] is None
    assert section["linearity"]["n"] == 1


def test_batch_size_does_not_change_rows():
    loaded, data = setup(smooth_net())
    opts = curvature.ANALYSIS.make_options({"iters": 6, "k": 2})  # capped: results depend on the start vectors
    a = curvature.run(_ctx(loaded, data, batch_size=7)[0], opts)["per_sample"]
    b = curvature.run(_ctx(loaded, data, batch_size=2)[0], opts)["per_sample"]
    np.testing.assert_allclose([r["eigenvalues"] for r in a], [r["eigenvalues"] for r in b], rtol=1e-10)
    assert [r["hvps"] for r in a] == [r["hvps"] for r in b]


def test_relu_network_is_said_plainly_and_loss_hessian_still_computed():
    loaded, data = setup(relu_net())
    ctx, warnings = _ctx(loaded, data)
    section = curvature.run(ctx, curvature.ANALYSIS.make_options({"method": "exact"}))
    rows = section["per_sample"]
    assert section["activations"]["piecewise_linear"] is True and section["activations"]["margin_flat"] is True
    assert "margin Hessian is 0" in section["note"] and any("piecewise-linear" in w for w in warnings)
    # loss Hessian = Jᵀ(diag(p) − ppᵀ)J from the exact Jacobian
    from robaudit.linalg import JacobianOperator, jacobian

    j = jacobian(JacobianOperator(loaded.module, data.x))
    p = torch.softmax(loaded.module(data.x), 1).detach()
    h = j.transpose(1, 2) @ (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) @ j
    np.testing.assert_allclose([r["eigenvalues"] for r in rows], by_magnitude(torch.linalg.eigvalsh(h), 3).numpy(),
                               rtol=1e-6, atol=1e-12)
    assert all(r["margin_lambda_max"] == 0.0 and r["flat"] and r["radius"] is None for r in rows)
    assert section["radius"]["flat"] == 7 and section["radius"]["median"] is None
    assert curvature.metrics(section)["curvature.radius.median"].value is None


def _render_text(section) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    for r in curvature.render(json.loads(json.dumps(section))):
        console.print(r)
    return console.export_text()


def test_render_metrics_plot(tmp_path):
    loaded, data = setup(smooth_net())
    section = curvature.run(_ctx(loaded, data)[0], curvature.ANALYSIS.make_options({}))
    text = _render_text(section)
    assert "|λ_max| loss" in text and "|λ_max| margin" in text and "second-order radius" in text
    assert "largest |λ_max|" in text and "all converged" in text
    m = curvature.metrics(section)
    assert set(m) == {"curvature.loss.abs_lambda_max.median", "curvature.loss.abs_lambda_max.p95",
                      "curvature.margin.abs_lambda_max.median", "curvature.margin.abs_lambda_max.p95",
                      "curvature.radius.median", "curvature.not_converged", "curvature.nonfinite"}
    import re

    for name, metric in m.items():
        assert any(re.fullmatch(p, name) for p in curvature.ANALYSIS.metric_patterns), name
    assert m["curvature.loss.abs_lambda_max.p95"].better == "lower"
    assert m["curvature.radius.median"].better == "higher"
    assert m["curvature.loss.abs_lambda_max.median"].value == section["summary"]["loss"]["abs_lambda_max"]["median"]
    out = tmp_path / "curv.png"
    curvature.plot(section, str(out))
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_not_converged_is_reported():
    loaded, data = setup(smooth_net())
    ctx, warnings = _ctx(loaded, data)
    section = curvature.run(ctx, curvature.ANALYSIS.make_options({"iters": 3, "tol": 1e-12, "radius": False}))
    assert section["convergence"]["not_converged"] == 7 and "radius" not in section
    assert all(not r["converged"] and r["error_bound"] > 1e-12 for r in section["per_sample"])
    assert any("did not reach" in w for w in warnings)
    assert "did not converge" in _render_text(section)
    assert curvature.metrics(section)["curvature.not_converged"].value == 7.0


def test_module_does_not_import_torch():
    code = "import sys, robaudit.analyses.curvature; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_curvature_json(capsys, tmp_path):
    from conftest import cli

    code = cli("curvature", "--limit", "6", "-k", "2", "--json", "--quiet", "--plots", str(tmp_path))
    out = capsys.readouterr().out
    assert code == 0
    section = json.loads(out)["analyses"]["curvature"]
    assert section["target"] == "loss" and section["n"] == 6 and section["k"] == 2
    assert {"index", "eigenvalues", "converged"} <= set(section["per_sample"][0])
    assert all(len(r["eigenvalues"]) == 2 and r["converged"] for r in section["per_sample"])
    # the sample LeNet is a ReLU network: said in the report, margin flat, loss curvature PSD
    assert section["activations"]["piecewise_linear"] is True and section["activations"]["margin_flat"] is True
    assert all(r["eigenvalues"][0] > 0 for r in section["per_sample"])
    assert (tmp_path / "curvature.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, pattern", [
    (["--method", "power"], "power iteration"),
    (["--method", "exact", "--tol", "1e-3"], "--tol"),
    (["--tol", "nan"], "tol"),
])
def test_cli_invalid_options_exit_2(capsys, args, pattern):
    from conftest import cli

    assert cli("curvature", "--limit", "4", "--quiet", *args) == 2
    err = capsys.readouterr().err
    assert pattern in err and "Traceback" not in err


class FunctionalGelu(nn.Module):
    """GELU called functionally: invisible to the module scan, visible in the margin Hessian."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(16, 12), nn.Linear(12, 5)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x.flatten(1))))


def test_observed_curvature_overrides_the_module_scan():
    loaded, data = setup(FunctionalGelu(), n=3)
    ctx, warnings = _ctx(loaded, data)
    section = curvature.run(ctx, curvature.ANALYSIS.make_options({"k": 1}))
    act = section["activations"]
    assert act["margin_flat"] is False and act["piecewise_linear"] is False and "not 0" in act["evidence"]
    assert section["note"] is None and not any("piecewise-linear" in w for w in warnings)
    assert all(r["radius"] is not None and r["radius"] > 0 for r in section["per_sample"])
