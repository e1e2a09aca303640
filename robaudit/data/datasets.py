"""Named datasets read from ``--data-root`` in their standard on-disk layouts.

``DATASETS`` maps each name to its loader ``(root, split, download) -> RawData``.
Loaders look in the common layouts (torchvision's ``root/MNIST/raw``, a plain
``root/mnist`` folder, ``root/cifar-10-batches-py``, ...) and never touch the
network unless ``download`` is set; then torchvision's dataset classes fetch
the files into ``root`` and the same readers parse them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from robaudit.data.formats import (CIFAR10, CIFAR100, IDX_FILES, CifarLayout, RawData, cifar_files_present,
                                   find_idx_pair, read_cifar, read_idx_pair, read_svhn, svhn_file)
from robaudit.errors import DataError, UsageError

#: where Debian's ``dataset-fashion-mnist`` package installs the IDX files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
DIGITS = tuple(str(d) for d in range(10))

Loader = Callable[[Path | None, str, bool], RawData]


def norm_name(text: str) -> str:
    """'Fashion-MNIST' → 'fashionmnist': how names and folder names are compared."""
    return re.sub(r"[-_\s.]", "", text.lower())


def _named_subdirs(root: Path, key: str) -> list[Path]:
    """Folders of ``root`` whose normalised name is ``key`` (FashionMNIST, fashion-mnist, fashion_mnist...)."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and norm_name(d.name) == key)


def _resolve_root(root: Path | None, name: str, layout_hint: str, download: bool) -> Path:
    """``root`` checked for use: UsageError (exit 2) when the flag is missing or names no folder."""
    if root is None:
        if download:
            raise UsageError(f"--download: needs --data-root DIR to download {name} into")
        raise UsageError(f"--data {name}: needs --data-root DIR (or ROBAUDIT_DATA_ROOT) holding {layout_hint}, "
                         "or add --download to fetch it there")
    if not root.is_dir() and not download:  # with --download, torchvision creates it
        raise UsageError(f"--data-root: folder not found: {root}")
    return root


def _run_download(fetch: Callable[[str], object], root: Path | None, title: str) -> None:
    """Let torchvision fetch the files into ``root`` (the only place robaudit uses the network)."""
    if root is None:
        raise UsageError(f"--download: needs --data-root DIR to download {title} into")
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch(str(root))
    except Exception as exc:  # URLError, RuntimeError (checksum), OSError...: all mean "no data"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"--download: could not download {title} into {root}: {first}") from None


def _not_found(name: str, split: str, expected: str, looked: Sequence[Path], hint: str) -> DataError:
    where = ", ".join(str(p) for p in looked) or "nowhere (no candidate folder)"
    return DataError(f"--data {name}: no {split} files ({expected}) found; looked in {where}; {hint}")


# --------------------------------------------------------------------------- MNIST family (IDX)

@dataclass(frozen=True)
class IdxDataset:
    """One dataset of the IDX family: its torchvision folder and class names."""

    name: str
    folder: str  # torchvision's folder: root/<folder>/raw
    classes: tuple[str, ...]
    fallbacks: tuple[Path, ...] = ()  # system-wide copies tried after root

    def candidates(self, root: Path | None) -> list[Path]:
        """Folders to search, in order: torchvision's root/<Folder>/raw, root/<folder>, then root itself
        (the plain layout: the IDX files directly in --data-root; the user named the dataset, so
        MNIST/Fashion-MNIST/KMNIST, which share file names, are not confused), then system copies."""
        dirs: list[Path] = []
        if root is not None:
            for d in _named_subdirs(root, norm_name(self.folder)):
                dirs += [d / "raw", d]
            dirs += [root, root / "raw"]
        return dirs + list(self.fallbacks)

    def fetch(self, root: str, split: str) -> None:
        import torchvision.datasets as tvd

        cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}[self.name]
        cls(root, train=split == "train", download=True)


def load_idx_dataset(ds: IdxDataset, root: Path | None, split: str, download: bool) -> RawData:
    """Find and read the IDX pair of ``split``; download first if asked and nothing is found."""
    if root is not None or not ds.fallbacks:  # Fashion-MNIST may come from the Debian copy without a root
        root = _resolve_root(root, ds.name, f"{ds.folder}/raw/", download)
    for attempt in range(2):
        looked = ds.candidates(root)
        for folder in looked:
            pair = find_idx_pair(folder, split)
            if pair is not None:
                raw = read_idx_pair(*pair)
                raw.class_names = list(ds.classes)
                return raw
        if attempt == 0 and download:
            _run_download(partial(ds.fetch, split=split), root, ds.folder)
        else:
            break
    images, labels = IDX_FILES[split]
    raise _not_found(ds.name, split, f"{images}[.gz], {labels}[.gz]",
                     looked or ([root] if root else []),
                     f"put them in {root or 'DATA_ROOT'}/{ds.folder}/raw/ or directly in {root or 'DATA_ROOT'}/, "
                     "or add --download")


# --------------------------------------------------------------------------- CIFAR

@dataclass(frozen=True)
class CifarDataset:
    name: str
    layout: CifarLayout

    def candidates(self, root: Path) -> list[Path]:
        dirs = [root / self.layout.folder]
        for d in _named_subdirs(root, self.name):
            dirs += [d / self.layout.folder, d]
        return dirs

    def fetch(self, root: str) -> None:
        import torchvision.datasets as tvd

        cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[self.name]
        cls(root, train=False, download=True)  # one archive holds both splits


def load_cifar_dataset(ds: CifarDataset, root: Path | None, split: str, download: bool) -> RawData:
    root = _resolve_root(root, ds.name, f"{ds.layout.folder}/", download)
    for attempt in range(2):
        looked = ds.candidates(root)
        for folder in looked:
            if cifar_files_present(folder, ds.layout, split):
                return read_cifar(folder, ds.layout, split)
        if attempt == 0 and download:
            _run_download(ds.fetch, root, ds.name)
        else:
            break
    raise _not_found(ds.name, split, ", ".join(ds.layout.files[split]), looked,
                     f"put the python-version batches in {root}/{ds.layout.folder}/ or add --download")


# --------------------------------------------------------------------------- SVHN

def _fetch_svhn(root: str, split: str) -> None:
    import torchvision.datasets as tvd

    tvd.SVHN(root, split=split, download=True)


def load_svhn_dataset(root: Path | None, split: str, download: bool) -> RawData:
    root = _resolve_root(root, "svhn", svhn_file(split), download)
    name = svhn_file(split)
    for attempt in range(2):
        looked = [root] + _named_subdirs(root, "svhn")
        for folder in looked:
            if (folder / name).is_file():
                return read_svhn(folder / name)
        if attempt == 0 and download:
            _run_download(partial(_fetch_svhn, split=split), root, "SVHN")
        else:
            break
    raise _not_found("svhn", split, name, looked, f"put {name} in {root}/ or {root}/svhn/, or add --download")


# --------------------------------------------------------------------------- the registry

MNIST = IdxDataset("mnist", "MNIST", DIGITS)
FASHION_MNIST = IdxDataset("fashionmnist", "FashionMNIST", FASHION_MNIST_CLASSES, (DEBIAN_FASHION_MNIST,))
KMNIST = IdxDataset("kmnist", "KMNIST", KMNIST_CLASSES)

#: dataset name → loader(root, split, download). Names are matched after :func:`norm_name`.
DATASETS: dict[str, Loader] = {
    "mnist": partial(load_idx_dataset, MNIST),
    "fashionmnist": partial(load_idx_dataset, FASHION_MNIST),
    "kmnist": partial(load_idx_dataset, KMNIST),
    "cifar10": partial(load_cifar_dataset, CifarDataset("cifar10", CIFAR10)),
    "cifar100": partial(load_cifar_dataset, CifarDataset("cifar100", CIFAR100)),
    "svhn": load_svhn_dataset,
}
