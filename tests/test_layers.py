"""``robaudit layers``: the JSON section against independent computations, rendering, metrics, CLI, hygiene."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from conftest import cli
from robaudit.analyses import layers
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.errors import UnsupportedLayerError, UsageError
from robaudit.models import zoo
from robaudit.models.adapt import adapt

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]



def dense_sigma(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample σ_max of the Jacobian by vmap(jacrev) + SVD (independent of robaudit.linalg)."""
    jac = torch.func.vmap(torch.func.jacrev(lambda v: model(v.unsqueeze(0)).squeeze(0)))(x)
    return torch.linalg.svdvals(jac.reshape(x.shape[0], jac.shape[1], -1))[:, 0].detach()


@pytest.fixture(scope="module")
def lenet():
    ck = torch.load(REPO / "sample_models" / "lenet_fmnist.pt", weights_only=True)
    net = zoo.build(ck["arch"], **ck["arch_kwargs"])
    net.load_state_dict(ck["state_dict"])
    loaded = adapt(net, input_shape=(1, 28, 28), mean=ck["meta"]["mean"], std=ck["meta"]["std"])
    loaded.module.double()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 28, 28, dtype=F64, generator=gen)
    with torch.no_grad():
        y = loaded.module(x).argmax(1)
    y[::5] = (y[::5] + 1) % 10  # a few wrong labels
    data = AuditData(name="t", split="test", x=x, y=y, indices=torch.arange(100, 124))
    return loaded, data


def _ctx(loaded, data, **kw):
    warnings: list[str] = []
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=F64, batch_size=10,
                       warn=warnings.append, **kw)
    return ctx, warnings


def _opts(**values):
    return layers.ANALYSIS.make_options({"iters": 200, "tol": 1e-9, **values})


@pytest.fixture(scope="module")
def section(lenet):
    loaded, data = lenet
    ctx, _ = _ctx(loaded, data)
    sec = layers.run(ctx, _opts(radii="0, 0.001, 0.005, 1/255, 0.05", gram=True))
    return sec, ctx


def test_section_keys_and_json(section):
    sec, _ = section
    json.dumps(sec, allow_nan=False)
    for key in ("layers", "lipschitz_upper", "lipschitz_lower", "ratio", "certified", "unbounded", "method"):
        assert key in sec
    conv = next(r for r in sec["layers"] if r["type"] == "Conv2d")
    for key in ("name", "type", "input_shape", "operator_norm", "circular_exact", "singla_bound", "gram_bound",
                "heuristic", "iterations", "converged", "ratios", "upper"):
        assert key in conv
    assert conv["input_shape"] == [1, 28, 28] and conv["name"] == "net.conv1"
    assert [r["input_shape"] for r in sec["layers"] if r["type"] == "Linear"] == [[400], [120], [84]]


def test_layer_numbers_against_dense_truths(section, lenet):
    sec, _ = section
    model = lenet[0].module
    for row in sec["layers"]:
        if row["type"] == "Linear":
            w = model.get_submodule(row["name"]).weight.detach()
            exact = float(torch.linalg.svdvals(w)[0])
            assert row["exact"] == pytest.approx(exact, rel=1e-12)
            assert row["operator_norm"] == pytest.approx(exact, rel=1e-6)
        if row["type"] == "Conv2d":
            conv = model.get_submodule(row["name"])
            shape = tuple(row["input_shape"])
            jac = torch.autograd.functional.jacobian(
                lambda v: conv._conv_forward(v.unsqueeze(0), conv.weight.detach(), None).squeeze(0),
                torch.zeros(shape, dtype=F64))
            exact = float(torch.linalg.svdvals(jac.reshape(-1, math.prod(shape)))[0])
            assert row["operator_norm"] == pytest.approx(exact, rel=1e-4)
            for key in ("circular_exact", "singla_bound", "gram_bound", "upper"):
                assert row[key] >= exact
            assert row["ratios"]["singla_bound"] == pytest.approx(row["singla_bound"] / row["operator_norm"])
            assert row["gram_bound"] <= 1.01 * row["circular_exact"]
        if row["type"] == "Normalize":
            assert row["exact"] == pytest.approx(1 / model.normalize.std.min().item())


def test_bracket_and_certified_radii(section, lenet):
    sec, ctx = section
    loaded, data = lenet
    model = loaded.module
    sigma = dense_sigma(model, data.x)
    assert sec["lipschitz_lower"] == pytest.approx(float(sigma.max()), rel=1e-6)
    assert sec["lipschitz_upper"] >= sec["lipschitz_lower"]
    assert sec["ratio"] == pytest.approx(sec["lipschitz_upper"] / sec["lipschitz_lower"])
    assert ctx.cache["lipschitz_upper"] == sec["lipschitz_upper"]
    with torch.no_grad():
        logits = model(data.x)
    top2 = logits.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).tolist()
    radius = [m / (math.sqrt(2) * sec["lipschitz_upper"]) for m in margin]
    rows = sec["per_sample"]
    assert [r["index"] for r in rows] == list(range(100, 124))
    for r, m, rad, s in zip(rows, margin, radius, sigma.tolist()):
        assert r["margin"] == pytest.approx(m, rel=1e-9)
        assert r["certified_radius"] == pytest.approx(rad, rel=1e-9)
        assert r["sigma_max"] == pytest.approx(s, rel=1e-6)
    correct = (logits.argmax(1) == data.y).tolist()
    cert = sec["certified"]
    assert cert["clean_accuracy"] == pytest.approx(sum(correct) / len(correct))
    for text, r in (("0.001", 0.001), ("0.005", 0.005), ("1/255", 1 / 255), ("0.05", 0.05)):
        expected = sum(1 for c, rad in zip(correct, radius) if c and rad >= r) / len(correct)
        assert cert["accuracy"][text] == pytest.approx(expected)
    accs = [cert["accuracy"][t] for t in cert["radii"]]
    assert accs[0] == pytest.approx(cert["clean_accuracy"])  # radius 0: every correct sample with margin > 0
    radii_values = [0, 0.001, 0.005, 1 / 255, 0.05]
    order = sorted(range(len(accs)), key=lambda i: radii_values[i])
    assert all(accs[order[i]] >= accs[order[i + 1]] for i in range(len(order) - 1))
    per = [r["certified_radius"] for r in sec["per_sample"]]
    assert torch.allclose(torch.tensor(per, dtype=F64), torch.tensor(radius, dtype=F64))


def test_lower_bound_reuses_norms_cache(lenet):
    loaded, data = lenet
    ctx, _ = _ctx(loaded, data)
    ctx.cache["norms.sigma_max"] = torch.tensor([1.0, 7.5, 2.0], dtype=F64)
    ctx.cache["norms.index"] = torch.tensor([100, 101, 102])
    sec = layers.run(ctx, _opts(iters=0))
    assert sec["lipschitz_lower"] == 7.5  # taken from the cache, not recomputed
    assert sec["per_sample"][1]["sigma_max"] == 7.5 and sec["per_sample"][5]["sigma_max"] is None


def test_without_data(lenet):
    loaded, _ = lenet
    ctx, _ = _ctx(loaded, None)
    sec = layers.run(ctx, _opts(iters=0))
    assert sec["lipschitz_upper"] > 0 and sec["lipschitz_lower"] is None and sec["certified"] is None
    assert layers.ANALYSIS.needs_data is False
    assert sec["layers"][1]["operator_norm"] is None  # --iters 0 skips the power iteration


def test_render_from_json_round_trip(section):
    sec, _ = section

    def text(s):
        console = Console(width=200, record=True, file=open("/dev/null", "w"))
        for r in layers.render(s):
            console.print(r)
        return console.export_text()

    out = text(sec)
    assert out == text(json.loads(json.dumps(sec)))
    assert "Lipschitz bracket" in out and "NOT a bound" in out and "net.conv1" in out
    assert "certified ℓ2 accuracy" in out and "1/255" in out


def test_metrics(section):
    sec, _ = section
    m = {k: getattr(v, "value", v) for k, v in layers.metrics(sec).items()}
    assert m["lipschitz_upper"] == sec["lipschitz_upper"] and m["lipschitz_lower"] == sec["lipschitz_lower"]
    assert m["layers.lipschitz_gap"] == sec["ratio"]
    assert m["certified_accuracy@1/255"] == sec["certified"]["accuracy"]["1/255"]
    declared = layers.metrics(sec)
    assert declared["certified_accuracy@1/255"].better == "higher" and declared["lipschitz_upper"].better == "lower"
    assert m["layers.unbounded"] == 0.0


@pytest.mark.parametrize("text", ["", "a", "0.1,-1", "nan"])
def test_bad_radii(text):
    # parsed once, when the options are made (a bad value fails before any analysis runs)
    with pytest.raises(UsageError, match="--radii"):
        layers.ANALYSIS.make_options({"radii": text}, sources={"radii": "--radii"})


def test_radii_keep_their_labels():
    opts = layers.ANALYSIS.make_options({"radii": "0, 36/255,0.1"})
    assert opts.radii == (("0", 0.0), ("36/255", 36 / 255), ("0.1", 0.1))


class WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.norm(self.fc(x.flatten(1))))


def test_unbounded_layers_refused_or_reported():
    loaded = adapt(WithLayerNorm(), input_shape=(1, 2, 3))
    x = torch.rand(5, 1, 2, 3)
    data = AuditData(name="t", split="test", x=x, y=torch.zeros(5, dtype=torch.long), indices=torch.arange(5))
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(UnsupportedLayerError, match="net.norm"):
        layers.run(ctx, _opts())
    warnings: list[str] = []
    ctx = AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float32,
                       warn=warnings.append)
    sec = layers.run(ctx, _opts(allow_unbounded=True))
    assert sec["lipschitz_upper"] is None and ctx.cache["lipschitz_upper"] is None
    assert sec["certified"]["available"] is False
    assert sec["unbounded"] == [{"name": "net.norm", "type": "LayerNorm",
                                 "reason": "divides by the input's own standard deviation: not globally Lipschitz"}]
    assert any("no Lipschitz bound" in w for w in warnings)
    assert getattr(layers.metrics(sec)["lipschitz_upper"], "value", 0) is None  # the gate fails on null
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    for r in layers.render(sec):
        console.print(r)
    out = console.export_text()
    assert "unbounded" in out and "not available" in out


def test_model_left_as_found_after_injected_failure(lenet, monkeypatch):
    loaded, data = lenet
    model = loaded.module
    model.net.fc1.train()
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    import robaudit.linalg

    def boom(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(robaudit.linalg, "sigma_max", boom)
    ctx, _ = _ctx(loaded, data)
    with pytest.raises(RuntimeError, match="injected"):
        layers.run(ctx, _opts(iters=0))
    after = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    assert after == before
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    model.net.fc1.eval()


def test_cli_layers_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = cli("layers", "--data", "embedded", "--limit", "16", "--iters", "20", "--radii", "0.001,0.01", "-o", str(out), "--quiet")
    assert code == 0
    report = json.loads(out.read_text())
    sec = report["analyses"]["layers"]
    assert sec["lipschitz_upper"] >= sec["lipschitz_lower"] > 0
    assert set(sec["certified"]["accuracy"]) == {"0.001", "0.01"}
    assert "Lipschitz bracket" in capsys.readouterr().out


def test_cli_bad_radii_exit_2(capsys):
    assert cli("layers", "--limit", "4", "--radii", "x", "--quiet") == 2


def test_metric_patterns_cover_every_alias(section):
    import re

    aliases = layers.metrics(section[0])
    for alias in aliases:
        assert any(re.fullmatch(p, alias) for p in layers.ANALYSIS.metric_patterns), alias
