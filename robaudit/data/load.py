"""``load_data``: one entry point from ``--data NAME|PATH`` to an :class:`AuditData` in pixel space.

Resolution order for ``spec``:
  1. ``None`` / ``"embedded"`` → the Fashion-MNIST sample shipped in the package;
  2. a registered dataset name (``DATASETS``: mnist, fashionmnist, kmnist, cifar10,
     cifar100, svhn; case, ``-`` and ``_`` ignored) read from ``root``;
  3. an existing path (as given, then under ``root``): ``.npz``, ``.pt``/``.pth``,
     ``.mat`` (SVHN), or a folder (IDX files, CIFAR batches, SVHN .mat, or an
     ImageFolder ``<class>/*.png``, using ``<folder>/<split>/`` when it exists).

Pixel rules, the same for every format: images become (N,C,H,W) (channel-last
arrays are detected and transposed; (N,H,W) gets C=1). uint8 stays uint8 and is
divided by 255 when batches are drawn (the one automatic conversion). Float
data must already lie in [0,1]: it is never rescaled silently.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robaudit.data.datasets import DATASETS, norm_name
from robaudit.data.formats import (CIFAR10, CIFAR100, RawData, cifar_files_present, find_idx_pair, is_image_folder,
                                   read_cifar, read_idx_pair, read_image_folder, read_npz, read_pt, read_svhn,
                                   svhn_file)
from robaudit.data.indices import Indices, parse_indices
from robaudit.data.types import AuditData
from robaudit.errors import DataError, UsageError

EMBEDDED = "embedded"
SPLITS = ("test", "train")
FILE_READERS = {".npz": read_npz, ".pt": read_pt, ".pth": read_pt, ".mat": read_svhn}
UINT8_CONVERSION = "uint8 [0,255] divided by 255"


def valid_names() -> list[str]:
    """Every name ``--data`` accepts besides paths."""
    return [EMBEDDED, *DATASETS]


def load_data(spec: str | None, *, root: str | None = None, split: str = "test", limit: int | None = None,
              indices: Sequence[int] | None = None, download: bool = False) -> AuditData:
    """Load the images an audit runs on.

    Args:
        spec: None/"embedded", a dataset name, or a path (see the module docstring).
        root: ``--data-root``: folder holding the named datasets.
        split: "test" or "train" (named datasets and folders with split subfolders).
        indices: dataset indices to keep, in this order (duplicates dropped).
        limit: keep the first ``limit`` rows after ``indices``.
        download: let torchvision download a named dataset into ``root`` if it is missing.

    Returns:
        AuditData with x (N,C,H,W) uint8 or float in [0,1], y (N,) int64, indices (N,) int64.

    Raises:
        UsageError: unknown name, missing path, bad --split/--limit/--indices (exit 2).
        DataError: files missing from a dataset folder, corrupt files, bad values (exit 3).
    """
    if split not in SPLITS:
        raise UsageError(f"--split: expected test or train, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0):
        raise UsageError(f"--limit: expected a positive integer, got {limit!r}")
    if indices is not None and not isinstance(indices, Indices):
        indices = parse_indices(list(indices))  # also refuses negative indices
    root_path = Path(root).expanduser() if root else None
    name, raw, split_used = _read(spec, root_path, split, download)
    return _finalize(raw, name=name, split=split_used, limit=limit, indices=indices)


def _read(spec: str | None, root: Path | None, split: str, download: bool) -> tuple[str, RawData, str]:
    """(name, raw arrays, split) for ``spec``."""
    from robaudit.data.embedded import read_embedded

    if spec is None or norm_name(spec) == EMBEDDED:
        if split != "test":
            raise UsageError("--split train: the embedded sample holds Fashion-MNIST test images only; "
                             "use --data fashionmnist --split train")
        return EMBEDDED, read_embedded(), "test"
    key = norm_name(spec)
    if key in DATASETS:
        return key, DATASETS[key](root, split, download), split
    path = _existing_path(spec, root)
    if path is None:
        raise _unknown(spec)
    raw, split_used = _read_path(path, split)
    return spec, raw, split_used


def _existing_path(spec: str, root: Path | None) -> Path | None:
    for path in (Path(spec).expanduser(), *([root / spec] if root is not None else [])):
        if path.exists():
            return path
    return None


def _unknown(spec: str) -> UsageError:
    names = valid_names()
    looks_like_path = any(c in spec for c in "/\\") or Path(spec).suffix.lower() in (*FILE_READERS, ".gz")
    if looks_like_path:
        return UsageError(f"--data: no such file or folder: {spec}")
    near = difflib.get_close_matches(norm_name(spec), names, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]}?" if near else ""
    return UsageError(f"--data: unknown dataset {spec!r} and no such file or folder (valid names: "
                      f"{', '.join(names)}{hint}); or pass a .npz/.pt file or an image folder")


def _read_path(path: Path, split: str) -> tuple[RawData, str]:
    """Read a file by suffix, or a folder by what it holds."""
    if path.is_file():
        reader = FILE_READERS.get(path.suffix.lower())
        if reader is None:
            raise UsageError(f"--data: unsupported file type {path.suffix or '(none)'!r} for {path}; "
                             f"expected {', '.join(FILE_READERS)} or a folder")
        return reader(path), "-"  # a single file has no split
    if not path.is_dir():  # a FIFO, socket or device: reading it could block forever
        raise UsageError(f"--data: {path} is not a regular file or a folder")
    for folder in (path, path / "raw"):
        pair = find_idx_pair(folder, split)
        if pair is not None:
            return read_idx_pair(*pair), split
    for layout in (CIFAR10, CIFAR100):
        if cifar_files_present(path, layout, split):
            return read_cifar(path, layout, split), split
    if (path / svhn_file(split)).is_file():
        return read_svhn(path / svhn_file(split)), split
    if (path / split).is_dir():  # images/train/<class>/..., images/test/<class>/...
        return read_image_folder(path / split), split
    if is_image_folder(path):
        return read_image_folder(path), "-"
    raise DataError(f"--data {path}: found no {split} dataset files (IDX t10k-/train-*-ubyte[.gz], CIFAR batches, "
                    f"{svhn_file(split)}) and no image folder <class>/*.png|jpg in {path}")


# --------------------------------------------------------------------------- normalisation and selection

def _to_nchw(x: np.ndarray, where: str, source: dict[str, Any]) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{where}: images have shape {tuple(x.shape)}; expected (N,C,H,W), (N,H,W,C) or (N,H,W)")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        source["layout"] = "NHWC transposed to NCHW"
        return x.transpose(0, 3, 1, 2)
    return x


def _labels(y: Any, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise DataError(f"{where}: expected {n} labels (one per image), found shape {tuple(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{where}: labels must be integers (class ids), found dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and y.min() < -1:
        raise DataError(f"{where}: labels must be class ids >= 0 (or -1 for unknown), found {int(y.min())}")
    return y


def _dataset_indices(indices: Any, n: int, where: str) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{where}: 'indices' must be {n} integers (one per image), "
                        f"found {idx.dtype} {tuple(idx.shape)}")
    idx = idx.astype(np.int64)
    if n and (idx.min() < 0 or len(np.unique(idx)) != n):
        raise DataError(f"{where}: 'indices' must be distinct non-negative dataset indices")
    return idx


def _select_rows(stored: np.ndarray, wanted: Indices | None, limit: int | None, label: str,
                 hint: str = "") -> np.ndarray:
    """Row positions for the requested dataset indices (in the given order), then the first ``limit``.

    The largest requested index is checked against the dataset before the ranges are expanded,
    so ``--indices 0:200000000`` fails at once instead of allocating gigabytes.
    """
    n = len(stored)
    if wanted is None:
        rows = np.arange(n)
        return rows[:limit] if limit is not None else rows
    contiguous = n == 0 or (stored[0] == 0 and stored[-1] == n - 1 and bool(np.all(np.diff(stored) == 1)))
    top = int(stored.max()) if n else -1
    if wanted.largest > top:
        bad = next(max(a, top + 1) for a, b in wanted.ranges if b - 1 > top)  # first one, in the order given
        where = f"indices 0..{n - 1}" if contiguous else f"indices {int(stored.min())}..{top}"
        raise UsageError(f"--indices: {bad} is out of range for {label} ({n} images, {where}){hint}")
    if limit is not None:
        # Only the first `limit` distinct indices are used: expand no more than needed.
        chosen: dict[int, None] = {}
        for i in wanted:
            chosen.setdefault(i)
            if len(chosen) >= limit:
                break
        wanted_list = list(chosen)
    else:
        wanted_list = list(dict.fromkeys(wanted))
    if contiguous:
        return np.asarray(wanted_list, dtype=np.int64)
    position = {int(v): r for r, v in enumerate(stored)}
    bad_list = [i for i in wanted_list if i not in position]
    if bad_list:
        raise UsageError(f"--indices: {bad_list[0]} is not a dataset index of {label} "
                         f"({n} images with indices {int(stored.min())}..{top})")
    return np.asarray([position[i] for i in wanted_list], dtype=np.int64)


def _pixels(x: np.ndarray, where: str, source: dict[str, Any]) -> np.ndarray:
    """Keep uint8 (scaled by 1/255 on use); accept floats only in [0,1]; refuse anything else."""
    if x.dtype == np.uint8:
        source["conversion"] = UINT8_CONVERSION
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: images have dtype {x.dtype}; expected uint8 in [0,255] or float in [0,1] "
                        "(convert with x.astype(np.uint8) if the values are 0-255 integers)")
    if x.dtype == np.float16:
        x = x.astype(np.float32)  # exact; float16 arithmetic is poor on CPU
    if x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise DataError(f"{where}: images contain NaN or Inf values")
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: float pixels span [{lo:.4g}, {hi:.4g}] but robaudit expects [0,1]; "
                            "if they are 0-255 values divide by 255 (or store uint8), if they are normalised "
                            "undo it (x*std+mean) and give the model --mean/--std instead")
    source["conversion"] = "none (float in [0,1])"
    return x


def _finalize(raw: RawData, *, name: str, split: str, limit: int | None,
              indices: Sequence[int] | None) -> AuditData:
    import torch

    source = dict(raw.source)
    where = source.get("path", name)
    x = np.asarray(raw.x)
    x = _to_nchw(x, where, source)
    n = int(x.shape[0])
    if n == 0:
        raise DataError(f"{where}: no images")
    y = _labels(raw.y, n, where)
    stored = _dataset_indices(raw.indices, n, where)
    label = name if split == "-" else f"{name} {split}"
    hint = "; use --data fashionmnist for the full test set" if name == EMBEDDED else ""
    rows = _select_rows(stored, indices, limit, label, hint)
    if len(rows) < n:  # fancy indexing copies only the rows we keep
        x, y, stored = x[rows], y[rows], stored[rows]
    x = _pixels(x, where, source)
    source["dataset_size"] = n
    # own, contiguous, writable memory: IDX arrays are read-only views of the file buffer
    x = np.array(x, copy=True, order="C") if not (x.flags.c_contiguous and x.flags.writeable) else x
    return AuditData(name=name, split=split, x=torch.from_numpy(x), y=torch.from_numpy(np.ascontiguousarray(y)),
                     indices=torch.from_numpy(np.ascontiguousarray(stored)), class_names=raw.class_names,
                     source=source)


def check_compatible(data: AuditData, input_shape: Sequence[int] | None, num_classes: int | None = None) -> None:
    """DataError (exit 3) unless the data fits the model: sample shape and (with ``num_classes``) labels.

    A None shape skips the shape check. Labels are checked by :func:`check_labels`.
    """
    if num_classes is not None:
        check_labels(data, num_classes)
    if input_shape is None:
        return
    want = tuple(int(s) for s in input_shape)
    have = data.sample_shape
    if have == want:
        return
    if len(have) == 3 and len(want) == 3:
        raise DataError(f"data {data.name!r} has {have[0]} channel(s) of {have[1]}×{have[2]}, "
                        f"model expects {want[0]}×{want[1]}×{want[2]}; pass --data with matching images")
    raise DataError(f"data {data.name!r} has samples of shape {list(have)}, model expects {list(want)}")


def check_labels(data: AuditData, num_classes: int) -> None:
    """DataError (exit 3) unless every label is a class of a ``num_classes``-class model (or -1, unknown).

    The one label check every command shares: a label ≥ C (or < -1) would index past the
    logits in one analysis and silently count as wrong in another; a dataset that names more
    classes than the model outputs cannot be audited against it either.
    """
    y = data.y
    if len(y):
        low, high = int(y.min()), int(y.max())
        if low < -1:
            raise DataError(f"data {data.name!r}: label {low} is negative; labels are class ids 0..{num_classes - 1} "
                            "(or -1 for unknown)")
        if high >= num_classes:
            row = int((y == high).nonzero()[0][0])
            raise DataError(f"data {data.name!r}: label {high} (dataset index {int(data.indices[row])}) is out of range "
                            f"for a {num_classes}-class model (classes 0..{num_classes - 1})")
    if data.class_names is not None and len(data.class_names) > num_classes:
        raise DataError(f"data {data.name!r} has {len(data.class_names)} classes but the model outputs "
                        f"{num_classes} logits; pass --data matching the model")
