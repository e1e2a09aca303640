"""robaudit.data.load on bad input: one-line messages naming the flag or path, exit 2 or 3."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.data import load_data
from robaudit.data.datasets import DATASETS, FASHION_MNIST, load_idx_dataset
from robaudit.errors import DataError, UsageError
from test_data_fakes import rng_images, write_cifar10, write_idx_split


def raises(exc_type, fn, *args, match: str | None = None, **kwargs) -> str:
    """Run fn, check the error type, exit code and one-line message; return the message."""
    with pytest.raises(exc_type) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert err.value.exit_code == (2 if issubclass(exc_type, UsageError) else 3)
    if match is not None:
        assert match in msg, msg
    return msg


def _npz(tmp_path: Path, n: int = 10, **arrays) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **(arrays or {"x": rng_images(1, (n, 1, 2, 2)), "y": np.zeros(n, np.int64)}))
    return str(path)


# --------------------------------------------------------------------------- usage errors (exit 2)

def test_unknown_name_lists_valid_names_and_nearest():
    msg = raises(UsageError, load_data, "cifar", match="unknown dataset 'cifar'")
    for name in ["embedded", *DATASETS]:
        assert name in msg
    assert "did you mean cifar10?" in msg and msg.startswith("--data")


def test_missing_path_is_named():
    raises(UsageError, load_data, "nowhere/data.npz", match="--data: no such file or folder: nowhere/data.npz")


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_must_be_positive(tmp_path, limit):
    raises(UsageError, load_data, _npz(tmp_path), limit=limit, match="--limit")


def test_indices_out_of_range_names_flag_and_size(tmp_path):
    raises(UsageError, load_data, _npz(tmp_path), indices=[3, 10],
           match="--indices: 10 is out of range for ")
    msg = raises(UsageError, load_data, None, indices=[1000])
    assert "--indices" in msg and "1000 images" in msg and "0..999" in msg


def test_indices_not_among_stored_dataset_indices(tmp_path):
    path = _npz(tmp_path, x=rng_images(1, (3, 1, 2, 2)), y=np.zeros(3, np.int64), indices=np.array([5, 9, 7]))
    raises(UsageError, load_data, path, indices=[6], match="--indices: 6 is not a dataset index")


def test_negative_indices_and_bad_split(tmp_path):
    raises(UsageError, load_data, _npz(tmp_path), indices=[-1], match="--indices")
    raises(UsageError, load_data, _npz(tmp_path), split="val", match="--split")
    raises(UsageError, load_data, None, split="train", match="--split train")


def test_named_dataset_needs_a_root():
    raises(UsageError, load_data, "cifar10", match="--data-root")
    raises(UsageError, load_data, "mnist", download=True, match="--download")


def test_data_root_that_does_not_exist(tmp_path):
    raises(UsageError, load_data, "mnist", root=str(tmp_path / "nope"),
           match=f"--data-root: folder not found: {tmp_path / 'nope'}")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    raises(UsageError, load_data, str(tmp_path / "d.csv"), match="unsupported file type '.csv'")


# --------------------------------------------------------------------------- data errors (exit 3)

def test_dataset_folder_without_files_says_what_and_where(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    msg = raises(DataError, load_data, "mnist", root=str(tmp_path))
    assert "t10k-images-idx3-ubyte[.gz]" in msg and str(tmp_path / "MNIST" / "raw") in msg
    msg = raises(DataError, load_data, "cifar10", root=str(tmp_path))
    assert "test_batch" in msg and str(tmp_path / "cifar-10-batches-py") in msg


def test_only_the_other_split_present(tmp_path):
    write_idx_split(tmp_path / "KMNIST" / "raw", "test", 3, seed=0)
    raises(DataError, load_data, "kmnist", root=str(tmp_path), split="train",
           match="train-images-idx3-ubyte[.gz]")


def test_fashion_mnist_missing_everywhere_lists_debian_path(tmp_path, monkeypatch):
    gone = tmp_path / "no-debian"
    monkeypatch.setitem(DATASETS, "fashionmnist",
                        partial(load_idx_dataset, dataclasses.replace(FASHION_MNIST, fallbacks=(gone,))))
    msg = raises(DataError, load_data, "fashionmnist", root=str(tmp_path))
    assert str(gone) in msg


def test_truncated_idx_file(tmp_path):
    write_idx_split(tmp_path / "MNIST" / "raw", "test", 3, seed=0)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    raises(DataError, load_data, "mnist", root=str(tmp_path), match="truncated or corrupt IDX")


def test_idx_label_count_mismatch(tmp_path):
    from test_data_fakes import write_idx

    folder = tmp_path / "MNIST" / "raw"
    write_idx_split(folder, "test", 3, seed=0)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=True)
    raises(DataError, load_data, "mnist", root=str(tmp_path), match="expected 3 labels")


def test_garbage_cifar_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    raises(DataError, load_data, "cifar10", root=str(tmp_path), match="not a readable CIFAR pickle batch")


def test_cifar_batch_with_wrong_shape(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    raises(DataError, load_data, "cifar10", root=str(tmp_path), match="(N, 3072)")


def test_corrupt_npz(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 broken")
    raises(DataError, load_data, str(tmp_path / "d.npz"), match="not a readable .npz")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([object()], dtype=object), y=np.zeros(1))
    raises(DataError, load_data, str(tmp_path / "d.npz"), match="not a readable .npz")


def test_npz_missing_labels(tmp_path):
    path = _npz(tmp_path, x=rng_images(1, (2, 1, 2, 2)))
    raises(DataError, load_data, path, match="expected labels under key 'y' or 'labels'")


def test_float_outside_unit_range_is_refused_not_rescaled(tmp_path):
    path = _npz(tmp_path, x=np.full((2, 1, 2, 2), 255.0, np.float32), y=np.zeros(2, np.int64))
    msg = raises(DataError, load_data, path, match="float pixels span [255, 255]")
    assert "divide by 255" in msg and "--mean/--std" in msg
    path = _npz(tmp_path, x=np.full((2, 1, 2, 2), -0.5, np.float32), y=np.zeros(2, np.int64))
    raises(DataError, load_data, path, match="span [-0.5, -0.5]")


def test_nan_pixels_refused(tmp_path):
    x = np.zeros((2, 1, 2, 2), np.float32)
    x[1, 0, 0, 0] = np.nan
    raises(DataError, load_data, _npz(tmp_path, x=x, y=np.zeros(2, np.int64)), match="NaN")


def test_integer_images_other_than_uint8_refused(tmp_path):
    path = _npz(tmp_path, x=np.zeros((2, 1, 2, 2), np.int64), y=np.zeros(2, np.int64))
    raises(DataError, load_data, path, match="dtype int64; expected uint8")


def test_bad_image_rank_and_label_shapes(tmp_path):
    raises(DataError, load_data, _npz(tmp_path, x=np.zeros((2, 784), np.uint8), y=np.zeros(2, np.int64)),
           match="expected (N,C,H,W)")
    raises(DataError, load_data, _npz(tmp_path, x=np.zeros((2, 1, 2, 2), np.uint8), y=np.zeros(3, np.int64)),
           match="expected 2 labels")
    raises(DataError, load_data, _npz(tmp_path, x=np.zeros((2, 1, 2, 2), np.uint8), y=np.array([0.5, 1.0])),
           match="labels must be integers")


def test_pt_with_arbitrary_objects_is_refused(tmp_path):
    from fractions import Fraction  # picklable, but not on torch's weights_only allow-list

    torch.save({"x": torch.zeros(1, 1, 2, 2), "y": torch.zeros(1), "extra": Fraction(1, 3)}, tmp_path / "d.pt")
    raises(DataError, load_data, str(tmp_path / "d.pt"), match="weights_only=True")


def test_corrupt_pt(tmp_path):
    (tmp_path / "d.pt").write_bytes(b"\x00garbage")
    raises(DataError, load_data, str(tmp_path / "d.pt"), match="cannot load with torch.load(weights_only=True)")


def test_image_folder_errors(tmp_path):
    from PIL import Image

    (tmp_path / "empty" / "cls").mkdir(parents=True)
    raises(DataError, load_data, str(tmp_path / "empty"), match="found no test dataset files")
    folder = tmp_path / "imgs"
    for name, size in (("a/1.png", (4, 4)), ("b/2.png", (5, 4))):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(size, np.uint8)).save(folder / name)
    raises(DataError, load_data, str(folder), match=f"{folder / 'b' / '2.png'}: image is 4x5, expected 4x4")
    (folder / "b" / "2.png").write_bytes(b"not a png")
    raises(DataError, load_data, str(folder), match=f"{folder / 'b' / '2.png'}: cannot read image")


def test_svhn_without_scipy_says_pip_install(tmp_path, monkeypatch):
    (tmp_path / "test_32x32.mat").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "scipy", None)  # makes `import scipy.io` raise ImportError
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    raises(DataError, load_data, "svhn", root=str(tmp_path), match="pip install scipy")


def test_corrupt_svhn_mat(tmp_path):
    pytest.importorskip("scipy.io")
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 100)
    raises(DataError, load_data, "svhn", root=str(tmp_path), match="not a readable SVHN .mat")


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.setattr(tvd, "MNIST", Offline)
    raises(DataError, load_data, "mnist", root=str(tmp_path), download=True,
           match="--download: could not download MNIST into")
