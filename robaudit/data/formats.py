"""Readers for the on-disk formats robaudit accepts, each returning a :class:`RawData`.

Readers only parse: they return arrays exactly as stored (any layout, uint8 or
float). Layout detection, value-range checks and row selection happen once, in
:mod:`robaudit.data.load`, so every format gets the same rules.

Nothing here executes code from a file: CIFAR pickles go through an unpickler
that only rebuilds numpy arrays, ``.npz`` is read with ``allow_pickle=False``
and ``.pt`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import codecs
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from robaudit.data.idx import read_idx
from robaudit.errors import DataError


@dataclass
class RawData:
    """Arrays as read from disk, before layout/range normalisation.

    Attributes:
        x: images, (N,C,H,W), (N,H,W,C) or (N,H,W); uint8 or float.
        y: (N,) integer labels.
        indices: (N,) dataset indices of the rows, or None for 0..N-1.
        class_names: optional class labels.
        source: JSON-safe provenance (path, format, ...).
    """

    x: Any
    y: Any
    indices: Any = None
    class_names: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- IDX (MNIST family)

#: file stems of the IDX family, by split (each may carry a ``.gz`` suffix)
IDX_FILES: dict[str, tuple[str, str]] = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}


def find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of ``split`` in ``folder``, plain or ``.gz``; None if absent."""
    found = []
    for stem in IDX_FILES[split]:
        path = next((folder / (stem + ext) for ext in ("", ".gz") if (folder / (stem + ext)).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def read_idx_pair(images: Path, labels: Path) -> RawData:
    """Images (N,H,W) uint8 and labels (N,) from two IDX files."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"{images}: expected an IDX image file of shape (N,H,W) uint8, found {x.shape} {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{labels}: expected {len(x)} labels to match {images.name}, found shape {y.shape}")
    return RawData(x=x, y=y, source={"path": str(images.parent), "format": "idx"})


# --------------------------------------------------------------------------- CIFAR python pickles

@dataclass(frozen=True)
class CifarLayout:
    """File names and keys of one CIFAR "python version" folder."""

    folder: str
    files: Mapping[str, tuple[str, ...]]
    labels_key: str
    meta_file: str
    names_key: str


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    labels_key="labels", meta_file="batches.meta", names_key="label_names",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python", files={"train": ("train",), "test": ("test",)},
    labels_key="fine_labels", meta_file="meta", names_key="fine_label_names",
)

# The only globals a CIFAR pickle needs: numpy's array/scalar reconstructors (protocol <= 4 and 5),
# plus _codecs.encode, which Python 3 protocol-2 pickles use to store the array bytes.
# Taken from live objects so the table is right for numpy 1.x (numpy.core) and 2.x (numpy._core).
_NP_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_NP_SCALAR = np.float64(0).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "_reconstruct")] = _NP_RECONSTRUCT
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "scalar")] = _NP_SCALAR
    _ALLOWED_GLOBALS[(f"{_mod}.numeric", "_frombuffer")] = _NP_FROMBUFFER


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds dicts, lists, bytes and numpy arrays, and nothing callable beyond that."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)") from None


def load_plain_pickle(path: Path) -> Any:
    """Unpickle a data-only file (dicts/lists/bytes/ndarrays) without running arbitrary code.

    ``encoding="bytes"`` because the official CIFAR batches are Python 2 pickles.
    """
    try:
        with open(path, "rb") as fh:
            return _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a readable CIFAR pickle batch ({exc})") from None


def _get(d: Any, key: str, path: Path) -> Any:
    """``d[key]`` for dicts written by Python 2 (bytes keys) or 3 (str keys)."""
    if isinstance(d, dict):
        for k in (key, key.encode()):
            if k in d:
                return d[k]
    raise DataError(f"{path}: expected a dict with key {key!r}, found {type(d).__name__}"
                    + (f" with keys {sorted(str(k) for k in d)[:6]}" if isinstance(d, dict) else ""))


def cifar_files_present(folder: Path, layout: CifarLayout, split: str) -> bool:
    return all((folder / f).is_file() for f in layout.files[split])


def read_cifar(folder: Path, layout: CifarLayout, split: str) -> RawData:
    """CIFAR-10/100 batches of ``split`` → x (N,3,32,32) uint8, y (N,), class names from the meta file."""
    xs, ys = [], []
    for name in layout.files[split]:
        path = folder / name
        batch = load_plain_pickle(path)
        data = np.asarray(_get(batch, "data", path))
        labels = np.asarray(_get(batch, layout.labels_key, path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
            raise DataError(f"{path}: expected 'data' uint8 (N, 3072) and {len(data)} labels, "
                            f"found {data.dtype} {data.shape} and labels {labels.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))  # rows are stored channel-major (R plane, G, B)
        ys.append(labels)
    names = None
    meta_path = folder / layout.meta_file
    if meta_path.is_file():
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in _get(load_plain_pickle(meta_path), layout.names_key, meta_path)]
    return RawData(x=np.concatenate(xs), y=np.concatenate(ys), class_names=names,
                   source={"path": str(folder), "format": "cifar-pickle"})


# --------------------------------------------------------------------------- SVHN .mat

def svhn_file(split: str) -> str:
    return f"{split}_32x32.mat"


def read_svhn(path: Path) -> RawData:
    """SVHN cropped digits (``X`` (32,32,3,N), ``y`` (N,1) in 1..10 with 10 meaning digit 0)."""
    try:
        import scipy.io
    except ImportError:
        raise DataError(f"{path}: reading SVHN .mat files needs scipy: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError/MatReadError/OSError… for broken files
        raise DataError(f"{path}: not a readable SVHN .mat file ({type(exc).__name__}: {exc})") from None
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: expected variables X and y in the .mat file, found {found}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y) or x.dtype != np.uint8:
        raise DataError(f"{path}: expected X uint8 (32,32,3,N) with N = {len(y)} labels, found {x.dtype} {x.shape}")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: expected SVHN labels 1..10, found {int(y.min())}..{int(y.max())}")
    return RawData(x=x.transpose(3, 2, 0, 1), y=(y.astype(np.int64) % 10),  # SVHN stores digit 0 as 10
                   class_names=[str(d) for d in range(10)],
                   source={"path": str(path), "format": "svhn-mat", "label_map": "10->0"})


# --------------------------------------------------------------------------- tensor files

_X_KEYS = ("x", "images")
_Y_KEYS = ("y", "labels")


def _pick(keys: Sequence[str], available: Sequence[str], path: Path, what: str) -> str:
    for k in keys:
        if k in available:
            return k
    raise DataError(f"{path}: expected {what} under key {' or '.join(repr(k) for k in keys)}, "
                    f"found keys {sorted(available)}")


def _class_names(value: Any) -> list[str] | None:
    return None if value is None else [str(v) for v in list(value)]


#: How far a compressed .npz may inflate beyond its size before it is refused as a zip bomb.
MAX_INFLATION = 200


def _check_inflation(path: Path) -> None:
    """DataError if an archive's entries declare far more bytes than the file (checked before np.load)."""
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # np.load reports it
    size = os.path.getsize(path)
    if declared > MAX_INFLATION * size + (64 << 20):
        raise DataError(f"{path}: its arrays inflate to {declared:,} bytes from a {size:,}-byte file; "
                        "refusing to load it (a zip bomb?)")


def read_npz(path: Path) -> RawData:
    """``.npz`` with ``x``/``images`` and ``y``/``labels``, optional ``indices`` and ``class_names``."""
    _check_inflation(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            xk = _pick(_X_KEYS, keys, path, "images")
            yk = _pick(_Y_KEYS, keys, path, "labels")
            x, y = z[xk], z[yk]
            indices = z["indices"] if "indices" in keys else None
            names = _class_names(z["class_names"]) if "class_names" in keys else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        # ValueError also covers object arrays, which would need pickle: refused on purpose.
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    return RawData(x=x, y=y, indices=indices, class_names=names, source={"path": str(path), "format": "npz"})


def _to_numpy(value: Any, path: Path, key: str) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16; the upcast is exact
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception:
        raise DataError(f"{path}: {key!r} is a {type(value).__name__}, expected a tensor") from None


def read_pt(path: Path) -> RawData:
    """``.pt``/``.pth``: a dict of tensors (``x``/``images``, ``y``/``labels``, optional ``indices``,
    ``class_names``) or a pair ``(x, y)``, loaded with ``torch.load(weights_only=True)``."""
    import torch

    from robaudit.errors import ModelLoadError
    from robaudit.models.load import check_torch_file

    try:
        check_torch_file(Path(path))  # no zip bomb / oversized legacy storages before torch allocates
    except ModelLoadError as exc:
        raise DataError(str(exc)) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError… for bad or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot load with torch.load(weights_only=True) "
                        f"(only tensors, lists and dicts are accepted): {first}") from None
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        obj = {"x": obj[0], "y": obj[1]}
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with 'x' and 'y' tensors or a pair (x, y), "
                        f"found {type(obj).__name__}")
    keys = [str(k) for k in obj]
    xk = _pick(_X_KEYS, keys, path, "images")
    yk = _pick(_Y_KEYS, keys, path, "labels")
    indices = _to_numpy(obj["indices"], path, "indices") if "indices" in obj else None
    return RawData(x=_to_numpy(obj[xk], path, xk), y=_to_numpy(obj[yk], path, yk), indices=indices,
                   class_names=_class_names(obj.get("class_names")), source={"path": str(path), "format": "pt"})


# --------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image_folder(folder: Path) -> RawData:
    """ImageFolder layout ``folder/<class>/**/*.png|jpg…``: classes sorted by name, files sorted by path.

    Rows are numbered in that order (the dataset index). Grayscale stays 1 channel;
    if the folder mixes grayscale and colour, grayscale images are repeated to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files.extend((p, label) for p in sorted((folder / cls).rglob("*"))
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                     and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: expected an image folder <class>/*.png|jpg (or a dataset's files), "
                        f"found {len(classes)} subfolder(s) and no images")
    arrays: list[np.ndarray] = []
    for path, _ in files:
        try:
            with Image.open(path) as img:
                if img.mode.startswith(("I", "F")):  # converting 16-bit/float to 8 bits would clip silently
                    raise DataError(f"{path}: {img.mode} images (16-bit or float) are not supported; "
                                    "save 8-bit PNG/JPEG")
                # alpha is dropped; palette and CMYK images become RGB
                arr = np.asarray(img.convert("L" if img.mode in ("1", "L", "LA") else "RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from None
        arrays.append(arr[..., None] if arr.ndim == 2 else arr)
    size = arrays[0].shape[:2]
    for (path, _), arr in zip(files, arrays):
        if arr.shape[:2] != size:
            raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]} "
                            f"like {files[0][0].name} (all images of a folder must have one size)")
    source: dict[str, Any] = {"path": str(folder), "format": "image-folder"}
    channels = {a.shape[2] for a in arrays}
    if channels == {1, 3}:
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
        source["channel_conversion"] = "grayscale images repeated to RGB"
    x = np.stack(arrays).transpose(0, 3, 1, 2)  # (N,H,W,C) → (N,C,H,W)
    y = np.array([label for _, label in files], dtype=np.int64)
    return RawData(x=np.ascontiguousarray(x), y=y, class_names=classes, source=source)


def is_image_folder(folder: Path) -> bool:
    """Whether ``folder`` has a class subfolder holding at least one image."""
    for d in folder.iterdir():
        if d.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in d.rglob("*")):
            return True
    return False
