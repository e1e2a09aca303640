"""``robaudit linearity``: closed forms (linear model: deviation 0; ReLU network: 0 inside the
activation region, found by an independent walk along the ray, positive beyond), σ_max against
dense Jacobians, --layer, reproducibility, batch-size independence, report/CLI plumbing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from conftest import cli
from robaudit.analyses import linearity
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.errors import UsageError
from robaudit.geometry.linearity import LinearitySpec, deviation_of, first_exceeding
from robaudit.linalg.rng import keyed_sphere
from robaudit.models.adapt import adapt
from robaudit.models.guard import state_of

SHAPE = (1, 4, 4)
D = 16


def _ctx(net, x, y, batch_size=4, seed=0):
    loaded = adapt(net.float().eval(), input_shape=SHAPE)  # adapt probes in float32; then the whole net in float64
    loaded.module.double()
    data = AuditData(name="t", split="test", x=x, y=y, indices=torch.arange(len(x)) + 100)
    return AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float64,
                        batch_size=batch_size, seed=seed), loaded


def _opts(**kw):
    return linearity.ANALYSIS.make_options(kw)


def _relu_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 5))


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g, dtype=torch.float64), torch.arange(n) % 5


def test_linear_model_deviation_zero_and_sigma_is_norm_of_w():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, 5))
    x, y = _data()
    ctx, _ = _ctx(net, x, y)
    section = linearity.run(ctx, _opts(radii="0.05,0.5,3", steps=3))
    json.dumps(section, allow_nan=False)
    w_norm = float(torch.linalg.matrix_norm(net[1].weight.detach().double(), ord=2))
    for row in section["per_sample"]:
        assert row["beyond_max"] and row["linearity_radius"] is None
        for kind in ("random", "adversarial"):
            assert [e["radius"] for e in row[kind]] == [0.05, 0.5, 3.0]
            for e in row[kind]:
                assert e["deviation"] == pytest.approx(0.0, abs=1e-12)
                assert e["relative"] == pytest.approx(0.0, abs=1e-12)
                assert e["sigma_max"] == pytest.approx(w_norm, rel=1e-10)
    lr = section["linearity_radius"]
    assert lr["beyond_max"] == 6 and lr["median"] == 3.0  # censored at the largest radius


def _first_crossing(net, x, z):
    """Radius t* along x + t z where the first ReLU input changes sign: with the activation pattern
    frozen at x the network is affine, so every pre-activation is a + t·b until the first crossing."""
    lin = [m for m in net if isinstance(m, nn.Linear)]
    h, dh = x.reshape(-1), z
    t_star = math.inf
    for layer in lin[:-1]:
        a = layer.weight.detach() @ h + layer.bias.detach()
        b = layer.weight.detach() @ dh
        ratio = -a / b
        ahead = ratio[(ratio > 0) & (a != 0)]
        if ahead.numel():
            t_star = min(t_star, float(ahead.min()))
        mask = (a > 0).double()
        h, dh = mask * a, mask * b
    return t_star


def _pattern(net, x):
    """The recorded activation pattern (signs of every ReLU input) at the rows of x."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0] > 0)) for m in net if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat([s.reshape(s.shape[0], -1) for s in seen], dim=1)


def test_relu_network_zero_inside_activation_region_positive_beyond():
    net = _relu_net()
    x, y = _data(6, seed=2)
    radii = tuple(float(r) for r in np.geomspace(1e-3, 2.0, 14))
    ctx, _ = _ctx(net, x, y, batch_size=4, seed=5)
    section = linearity.run(ctx, _opts(radii=list(radii), adversarial=False, tol=1e-6, bisection_steps=40))
    z = keyed_sphere(torch.arange(6) + 100, (D,), seed=5, dtype=torch.float64)
    inside = beyond = 0
    for i, row in enumerate(section["per_sample"]):
        t_star = _first_crossing(net, x[i], z[i])
        base = _pattern(net, x[i:i + 1])
        for e in row["random"]:
            r = e["radius"]
            if r < t_star * (1 - 1e-9):
                inside += 1
                assert torch.equal(_pattern(net, x[i:i + 1] + r * z[i].reshape(1, *SHAPE)), base)
                assert e["deviation"] == pytest.approx(0.0, abs=1e-12)
            elif r > t_star * 1.01:
                beyond += 1
                assert e["deviation"] > 1e-9
        # bisection finds the crossing: t* ≤ radius, within the bracket and the tol slack
        found = row["random_radius"]
        if t_star < radii[-1]:
            assert found is not None and t_star * (1 - 1e-9) <= found <= t_star * (1 + 1e-3)
    assert inside >= 6 and beyond >= 6  # the grid straddles the crossings


def test_sigma_max_inside_region_equals_dense_jacobian():
    net = _relu_net()
    x, y = _data(4, seed=4)
    ctx, loaded = _ctx(net, x, y)
    section = linearity.run(ctx, _opts(radii="1e-4,1e-3", steps=2))
    for i, row in enumerate(section["per_sample"]):
        jac = torch.func.jacrev(loaded.module)(x[i:i + 1]).reshape(5, D)
        sigma = float(torch.linalg.svdvals(jac.detach())[0])
        for e in row["random"]:
            assert e["sigma_max"] == pytest.approx(sigma, rel=1e-9)


def test_layer_option_affine_layer_is_linear_and_hooks_are_removed():
    net = _relu_net()
    x, y = _data(5, seed=1)
    ctx, loaded = _ctx(net, x, y)
    before = state_of(loaded.module)
    section = linearity.run(ctx, _opts(radii="0.5,2", steps=2, layer="1", sigma_max=False))  # φ = first Linear
    assert state_of(loaded.module) == before
    assert section["phi"] == "1"
    for row in section["per_sample"]:
        for kind in ("random", "adversarial"):
            for e in row[kind]:
                assert e["deviation"] == pytest.approx(0.0, abs=1e-12) and e["sigma_max"] is None
    logits = linearity.run(ctx, _opts(radii="0.5,2", steps=2, sigma_max=False))
    assert max(e["deviation"] for r in logits["per_sample"] for e in r["random"]) > 1e-6
    with pytest.raises(UsageError, match="no submodule named 'nope'.*net.1"):
        linearity.run(ctx, _opts(layer="nope"))
    assert state_of(loaded.module) == before


def test_reproducible_and_independent_of_batch_size():
    net = _relu_net()
    x, y = _data(7, seed=6)
    opts = _opts(radii="0.05,0.3,1", steps=3, bisection_steps=12)
    runs = [linearity.run(_ctx(net, x, y, batch_size=b, seed=s)[0], opts)["per_sample"]
            for b, s in ((2, 0), (5, 0), (7, 0), (5, 1))]
    for other in runs[1:3]:
        for a, b in zip(runs[0], other):
            assert a["index"] == b["index"]
            for kind in ("random", "adversarial"):
                # torchattacks' PGD-ℓ2 divides the batch-mean loss gradient by (‖g‖ + 1e-10): the 1/B
                # scale leaks into the direction at ~1e-9 relative; random directions agree exactly
                np.testing.assert_allclose([e["deviation"] for e in a[kind]], [e["deviation"] for e in b[kind]],
                                           rtol=1e-6 if kind == "adversarial" else 1e-12, atol=1e-13)
            assert a["linearity_radius"] == pytest.approx(b["linearity_radius"], rel=1e-6)
    assert json.dumps(runs[0]) == json.dumps(linearity.run(_ctx(net, x, y, batch_size=2)[0], opts)["per_sample"])
    diff = [abs(a["random"][2]["deviation"] - b["random"][2]["deviation"]) for a, b in zip(runs[0], runs[3])]
    assert max(diff) > 1e-6  # another seed, other random directions


def test_engine_pieces():
    # relative deviation: 0/0 → 0, x/0 → inf; first exceeding index with NaN never bracketing
    dev, rel = deviation_of(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
                            torch.tensor([[0.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 1.0]))
    assert rel[0] == 0 and dev[1] == pytest.approx(math.sqrt(2)) and rel[1] == pytest.approx(math.sqrt(2))
    dev, rel = deviation_of(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1))
    assert math.isinf(float(rel[0]))
    rel = torch.tensor([[0.0, 0.2, 0.5], [float("nan"), 0.05, 0.01], [0.3, 0.0, 0.0]])
    assert first_exceeding(rel, 0.1).tolist() == [1, 3, 0]
    assert LinearitySpec(radii=(1.0,), pgd_steps=0).kinds == ("random",)


@pytest.mark.parametrize("values, message", [
    ({"radii": "0.5,0.1"}, "increasing"), ({"radii": "0,1"}, "positive"), ({"tol": 0}, "positive"),
    ({"radii": "a"}, "expected"), ({"steps": 0}, ">= 1")])
def test_bad_options_refused(values, message):
    with pytest.raises(UsageError, match=message):
        _opts(**values)


def test_summary_render_metrics_plot(tmp_path):
    net = _relu_net()
    x, y = _data(6, seed=8)
    ctx, _ = _ctx(net, x, y)
    section = json.loads(json.dumps(linearity.run(ctx, _opts(radii="0.01,0.2,2", steps=2, max_samples=5))))
    assert section["n"] == 5 and len(section["per_sample"]) == 5
    rows = section["per_sample"]
    for j, entry in enumerate(section["curves"]["random"]):
        devs = [r["random"][j]["deviation"] for r in rows]
        assert entry["deviation"]["median"] == pytest.approx(float(np.median(devs)), rel=1e-12)
        assert entry["deviation"]["p25"] == pytest.approx(float(np.quantile(devs, 0.25)), rel=1e-12)
    radii = [section["radii"][-1] if r["beyond_max"] else r["linearity_radius"] for r in rows]
    assert section["linearity_radius"]["median"] == pytest.approx(float(np.median(radii)))
    m = linearity.metrics(section)
    assert m["linearity.radius.median"].better.value == "higher"
    adv = [section["radii"][-1] if r["adversarial_radius"] is None else r["adversarial_radius"] for r in rows]
    assert m["linearity.radius.adversarial.median"].value == pytest.approx(float(np.median(adv)))
    assert m["linearity.adversarial@0.2.deviation"].value == section["curves"]["adversarial"][1]["deviation"]["median"]
    assert m["linearity.random@2.sigma_max"].better.value == "lower"
    import re
    for name in m:
        assert any(re.fullmatch(p, name) for p in linearity.ANALYSIS.metric_patterns), name
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    for r in linearity.render(section):
        console.print(r)
    assert "adversarial directions" in console.export_text()
    path = tmp_path / "lin.png"
    linearity.plot(section, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_linearity_on_sample_model(tmp_path, capsys):
    path = tmp_path / "l.png"
    code = cli("linearity", "--limit", "6", "--radii", "0.1,1", "--steps", "2", "--bisection-steps", "4",
               "--layer", "fc2", "--json", "--quiet", "--plot", str(path))
    out = capsys.readouterr().out
    assert code == 0, out
    section = json.loads(out)["analyses"]["linearity"]
    assert section["phi"] == "fc2" and section["n"] == 6 and path.stat().st_size > 1000
    assert cli("linearity", "--limit", "2", "--layer", "nope", "--quiet") == 2
    assert "no submodule named 'nope'" in capsys.readouterr().err
