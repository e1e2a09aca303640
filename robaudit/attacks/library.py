"""torchattacks' attack classes, each loaded from its own module.

``import torchattacks`` runs the package's ``__init__``, which imports all 40 of its attacks;
one of them (TIFGSM) imports ``scipy.stats``. That is 1.4 s of every run that attacks
anything (about a quarter of the quick audit), for classes robaudit never uses. Here
``attack_class("PGD")`` imports only ``torchattacks.attacks.pgd`` (and what it imports).

The package is registered by :func:`robaudit.hollow.hollow`: its ``__init__`` runs at the first
access to a name it does not hold, so ``import torchattacks; torchattacks.TIFGSM`` elsewhere in
the same process (a user of the Python API) still gets the whole package. If the package is
already imported, its own classes are used.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from robaudit.hollow import hollow

#: Class name → module under ``torchattacks.attacks`` (torchattacks 3.5 layout).
MODULES = {"FGSM": "fgsm", "PGD": "pgd", "PGDL2": "pgdl2", "TPGD": "tpgd", "Square": "square", "CW": "cw",
           "DeepFool": "deepfool", "APGD": "apgd", "APGDT": "apgdt", "FAB": "fab", "AutoAttack": "autoattack",
           "GN": "gn"}


def attack_class(name: str) -> Any:
    """The torchattacks class ``name`` (e.g. "PGD"), importing as little of the package as possible."""
    package = sys.modules.get("torchattacks") or _package()
    own = vars(package).get(name)
    if own is not None:
        return own
    try:
        module = importlib.import_module(f"torchattacks.attacks.{MODULES[name]}")
        return getattr(module, name)
    except (KeyError, ImportError, AttributeError):  # another layout: the whole package
        return getattr(importlib.import_module("torchattacks"), name)


def _package() -> ModuleType:
    """``torchattacks`` registered from its spec, its ``__init__`` deferred to the first missing name."""
    return hollow("torchattacks")


__all__ = ["MODULES", "attack_class"]
