"""``robaudit train``: one short epoch on a small subset gives a loadable checkpoint with correct meta."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FMNIST_DIR
from robaudit.errors import UsageError

needs_fmnist = pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST (dataset-fashion-mnist) not installed")


@needs_fmnist
def test_train_command_writes_loadable_checkpoint(tmp_path):
    from robaudit.cli.train_cmd import train
    from robaudit.data import load_data
    from robaudit.models.load import load_model

    out = tmp_path / "m.pt"
    code = train(output=str(out), regularizer="jacobian_spectral", lam=0.05, epochs=1, limit=256, batch_size=64,
                 seed=3, quiet=True)
    assert code == 0 and out.exists() and not (tmp_path / "m.pt.partial").exists()
    ck = torch.load(out, weights_only=True)  # plain data only: loads without --unsafe-load
    meta = ck["meta"]
    assert ck["arch"] == "lenet" and ck["arch_kwargs"] == {"in_channels": 1, "num_classes": 10}
    assert (meta["regularizer"], meta["lam"], meta["epochs"], meta["seed"]) == ("jacobian_spectral", 0.05, 1, 3)
    assert meta["dataset"] == "fashionmnist" and meta["train_size"] == 256 and meta["test_size"] == 256
    assert meta["regularizer_options"] == {"n_iter": 1} and meta["train_seconds"] > 0

    # the training-split statistics are the normalisation, and the accuracy is reproducible from the file
    train_x = load_data("fashionmnist", split="train", limit=256).x.double() / 255
    assert meta["mean"][0] == pytest.approx(float(train_x.mean()), abs=1e-4)
    assert meta["std"][0] == pytest.approx(float(train_x.std(unbiased=False)), abs=1e-4)
    loaded = load_model(str(out))
    test = load_data("fashionmnist", split="test", limit=256)
    with torch.no_grad():
        acc = float((loaded.module.eval()(test.x.float() / 255).argmax(1) == test.y).double().mean())
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-12)


@needs_fmnist
def test_training_is_deterministic_and_regularizer_matters(tmp_path):
    from robaudit.train import TrainConfig, train

    cfg = TrainConfig(regularizer="none", epochs=1, limit=128, batch_size=64, seed=1)
    a = torch.load(train(cfg, tmp_path / "a.pt").path, weights_only=True)["state_dict"]
    b = torch.load(train(cfg, tmp_path / "b.pt").path, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    reg = TrainConfig(regularizer="weight_decay", lam=1.0, epochs=1, limit=128, batch_size=64, seed=1)
    c = torch.load(train(reg, tmp_path / "c.pt").path, weights_only=True)["state_dict"]
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])  # --lam has an effect


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "--epochs"), ({"batch_size": 0}, "--batch-size"), ({"lr": -1.0}, "--lr"),
    ({"lam": -0.1, "regularizer": "jacobian_spectral"}, "--lam"), ({"limit": 0}, "--limit"),
    ({"regularizer": "magic"}, "--regularizer"), ({"arch": "vgg99"}, "--arch"),
    ({"regularizer": "none", "lam": 0.5}, "no effect"), ({"regularizer": "jacobian_spectral", "lam": 0.0}, "turns"),
])
def test_bad_options_are_usage_errors(tmp_path, kwargs, match):
    from robaudit.train import TrainConfig, train

    cfg = TrainConfig(**{"limit": 64, **kwargs})
    with pytest.raises(UsageError, match=match):
        train(cfg, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_zoo_registry_names_and_errors(tmp_path, monkeypatch):
    from robaudit.models.zoo_registry import zoo_names, zoo_path

    assert zoo_names()[0] == "plain" and "pgd_adversarial" in zoo_names()
    with pytest.raises(UsageError, match="expected one of"):
        zoo_path("zoo:nope")
    monkeypatch.setenv("ROBAUDIT_ZOO_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="not found"):
        zoo_path("zoo:plain")
    (tmp_path / "plain.pt").write_bytes(b"x")
    assert Path(zoo_path("zoo:plain")) == tmp_path / "plain.pt" == Path(zoo_path("plain"))
