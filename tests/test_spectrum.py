"""``robaudit spectrum``: spectra against dense SVDs, alignment invariants, plot, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

from conftest import cli
from robaudit.analyses import spectrum
from robaudit.context import AuditContext
from robaudit.data.types import AuditData
from robaudit.models.adapt import adapt
from test_linalg_models import MaxPoolCNN, dense_jacobians


def _ctx(net, shape, x, y, batch_size=4):
    loaded = adapt(net.eval(), input_shape=shape)
    loaded.module.double()
    data = AuditData(name="t", split="test", x=x, y=y, indices=torch.arange(len(x)) + 10)
    warnings: list[str] = []
    return AuditContext(model=loaded, data=data, device=torch.device("cpu"), dtype=torch.float64,
                        batch_size=batch_size, warn=warnings.append), loaded


@pytest.fixture(scope="module")
def cnn_run():
    torch.manual_seed(0)
    x = torch.rand(9, 1, 10, 10, dtype=torch.float64)
    y = torch.arange(9) % 7
    ctx, loaded = _ctx(MaxPoolCNN(classes=7), (1, 10, 10), x, y)
    section = spectrum.run(ctx, spectrum.ANALYSIS.make_options({"eps": 0.3, "steps": 5}))
    return section, loaded, x


def test_spectra_match_dense_svd(cnn_run):
    section, loaded, x = cnn_run
    json.dumps(section, allow_nan=False)
    sv = torch.linalg.svdvals(dense_jacobians(loaded.module, x)).numpy()
    rows = section["per_sample"]
    assert section["rank"] == 7 and [r["index"] for r in rows] == list(range(10, 19))
    np.testing.assert_allclose([r["spectrum"] for r in rows], sv, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(section["spectrum"]["mean"], sv.mean(axis=0), rtol=1e-8)
    np.testing.assert_allclose(section["spectrum"]["median"], np.median(sv, axis=0), rtol=1e-8)
    np.testing.assert_allclose(section["spectrum"]["normalized_mean"], (sv / sv[:, :1]).mean(axis=0), rtol=1e-8)


def test_alignment_invariants(cnn_run):
    section, _, _ = cnn_run
    al = section["alignment"]
    for row in section["per_sample"]:
        for key in ("alignment_adversarial", "alignment_random"):
            cos = np.array(row[key])
            assert ((cos >= 0) & (cos <= 1 + 1e-12)).all()
            assert (cos**2).sum() <= 1 + 1e-9  # orthonormal v_r: Bessel's inequality
        assert row["delta_norm"] <= al["eps"] + 1e-9
    # a random direction puts about r/D of its energy in the row space; the attack far more
    assert al["row_space_energy"]["adversarial"] > 5 * al["row_space_energy"]["random_expected"]
    assert al["random_expected_abs_cos"] == pytest.approx(math.sqrt(2 / (math.pi * 100)))


def test_linear_model_adversarial_perturbation_lies_in_row_space():
    # For a linear model the PGD gradient Wᵀ(p − e_y) lies in the row space of J = W,
    # so (without clipping) Σ_r cos(δ, v_r)² = 1 exactly.
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4))
    x = 0.4 + 0.2 * torch.rand(6, 1, 6, 6, dtype=torch.float64)
    ctx, _ = _ctx(net, (1, 6, 6), x, torch.arange(6) % 4)
    section = spectrum.run(ctx, spectrum.ANALYSIS.make_options({"eps": 0.05, "steps": 3}))
    for row in section["per_sample"]:
        assert sum(c * c for c in row["alignment_adversarial"]) == pytest.approx(1.0, abs=1e-9)
        w = net[1].weight.detach().double()
        np.testing.assert_allclose(row["spectrum"], torch.linalg.svdvals(w).numpy(), rtol=1e-10)


def test_max_samples_and_render_and_plot(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(9, 1, 10, 10, dtype=torch.float64)
    ctx, _ = _ctx(MaxPoolCNN(classes=7), (1, 10, 10), x, torch.full((9,), -1))  # unknown labels: attack the prediction
    section = spectrum.run(ctx, spectrum.ANALYSIS.make_options({"max_samples": 5, "steps": 2, "per_sample": False}))
    assert section["n"] == 5 and "per_sample" not in section
    section = json.loads(json.dumps(section))
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    for r in spectrum.render(section):
        console.print(r)
    text = console.export_text()
    assert "|cos| adversarial" in text and "row space" in text
    m = spectrum.metrics(section)
    assert m["spectrum.alignment.adversarial.top1"].value == section["alignment"]["adversarial"]["mean"][0]
    assert m["spectrum.sigma_max.max"].value == section["summary"]["sigma_max"]["max"]
    path = tmp_path / "spec.png"
    spectrum.plot(section, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_spectrum_with_plot(tmp_path, capsys):
    path = tmp_path / "s.png"
    code = cli("spectrum", "--limit", "8", "--steps", "3", "--json", "--quiet", "--plot", str(path))
    out = capsys.readouterr().out
    assert code == 0, out
    section = json.loads(out)["analyses"]["spectrum"]
    assert section["rank"] == 10 and len(section["spectrum"]["mean"]) == 10
    assert section["spectrum"]["mean"] == sorted(section["spectrum"]["mean"], reverse=True)
    assert path.exists() and path.stat().st_size > 1000
