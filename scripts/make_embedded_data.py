#!/usr/bin/env python
"""Build robaudit/assets/fmnist_test_sample.npz, the embedded Fashion-MNIST sample.

Source: Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``),
IDX files under /usr/share/datasets/fashion-mnist. The sample is the first N (1,000)
images of the **test** split in test-set order, so row i is test index i.

Keys: x (N,1,28,28) uint8, y (N,) uint8, indices (N,) int64, class_names (10,) str.
The .npz is written byte-for-byte reproducibly (fixed zip timestamps), so
``--check`` can verify that the committed file matches the source.

Usage:
    python scripts/make_embedded_data.py            # (re)write the asset
    python scripts/make_embedded_data.py --check    # exit 1 if the asset differs
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robaudit.data.datasets import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES  # noqa: E402
from robaudit.data.embedded import EMBEDDED_FILE  # noqa: E402
from robaudit.data.idx import read_idx  # noqa: E402

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: keeps the archive bytes reproducible


def build(source: Path, n: int) -> dict[str, np.ndarray]:
    images = read_idx(source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise SystemExit(f"unexpected Fashion-MNIST test shapes {images.shape}, {labels.shape} in {source}")
    return {
        "x": np.ascontiguousarray(images[:n, None]),
        "y": np.ascontiguousarray(labels[:n]),
        "indices": np.arange(n, dtype=np.int64),
        "class_names": np.array(FASHION_MNIST_CLASSES),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz (readable by np.load) with fixed timestamps, unlike np.savez_compressed."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST, help="folder with t10k-*.gz")
    parser.add_argument("--out", type=Path, default=REPO / "robaudit" / "assets" / EMBEDDED_FILE)
    parser.add_argument("-n", type=int, default=1000, help="number of test images (first N)")
    parser.add_argument("--check", action="store_true", help="only compare with the existing file")
    args = parser.parse_args()

    arrays = build(args.source, args.n)
    blob = npz_bytes(arrays)
    digest = hashlib.sha256(blob).hexdigest()
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == blob
        print(f"{args.out}: {'matches' if same else 'DIFFERS from'} the sample rebuilt from {args.source}")
        return 0 if same else 1
    args.out.write_bytes(blob)
    counts = np.bincount(arrays["y"], minlength=10).tolist()
    print(f"wrote {args.out} ({len(blob)} bytes, sha256 {digest}); {args.n} test images, per class {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
