"""YAML config: validation with nearest-key hints, and precedence CLI > file > defaults."""

from __future__ import annotations

import textwrap

import pytest

from robaudit.config import load_config
from robaudit.errors import ConfigError
from robaudit.settings import build_settings, parse_floats, parse_indices, parse_shape


def write(tmp_path, text):
    p = tmp_path / "robaudit.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_unknown_top_level_key_names_nearest(tmp_path):
    path = write(tmp_path, "batch_sise: 8\n")
    with pytest.raises(ConfigError, match="unknown key 'batch_sise'.*did you mean 'batch-size'"):
        load_config(path)


def test_unknown_gate_key(tmp_path):
    path = write(tmp_path, "gate:\n  fail_abov: {x: 1}\n")
    with pytest.raises(ConfigError, match="fail_abov.*did you mean 'fail_above'"):
        load_config(path)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(write(tmp_path, "a: [1, 2\nb: 3\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))
    assert ConfigError.exit_code == 2


def test_analysis_options_validation(tmp_path, probe_analysis):
    opts = probe_analysis.make_options({"scale": "2.5", "mode": "max", "verbose": "yes", "count": 3})
    assert (opts.scale, opts.mode, opts.verbose, opts.count) == (2.5, "max", True, 3)
    with pytest.raises(ConfigError, match="unknown key 'scal'.*did you mean 'scale'"):
        probe_analysis.make_options({"scal": 1})
    with pytest.raises(ConfigError, match="expected one of mean, max"):
        probe_analysis.make_options({"mode": "median"})
    with pytest.raises(ConfigError, match="expected >= 0.0"):
        probe_analysis.make_options({"scale": -1})
    with pytest.raises(ConfigError, match="expected int"):
        probe_analysis.make_options({"count": 1.5})
    with pytest.raises(ConfigError, match="expected bool"):
        probe_analysis.make_options({"verbose": "perhaps"})


def test_precedence_cli_over_file_over_defaults(tmp_path):
    cfg = load_config(write(tmp_path, """\
        seed: 7
        batch-size: 16
        limit: 50
        device: cpu
    """))
    settings = build_settings({"seed": 3}, cfg.settings)
    assert settings.seed == 3            # CLI wins
    assert settings.batch_size == 16     # file over default (128)
    assert settings.limit == 50
    assert settings.dtype == "float32"   # default
    assert build_settings({}, {}).batch_size == 128


def test_model_path_in_config_is_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "cfg.yaml"
    p.write_text("model: m.pt\n")
    assert load_config(str(p)).settings["model"] == str(tmp_path / "sub" / "m.pt")


def test_auto_discovery_of_robaudit_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None).path is None
    (tmp_path / "robaudit.yaml").write_text("seed: 5\n")
    assert load_config(None).settings == {"seed": 5}


@pytest.mark.parametrize("text, expected", [("8/255", (8 / 255,)), ("0, 2/255", (0.0, 2 / 255)), ([0.5, 1], (0.5, 1.0))])
def test_parse_floats(text, expected):
    assert parse_floats(text, "--eps") == pytest.approx(expected, rel=0, abs=0)


def test_parse_helpers_reject_bad_text():
    from robaudit.errors import UsageError

    with pytest.raises(UsageError, match="--mean"):
        parse_floats("a,b", "--mean")
    with pytest.raises(UsageError, match="--input-shape"):
        parse_shape("3,x,2")
    with pytest.raises(UsageError, match="--indices"):
        parse_indices("5:2")
    with pytest.raises(UsageError, match="--indices"):
        parse_indices("-1")
    assert parse_indices("0,3,10:13") == [0, 3, 10, 11, 12]
    assert parse_shape("3x32x32") == (3, 32, 32)


@pytest.mark.parametrize("flag, value, pattern", [
    ("limit", 0, "--limit"), ("limit", -3, "--limit"), ("batch_size", 0, "--batch-size"),
    ("dtype", "float16", "--dtype"), ("split", "val", "--split"), ("mean", "0.5", "--mean and --std"),
])
def test_bad_settings(flag, value, pattern):
    from robaudit.errors import UsageError

    with pytest.raises(UsageError, match=pattern):
        build_settings({flag: value}, {})


def test_errors_name_the_config_key_not_the_flag(tmp_path, capsys):
    from robaudit.cli.app import run as cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("mean: [0.5]\nstd: [0]\n")
    assert cli(["info", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: std" in err and "--std" not in err
    assert cli(["info", "--mean", "0.5", "--std", "0"]) == 2
    assert "--std" in capsys.readouterr().err
