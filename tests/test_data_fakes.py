"""Helpers (imported by tests/test_data_*.py): tiny datasets in the real on-disk formats.

Each writer returns the arrays it stored, so tests compare loaded pixels with
the source exactly.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}


def rng_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> Path:
    """IDX: magic 0x00 0x00 <type 0x08 = uint8> <ndim>, big-endian int32 dims, raw data."""
    assert arr.dtype == np.uint8
    payload = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_idx_split(folder: Path, split: str, n: int, seed: int, *, gz: bool = True, hw: int = 28):
    x = rng_images(seed, (n, hw, hw))
    y = np.random.default_rng(seed + 1).integers(0, 10, size=n, dtype=np.uint8)
    img_name, lbl_name = IDX_NAMES[split]
    write_idx(folder / img_name, x, gz=gz)
    write_idx(folder / lbl_name, y, gz=gz)
    return x, y


def write_idx_dataset(folder: Path, *, gz: bool = True, n_test: int = 7, n_train: int = 9) -> dict:
    return {"test": write_idx_split(folder, "test", n_test, 10, gz=gz),
            "train": write_idx_split(folder, "train", n_train, 20, gz=gz)}


def _dump_py2_style(path: Path, obj) -> None:
    # The official CIFAR files are Python 2 pickles with bytes keys; protocol 2 mimics them.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(folder: Path, n_per_batch: int = 3) -> dict:
    """folder/data_batch_1..5, test_batch, batches.meta with (N,3072) uint8 rows (R, G, B planes)."""
    out = {}
    xs, ys = [], []
    for i in range(1, 6):
        data = rng_images(100 + i, (n_per_batch, 3072))
        labels = [int(v) for v in np.random.default_rng(200 + i).integers(0, 10, n_per_batch)]
        _dump_py2_style(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels,
                                                   b"data": data, b"filenames": [b"f.png"] * n_per_batch})
        xs.append(data)
        ys += labels
    out["train"] = (np.concatenate(xs), np.array(ys))
    data = rng_images(300, (n_per_batch + 1, 3072))
    labels = [int(v) for v in np.random.default_rng(301).integers(0, 10, n_per_batch + 1)]
    _dump_py2_style(folder / "test_batch", {b"labels": labels, b"data": data})
    out["test"] = (data, np.array(labels))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump_py2_style(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    out["class_names"] = [n.decode() for n in names]
    return out


def write_cifar100(folder: Path) -> dict:
    out = {}
    for split, n, seed in (("train", 6, 400), ("test", 5, 500)):
        data = rng_images(seed, (n, 3072))
        fine = [int(v) for v in np.random.default_rng(seed + 1).integers(0, 100, n)]
        _dump_py2_style(folder / split, {b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * n})
        out[split] = (data, np.array(fine))
    names = [f"class{i}".encode() for i in range(100)]
    _dump_py2_style(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20})
    out["class_names"] = [n.decode() for n in names]
    return out


def write_svhn(folder: Path) -> dict:
    """folder/{train,test}_32x32.mat: X (32,32,3,N) uint8, y (N,1) in 1..10 (10 = digit 0)."""
    import scipy.io

    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 5, 600), ("test", 4, 700)):
        x = rng_images(seed, (32, 32, 3, n))
        y = np.random.default_rng(seed + 1).integers(1, 11, size=(n, 1)).astype(np.uint8)
        y[0, 0] = 10  # make sure the 10 → 0 mapping is exercised
        scipy.io.savemat(str(folder / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x, y)
    return out


def test_fake_idx_matches_the_documented_decoding(tmp_path):
    # Independent truth for the writer: the IDX recipe of shared/assets/README.md (offset 16 / 8).
    x, y = write_idx_split(tmp_path, "test", 5, seed=3, gz=True)
    raw_x = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    raw_y = gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz").read()
    assert raw_x[:4] == b"\x00\x00\x08\x03" and raw_y[:4] == b"\x00\x00\x08\x01"
    np.testing.assert_array_equal(np.frombuffer(raw_x, np.uint8, offset=16).reshape(-1, 28, 28), x)
    np.testing.assert_array_equal(np.frombuffer(raw_y, np.uint8, offset=8), y)
