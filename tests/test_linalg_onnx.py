"""The ONNX export of the sample model gives the same Jacobian norms as its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robaudit.linalg import JacobianOperator, exact, power_iteration, top_singular

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _checkpoint_model():
    from robaudit.models import zoo
    from robaudit.models.adapt import adapt

    ck = torch.load(REPO / "sample_models" / "lenet_fmnist.pt", weights_only=True)
    net = zoo.build(ck["arch"], **ck["arch_kwargs"])
    net.load_state_dict(ck["state_dict"])
    return adapt(net, input_shape=(1, 28, 28), mean=ck["meta"]["mean"], std=ck["meta"]["std"]).module


def _onnx_model():
    path = REPO / "sample_models" / "lenet_fmnist.onnx"
    try:  # the project's loader when present, else onnx2torch directly
        from robaudit.models.load import load_model  # noqa: F401
    except ImportError:
        load_model = None
    if load_model is not None:
        return load_model(str(path)).module
    onnx2torch = pytest.importorskip("onnx2torch")
    return onnx2torch.convert(str(path)).eval()


def _images(n: int) -> torch.Tensor:
    if FMNIST.exists():
        from robaudit.data.idx import read_idx

        return torch.from_numpy(read_idx(FMNIST)[:n].copy()).to(torch.float64)[:, None] / 255.0
    return torch.rand(n, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_onnx_export_gives_the_same_norms_as_the_checkpoint():
    ckpt = _checkpoint_model().double()
    onnx = _onnx_model().double()
    x = _images(6)
    a, b = exact(JacobianOperator(ckpt, x)), exact(JacobianOperator(onnx, x))
    torch.testing.assert_close(b.spectral, a.spectral, rtol=1e-6, atol=0)
    torch.testing.assert_close(b.frobenius, a.frobenius, rtol=1e-6, atol=0)
    torch.testing.assert_close(b.singular_values, a.singular_values, rtol=1e-6, atol=1e-9)
    # the iterative methods run on the converted graph too (forward mode or its double-backward fallback)
    gen = torch.Generator().manual_seed(0)
    pw = power_iteration(JacobianOperator(onnx, x), iters=2000, tol=1e-8, generator=gen)
    torch.testing.assert_close(pw.sigma, a.spectral, rtol=1e-4, atol=0)
    lz = top_singular(JacobianOperator(onnx, x), k=3, iters=10, tol=1e-10, generator=gen)
    torch.testing.assert_close(lz.sigma, a.singular_values[:, :3], rtol=1e-4, atol=0)
