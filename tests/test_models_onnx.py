"""ONNX loading: SAME auto_pad rewrite, unsupported-op listing, fixed batch, real models vs onnxruntime, JVP."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from robaudit.errors import ModelLoadError, UsageError  # noqa: E402
from robaudit.models.load import load_model  # noqa: E402
from robaudit.models.onnx import PerSample, load_onnx, same_pads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "assets"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset not present: {path}")
    return path


def _ort(path: Path, x: np.ndarray, per_sample: bool = False) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    if per_sample:
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return sess.run(None, {name: x})[0]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _model(nodes, inits, in_shape, out_shape, opset: int = 13, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


# ------------------------------------------------------------------------------ closed-form pads

@pytest.mark.parametrize("n,k,s,d,mode,expected", [
    (28, 5, 1, 1, "SAME_UPPER", [2, 2]),   # mnist-8: total 4, symmetric
    (8, 3, 2, 1, "SAME_UPPER", [0, 1]),    # out 4, total 6+3-8 = 1: the odd pixel at the end
    (8, 3, 2, 1, "SAME_LOWER", [1, 0]),    # … or at the beginning
    (9, 4, 2, 1, "SAME_UPPER", [1, 2]),    # out 5, total 8+4-9 = 3
    (9, 4, 2, 1, "SAME_LOWER", [2, 1]),
    (10, 3, 1, 2, "SAME_UPPER", [2, 2]),   # dilation 2: effective kernel 5, total 4
    (10, 1, 5, 1, "SAME_UPPER", [0, 0]),   # (out-1)*s + 1 - n < 0: clipped at 0
])
def test_same_pads_closed_form(n, k, s, d, mode, expected):
    begin, end = same_pads([n], [k], [s], [d], mode)
    assert [begin, end] == expected
    # invariant: the padded size yields ceil(n / s) outputs with floor mode
    assert (n + begin + end - ((k - 1) * d + 1)) // s + 1 == -(-n // s)


# ---------------------------------------------------------------------------- SAME graphs vs ORT

@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_and_pool_same_auto_pad_match_onnxruntime(tmp_path, mode):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 4, 3)).astype(np.float32)   # even kernel height: asymmetric pads
    b = rng.normal(size=(3,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], auto_pad=mode, strides=[2, 2], kernel_shape=[4, 3]),
        helper.make_node("MaxPool", ["c"], ["m"], auto_pad=mode, kernel_shape=[2, 2], strides=[2, 1]),
        helper.make_node("AveragePool", ["m"], ["a"], auto_pad=mode, kernel_shape=[3, 3], strides=[1, 1]),
        helper.make_node("Flatten", ["a"], ["y"], axis=1),
    ]
    # x: 9x8 → conv s2 → 5x4 → maxpool (2,2) s(2,1) → 3x4 → avgpool 3x3 s1 (symmetric pads 1) → 3x4
    model = _model(nodes, {"w": w, "b": b}, ["N", 2, 9, 8], ["N", 36])
    path = _save(model, tmp_path / "same.onnx")
    net, shape, meta = load_onnx(str(path))
    assert shape == (2, 9, 8)
    assert len(meta["auto_pad_rewritten"]) == 3
    x = rng.random((4, 2, 9, 8), dtype=np.float32)
    ours = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours, _ort(path, x), rtol=0, atol=1e-5)


def test_asymmetric_average_pool_is_a_clear_error(tmp_path):
    nodes = [helper.make_node("AveragePool", ["x"], ["a"], auto_pad="SAME_UPPER", kernel_shape=[2, 2]),
             helper.make_node("Flatten", ["a"], ["y"], axis=1)]
    path = _save(_model(nodes, {}, ["N", 1, 4, 4], ["N", 16]), tmp_path / "avg.onnx")
    with pytest.raises(ModelLoadError, match="avg.onnx.*AvgPool with non symmetrical padding"):
        load_onnx(str(path))


# ------------------------------------------------------------------------------- unsupported ops

def test_all_unsupported_ops_are_listed_at_once(tmp_path):
    nodes = [
        helper.make_node("Hardmax", ["x"], ["h1"], axis=1),
        helper.make_node("Relu", ["h1"], ["r"]),
        helper.make_node("Shrink", ["r"], ["s"]),
        helper.make_node("Hardmax", ["s"], ["h2"], axis=1),       # listed once
        helper.make_node("Foo", ["h2"], ["y"], domain="com.example"),
    ]
    model = _model(nodes, {}, ["N", 6], ["N", 6], domains=["com.example"])
    path = tmp_path / "ops.onnx"
    onnx.save(model, str(path))  # no checker: the custom op has no schema
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    msg = str(info.value)
    assert "\n" not in msg and "ops.onnx" in msg
    assert "3 op type(s)" in msg
    for op in ("Hardmax (opset 13)", "Shrink (opset 13)", "com.example.Foo"):
        assert op in msg
    assert msg.count("Hardmax") == 1 and "Relu" not in msg


# ------------------------------------------------------------------------------ shapes and batch

def test_symbolic_spatial_dims_need_input_shape(tmp_path):
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    path = _save(_model(nodes, {}, ["N", 3, "H", "W"], ["N", 3]), tmp_path / "gap.onnx")
    with pytest.raises(ModelLoadError, match=r"gap.onnx.*symbolic.*--input-shape"):
        load_model(str(path))
    loaded = load_model(str(path), input_shape=(3, 8, 6))
    assert loaded.input_shape == (3, 8, 6) and loaded.num_classes == 3
    x = torch.rand(2, 3, 8, 6)
    torch.testing.assert_close(loaded.module(x), x.mean(dim=(2, 3)), rtol=0, atol=1e-6)


def test_input_shape_contradicting_the_graph_is_a_usage_error():
    path = _shared("onnx", "mnist-8-opt.onnx")
    with pytest.raises(UsageError, match=r"--input-shape 3,32,32 contradicts"):
        load_model(str(path), input_shape=(3, 32, 32))


def test_fixed_batch_that_cannot_be_freed_runs_per_sample(tmp_path):
    # Concat with a (1, 4) constant bakes batch 1 in; the rewrite cannot fix it → PerSample.
    c = np.arange(4, dtype=np.float32).reshape(1, 4)
    w = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    nodes = [helper.make_node("Concat", ["x", "c"], ["cat"], axis=1),
             helper.make_node("MatMul", ["cat", "w"], ["y"])]
    path = _save(_model(nodes, {"c": c, "w": w}, [1, 4], [1, 3]), tmp_path / "fixed.onnx")
    net, shape, meta = load_onnx(str(path))
    assert isinstance(net, PerSample) and "sample by sample" in meta["batch"]
    x = np.random.default_rng(2).random((5, 4), dtype=np.float32)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), _ort(path, x, per_sample=True),
                               rtol=0, atol=1e-5)


def test_per_sample_summary_drops_the_batch_dim(tmp_path):
    from robaudit.models.summary import summarize

    c = np.zeros((1, 4), np.float32)
    w = np.ones((8, 3), np.float32)
    nodes = [helper.make_node("Concat", ["x", "c"], ["cat"], axis=1), helper.make_node("MatMul", ["cat", "w"], ["y"])]
    path = _save(_model(nodes, {"c": c, "w": w}, [1, 4], [1, 3]), tmp_path / "fixed.onnx")
    rows = summarize(load_model(str(path)))["layers"]
    assert [r["output_shape"] for r in rows] == [[8], [3]]
    assert rows[0]["input_shape"] == [[4], [1, 4]]  # the (1, 4) constant keeps its own shape


def test_onnx_detected_without_suffix(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes((REPO / "sample_models" / "lenet_fmnist.onnx").read_bytes())
    assert load_model(str(path)).format == "onnx"


def test_random_bytes_with_onnx_suffix(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match="junk.onnx"):
        load_model(str(path))


def test_multi_input_graph_is_rejected(tmp_path):
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "two.onnx")
    with pytest.raises(ModelLoadError, match=r"two.onnx: expected one image input.*found 2 \(a, b\)"):
        load_model(str(path))


# ------------------------------------------------------------------------------------ real models

def _mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    from robaudit.data.idx import read_idx

    x = read_idx(_shared("mnist", "t10k-images-idx3-ubyte.gz"))[:n].astype(np.float32)[:, None] / 255.0
    y = read_idx(_shared("mnist", "t10k-labels-idx1-ubyte.gz"))[:n].astype(np.int64)
    return x, y


def test_mnist8_matches_onnxruntime_on_real_images():
    path = _shared("onnx", "mnist-8-opt.onnx")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    listing = sorted(p.name for p in path.parent.iterdir())
    loaded = load_model(str(path))
    assert loaded.format == "onnx" and loaded.input_shape == (1, 28, 28) and loaded.num_classes == 10
    meta = loaded.meta["onnx"]
    assert meta["opset_upgraded"] == [8, 13] and len(meta["auto_pad_rewritten"]) == 2
    assert "made symbolic" in meta["batch"]  # one batched pass, not a per-sample loop
    x, y = _mnist(100)
    ref = _ort(path, x, per_sample=True)  # the file's graph only takes batch 1
    with torch.no_grad():
        ours = loaded.module(torch.from_numpy(x)).numpy()
    assert np.abs(ours - ref).max() <= 1e-4
    assert (ours.argmax(1) == y).mean() >= 0.95  # published ~98 %
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in path.parent.iterdir()) == listing  # no temp files beside the model


def test_sample_onnx_export_matches_checkpoint():
    onnx_path = REPO / "sample_models" / "lenet_fmnist.onnx"
    ckpt_path = REPO / "sample_models" / "lenet_fmnist.pt"
    from_onnx = load_model(str(onnx_path))
    from_ckpt = load_model(str(ckpt_path))
    assert from_onnx.mean is None  # the export has the normalisation inside the graph
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    if FMNIST.exists():
        from robaudit.data.idx import read_idx

        x = torch.from_numpy(read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:64].astype(np.float32)[:, None] / 255.0)
    with torch.no_grad():
        torch.testing.assert_close(from_onnx.module(x), from_ckpt.module(x), rtol=0, atol=1e-5)


def test_torch_onnx_export_roundtrip(tmp_path):
    from robaudit.models.zoo import LeNet

    torch.manual_seed(0)
    net = LeNet(in_channels=1, num_classes=10).eval()
    path = tmp_path / "lenet.onnx"
    torch.onnx.export(net, torch.rand(1, 1, 28, 28), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    loaded = load_model(str(path))
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------- autodiff

@pytest.mark.parametrize("which", ["mnist8", "sample", "per_sample"])
def test_forward_mode_jvp_through_converted_graph(which, tmp_path):
    """torch.func.jvp works through onnx2torch modules and equals J·v from the dense Jacobian."""
    from torch.func import jvp

    if which == "mnist8":
        net = load_model(str(_shared("onnx", "mnist-8-opt.onnx"))).module
        x = torch.from_numpy(_mnist(3)[0])
    elif which == "sample":
        net = load_model(str(REPO / "sample_models" / "lenet_fmnist.onnx")).module
        x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    else:
        w = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
        nodes = [helper.make_node("Concat", ["x", "c"], ["cat"], axis=1),
                 helper.make_node("MatMul", ["cat", "w"], ["t"]), helper.make_node("Tanh", ["t"], ["y"])]
        path = _save(_model(nodes, {"c": np.ones((1, 4), np.float32), "w": w}, [1, 4], [1, 3]), tmp_path / "f.onnx")
        net = load_model(str(path)).module
        assert isinstance(net.net, PerSample)
        x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    net = net.double()
    x = x.double()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out, tangent = jvp(net, (x,), (v,))
    jac = torch.autograd.functional.jacobian(net, x)  # (N, C, N, *in)
    dense = torch.einsum("ncm...,m...->nc", jac, v)
    torch.testing.assert_close(tangent, dense, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
