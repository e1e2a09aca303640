"""Issue 11: readable output (widths, progress, one name per metric), plots, --set, init, inference, warnings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


def _robaudit(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI in a child process with stdout/stderr as pipes (never a terminal)."""
    return subprocess.run([sys.executable, "-m", "robaudit", *args], capture_output=True, text=True,
                          env=_env(**env), timeout=600)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> Path:
    """One small audit of the sample model: norms, layers and attacks (tables of every kind)."""
    out = tmp_path_factory.mktemp("ux") / "report.json"
    proc = _robaudit("audit", "--profile", "quick", "-a", "norms,layers,attacks", "-n", "16", "-q", "-o", str(out))
    assert proc.returncode in (0, 1), proc.stderr
    return out


def _cells(report: dict) -> list[str]:
    """Every cell, header and title text of the tables the analyses render for ``report``."""
    from rich.console import Console
    from rich.table import Table

    from robaudit import analyses
    from robaudit.report.terminal import _plain

    console = Console()
    texts = []
    for name, section in report["analyses"].items():
        for r in analyses.get(name).render(section):
            if isinstance(r, Table):
                for column in r.columns:
                    texts.append(_plain(console, column.header))
                    texts += [_plain(console, c) for c in column._cells]
    return [t for t in texts if t.strip()]


# ----------------------------------------------------------------------------------------- widths

def test_tables_without_a_terminal_cut_no_number_or_name(quick_report):
    report = json.loads(quick_report.read_text())
    proc = _robaudit("show", str(quick_report))  # stdout is a pipe and COLUMNS is unset
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    lines = proc.stdout.splitlines()
    cells = _cells(report)
    assert len(cells) > 50  # layers, norms and attacks tables are all there
    for text in cells:
        assert any(text in line for line in lines), f"cell {text!r} is cut or missing"
    layers_header = next(line for line in lines if "operator norm" in line)
    for col in ("circular", "Singla", "upper"):
        assert col in layers_header


def test_fixed_width_is_compact_never_cut(quick_report):
    proc = _robaudit("show", str(quick_report), COLUMNS="80")
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert max(len(line.rstrip()) for line in proc.stdout.splitlines()) <= 80
    assert "hidden at 80 columns" in proc.stdout and "--wide" in proc.stdout
    # numbers that remain are whole: the layers' used upper bounds all appear
    report = json.loads(quick_report.read_text())
    from robaudit.numfmt import fmt

    for row in report["analyses"]["layers"]["layers"]:
        if row.get("upper") is not None:
            assert fmt(row["upper"]) in proc.stdout
    wide = _robaudit("show", str(quick_report), "--wide", COLUMNS="80")
    assert "hidden at" not in wide.stdout and "Singla" in wide.stdout


def test_compact_table_drops_sparse_columns_first():
    from rich.console import Console
    from rich.table import Table

    from robaudit.report.terminal import compact_table, min_width

    table = Table()
    for col in ("name", "value", "rare", "other"):
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
    for i in range(5):
        table.add_row(f"row-{i}", f"{1000.5 + i:.4f}", "12345678.9" if i == 0 else "", f"{i * 1.25:.3f}")
    console = Console(width=200)
    full = min_width(console, table)
    dropped = compact_table(console, table, full - 1)
    assert dropped == ["rare"]
    assert min_width(console, table) <= full - 1
    assert [str(c.header) for c in table.columns] == ["name", "value", "other"]


# ----------------------------------------------------------------------------------------- progress

def test_progress_prints_nothing_without_a_terminal():
    proc = _robaudit("norms", "-n", "8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no bars, no blank line per task
    assert "spectral σ_max" in proc.stdout


def test_progress_at_a_terminal_has_a_total_and_an_eta():
    import io

    from rich.console import Console

    from robaudit.cli.console import Diagnostics

    diag = Diagnostics()
    buf = io.StringIO()
    diag.console = Console(file=buf, force_terminal=True, width=120)
    with diag.progress("attacks", 10) as task:
        task.advance(5)
        bar = task._bar
        assert bar is not None and bar.tasks[0].total == 10
        columns = [type(c).__name__ for c in bar.columns]
    assert "TimeRemainingColumn" in columns and "MofNCompleteColumn" in columns
    with diag.progress("layers: per-layer bounds", None) as task:  # unknown length: no "0/?"
        columns = [type(c).__name__ for c in task._bar.columns]
    assert "MofNCompleteColumn" not in columns and "SpinnerColumn" in columns
    assert "0/?" not in buf.getvalue()


# ----------------------------------------------------------------------------------------- metric names

def test_one_name_per_metric_in_every_display(quick_report, tmp_path, capsys):
    from robaudit.report import metrics
    from robaudit.report.markdown import to_markdown

    report = json.loads(quick_report.read_text())
    declared, aliases = metrics.declared(report), metrics.aliases(report)
    assert aliases, "the attacks section has decimal aliases"
    markdown = to_markdown(report)
    assert cli("gate", str(quick_report), "--list-metrics") == 0
    listed = capsys.readouterr().out
    for text in (markdown, listed):
        for name in declared:
            assert text.count(f"{name}`" if text is markdown else f"{name} ") >= 1, name
        for alias in aliases:
            if alias not in declared:
                assert alias not in text, f"alias {alias} shown"
    assert "model.path" not in listed
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert len(names) == len(set(names)) == len(declared)


# ----------------------------------------------------------------------------------------- plots

def test_plots_for_every_analysis_and_a_note_for_none(tmp_path, probe_analysis, capsys):
    plots = tmp_path / "plots"
    code = cli("audit", "-a", "norms,layers,probe", "-n", "8", "--plots", str(plots))
    assert code == 0
    err = capsys.readouterr().err
    for name in ("norms", "layers"):
        png = (plots / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (plots / "probe.png").exists()
    assert "probe has nothing to plot" in err


def test_norms_plot_without_per_sample_rows(quick_report, tmp_path):
    from robaudit.analyses import norms

    section = dict(json.loads(quick_report.read_text())["analyses"]["norms"])
    section.pop("per_sample", None)
    norms.plot(section, str(tmp_path / "n.png"))
    assert (tmp_path / "n.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------- --set

def test_set_overrides_analysis_options_and_settings(tmp_path):
    out = tmp_path / "r.json"
    code = cli("audit", "-a", "norms", "--set", "analyses.norms.method=power", "--set", "analyses.norms.iters=7",
               "--set", "limit=12", "-q", "-o", str(out))
    assert code == 0
    report = json.loads(out.read_text())
    assert report["analyses"]["norms"]["method"] == "power"
    assert report["analyses"]["norms"]["iters"] == 7
    assert report["data"]["n"] == 12


@pytest.mark.parametrize("item, message", [
    ("analyses.norms.methd=power", "did you mean 'method'"),
    ("analyses.norms.iters=0", "--set analyses.norms.iters: expected >= 1"),
    ("analyses.norms.method=bogus", "--set analyses.norms.method"),
    ("analyses.layers.iters=3", "layers is not among the analyses run"),
    ("analyses.norms=3", "analyses.NAME.OPTION"),
    ("limt=3", "unknown key 'limt'"),
    ("limit", "expected KEY=VALUE"),
])
def test_set_is_validated_like_the_yaml(item, message, capsys, monkeypatch):
    from robaudit import engine

    monkeypatch.setattr(engine, "build_context", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert cli("audit", "-a", "norms", "--set", item) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- init

def test_init_writes_the_packaged_starter_and_never_overwrites(tmp_path, monkeypatch, capsys):
    from importlib.resources import files

    monkeypatch.chdir(tmp_path)
    assert cli("init") == 0
    text = (tmp_path / "robaudit.yaml").read_text()
    assert text == files("robaudit").joinpath("examples", "robaudit.yaml").read_text()
    for key in ("model:", "data:", "analyses:", "gate:", "fail_below:"):
        assert key in text
    (tmp_path / "robaudit.yaml").write_text("mine\n")
    assert cli("init") == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "robaudit.yaml").read_text() == "mine\n"


def test_packaged_starter_is_the_repository_example():
    from importlib.resources import files

    assert (REPO / "examples" / "robaudit.yaml").read_text() == \
        files("robaudit").joinpath("examples", "robaudit.yaml").read_text()


def test_readme_config_example_runs_after_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("init") == 0
    code = cli("audit", "--config", "robaudit.yaml", "-n", "8", "-q", "-o", "r.json")
    assert code in (0, 1)  # 1: a threshold of the starter's gate failed on 8 samples; the run itself worked
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["analyses"]) >= {"norms", "layers", "attacks"} and "gate" in report


# ----------------------------------------------------------------------------------------- inference & warnings

def _linear_script(path: Path, in_features: int = 784, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_features, 10))
    torch.jit.script(net).save(str(path))
    return net


def test_input_shape_is_inferred_from_the_data(tmp_path):
    import numpy as np

    model = tmp_path / "lin.pt"
    _linear_script(model, 3 * 8 * 8)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((6, 3, 8, 8)).astype("float32"), y=np.arange(6) % 10)
    out = tmp_path / "r.json"
    assert cli("norms", str(model), "--data", str(tmp_path / "d.npz"), "-q", "-o", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["model"]["input_shape"] == [3, 8, 8] and report["analyses"]["norms"]["n"] == 6
    # without data the shape is still demanded (and --input-shape still works)
    assert cli("info", str(model)) == 3
    assert cli("info", str(model), "--input-shape", "3,8,8", "-q") == 0


def test_warns_when_accuracy_is_near_chance(tmp_path):
    model = tmp_path / "lin.pt"
    net = _linear_script(model)
    out = tmp_path / "r.json"
    assert cli("norms", str(model), "--data", "embedded", "-n", "64", "-q", "-o", str(out)) == 0
    warnings = json.loads(out.read_text())["warnings"]
    import torch

    from robaudit.api import load_data

    x, y = load_data(limit=64)
    acc = float((net(x).argmax(1) == y).double().mean())
    assert acc < 0.19  # the truth the warning is about: a random linear map is at chance
    assert any("near chance" in w and f"{acc:.1%}" in w for w in warnings), warnings
    # the sample model on its own data: no warning
    assert cli("norms", "-n", "64", "-q", "-o", str(out)) == 0
    assert not any("chance" in w or "trained on" in w for w in json.loads(out.read_text())["warnings"])
    del torch


def test_warns_when_checkpoint_dataset_differs_from_the_data(tmp_path):
    import torch

    from robaudit.models.load import sample_model_path

    ck = torch.load(sample_model_path(), weights_only=True)
    ck["meta"]["dataset"] = "mnist"
    path = tmp_path / "mnist_lenet.pt"
    torch.save(ck, path)
    out = tmp_path / "r.json"
    assert cli("norms", str(path), "-n", "16", "-q", "-o", str(out)) == 0
    warnings = json.loads(out.read_text())["warnings"]
    assert any("trained on 'mnist'" in w and "'embedded'" in w for w in warnings), warnings


def test_layers_radii_without_data_use_the_embedded_default(tmp_path):
    out = tmp_path / "r.json"
    assert cli("layers", "--radii", "0.001,0.01", "-n", "16", "-q", "-o", str(out)) == 0
    report = json.loads(out.read_text())
    cert = report["analyses"]["layers"]["certified"]
    assert cert["available"] and set(cert["accuracy"]) == {"0.001", "0.01"}
    assert report["data"]["name"] == "embedded" and report["data"]["n"] == 16


FMNIST = Path("/usr/share/datasets")


@pytest.mark.skipif(not (FMNIST / "fashion-mnist").is_dir(), reason="Fashion-MNIST IDX files not installed")
def test_named_dataset_defaults_to_the_profile_limit_and_says_so(tmp_path):
    from robaudit.engine import NAMED_DATA_LIMIT

    out = tmp_path / "r.json"
    proc = _robaudit("norms", "--data", "fashionmnist", "--data-root", str(FMNIST), "-o", str(out),
                     "--method", "exact")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["data"]["n"] == NAMED_DATA_LIMIT == 1000
    assert "the first 1,000 of 10,000 samples" in proc.stderr


# ----------------------------------------------------------------------------------------- CLI odds and ends

def test_help_names_types_people_know():
    proc = _robaudit("norms", "--help", COLUMNS="200")
    assert proc.returncode == 0
    assert not re.search(r"<(str|bool|int|float|list\[str\])>", proc.stdout), proc.stdout
    for metavar in ("FLOAT", "INT", "FILE", "DIR", "LIST"):
        assert metavar in proc.stdout


def test_shell_completion_answers_in_a_fresh_process():
    """What the shell runs on <TAB>: a new process, in which no other command has registered the commands."""
    proc = subprocess.run([sys.executable, "-m", "robaudit"], capture_output=True, text=True, timeout=300,
                          env=_env(_ROBAUDIT_COMPLETE="complete_bash", COMP_WORDS="robaudit nor", COMP_CWORD="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["norms"]


def test_shell_completion_answers(monkeypatch, capsys):
    monkeypatch.setenv("_ROBAUDIT_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "robaudit nor")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert cli() == 0
    assert capsys.readouterr().out.split() == ["norms"]
    monkeypatch.delenv("_ROBAUDIT_COMPLETE")
    # Typer takes the shell from this argument only with detection off; otherwise it asks shellingham, which
    # finds no shell when the tests run under a wrapper such as timeout(1)
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    assert cli("--show-completion", "bash") == 0
    assert "_robaudit_completion" in capsys.readouterr().out


def test_list_arch_shows_normalisation(capsys):
    from robaudit.models.zoo import ZOO

    assert cli("info", "--list-arch") == 0
    out = capsys.readouterr().out
    for name, entry in ZOO.items():
        line = next(line for line in out.splitlines() if line.startswith(name))
        if entry.mean is None:
            assert "none" in line
        else:
            assert ", ".join(f"{v:g}" for v in entry.mean) in line


def test_action_yml_is_a_valid_composite_action():
    import yaml

    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    for key in ("config", "profile", "report", "markdown", "html"):
        assert key in action["inputs"], key
    script = "\n".join(step.get("run", "") for step in action["runs"]["steps"])
    assert "GITHUB_STEP_SUMMARY" in script and "robaudit audit" in script
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert step.get("shell"), "composite run steps need a shell"
    assert "pip install robaudit" not in script.replace("pip install robaudit[", "")


def test_gate_on_an_alias_is_shown_by_the_canonical_name(quick_report, capsys):
    from robaudit.report import metrics
    from robaudit.report.html import to_html
    from robaudit.report.markdown import to_markdown

    report = json.loads(quick_report.read_text())
    alias, canonical = next((a, c) for a, c in metrics.aliases(report).items() if "robust_accuracy" in a)
    assert cli("gate", str(quick_report), "--fail-below", f"{alias}=0") == 0
    out = capsys.readouterr().out
    assert canonical in out and alias not in out
    from robaudit.cli.run import gate_of
    from robaudit.gate import BELOW, parse_threshold

    report["gate"] = gate_of(report, [parse_threshold(f"{alias}=0", BELOW)])
    for text in (to_markdown(report), to_html(report, plots=False)):
        assert canonical in text and alias not in text
