"""Model loading: every format from real files, CLI overrides, bad input, and the layer summary."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.errors import ModelLoadError, UsageError
from robaudit.models import zoo
from robaudit.models.load import TORCHSCRIPT_META, load_model, sample_model_path
from robaudit.models.summary import summarize

REPO = Path(__file__).resolve().parents[1]

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = (0.25,), (0.5,)


@pytest.fixture
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return zoo.LeNet(in_channels=1, num_classes=10).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _ref(net: nn.Module, x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """Independent truth: the original module on manually normalised pixels."""
    with torch.no_grad():
        if mean is not None:
            x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        return net(x)


def _logits(loaded, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.module(x)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoint(net: nn.Module, **meta) -> dict:
    base = {"mean": list(MEAN), "std": list(STD), "input_shape": [1, 28, 28],
            "class_names": [f"c{i}" for i in range(10)], "dataset": "toy"}
    base.update(meta)
    return {"arch": "lenet", "arch_kwargs": {"in_channels": 1, "num_classes": 10},
            "state_dict": net.state_dict(), "meta": base}


# ------------------------------------------------------------------------------------ formats

def test_robaudit_checkpoint(tmp_path, lenet, x):
    path = tmp_path / "ck.pt"
    torch.save(_checkpoint(lenet), path)
    loaded = load_model(str(path))
    torch.testing.assert_close(_logits(loaded, x), _ref(lenet, x, MEAN, STD), rtol=0, atol=1e-5)
    assert loaded.format == "robaudit-checkpoint" and loaded.arch == "lenet"
    assert loaded.path == str(path) and loaded.sha256 == _sha(path)
    assert loaded.class_names == [f"c{i}" for i in range(10)] and loaded.dataset == "toy"
    assert loaded.mean == MEAN and loaded.std == STD and loaded.input_shape == (1, 28, 28)
    assert loaded.meta["normalisation_source"] == "checkpoint meta"
    assert not loaded.module.training


def test_cli_flags_override_checkpoint_meta(tmp_path, lenet):
    path = tmp_path / "ck.pt"
    torch.save(_checkpoint(lenet), path)
    loaded = load_model(str(path), mean=(0.5,), std=(0.25,), input_shape=(1, 28, 28), device=torch.device("cpu"))
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(_logits(loaded, x), _ref(lenet, x, (0.5,), (0.25,)), rtol=0, atol=1e-5)
    assert loaded.meta["normalisation_source"] == "--mean/--std"
    assert loaded.meta["input_shape_source"] == "--input-shape"


def test_embedded_sample_model():
    loaded = load_model(None)
    ck = torch.load(sample_model_path(), weights_only=True)
    net = zoo.build(ck["arch"], **ck["arch_kwargs"])
    net.load_state_dict(ck["state_dict"])
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(loaded, x), _ref(net.eval(), x, ck["meta"]["mean"], ck["meta"]["std"]),
                               rtol=0, atol=1e-5)
    assert loaded.path is None and loaded.meta["embedded"] is True
    assert loaded.sha256 == _sha(sample_model_path())
    assert loaded.dataset == "fashionmnist" and len(loaded.class_names) == 10
    if FMNIST.exists():  # the sample card says 89.5 % test accuracy
        from robaudit.data.idx import read_idx

        xs = torch.from_numpy(read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:1000].astype(np.float32)[:, None] / 255)
        ys = torch.from_numpy(read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")[:1000].astype(np.int64))
        acc = (_logits(loaded, xs).argmax(1) == ys).float().mean().item()
        assert acc >= 0.85


@pytest.mark.parametrize("wrap", ["bare", "module_prefix", "state_dict_key", "compiled_prefix"])
def test_state_dict_with_arch(tmp_path, lenet, x, wrap):
    sd = lenet.state_dict()
    if wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "compiled_prefix":
        obj = {f"_orig_mod.{k}": v for k, v in sd.items()}
    elif wrap == "state_dict_key":
        obj = {"best_prec1": 91.5, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = sd
    path = tmp_path / "sd.pth"
    torch.save(obj, path)
    loaded = load_model(str(path), arch="lenet")
    torch.testing.assert_close(_logits(loaded, x), _ref(lenet, x), rtol=0, atol=1e-5)
    assert loaded.format == "state_dict" and loaded.input_shape == (1, 28, 28) and loaded.mean is None
    if wrap == "state_dict_key":
        assert loaded.meta["checkpoint"] == {"best_prec1": 91.5}


def test_state_dict_infers_zoo_kwargs(tmp_path):
    torch.manual_seed(0)
    net = zoo.LeNet(in_channels=3, num_classes=7).eval()
    path = tmp_path / "sd3.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(str(path), arch="lenet")
    assert loaded.input_shape == (3, 28, 28) and loaded.num_classes == 7
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(_logits(loaded, x), _ref(net, x), rtol=0, atol=1e-5)


def test_legacy_double_precision_state_dict_is_upcast(tmp_path, lenet, x):
    path = tmp_path / "legacy.pt"
    torch.save({k: v.double() for k, v in lenet.state_dict().items()}, path, _use_new_zipfile_serialization=False)
    loaded = load_model(str(path), arch="lenet")
    torch.testing.assert_close(_logits(loaded, x), _ref(lenet, x), rtol=0, atol=1e-5)


def test_state_dict_without_arch_explains_arch(tmp_path, lenet):
    path = tmp_path / "sd.pt"
    torch.save(lenet.state_dict(), path)
    with pytest.raises(UsageError, match=r"sd.pt: a bare state_dict .*pass --arch NAME") as info:
        load_model(str(path))
    assert info.value.exit_code == 2


def test_wrong_arch_names_first_mismatched_keys(tmp_path, lenet):
    path = tmp_path / "sd.pt"
    torch.save(lenet.state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path), arch="resnet20")
    msg = str(info.value)
    assert "\n" not in msg and "sd.pt" in msg and "--arch resnet20" in msg
    assert "missing keys: bn1.weight" in msg and "unexpected keys: conv1.bias" in msg
    assert "conv1.weight 6x1x5x5 vs 16x3x3x3" in msg  # file shape vs architecture shape
    assert "more" in msg  # long lists are cut


def test_unknown_arch_is_a_usage_error(tmp_path, lenet):
    path = tmp_path / "sd.pt"
    torch.save(lenet.state_dict(), path)
    with pytest.raises(UsageError, match="--arch 'nosuchnet'"):
        load_model(str(path), arch="nosuchnet")


def test_torchvision_arch_needs_input_shape(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = tv.models.get_model("resnet18", weights=None, num_classes=10).eval()
    path = tmp_path / "r18.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"r18.pt: .*--input-shape C,H,W"):
        load_model(str(path), arch="resnet18")
    loaded = load_model(str(path), arch="resnet18", input_shape=(3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(_logits(loaded, x), _ref(net, x), rtol=0, atol=1e-5)
    assert loaded.num_classes == 10 and loaded.meta["arch_kind"] == "torchvision"


def test_import_factory_arch(tmp_path, monkeypatch):
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "small.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def make(num_classes=5):
            return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    path = tmp_path / "small.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(str(path), arch="mynets.small:make", input_shape=(3, 2, 2))
    xs = torch.rand(3, 3, 2, 2)
    torch.testing.assert_close(_logits(loaded, xs), _ref(net, xs), rtol=0, atol=1e-6)
    assert loaded.num_classes == 4  # num_classes read off the last weight
    with pytest.raises(UsageError, match="cannot import nosuch"):
        load_model(str(path), arch="nosuch.module:make", input_shape=(3, 2, 2))
    sys.modules.pop("mynets.small", None)
    sys.modules.pop("mynets", None)


def test_checkpoint_may_not_import_factories(tmp_path, lenet):
    ck = _checkpoint(lenet)
    ck["arch"] = "os:system"
    path = tmp_path / "evil_arch.pt"
    torch.save(ck, path)
    with pytest.raises(UsageError, match="only allowed from the command line"):
        load_model(str(path))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path, lenet, x, how):
    with pytest.warns(FutureWarning):  # torch.jit.* are deprecated but still what users have
        ts = torch.jit.script(lenet) if how == "script" else torch.jit.trace(lenet, torch.rand(1, 1, 28, 28))
    path = tmp_path / f"{how}.pt"
    ts.save(str(path))
    loaded = load_model(str(path))
    assert loaded.format == "torchscript"
    assert loaded.input_shape == (1, 28, 28) and loaded.meta["input_shape_source"] == "recognised as zoo lenet"
    torch.testing.assert_close(_logits(loaded, x), _ref(lenet, x), rtol=0, atol=1e-5)


def test_double_precision_torchscript_and_pickle_are_cast(tmp_path, lenet, x):
    with pytest.warns(FutureWarning):
        torch.jit.script(lenet.double()).save(str(tmp_path / "d.ts"))
    torch.save(lenet, tmp_path / "d.pt")
    lenet.float()
    for path, kwargs in ((tmp_path / "d.ts", {}), (tmp_path / "d.pt", {"unsafe_load": True})):
        loaded = load_model(str(path), **kwargs)
        out = _logits(loaded, x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, _ref(lenet, x), rtol=0, atol=1e-5)


def test_torchscript_unknown_module_needs_input_shape_or_meta(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6)).eval()
    with pytest.warns(FutureWarning):
        ts = torch.jit.script(net)
    path = tmp_path / "net.ts"
    ts.save(str(path))
    with pytest.raises(ModelLoadError, match=r"net.ts: the torchscript file does not say its input shape; pass --input-shape"):
        load_model(str(path))
    loaded = load_model(str(path), input_shape=(3, 16, 16))
    xs = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(_logits(loaded, xs), _ref(net, xs), rtol=0, atol=1e-5)
    # a robaudit.json extra file supplies shape and normalisation
    meta = {"input_shape": [3, 16, 16], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.25], "class_names": list("abcdef")}
    with_meta = tmp_path / "meta.ts"
    torch.jit.save(ts, str(with_meta), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    loaded = load_model(str(with_meta))
    assert loaded.class_names == list("abcdef") and loaded.input_shape == (3, 16, 16)
    torch.testing.assert_close(_logits(loaded, xs), _ref(net, xs, meta["mean"], meta["std"]), rtol=0, atol=1e-5)


def test_pickled_module_needs_unsafe_load(tmp_path, lenet, x):
    path = tmp_path / "full.pt"
    torch.save(lenet, path)
    with pytest.raises(ModelLoadError, match=r"full.pt: holds pickled Python objects .*robaudit.models.zoo.LeNet.*--unsafe-load") as info:
        load_model(str(path))
    assert "\n" not in str(info.value)
    loaded = load_model(str(path), unsafe_load=True)
    assert loaded.format == "pickle" and loaded.input_shape == (1, 28, 28)
    torch.testing.assert_close(_logits(loaded, x), _ref(lenet, x), rtol=0, atol=1e-5)


class _Evil:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_does_not_run_by_default(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(marker)}, path)
    with pytest.raises(ModelLoadError, match="--unsafe-load"):
        load_model(str(path), arch="lenet")
    assert not marker.exists()
    # The test can fail: with --unsafe-load the payload does run (then the file holds no weights).
    with pytest.raises(ModelLoadError, match="no state_dict found"):
        load_model(str(path), arch="lenet", unsafe_load=True)
    assert marker.read_text() == "pwned"


# ------------------------------------------------------------------------------------ bad input

def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"model file not found: .*nope.pt") as info:
        load_model(str(tmp_path / "nope.pt"))
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="is a directory"):
        load_model(str(tmp_path))


def _truncated_zip(tmp_path: Path, lenet: nn.Module) -> Path:
    full = tmp_path / "full_sd.pt"
    torch.save(lenet.state_dict(), full)
    data = full.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["random", "empty", "truncated_zip", "truncated_legacy", "truncated_torchscript"])
def test_corrupt_files_are_model_load_errors(tmp_path, lenet, kind):
    if kind == "random":
        path = tmp_path / "random.pt"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    elif kind == "truncated_zip":
        path = _truncated_zip(tmp_path, lenet)
    elif kind == "truncated_legacy":
        full = tmp_path / "legacy.pt"
        torch.save(lenet.state_dict(), full, _use_new_zipfile_serialization=False)
        path = tmp_path / "legacy_cut.pt"
        path.write_bytes(full.read_bytes()[:3000])
    else:
        full = tmp_path / "ts.pt"
        with pytest.warns(FutureWarning):
            torch.jit.script(lenet).save(str(full))
        path = tmp_path / "ts_cut.pt"
        path.write_bytes(full.read_bytes()[:-200])
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path), arch="lenet")
    msg = str(info.value)
    assert path.name in msg and "\n" not in msg
    assert info.value.exit_code == 3


class _FeatureMap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0  # (N, C, H, W): not logits


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return z, z.relu()


class _DictOut(_TupleOut):
    def forward(self, x):
        z = self.fc(x.flatten(1))
        return {"features": x.flatten(1), "logits": z}


def _scripted(tmp_path: Path, net: nn.Module, name: str) -> Path:
    with pytest.warns(FutureWarning):
        ts = torch.jit.script(net.eval())
    path = tmp_path / name
    ts.save(str(path))
    return path


def test_output_not_logits(tmp_path):
    path = _scripted(tmp_path, _FeatureMap(), "fmap.pt")
    with pytest.raises(ModelLoadError, match=r"fmap.pt: model output must be logits of shape \(N, C\); got shape \(2, 1, 2, 2\)"):
        load_model(str(path), input_shape=(1, 2, 2))


def test_tuple_and_dict_outputs_need_select(tmp_path):
    torch.manual_seed(0)
    tup = _TupleOut()
    path = _scripted(tmp_path, tup, "tuple.pt")
    with pytest.raises(ModelLoadError, match=r"tuple.pt: .*tuple.*--select"):
        load_model(str(path), input_shape=(1, 2, 2))
    loaded = load_model(str(path), input_shape=(1, 2, 2), select="0")
    xs = torch.rand(3, 1, 2, 2)
    torch.testing.assert_close(_logits(loaded, xs), tup(xs)[0].detach(), rtol=0, atol=1e-6)
    with pytest.raises(ModelLoadError, match="--select '7'"):
        load_model(str(path), input_shape=(1, 2, 2), select="7")
    d = _DictOut()
    path = _scripted(tmp_path, d, "dict.pt")
    with pytest.raises(ModelLoadError, match=r"dict.pt: .*dict.*--select"):
        load_model(str(path), input_shape=(1, 2, 2))
    loaded = load_model(str(path), input_shape=(1, 2, 2), select="logits")
    torch.testing.assert_close(_logits(loaded, xs), d(xs)["logits"].detach(), rtol=0, atol=1e-6)


def test_normalisation_channels_must_fit(tmp_path, lenet):
    path = tmp_path / "sd.pt"
    torch.save(lenet.state_dict(), path)
    with pytest.raises(UsageError, match="3 channel values but the input has 1"):
        load_model(str(path), arch="lenet", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    with pytest.raises(UsageError, match="--mean and --std go together"):
        load_model(str(path), arch="lenet", mean=(0.1,))


def test_user_file_is_never_modified(tmp_path, lenet):
    files = []
    torch.save(_checkpoint(lenet), tmp_path / "a.pt")
    files.append((tmp_path / "a.pt", {}))
    torch.save({f"module.{k}": v for k, v in lenet.state_dict().items()}, tmp_path / "b.pth")
    files.append((tmp_path / "b.pth", {"arch": "lenet"}))
    with pytest.warns(FutureWarning):
        torch.jit.script(lenet).save(str(tmp_path / "c.ts"))
    files.append((tmp_path / "c.ts", {}))
    torch.save(lenet, tmp_path / "d.pt")
    files.append((tmp_path / "d.pt", {"unsafe_load": True}))
    torch.onnx.export(lenet, torch.rand(1, 1, 28, 28), str(tmp_path / "e.onnx"), opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    files.append((tmp_path / "e.onnx", {}))
    before = {p: (_sha(p), os.stat(p).st_mtime_ns) for p, _ in files}
    listing = sorted(os.listdir(tmp_path))
    for path, kwargs in files:
        loaded = load_model(str(path), **kwargs)
        summarize(loaded)
        assert loaded.sha256 == before[path][0]
    assert {p: (_sha(p), os.stat(p).st_mtime_ns) for p, _ in files} == before
    assert sorted(os.listdir(tmp_path)) == listing


# ------------------------------------------------------------------------------------ summary

def test_summary_shapes_and_params_closed_form(tmp_path, lenet):
    path = tmp_path / "ck.pt"
    torch.save(_checkpoint(lenet), path)
    summary = summarize(load_model(str(path)))
    json.dumps(summary)  # JSON-safe
    assert summary["model"]["sha256"] == _sha(path) and summary["model"]["class_names"][0] == "c0"
    rows = {r["name"]: r for r in summary["layers"]}
    assert [r["name"] for r in summary["layers"]][:3] == ["normalize", "conv1", "relu1"]
    # LeNet (Johansson App. A.1): 28 → conv5 pad2 → 28 → pool → 14 → conv5 → 10 → pool → 5
    assert rows["conv1"]["input_shape"] == [1, 28, 28] and rows["conv1"]["output_shape"] == [6, 28, 28]
    assert rows["conv2"]["output_shape"] == [16, 10, 10] and rows["pool2"]["output_shape"] == [16, 5, 5]
    assert rows["fc1"]["input_shape"] == [400] and rows["fc3"]["output_shape"] == [10]
    assert rows["conv1"]["parameters"] == 6 * 1 * 25 + 6 and rows["fc1"]["parameters"] == 400 * 120 + 120
    assert sum(r["parameters"] for r in summary["layers"]) == summary["model"]["parameters"] == 61706


class _Add(nn.Module):
    def forward(self, a, b):
        return a + b


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.add = _Add()
        self.relu = nn.ReLU()  # called twice

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return self.relu(self.add(self.relu(z), z))


def test_summary_multi_input_and_repeated_calls():
    from robaudit.models.adapt import adapt

    loaded = adapt(_TwoInputs(), input_shape=(1, 2, 2))
    rows = {r["name"]: r for r in summarize(loaded)["layers"]}
    assert rows["add"]["input_shape"] == [[3], [3]] and rows["add"]["output_shape"] == [3]
    assert rows["relu"]["calls"] == 2 and "calls" not in rows["fc"]


class _Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.fail = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("injected failure")
        return self.fc(x.flatten(1))


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("fail", [False, True])
def test_summary_removes_hooks_and_restores_mode(fail):
    from robaudit.models.adapt import adapt

    loaded = adapt(_Boom(), input_shape=(1, 2, 2))
    loaded.module.train()
    loaded.module.net.fc.eval()  # a mixed state must come back exactly
    modes = [m.training for m in loaded.module.modules()]
    loaded.module.net.fail = fail
    if fail:
        with pytest.raises(RuntimeError, match="injected"):
            summarize(loaded)
    else:
        summarize(loaded)
    assert _hooks(loaded.module) == 0
    assert [m.training for m in loaded.module.modules()] == modes
