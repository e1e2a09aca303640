"""The embedded Fashion-MNIST sample, the Debian copy, and the real MNIST test set from shared assets."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robaudit.data import check_compatible, load_data
from robaudit.data.datasets import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES
from robaudit.data.embedded import EMBEDDED_FILE, embedded_resource

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "assets" / "mnist"


def debian_test_set() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test split decoded independently of robaudit (IDX offsets 16 / 8)."""
    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{DEBIAN_FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)")
    images = np.frombuffer(gzip.open(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return images.reshape(-1, 28, 28), labels


def test_embedded_sample_shape_range_and_size():
    data = load_data(None)
    assert len(data) >= 1000 and data.sample_shape == (1, 28, 28)
    assert data.name == "embedded" and data.split == "test"
    x = data.images(slice(None), dtype=torch.float64)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert data.class_names == list(FASHION_MNIST_CLASSES)
    assert set(data.y.tolist()) == set(range(10))  # every class present
    assert len(embedded_resource().read_bytes()) < 1_000_000
    check_compatible(data, (1, 28, 28))
    assert load_data("embedded", limit=5).indices.tolist() == [0, 1, 2, 3, 4]


def test_embedded_sample_equals_debian_test_split_at_its_indices():
    images, labels = debian_test_set()
    data = load_data(None)
    idx = data.indices.numpy()
    assert len(np.unique(idx)) == len(idx) and idx.max() < len(labels)
    np.testing.assert_array_equal(data.y.numpy(), labels[idx])
    np.testing.assert_array_equal(data.x.numpy()[:, 0], images[idx])


def test_embedded_indices_select_by_dataset_index():
    data = load_data(None, indices=[999, 0, 17])
    full = load_data(None)
    assert data.indices.tolist() == [999, 0, 17]
    assert torch.equal(data.x, full.x[[999, 0, 17]]) and torch.equal(data.y, full.y[[999, 0, 17]])


def test_make_embedded_data_script_reproduces_committed_file():
    debian_test_set()  # skips without the Debian files
    script = REPO / "scripts" / "make_embedded_data.py"
    if not script.is_file():
        pytest.skip("scripts/ not present (installed package)")
    out = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert EMBEDDED_FILE in out.stdout


def test_fashion_mnist_found_at_debian_path(tmp_path):
    images, labels = debian_test_set()
    data = load_data("fashion-mnist", root=str(tmp_path), indices=[9999, 0], limit=2)
    assert data.source["path"] == str(DEBIAN_FASHION_MNIST)
    np.testing.assert_array_equal(data.x.numpy()[:, 0], images[[9999, 0]])
    np.testing.assert_array_equal(data.images(slice(None), dtype=torch.float64).numpy()[:, 0],
                                  images[[9999, 0]].astype(np.float64) / 255.0)
    np.testing.assert_array_equal(data.y.numpy(), labels[[9999, 0]])
    assert load_data("fashionmnist", split="train").source["dataset_size"] == 60000  # root not needed


@pytest.mark.parametrize("layout", ["MNIST/raw", "mnist"])
def test_real_mnist_from_shared_assets(tmp_path, layout):
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"shared asset not present: {SHARED_MNIST} (../shared is absent on a user's clone)")
    folder = tmp_path / layout
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(SHARED_MNIST / name)
    data = load_data("mnist", root=str(tmp_path))
    images = np.frombuffer(gzip.open(SHARED_MNIST / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    assert len(data) == 10000 and data.sample_shape == (1, 28, 28)
    np.testing.assert_array_equal(data.x.numpy().reshape(-1), images)
    np.testing.assert_array_equal(data.y.numpy(), labels)
    assert data.class_names == [str(d) for d in range(10)]
