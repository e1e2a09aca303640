"""The Python API (issue 11 §4): loaders, audit → Report, direct numbers, plain nn.Modules left as found."""

from __future__ import annotations

import json
import runpy

import pytest
import torch

from conftest import REPO

EXAMPLE = REPO / "docs" / "api_example.py"


@pytest.fixture(scope="module")
def linear():
    """A linear classifier: J(x) = W everywhere, so every norm and bound has a closed form."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    w = net[1].weight.detach().double()
    return net, torch.linalg.matrix_norm(w, 2).item(), torch.linalg.matrix_norm(w, "fro").item()


def test_load_data_gives_float_tensors_in_unit_range():
    import robaudit

    data = robaudit.load_data(limit=10)
    x, y = data
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (10, 1, 28, 28) and len(data) == 10
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert data.class_names and data.class_names[0] == "T-shirt/top"


def test_jacobian_norms_of_a_linear_map_are_its_matrix_norms(linear):
    import robaudit

    net, spec, frob = linear
    net.train()
    x = robaudit.load_data(limit=5).x
    for method in ("exact", "power", "lanczos"):
        r = robaudit.jacobian_norms(net, x, method=method, iters=200)
        torch.testing.assert_close(r.spectral, torch.full((5,), spec, dtype=torch.float64), rtol=1e-5, atol=0)
        torch.testing.assert_close(r.frobenius, torch.full((5,), frob, dtype=torch.float64), rtol=1e-5, atol=0)
    assert net.training, "the caller's train mode was changed"


@pytest.mark.filterwarnings("ignore:clean accuracy:UserWarning")
def test_audit_on_a_plain_module_matches_closed_forms_and_leaves_it_as_found(linear):
    import robaudit

    net, spec, frob = linear
    net.train()
    net[1].weight.requires_grad_(True)
    hooks_before = dict(net._forward_hooks)
    data = robaudit.load_data(limit=32)
    report = robaudit.audit(net, (data.x, data.y), analyses="norms,layers", warn=lambda m: None)
    m = report.metrics
    assert m["norms.spectral.max"] == pytest.approx(spec, rel=1e-5)
    assert m["norms.frobenius.mean"] == pytest.approx(frob, rel=1e-5)
    # AutoLip of one linear layer is its exact spectral norm: the bracket closes (up to float32 rounding slack)
    assert m["lipschitz_upper"] == pytest.approx(spec, rel=1e-3)
    assert m["lipschitz_upper"] >= m["lipschitz_lower"] * (1 - 1e-6)
    assert net.training and net[1].weight.requires_grad and dict(net._forward_hooks) == hooks_before
    bracket = robaudit.lipschitz_bracket(net, data)
    assert bracket.lower == pytest.approx(spec, rel=1e-5) and bracket.upper == pytest.approx(spec, rel=1e-3)
    bounds = robaudit.layer_bounds(net, input_shape=(1, 28, 28))
    assert bounds["lipschitz_upper"] == pytest.approx(spec, rel=1e-3)


def test_report_round_trips_and_gates(tmp_path):
    import robaudit
    from robaudit.report.io import read_report

    report = robaudit.audit(None, robaudit.load_data(limit=16), analyses=["norms"], profile="quick")
    assert isinstance(report, robaudit.Report)
    path = tmp_path / "r.json"
    text = report.to_json(str(path))
    assert json.loads(text) == read_report(str(path))
    value = report.metrics["norms.spectral.p95"]
    assert report.gate(fail_above={"norms.spectral.p95": value * 1.01})["passed"] is True
    failed = report.gate(fail_above={"norms.spectral.p95": value * 0.99})
    assert failed["passed"] is False and report.data["gate"] is failed
    assert "<html" in report._repr_html_()


def test_audit_shares_the_cli_engine_and_report(tmp_path):
    """The same analyses, options and seed give the same numbers from the API and the CLI."""
    import robaudit
    from conftest import cli

    out = tmp_path / "cli.json"
    assert cli("audit", "-a", "norms", "--profile", "quick", "-n", "16", "-q", "-o", str(out)) == 0
    from_cli = json.loads(out.read_text())
    from_api = robaudit.audit(None, robaudit.load_data(limit=16), analyses=["norms"], profile="quick").data
    assert from_api["analyses"]["norms"] == from_cli["analyses"]["norms"]


def test_api_rejects_bad_input_with_usage_errors(linear):
    import robaudit
    from robaudit.errors import ConfigError, UsageError

    net, _, _ = linear
    with pytest.raises(UsageError, match="input_shape"):
        robaudit.audit(net, None, analyses=["layers"])
    with pytest.raises(UsageError, match="uint8"):
        robaudit.audit(net, (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ConfigError, match="did you mean 'norms'"):
        robaudit.audit(None, None, analyses=["nroms"])
    with pytest.raises(UsageError, match="not among the analyses"):
        robaudit.audit(None, None, analyses=["layers"], norms={"method": "exact"})
    with pytest.raises(ConfigError, match="method"):
        robaudit.audit(None, None, analyses=["norms"], norms={"methd": "exact"})


def test_top_level_import_stays_light():
    import subprocess
    import sys

    code = "import sys, robaudit; print('torch' in sys.modules, callable(robaudit.audit))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_api_example_runs(tmp_path, monkeypatch, capsys):
    """docs/api_example.py (the README's API example, verbatim) runs as written."""
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "gate passed" in out and "Bracket(lower=" in out
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.html").exists()


def test_readme_shows_the_api_example():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert EXAMPLE.read_text(encoding="utf-8").strip() in readme, \
        "README's Python API example differs from docs/api_example.py (the file a test runs)"
