"""The architecture zoo, the published ResNet-20 weights, and ``robaudit info``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robaudit.errors import UsageError
from robaudit.models import zoo
from robaudit.models.load import load_model
from robaudit.models.summary import summarize

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "assets"
RESNET20 = SHARED / "cifar10-resnet20" / "resnet20-12fca82f.th"


def _resnet20_path() -> Path:
    if not RESNET20.exists():
        pytest.skip(f"shared asset not present: {RESNET20}")
    return RESNET20


def _cli(*args: str) -> int:
    from robaudit.cli.app import run

    return run(list(args))


# ---------------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_every_zoo_entry_builds_and_is_recognised(name):
    entry = zoo.ZOO[name]
    net = zoo.build(name).eval()
    assert isinstance(net, entry.module_class)
    shape = zoo.input_shape_for(name)
    assert shape == entry.input_shape
    with torch.no_grad():
        out = net(torch.rand(2, *shape))
    assert out.shape == (2, 10)
    assert zoo.match_module(net) == (name, zoo.infer_kwargs(zoo.resolve(name), net.state_dict()))
    assert (entry.mean is None) == (entry.std is None)


def test_infer_kwargs_reads_shapes():
    net = zoo.build("lenet", in_channels=3, num_classes=7)
    kwargs = zoo.infer_kwargs(zoo.resolve("lenet"), net.state_dict())
    assert kwargs == {"num_classes": 7, "in_channels": 3}
    assert zoo.input_shape_for("lenet", kwargs) == (3, 28, 28)
    assert zoo.match_module(nn.Sequential(nn.Linear(2, 2))) is None


def test_resolve_kinds():
    assert zoo.resolve("resnet20").kind == "zoo"
    tv = zoo.resolve("resnet18")
    assert tv.kind == "torchvision" and tv.accepts("num_classes")
    net = tv.factory(num_classes=10)  # weights=None: random init, nothing downloaded
    assert net.fc.out_features == 10
    imp = zoo.resolve("robaudit.models.zoo:LeNet")
    assert imp.kind == "import" and imp.factory is zoo.LeNet and imp.accepts("in_channels")
    with pytest.raises(UsageError, match="not a robaudit zoo name"):
        zoo.resolve("resnet21")
    with pytest.raises(UsageError, match="has no attribute 'Nope'"):
        zoo.resolve("robaudit.models.zoo:Nope")
    with pytest.raises(UsageError, match="is not callable"):
        zoo.resolve("math:pi")
    with pytest.raises(UsageError, match="only allowed from the command line"):
        zoo.resolve("math:sqrt", allow_import=False)


def test_resnet20_option_a_shortcut_closed_form():
    # Subsample by 2 and zero-pad channels by planes//4 on each side (He et al. 2016, option A).
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    y = zoo.ShortcutA(32)(x)
    assert y.shape == (2, 32, 2, 2)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


# -------------------------------------------------------------------------- published ResNet-20

def test_resnet20_published_weights_load_strictly():
    path = _resnet20_path()
    loaded = load_model(str(path), arch="resnet20")
    net = loaded.module.net
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 269_722
    assert loaded.num_classes == 10 and loaded.input_shape == (3, 32, 32)
    assert loaded.meta["stripped_prefix"] == "module."
    assert loaded.meta["normalisation_source"] == "zoo default for resnet20"
    assert loaded.mean == (0.485, 0.456, 0.406) and loaded.std == (0.229, 0.224, 0.225)
    # Independent truth: every tensor of the file is in the network, bit for bit.
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    mine = net.state_dict()
    assert {k[len("module."):] for k in raw} == {k for k in mine if not k.endswith("num_batches_tracked")}
    for key, value in raw.items():
        torch.testing.assert_close(mine[key[len("module."):]], value, rtol=0, atol=0)
    # And the normalisation sits inside: logits equal net((x − mean)/std).
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net((x - mean) / std), rtol=0, atol=1e-5)


def test_resnet20_user_normalisation_wins():
    loaded = load_model(str(_resnet20_path()), arch="resnet20", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.meta["normalisation_source"] == "--mean/--std"


def test_resnet20_summary():
    summary = summarize(load_model(str(_resnet20_path()), arch="resnet20"))
    rows = {r["name"]: r for r in summary["layers"]}
    assert rows["conv1"]["input_shape"] == [3, 32, 32]
    assert rows["layer2.0.shortcut"]["output_shape"] == [32, 16, 16]
    assert rows["layer3.2.relu2"]["output_shape"] == [64, 8, 8]
    assert rows["linear"]["output_shape"] == [10]
    assert sum(r["parameters"] for r in summary["layers"]) == 269_722


def test_info_cli_on_resnet20(capsys):
    path = _resnet20_path()
    code = _cli("info", str(path), "--arch", "resnet20", "--json", "--device", "cpu")
    out = capsys.readouterr().out
    assert code == 0
    model = json.loads(out)["model"]
    assert model["num_classes"] == 10 and model["input_shape"] == [3, 32, 32]
    assert model["parameters"] == 269_722 and model["format"] == "state_dict"
    assert model["sha256"].startswith("12fca82f")  # the published file name carries its hash prefix


def test_info_cli_table_on_resnet20(capsys):
    code = _cli("info", str(_resnet20_path()), "--arch", "resnet20", "--device", "cpu")
    out = capsys.readouterr().out
    assert code == 0
    assert "3×32×32" in out and "269,722" in out and "layer3.2.conv2" in out


def test_info_cli_without_arguments(capsys):
    code = _cli("info", "--device", "cpu")
    out = capsys.readouterr().out
    assert code == 0
    assert "embedded sample" in out and "lenet" in out and "61,706" in out


def test_info_cli_errors(tmp_path, capsys):
    assert _cli("info", str(tmp_path / "missing.pt")) == 2
    assert "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02not a pickle")
    assert _cli("info", str(bad)) == 3
    assert "bad.pt" in capsys.readouterr().err
    if RESNET20.exists():
        assert _cli("info", str(RESNET20)) == 2  # a bare state_dict without --arch
        assert "--arch" in capsys.readouterr().err
