"""CLI contract: exit codes, output channels, report round trips, start-up cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli


def run_probe(capsys, *args):
    code = cli("audit", "--analyses", "probe", "--quiet", *args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_does_not_import_torch():
    code = ("import sys, robaudit.cli.app as a\n"
            "assert 'torch' not in sys.modules, 'robaudit --help imports torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_version_and_help_exit_zero(capsys):
    from robaudit import __version__

    assert cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"robaudit {__version__}"
    assert cli("--help") == 0
    out = capsys.readouterr().out
    for command in ("info", "audit", "gate", "show", "compare"):
        assert command in out


@pytest.mark.parametrize("args, code, pattern", [
    (["no-such-command"], 2, "No such command"),
    (["info", "--no-such-flag"], 2, "No such option"),
    (["info", "/nonexistent/model.pt"], 2, "model.pt"),
    (["audit", "--analyses", "nrms"], 2, "did you mean 'norms'"),
    (["audit", "--profile", "fastest"], 2, "--profile"),
    (["audit", "--fail-above", "oops"], 2, "METRIC=VALUE"),
    (["info", "--device", "cuda:7"], 2, "--device"),
    (["info", "--mean", "0.5"], 2, "--mean and --std"),
    (["gate", "/nonexistent.json", "--fail-above", "x=1"], 2, "no such report"),
    (["show", "/nonexistent.json"], 2, "no such report"),
])
def test_usage_errors_exit_2_with_one_line(capsys, args, code, pattern):
    assert cli(*args) == code
    err = capsys.readouterr().err
    assert pattern in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_probe_report_values_match_direct_computation(tmp_path, capsys, probe_analysis):
    import torch

    from robaudit.data import load_data
    from robaudit.models import load_model

    report_path = tmp_path / "r.json"
    code, _, _ = run_probe(capsys, "--limit", "64", "-o", str(report_path))
    assert code == 0
    report = json.loads(report_path.read_text())
    model = load_model(None)
    data = load_data(None, limit=64)
    with torch.no_grad():
        logits = model.module(data.images(slice(None)))
    acc = (logits.argmax(1) == data.y).float().mean().item()
    section = report["analyses"]["probe"]
    assert section["accuracy"] == pytest.approx(acc, abs=1e-12)
    # standard profile (the default) sets scale=2 for the probe
    assert section["top_logit"] == pytest.approx(2 * logits.max(1).values.mean().item(), rel=1e-5)
    assert report["data"]["n"] == 64 and report["model"]["num_classes"] == 10


def test_precedence_profile_config_cli(tmp_path, capsys, probe_analysis, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "robaudit.yaml").write_text("limit: 16\nanalyses:\n  probe: {scale: 3.0, mode: max}\n")
    code, out, _ = run_probe(capsys, "--json")
    r1 = json.loads(out)
    assert code == 0 and r1["data"]["n"] == 16
    code, out, _ = run_probe(capsys, "--json", "--limit", "8")
    r2 = json.loads(out)
    assert r2["data"]["n"] == 8                                  # CLI over file
    import torch

    from robaudit.data import load_data
    from robaudit.models import load_model

    with torch.no_grad():
        top = load_model(None).module(load_data(None, limit=16).images(slice(None))).max(1).values
    # config (scale 3, mode max) over the standard profile's scale 2 over the default mean
    assert r1["analyses"]["probe"]["top_logit"] == pytest.approx(3 * top.max().item(), rel=1e-5)


def test_show_prints_exactly_what_the_run_printed(tmp_path, capsys, probe_analysis):
    report_path = tmp_path / "r.json"
    code, printed, _ = run_probe(capsys, "--limit", "32", "-o", str(report_path),
                                 "--fail-below", "probe.accuracy=0.5")
    assert code == 0
    assert cli("show", str(report_path)) == 0
    assert capsys.readouterr().out == printed


def test_gate_exit_codes_and_regate_without_recompute(tmp_path, capsys, probe_analysis):
    report_path = tmp_path / "r.json"
    code, out, _ = run_probe(capsys, "--limit", "32", "-o", str(report_path), "--fail-below", "probe.accuracy=1.01")
    assert code == 1 and "FAIL" in out
    report = json.loads(report_path.read_text())
    assert report["gate"]["passed"] is False
    acc = report["analyses"]["probe"]["accuracy"]
    assert cli("gate", str(report_path), "--fail-below", f"probe.accuracy={acc}") == 0   # equal passes
    assert cli("gate", str(report_path), "--fail-above", f"probe.accuracy={acc - 1e-9}") == 1
    assert cli("gate", str(report_path), "--fail-above", "probe.nope=1") == 2
    assert cli("gate", str(report_path)) == 2   # no thresholds


def test_markdown_and_json_schema(tmp_path, capsys, probe_analysis):
    jsonschema = pytest.importorskip("jsonschema")
    import importlib.resources

    md, report_path = tmp_path / "s.md", tmp_path / "r.json"
    code, _, _ = run_probe(capsys, "--limit", "16", "-o", str(report_path), "--markdown", str(md),
                           "--fail-above", "probe.top_logit=1e9")
    assert code == 0
    text = md.read_text()
    assert "gate **PASS**" in text and "`probe.accuracy`" in text
    schema = json.loads(importlib.resources.files("robaudit.report").joinpath("schema.json").read_text())
    jsonschema.validate(json.loads(report_path.read_text()), schema)


def test_compare_of_empty_reports_has_no_rows():
    from robaudit.report.compare import compare_reports

    a = {"analyses": {}, "model": {}}
    result = compare_reports(a, dict(a), fail_on_regression=5)
    assert result["rows"] == [] and result["regressions"] == []


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    from robaudit.report import io

    target = tmp_path / "r.json"
    target.write_text("old")
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        io.write_text_atomic(str(target), "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]   # no temp file left behind


def test_internal_error_is_exit_3_not_a_pass(capsys, probe_analysis, monkeypatch):
    import fake_analysis

    def boom(ctx, options):
        raise ZeroDivisionError("boom")

    from dataclasses import replace

    from robaudit import analyses

    monkeypatch.setattr(fake_analysis, "ANALYSIS", replace(fake_analysis.ANALYSIS, run=boom))
    real_get = analyses.get
    monkeypatch.setattr(analyses, "get", lambda name: fake_analysis.ANALYSIS if name == "probe" else real_get(name))
    code = cli("audit", "--analyses", "probe", "--limit", "4", "--quiet")
    err = capsys.readouterr().err
    assert code == 3
    assert "internal error: ZeroDivisionError: boom" in err and "--debug" in err


def test_gate_failure_exits_1_in_a_real_subprocess(tmp_path):
    env = dict(os.environ, COLUMNS="120")
    proc = subprocess.run([sys.executable, "-m", "robaudit", "audit", "--analyses", "norms", "--limit", "8",
                           "--quiet", "--fail-above", "norms.spectral.max=0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout


def test_ctrl_c_writes_the_finished_part_marked_incomplete(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import fake_analysis
    from robaudit import analyses

    def interrupted(ctx, options):
        exc = KeyboardInterrupt()
        exc.partial_section = {"accuracy": 0.5, "top_logit": 1.0}
        raise exc

    first = fake_analysis.ANALYSIS
    second = replace(first, name="probe2", run=interrupted)
    real_get = analyses.get
    fakes = {"probe": first, "probe2": second}
    monkeypatch.setattr(analyses, "get", lambda name: fakes.get(name) or real_get(name))
    monkeypatch.setitem(analyses.REGISTRY, "probe", "fake_analysis")
    monkeypatch.setitem(analyses.REGISTRY, "probe2", "fake_analysis")
    out = tmp_path / "r.json"
    code = cli("audit", "--analyses", "probe,probe2", "--limit", "8", "--quiet", "-o", str(out))
    assert code == 130
    report = json.loads(out.read_text())
    assert report["complete"] is False
    assert set(report["analyses"]) == {"probe", "probe2"}
    assert report["analyses"]["probe2"]["complete"] is False
    assert "INCOMPLETE" in capsys.readouterr().out
