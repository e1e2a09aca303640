"""compare --fail-on-regression reads the directions the analyses declare, never metric names."""

from __future__ import annotations

import copy

import pytest

from robaudit import analyses
from robaudit.kinds import Better
from robaudit.report.compare import compare_reports


def _attacks(worst: float, noise: float = 0.8, cw: float = 0.5) -> dict:
    return {"analyses": {"attacks": {
        "clean_accuracy": 0.9, "norm": "linf",
        "eps": [{"label": "8/255", "value": 8 / 255}],
        "results": [{"attack": "pgd", "eps": 8 / 255, "eps_label": "8/255", "status": "ok",
                     "robust_accuracy": worst, "success_rate": 0.2, "violations": 0}],
        "worst_case": {"8/255": worst},
        "distances": {"cw": {"median_l2": cw, "mean_l2": cw, "success_rate": 1.0}},
        "noise": [{"sigma": 0.1, "sigma_label": "0.1", "accuracy": noise}]}},
        "model": {"path": "m.pt"}, "data": {"name": "d", "split": "test", "n": 10}}


@pytest.mark.parametrize("metric, b", [
    ("attacks.worst_case@8/255", _attacks(0.05)),                  # the drop from the issue: 0.60 → 0.05
    ("attacks.noise@0.1.accuracy", _attacks(0.6, noise=0.1)),
    ("attacks.cw.median_l2", _attacks(0.6, cw=0.1)),
])
def test_drops_that_name_guessing_missed_are_regressions(metric, b):
    result = compare_reports(_attacks(0.6), b, fail_on_regression=5)
    assert metric in result["regressions"]


def test_missing_or_null_in_b_is_a_regression_and_improvements_are_not():
    a = _attacks(0.6)
    b = copy.deepcopy(a)
    b["analyses"]["attacks"]["worst_case"]["8/255"] = None
    assert "attacks.worst_case@8/255" in compare_reports(a, b, fail_on_regression=0)["regressions"]
    del b["analyses"]["attacks"]["noise"]
    assert "attacks.noise@0.1.accuracy" in compare_reports(a, b, fail_on_regression=0)["regressions"]
    assert compare_reports(a, _attacks(0.9), fail_on_regression=0)["regressions"] == []


def test_different_models_or_data_are_flagged():
    b = _attacks(0.6)
    b["model"]["path"] = "other.pt"
    b["data"]["n"] = 20
    assert set(compare_reports(_attacks(0.6), b)["differs"]) >= {"model", "n"}


@pytest.mark.parametrize("name", analyses.available())
def test_every_metric_and_alias_has_a_declared_direction(name):
    analysis = analyses.get(name)
    section = _attacks(0.6)["analyses"]["attacks"] if name == "attacks" else {}
    declared = analysis.metrics(section)
    for metric, m in declared.items():
        assert isinstance(m.better, Better), (name, metric)
    if analysis.aliases is not None:
        for alias, canonical in analysis.aliases(section).items():
            assert canonical in declared, (alias, canonical)


def test_compare_output_in_a_pipe_is_never_cut(tmp_path, capsys, monkeypatch):
    import json

    from robaudit.cli.app import run as cli

    monkeypatch.delenv("COLUMNS", raising=False)
    a, b = _attacks(0.6), _attacks(0.05)
    for rep in (a, b):
        rep.update({"schema_version": 1, "tool": {"name": "robaudit", "version": "0"}, "complete": True,
                    "environment": {"torch": "x", "device": "cpu", "seed": 0, "dtype": "float32"}})
        rep["model"].update({"sha256": None, "format": "module", "num_classes": 10, "input_shape": [1, 28, 28]})
        rep["analyses"]["attacks"]["results"][0]["attack"] = "a_really_long_attack_name_for_the_table"
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    code = cli(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--fail-on-regression", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "attacks.a_really_long_attack_name_for_the_table@8/255.robust_accuracy" in out
    assert "…" not in out and "higher" in out
