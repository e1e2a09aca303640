"""The Fashion-MNIST sample shipped inside the package (``--data embedded``, the default).

It holds the first 1,000 images of the Fashion-MNIST **test** split, in test-set
order, so row i is test index i (roughly 100 per class: 87-115). It is produced
by ``scripts/make_embedded_data.py`` from Debian's ``dataset-fashion-mnist``;
provenance and the MIT licence are in ``robaudit/assets/DATA_LICENSE.md``.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

from robaudit.data.formats import RawData
from robaudit.errors import DataError

EMBEDDED_FILE = "fmnist_test_sample.npz"
#: the keys of the embedded .npz, as written by scripts/make_embedded_data.py
EMBEDDED_KEYS = ("x", "y", "indices", "class_names")


def embedded_resource():
    """The packaged .npz (a Traversable; a plain path in normal installs)."""
    return resources.files("robaudit").joinpath("assets", EMBEDDED_FILE)


def read_embedded() -> RawData:
    """x (1000,1,28,28) uint8, y (1000,), indices = Fashion-MNIST test indices, class names."""
    res = embedded_resource()
    try:
        blob = res.read_bytes()
    except OSError:
        raise DataError(f"embedded sample missing from the installed package ({res}); reinstall robaudit "
                        "or regenerate it with scripts/make_embedded_data.py") from None
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        x, y, indices, names = (z[k] for k in EMBEDDED_KEYS)
    return RawData(x=x, y=y, indices=indices, class_names=[str(n) for n in names],
                   source={"path": f"robaudit/assets/{EMBEDDED_FILE}", "format": "embedded-npz",
                           "origin": f"Fashion-MNIST test split, first {len(x)} images (MIT, Zalando)"})
