"""``robaudit norms``: option resolution, the JSON section against dense truths, rendering, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rich.console import Console

from conftest import cli
from robaudit.analyses import norms
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.errors import UsageError
from robaudit.models.adapt import adapt
from test_linalg_models import MaxPoolCNN, dense_jacobians


# ---------------------------------------------------------------- option resolution (pure)

def _plan(c=10, d=784, batch=128, **values):
    return norms.plan(norms.ANALYSIS.make_options(values), num_classes=c, input_dim=d, batch_size=batch,
                      itemsize=4, float64=False)


@pytest.mark.parametrize("values, c, d, method, frob, k", [
    ({}, 10, 784, "exact", "exact", 3),
    ({}, 64, 784, "exact", "exact", 3),
    ({}, 100, 3072, "exact", "exact", 3),           # 32·100·3072·20 B < 512 MB
    ({}, 1000, 150528, "lanczos", "hutchinson", 1),  # ImageNet-sized: exceeds the budget; σ_max only by default
    ({"memory_mb": 1}, 100, 3072, "lanczos", "hutchinson", 1),
    ({"method": "power"}, 10, 784, "power", "exact", 1),
    ({"method": "lanczos", "top_k": 5}, 10, 784, "lanczos", "exact", 5),
    ({"frobenius": "hutchinson", "n_proj": 4}, 10, 784, "exact", "hutchinson", 3),
    ({}, 10, 2, "exact", "exact", 2),               # top_k capped at min(C, D)
])
def test_plan_resolves_auto(values, c, d, method, frob, k):
    p = _plan(c, d, **values)
    assert (p.method, p.frobenius, p.top_k) == (method, frob, k)
    assert p.method_requested == values.get("method", "auto")
    if method == "exact":
        assert p.iters is None and p.tol is None
    else:
        assert p.iters >= 1 and p.tol > 0


@pytest.mark.parametrize("values, pattern", [
    ({"method": "exact", "iters": 5}, "--iters"),
    ({"method": "exact", "tol": 1e-3}, "--tol"),
    ({"iters": 5}, "auto chose exact"),
    ({"frobenius": "exact", "n_proj": 8}, "--n-proj"),
    ({"top_k": 11}, r"min\(C, D\) = 10"),
    ({"method": "power", "top_k": 2}, "power"),
])
def test_plan_refuses_options_invalid_for_the_method(values, pattern):
    with pytest.raises(UsageError, match=pattern):
        _plan(**values)


# ---------------------------------------------------------------- run() on a small model, float64

@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = MaxPoolCNN(classes=7).eval()
    loaded = adapt(net, input_shape=(1, 10, 10))
    loaded.module.double()
    x = torch.rand(13, 1, 10, 10, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5])
    data = AuditData(name="t", split="test", x=x, y=y, indices=torch.arange(40, 53),
                     class_names=[f"c{i}" for i in range(7)])
    dense = dense_jacobians(loaded.module, x)
    return loaded, data, dense


def _ctx(loaded, data, batch_size=5):
    warnings: list[str] = []
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float64,
                       batch_size=batch_size, warn=warnings.append)
    return ctx, warnings


@pytest.mark.parametrize("values", [{}, {"method": "power", "tol": 1e-10, "iters": 3000},
                                    {"method": "lanczos", "tol": 1e-10, "top_k": 3}])
def test_section_matches_dense_jacobians(setup, values):
    loaded, data, dense = setup
    ctx, warnings = _ctx(loaded, data)
    section = norms.run(ctx, norms.ANALYSIS.make_options(values))
    json.dumps(section, allow_nan=False)  # JSON-safe as returned
    sv = torch.linalg.svdvals(dense).numpy()
    frob = dense.flatten(1).norm(dim=1).numpy()
    rows = section["per_sample"]
    assert [r["index"] for r in rows] == list(range(40, 53))
    spectral = np.array([r["spectral"] for r in rows])
    np.testing.assert_allclose(spectral, sv[:, 0], rtol=1e-4)
    np.testing.assert_allclose([r["frobenius"] for r in rows], frob, rtol=1e-4)
    np.testing.assert_allclose([r["stable_rank"] for r in rows], frob**2 / sv[:, 0] ** 2, rtol=1e-3)
    k = section["top_k"]
    np.testing.assert_allclose([r["top_k"] for r in rows], sv[:, :k], rtol=1e-4)
    assert all(r["converged"] for r in rows) and section["nonfinite"] == [] and not warnings
    # summary = numpy's statistics of the per-sample values (linear-interpolation percentiles)
    s = section["summary"]["spectral"]
    np.testing.assert_allclose([s["mean"], s["median"], s["p95"], s["max"]],
                               [sv[:, 0].mean(), np.median(sv[:, 0]), np.percentile(sv[:, 0], 95), sv[:, 0].max()],
                               rtol=1e-4)
    worst = int(np.argmax(sv[:, 0]))
    assert section["worst"]["index"] == 40 + worst
    assert section["per_class"]["0"]["n"] == 2 and section["per_class"]["6"]["n"] == 1
    assert section["per_class"]["0"]["name"] == "c0"
    np.testing.assert_allclose(section["per_class"]["0"]["spectral"]["max"], max(sv[0, 0], sv[7, 0]), rtol=1e-4)
    preds = loaded.module(data.x).argmax(1).tolist()
    assert [r["pred"] for r in rows] == preds and [r["label"] for r in rows] == data.y.tolist()
    # the per-sample σ_max is shared with the layers analysis (logit target only)
    np.testing.assert_allclose(ctx.cache["norms.sigma_max"].numpy(), spectral, rtol=1e-12)
    assert ctx.cache["norms.index"].tolist() == list(range(40, 53))
    assert section["method_requested"] == values.get("method", "auto")


def test_batch_size_does_not_change_rows(setup):
    loaded, data, _ = setup
    opts = norms.ANALYSIS.make_options({"method": "power", "frobenius": "hutchinson", "n_proj": 5, "iters": 50})
    a = norms.run(_ctx(loaded, data, batch_size=13)[0], opts)["per_sample"]
    b = norms.run(_ctx(loaded, data, batch_size=3)[0], opts)["per_sample"]
    for ra, rb in zip(a, b):
        assert ra["index"] == rb["index"]
        np.testing.assert_allclose([ra["spectral"], ra["frobenius"], ra["frobenius_stderr"]],
                                   [rb["spectral"], rb["frobenius"], rb["frobenius_stderr"]], rtol=1e-9)


def test_hutchinson_rows_carry_standard_errors(setup):
    loaded, data, dense = setup
    section = norms.run(_ctx(loaded, data)[0], norms.ANALYSIS.make_options({"frobenius": "hutchinson", "n_proj": 64}))
    frob = dense.flatten(1).norm(dim=1).numpy()
    est = np.array([r["frobenius"] for r in section["per_sample"]])
    se = np.array([r["frobenius_stderr"] for r in section["per_sample"]])
    assert section["frobenius_method"] == "hutchinson" and (se > 0).all()
    assert (np.abs(est - frob) <= 4 * se).all()


def test_probs_target_does_not_feed_the_lipschitz_cache(setup):
    loaded, data, dense = setup
    ctx, _ = _ctx(loaded, data)
    section = norms.run(ctx, norms.ANALYSIS.make_options({"target": "probs"}))
    assert "norms.sigma_max" not in ctx.cache
    probs = dense_jacobians(loaded.module, data.x, target="probs")
    np.testing.assert_allclose([r["spectral"] for r in section["per_sample"]],
                               torch.linalg.svdvals(probs)[:, 0].numpy(), rtol=1e-4)


class NanForSomeRows(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        out = self.lin(x.flatten(1))
        return out * torch.sqrt(1 - 2 * (x.flatten(1)[:, :1] > 0.5).to(x.dtype))


def test_nonfinite_samples_listed_by_index_not_averaged(setup):
    torch.manual_seed(0)
    loaded = adapt(NanForSomeRows(), input_shape=(1, 2, 2))
    loaded.module.double()
    x = torch.rand(6, 1, 2, 2, dtype=torch.float64) * 0.5
    x[1, 0, 0, 0] = x[4, 0, 0, 0] = 0.9
    data = AuditData(name="t", split="test", x=x, y=torch.zeros(6, dtype=torch.long), indices=torch.arange(100, 106))
    ctx, warnings = _ctx(loaded, data, batch_size=4)
    section = norms.run(ctx, norms.ANALYSIS.make_options({}))
    assert section["nonfinite"] == [101, 104]
    assert section["per_sample"][1]["spectral"] is None and section["per_sample"][4]["frobenius"] is None
    w = loaded.module.net.lin.weight.detach()
    np.testing.assert_allclose(section["summary"]["spectral"]["mean"], float(torch.linalg.matrix_norm(w, 2)), rtol=1e-10)
    assert any("101" in m for m in warnings)
    text = _render_text(section)
    assert "NaN/Inf Jacobian for 2 sample(s): indices 101, 104" in text


def _render_text(section) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    for r in norms.render(json.loads(json.dumps(section))):  # from JSON only
        console.print(r)
    return console.export_text()


def test_render_and_metrics_from_json(setup):
    loaded, data, _ = setup
    section = norms.run(_ctx(loaded, data)[0], norms.ANALYSIS.make_options({"per_sample": False}))
    assert "per_sample" not in section
    text = _render_text(section)
    assert "spectral σ_max" in text and "per class" in text and f"index {section['worst']['index']}" in text
    assert "auto: C = 7 ≤ 64" in text
    m = norms.metrics(section)
    for key in ("norms.spectral.mean", "norms.spectral.median", "norms.spectral.p95", "norms.spectral.max",
                "norms.frobenius.mean", "norms.frobenius.p95", "norms.stable_rank.mean"):
        assert isinstance(m[key].value, float)
    assert m["norms.spectral.max"].value == section["summary"]["spectral"]["max"]
    assert m["norms.spectral.max"].better == "lower" and m["norms.stable_rank.mean"].better == "neutral"
    assert m["norms.nonfinite"].value == 0.0


# ---------------------------------------------------------------- CLI

def test_cli_norms_json(capsys):
    code = cli("norms", "--limit", "20", "--json", "--quiet")
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    section = report["analyses"]["norms"]
    assert section["method"] == "exact" and section["method_requested"] == "auto" and section["n"] == 20
    assert set(section["summary"]) == {"spectral", "frobenius", "stable_rank"}
    assert set(section["summary"]["spectral"]) == {"mean", "median", "p95", "max"}
    assert {"index", "label", "pred", "spectral", "frobenius", "top_k", "stable_rank", "iterations",
            "converged"} <= set(section["per_sample"][0])
    assert 1 < section["summary"]["spectral"]["mean"] < 1000  # sensible for the sample LeNet
    assert all(r["spectral"] <= r["frobenius"] + 1e-9 for r in section["per_sample"])


@pytest.mark.parametrize("args, pattern", [
    (["--method", "exact", "--iters", "5"], "--iters"),
    (["--n-proj", "8", "--frobenius", "exact"], "--n-proj"),
    (["--top-k", "11"], "--top-k"),
])
def test_cli_invalid_options_exit_2(capsys, args, pattern):
    assert cli("norms", "--limit", "4", "--quiet", *args) == 2
    assert pattern in capsys.readouterr().err
