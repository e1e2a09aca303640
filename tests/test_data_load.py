"""robaudit.data.load: every format and layout, with pixels compared to the source exactly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.data import check_compatible, load_data
from robaudit.data.datasets import DATASETS
from robaudit.data.types import AuditData
from robaudit.errors import DataError
from test_data_fakes import (rng_images, write_cifar10, write_cifar100, write_idx_dataset, write_idx_split,
                             write_svhn)


def as_float64(data: AuditData) -> np.ndarray:
    return data.images(slice(None), dtype=torch.float64).numpy()


def assert_uint8_pixels(data: AuditData, expected_nchw: np.ndarray) -> None:
    """Stored as uint8 and read as exactly uint8/255 (the one automatic conversion)."""
    assert data.x.dtype == torch.uint8
    np.testing.assert_array_equal(data.x.numpy(), expected_nchw)
    np.testing.assert_array_equal(as_float64(data), expected_nchw.astype(np.float64) / 255.0)
    assert data.source["conversion"] == "uint8 [0,255] divided by 255"


# --------------------------------------------------------------------------- the registry, each name

def _fake_mnist(root: Path):
    return write_idx_dataset(root / "MNIST" / "raw"), [str(d) for d in range(10)], lambda a: a[:, None]


def _fake_fashion(root: Path):
    return write_idx_dataset(root / "FashionMNIST" / "raw"), None, lambda a: a[:, None]


def _fake_kmnist(root: Path):
    return write_idx_dataset(root / "KMNIST" / "raw", gz=False), None, lambda a: a[:, None]


def _fake_cifar10(root: Path):
    out = write_cifar10(root / "cifar-10-batches-py")
    return out, out["class_names"], lambda a: a.reshape(-1, 3, 32, 32)


def _fake_cifar100(root: Path):
    out = write_cifar100(root / "cifar-100-python")
    return out, out["class_names"], lambda a: a.reshape(-1, 3, 32, 32)


def _fake_svhn(root: Path):
    pytest.importorskip("scipy.io")
    out = write_svhn(root)
    return ({s: (x, y.ravel() % 10) for s, (x, y) in out.items()}, [str(d) for d in range(10)],
            lambda a: a.transpose(3, 2, 0, 1))


FAKES = {"mnist": _fake_mnist, "fashionmnist": _fake_fashion, "kmnist": _fake_kmnist,
         "cifar10": _fake_cifar10, "cifar100": _fake_cifar100, "svhn": _fake_svhn}


def test_every_registered_dataset_has_a_fake():
    assert set(FAKES) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("split", ["test", "train"])
def test_registry_reads_standard_layout_exactly(tmp_path, name, split):
    stored, class_names, to_nchw = FAKES[name](tmp_path)
    data = load_data(name, root=str(tmp_path), split=split)
    x_src, y_src = stored[split]
    assert data.name == name and data.split == split
    assert_uint8_pixels(data, to_nchw(np.asarray(x_src)))
    np.testing.assert_array_equal(data.y.numpy(), np.asarray(y_src).astype(np.int64))
    np.testing.assert_array_equal(data.indices.numpy(), np.arange(len(data)))
    assert data.y.dtype == torch.int64 and data.indices.dtype == torch.int64
    if class_names is not None:
        assert data.class_names == class_names
    json.dumps(data.describe())  # provenance is JSON-safe


@pytest.mark.parametrize("sub", ["MNIST/raw", "MNIST", "mnist", "mnist/raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_common_layouts(tmp_path, sub, gz):
    x, y = write_idx_split(tmp_path / sub, "test", 6, seed=5, gz=gz)
    data = load_data("MNIST", root=str(tmp_path))
    assert_uint8_pixels(data, x[:, None])
    np.testing.assert_array_equal(data.y.numpy(), y)
    assert data.source["format"] == "idx" and data.source["path"] == str(tmp_path / sub)


@pytest.mark.parametrize("spelling", ["fashion-mnist", "Fashion_MNIST", "fashionmnist"])
def test_fashion_mnist_folder_spellings(tmp_path, spelling):
    x, _ = write_idx_split(tmp_path / spelling, "test", 4, seed=9)
    data = load_data(spelling, root=str(tmp_path))
    assert data.name == "fashionmnist"
    assert_uint8_pixels(data, x[:, None])


def test_cifar10_in_a_named_parent_folder(tmp_path):
    out = write_cifar10(tmp_path / "CIFAR10" / "cifar-10-batches-py")
    data = load_data("cifar-10", root=str(tmp_path))
    assert_uint8_pixels(data, out["test"][0].reshape(-1, 3, 32, 32))


def test_cifar_pixel_layout_is_channel_major(tmp_path):
    # Row layout of a CIFAR record: 1024 red, then 1024 green, then 1024 blue values, row-major 32×32.
    out = write_cifar10(tmp_path / "cifar-10-batches-py", n_per_batch=1)
    row = out["test"][0][0]
    data = load_data("cifar10", root=str(tmp_path))
    x = data.x.numpy()[0]
    assert x[1, 0, 5] == row[1024 + 5] and x[2, 31, 31] == row[3071] and x[0, 1, 0] == row[32]


def test_download_uses_torchvision_into_root(tmp_path, monkeypatch):
    # No network here: stand in for torchvision.datasets.MNIST with a class that writes the raw files
    # where the real one puts them (root/MNIST/raw), and check load_data calls it only when files are missing.
    import torchvision.datasets as tvd

    calls = []

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_idx_split(Path(root) / "MNIST" / "raw", "train" if train else "test", 3, seed=1)

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    root = tmp_path / "new-root"
    data = load_data("mnist", root=str(root), download=True)
    assert calls == [(str(root), False, True)] and len(data) == 3
    load_data("mnist", root=str(root), download=True)
    assert len(calls) == 1  # already on disk: no second download


# --------------------------------------------------------------------------- paths: folders

def test_idx_folder_path(tmp_path):
    stored = write_idx_dataset(tmp_path / "x" / "raw")
    data = load_data(str(tmp_path / "x"), split="train")
    assert data.split == "train"
    assert_uint8_pixels(data, stored["train"][0][:, None])


def test_cifar_folder_path(tmp_path):
    out = write_cifar100(tmp_path / "c100")
    data = load_data(str(tmp_path / "c100"))
    assert_uint8_pixels(data, out["test"][0].reshape(-1, 3, 32, 32))
    assert data.class_names == out["class_names"]


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_rgb_sorted_classes(tmp_path):
    imgs = {("zebra", "b.png"): rng_images(1, (5, 4, 3)), ("zebra", "a.png"): rng_images(2, (5, 4, 3)),
            ("ant", "x.png"): rng_images(3, (5, 4, 3)), ("ant", "sub/y.png"): rng_images(4, (5, 4, 3))}
    for (cls, name), arr in imgs.items():
        _write_png(tmp_path / cls / name, arr)
    _write_png(tmp_path / "ant" / ".ipynb_checkpoints" / "x.png", rng_images(5, (9, 9, 3)))  # hidden: ignored
    data = load_data(str(tmp_path))
    order = [("ant", "sub/y.png"), ("ant", "x.png"), ("zebra", "a.png"), ("zebra", "b.png")]  # sorted paths
    expected = np.stack([imgs[k] for k in order]).transpose(0, 3, 1, 2)
    assert data.class_names == ["ant", "zebra"] and data.split == "-"
    np.testing.assert_array_equal(data.y.numpy(), [0, 0, 1, 1])
    assert_uint8_pixels(data, expected)


def test_image_folder_with_split_subfolders_and_grayscale(tmp_path):
    for split, seed in (("train", 10), ("test", 20)):
        for c in ("0", "1"):
            _write_png(tmp_path / split / c / "im.png", rng_images(seed + int(c), (6, 6)))
    data = load_data(str(tmp_path), split="train")
    assert data.split == "train" and data.sample_shape == (1, 6, 6)
    assert_uint8_pixels(data, np.stack([rng_images(10, (6, 6)), rng_images(11, (6, 6))])[:, None])


def test_image_folder_mixed_gray_and_rgb_repeats_gray(tmp_path):
    gray, rgb = rng_images(1, (4, 4)), rng_images(2, (4, 4, 3))
    _write_png(tmp_path / "a" / "g.png", gray)
    _write_png(tmp_path / "b" / "c.png", rgb)
    data = load_data(str(tmp_path))
    expected = np.stack([np.repeat(gray[..., None], 3, axis=2), rgb]).transpose(0, 3, 1, 2)
    assert_uint8_pixels(data, expected)
    assert "repeated" in data.source["channel_conversion"]


# --------------------------------------------------------------------------- paths: tensor files

def test_npz_nchw_uint8(tmp_path):
    x = rng_images(1, (5, 3, 8, 8))
    y = np.arange(5) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(str(tmp_path / "d.npz"))
    assert data.split == "-" and "layout" not in data.source
    assert_uint8_pixels(data, x)
    np.testing.assert_array_equal(data.y.numpy(), y)


def test_npz_nhwc_is_transposed(tmp_path):
    x = rng_images(2, (4, 8, 9, 3))
    np.savez_compressed(tmp_path / "d.npz", images=x, labels=np.zeros(4, np.int32))
    data = load_data(str(tmp_path / "d.npz"))
    assert data.sample_shape == (3, 8, 9)
    assert_uint8_pixels(data, x.transpose(0, 3, 1, 2))
    assert data.source["layout"] == "NHWC transposed to NCHW"


def test_npz_nhw_gets_one_channel(tmp_path):
    x = rng_images(3, (4, 7, 7))
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(4, np.int64))
    assert_uint8_pixels(load_data(str(tmp_path / "d.npz")), x[:, None])


def test_npz_float_in_unit_range_kept_bit_exact(tmp_path):
    x = np.random.default_rng(0).random((3, 1, 5, 5))  # float64 in [0,1)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 2, 3]))
    data = load_data(str(tmp_path / "d.npz"))
    assert data.x.dtype == torch.float64
    np.testing.assert_array_equal(as_float64(data), x)
    assert data.source["conversion"].startswith("none")


def test_npz_indices_are_dataset_indices(tmp_path):
    x = rng_images(4, (4, 1, 3, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 3]), indices=np.array([40, 10, 30, 20]),
             class_names=np.array(["a", "b", "c", "d"]))
    data = load_data(str(tmp_path / "d.npz"), indices=[20, 40])
    np.testing.assert_array_equal(data.indices.numpy(), [20, 40])
    np.testing.assert_array_equal(data.x.numpy(), x[[3, 0]])
    np.testing.assert_array_equal(data.y.numpy(), [3, 0])
    assert data.class_names == ["a", "b", "c", "d"]


def test_pt_dict_float32(tmp_path):
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 1, 0, 2])
    torch.save({"x": x, "y": y, "class_names": ["a", "b", "c", "d"]}, tmp_path / "d.pt")
    data = load_data(str(tmp_path / "d.pt"))
    assert data.x.dtype == torch.float32
    assert torch.equal(data.x, x) and torch.equal(data.y, y)
    assert data.class_names == ["a", "b", "c", "d"] and data.source["format"] == "pt"


def test_pt_pair_uint8_nhwc_and_half(tmp_path):
    x = torch.from_numpy(rng_images(5, (3, 5, 5, 1)))
    torch.save((x, torch.tensor([0, 1, 2])), tmp_path / "pair.pth")
    assert_uint8_pixels(load_data(str(tmp_path / "pair.pth")), x.numpy().transpose(0, 3, 1, 2))
    h = torch.rand(2, 1, 4, 4).half()
    torch.save({"images": h, "labels": torch.tensor([0, 1])}, tmp_path / "h.pt")
    data = load_data(str(tmp_path / "h.pt"))
    assert data.x.dtype == torch.float32 and torch.equal(data.x, h.float())


def test_relative_path_under_data_root(tmp_path):
    x = rng_images(6, (2, 1, 4, 4))
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "d.npz", x=x, y=np.zeros(2, np.int64))
    data = load_data("sub/d.npz", root=str(tmp_path))
    assert_uint8_pixels(data, x)


def test_svhn_single_mat_file(tmp_path):
    pytest.importorskip("scipy.io")
    out = write_svhn(tmp_path)
    data = load_data(str(tmp_path / "test_32x32.mat"))
    x, y = out["test"]
    assert_uint8_pixels(data, x.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(data.y.numpy(), np.where(y.ravel() == 10, 0, y.ravel()))
    assert data.y[0].item() == 0  # stored as 10


# --------------------------------------------------------------------------- selection

def _npz(tmp_path: Path, n: int = 10) -> tuple[str, np.ndarray]:
    x = rng_images(7, (n, 1, 2, 2))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(n) % 10)
    return str(tmp_path / "d.npz"), x


def test_indices_keep_order_and_drop_duplicates(tmp_path):
    path, x = _npz(tmp_path)
    data = load_data(path, indices=[7, 2, 7, 9])
    np.testing.assert_array_equal(data.indices.numpy(), [7, 2, 9])
    np.testing.assert_array_equal(data.x.numpy(), x[[7, 2, 9]])


def test_limit_applies_after_indices(tmp_path):
    path, x = _npz(tmp_path)
    data = load_data(path, indices=[5, 1, 8, 3], limit=2)
    np.testing.assert_array_equal(data.indices.numpy(), [5, 1])
    assert len(load_data(path, limit=3)) == 3
    assert len(load_data(path, limit=1000)) == 10  # a limit above N keeps everything


def test_selection_does_not_alias_source(tmp_path):
    path, x = _npz(tmp_path)
    data = load_data(path)
    data.x[0] = 0  # tensors own writable memory (IDX arrays are read-only buffers)
    assert data.x.is_contiguous()


def test_source_is_json_safe_for_every_format(tmp_path):
    path, _ = _npz(tmp_path)
    for data in (load_data(path), load_data(None, limit=2)):
        desc = json.loads(json.dumps(data.describe()))
        assert {"name", "split", "n", "shape", "path", "format", "conversion", "dataset_size"} <= set(desc)


# --------------------------------------------------------------------------- check_compatible

def test_check_compatible_accepts_matching_shape(tmp_path):
    path, _ = _npz(tmp_path)
    check_compatible(load_data(path), (1, 2, 2))
    check_compatible(load_data(path), None)


@pytest.mark.parametrize("shape, message", [
    ((3, 32, 32), "has 1 channel(s) of 2×2, model expects 3×32×32"),
    ((1, 28, 28), "has 1 channel(s) of 2×2, model expects 1×28×28"),
])
def test_check_compatible_refuses_mismatch(tmp_path, shape, message):
    path, _ = _npz(tmp_path)
    with pytest.raises(DataError) as err:
        check_compatible(load_data(path), shape)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 3


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.mkdir, (str(marker),))

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        load_data("cifar10", root=str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_written_by_python3_pickle_protocols(tmp_path, protocol):
    # Official files are Python 2 pickles; re-saved copies use newer protocols (other numpy reconstructors).
    folder = tmp_path / "cifar-10-batches-py"
    data = rng_images(8, (2, 3072))
    folder.mkdir()
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": data, "labels": np.array([4, 2])}, fh, protocol=protocol)
    loaded = load_data("cifar10", root=str(tmp_path))
    assert_uint8_pixels(loaded, data.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(loaded.y.numpy(), [4, 2])
    assert loaded.class_names is None  # no batches.meta
