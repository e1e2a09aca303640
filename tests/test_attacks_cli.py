"""``robaudit attack`` end to end: exit codes, JSON contract, plot, gate, show."""

from __future__ import annotations

import json

import pytest

from conftest import cli



def run_json(capsys, *args):
    code = cli("attack", "--quiet", "--json", *args)
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def test_pgd_steps_20_works_exactly_as_written(capsys):
    # The example, on the default model and data; --limit keeps the test fast.
    code, report, _ = run_json(capsys, "--pgd", "--steps", "20", "--limit", "48")
    assert code == 0
    section = report["analyses"]["attacks"]
    assert section["norm"] == "linf"
    (row,) = section["results"]
    assert (row["attack"], row["eps_label"], row["steps"], row["status"]) == ("pgd", "8/255", 20, "ok")
    assert row["alpha"] == pytest.approx(2.5 * (8 / 255) / 20)
    assert 0 <= row["robust_accuracy"] <= section["clean_accuracy"] <= 1
    assert report["data"]["n"] == 48


def test_no_flag_runs_quick_and_the_report_round_trips(capsys, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "curve.png"
    assert cli("attack", "--quiet", "--limit", "32", "-o", str(out), "--plot", str(png)) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    section = report["analyses"]["attacks"]
    assert section["battery"] == "quick" and section["attacks_run"] == ["fgsm", "pgd"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert cli("show", str(out)) == 0
    assert capsys.readouterr().out == printed
    # gate on the aliases, label and decimal forms
    worst = section["worst_case"]["8/255"]
    assert cli("gate", str(out), "--fail-below", f"attacks.worst_case@8/255={worst + 0.01}") == 1
    assert cli("gate", str(out), "--fail-below", f"attacks.pgd@0.0313725.robust_accuracy={worst - 0.01}") == 0
    capsys.readouterr()


@pytest.mark.parametrize("args, pattern", [
    (["--deepfool", "--eps", "0.5"], "--eps"),
    (["--noise", "--eps", "0.1"], "--eps"),
    (["--pgd", "--eps", "2"], "--allow-large-eps"),
    (["--pgd", "--eps", "8/0"], "--eps"),
    (["--pgd", "--eps", "abc"], "--eps"),
    (["--fgsm", "--steps", "5"], "--steps"),
    (["--fgsm", "--norm", "l2"], "--fgsm"),
    (["--pgd", "--pgdl2"], "one norm per run"),
    (["--tpgd", "--targeted"], "--targeted"),
    (["--fab", "--n-classes", "50"], "--n-classes"),
    (["--pgd", "--sigmas", "0.1"], "--sigmas"),
    (["--battery", "huge"], "battery"),
    (["--norm", "l3"], "norm"),
    (["--pgdd"], "No such option"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, pattern):
    assert cli("attack", "--quiet", "--limit", "8", *args) == 2
    err = capsys.readouterr().err
    assert pattern in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_unknown_attack_in_config_exits_2(capsys, tmp_path):
    cfg = tmp_path / "robaudit.yaml"
    cfg.write_text("limit: 8\nanalyses:\n  attacks: {pgdd: true}\n")
    assert cli("attack", "--quiet", "--config", str(cfg)) == 2
    assert "pgdd" in capsys.readouterr().err


def test_large_eps_allowed_with_the_flag(capsys):
    code, report, _ = run_json(capsys, "--fgsm", "--eps", "2", "--allow-large-eps", "--limit", "8")
    assert code == 0
    assert report["analyses"]["attacks"]["results"][0]["eps"] == 2.0
