"""zoo:NAME model names and `robaudit info --list-zoo`; the train command is registered."""

from __future__ import annotations

import json

import pytest
import torch

from robaudit.cli.app import run as cli
from robaudit.models.zoo_registry import ZOO_MODELS, zoo_dir


@pytest.mark.parametrize("name", list(ZOO_MODELS))
def test_every_zoo_model_loads_with_its_metadata(name):
    from robaudit.models import load_model

    if not (zoo_dir() / f"{name}.pt").is_file():
        pytest.skip(f"zoo checkpoint {name} not present")
    loaded = load_model(f"zoo:{name}")
    assert loaded.num_classes == 10 and tuple(loaded.input_shape) == (1, 28, 28)
    meta = torch.load(zoo_dir() / f"{name}.pt", weights_only=True, map_location="cpu")["meta"]
    assert meta["regularizer"] == name or (name == "plain" and meta["regularizer"] in ("none", "plain"))
    assert 0.8 < meta["test_accuracy"] <= 1.0


def test_list_zoo_and_unknown_name(capsys):
    assert cli(["info", "--list-zoo"]) == 0
    out = capsys.readouterr().out
    assert all(f"zoo:{name}" in out for name in ZOO_MODELS)
    assert cli(["info", "zoo:nope"]) == 2
    assert "--list-zoo" in capsys.readouterr().err


def test_zoo_name_in_a_command(capsys):
    if not (zoo_dir() / "plain.pt").is_file():
        pytest.skip("zoo checkpoint not present")
    assert cli(["norms", "zoo:plain", "--limit", "4", "-q", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["path"].endswith("plain.pt") and report["model"]["sha256"]


def test_train_command_is_registered(capsys):
    assert cli(["train", "--help"]) == 0
    assert "--regularizer" in capsys.readouterr().out
