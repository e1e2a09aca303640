"""`robaudit audit`: one report equal to the union of the single commands, with a stable structure."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import cli

GOLDEN = Path(__file__).parent / "golden" / "audit_structure.json"
VOLATILE = {"seconds", "created", "timings", "sha256", "time", "wall_time", "path"}


def _explicit_config(tmp_path, names, overrides):
    """A config that sets every option of each analysis, so profiles cannot differ between runs."""
    from robaudit import analyses

    section = {}
    for name in names:
        fields = analyses.get(name).option_fields()
        # None is written too (YAML null), so profile overrides cannot leak into the audit run.
        values = {f.name: _plain(f.default) for f in fields if f.default is not dataclasses.MISSING}
        values.update(overrides.get(name, {}))
        section[name] = values
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": "embedded", "limit": 24, "seed": 3, "analyses": section}))
    return str(path)


def _plain(value):
    """A typed option default as YAML would spell it (enum → its value, tuple → list)."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):  # labelled fractions
        return ",".join(label for label, _ in value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _json_run(capsys, *args):
    code = cli(*args, "--json", "--quiet")
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def _assert_same(a, b, where="analyses"):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            if key not in VOLATILE:
                _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_audit_equals_union_of_single_commands(tmp_path, capsys):
    names = ["norms", "layers", "attacks"]
    overrides = {"attacks": {"fgsm": True, "pgd": True, "steps": 3, "eps": "4/255"}, "spectrum": {}}
    config = _explicit_config(tmp_path, names, overrides)
    audit = _json_run(capsys, "audit", "--config", config, "--analyses", ",".join(names))
    assert list(audit["analyses"]) == names
    for name in names:
        command = "attack" if name == "attacks" else name
        single = _json_run(capsys, command, "--config", config)
        assert list(single["analyses"]) == [name]
        _assert_same(single["analyses"][name], audit["analyses"][name], name)
        assert single["data"] == audit["data"] and single["environment"] == audit["environment"]


def _structure(node):
    """Keys and JSON types, with lists reduced to their first element's structure."""
    if isinstance(node, dict):
        return {k: _structure(v) for k, v in sorted(node.items()) if k not in ("per_sample",)}
    if isinstance(node, list):
        return [_structure(node[0])] if node else []
    if isinstance(node, bool):
        return "bool"
    if isinstance(node, (int, float)):
        return "number"
    if node is None:
        return "null"
    return "string"


def _merge_numbers_and_nulls(node):
    # A metric may be null in one run (NaN) and a number in another; the structure treats them alike.
    if isinstance(node, dict):
        return {k: _merge_numbers_and_nulls(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_merge_numbers_and_nulls(v) for v in node]
    return "number|null" if node in ("number", "null") else node


def test_quick_audit_report_structure_matches_golden(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = cli("audit", "--profile", "quick", "--limit", "16", "--quiet", "-o", str(out))
    assert code == 0
    report = json.loads(out.read_text())
    structure = _merge_numbers_and_nulls(_structure({k: v for k, v in report.items() if k not in ("warnings",)}))
    if not GOLDEN.exists():  # first run writes it; review and commit the file
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(structure, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden structure written; commit tests/golden/audit_structure.json")
    assert structure == json.loads(GOLDEN.read_text())
    jsonschema = pytest.importorskip("jsonschema")
    import importlib.resources

    schema = json.loads(importlib.resources.files("robaudit.report").joinpath("schema.json").read_text())
    jsonschema.validate(report, schema)


def test_unknown_analysis_or_metric_in_config_fails_before_computation(tmp_path, capsys, monkeypatch):
    from robaudit import engine

    def no_work(*args, **kwargs):
        raise AssertionError("computation started")

    monkeypatch.setattr(engine, "build_context", no_work)
    cases = [
        ("analyses:\n  nroms: {}\n", "did you mean 'norms'"),
        ("analyses:\n  norms: {methd: exact}\n", "did you mean 'method'"),
        ("analyses:\n  norms: {}\n  attacks: {pgd: true, eps: '2'}\n", "--allow-large-eps"),
        ("analyses:\n  norms: {}\ngate:\n  fail_above: {norms.spectral.p59: 1}\n", "norms.spectral.p59"),
    ]
    for i, (text, message) in enumerate(cases):
        config = tmp_path / f"{i}.yaml"
        config.write_text(text)
        assert cli("audit", "--config", str(config)) == 2
        assert message in capsys.readouterr().err

def test_example_config_is_valid_and_gate_metrics_exist(tmp_path, capsys):
    from robaudit.config import load_config

    example = Path(__file__).resolve().parents[1] / "examples" / "robaudit.yaml"
    cfg = load_config(str(example))
    from robaudit import analyses

    for name, options in cfg.analyses.items():
        analyses.get(name).make_options(options)
    out = tmp_path / "r.json"
    code = cli("audit", "--config", str(example), "--limit", "16", "--quiet", "-o", str(out))
    assert code in (0, 1)   # the thresholds decide; a crash or an unknown metric would be 2/3
    assert json.loads(out.read_text())["gate"]["checks"]


def test_compare_real_reports_and_fail_on_regression(tmp_path, capsys):
    a = tmp_path / "a.json"
    assert cli("attack", "--fgsm", "--eps", "8/255", "--limit", "32", "--quiet", "-o", str(a)) == 0
    report = json.loads(a.read_text())
    key = "attacks.fgsm@8/255.robust_accuracy"
    from robaudit.report.metrics import declared

    base = declared(report)[key].value
    assert 0 < base < 1
    # B: the same model got 10 % less robust (relative), as a regressed release would.
    worse = json.loads(a.read_text())
    for row in worse["analyses"]["attacks"]["results"]:
        row["robust_accuracy"] = row["robust_accuracy"] * 0.9
    b = tmp_path / "b.json"
    b.write_text(json.dumps(worse))
    capsys.readouterr()
    assert cli("compare", str(a), str(b), "--json") == 0          # no threshold: report only
    rows = {r["metric"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows[key]["relative_pct"] == pytest.approx(-10.0, abs=1e-9)
    assert rows[key]["delta"] == pytest.approx(-0.1 * base, rel=1e-12)
    assert cli("compare", str(a), str(b), "--fail-on-regression", "5") == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert cli("compare", str(a), str(b), "--fail-on-regression", "10.5") == 0
    assert cli("compare", str(b), str(a), "--fail-on-regression", "5") == 0   # an improvement is no regression


def test_plots_dir_collects_pngs(tmp_path, capsys):
    plots = tmp_path / "plots"
    code = cli("audit", "--profile", "quick", "--limit", "16", "--quiet", "--plots", str(plots))
    assert code == 0
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs and all(name.endswith(".png") for name in pngs)
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
