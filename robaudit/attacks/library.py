"""torchattacks' attack classes, each loaded from its own module.

``import torchattacks`` runs the package's ``__init__``, which imports all 40 of its attacks;
one of them (TIFGSM) imports ``scipy.stats``. That is 1.4 s of every run that attacks
anything (about a quarter of the quick audit), for classes robaudit never uses. Here
``attack_class("PGD")`` imports only ``torchattacks.attacks.pgd`` (and what it imports).

The package object is made from its real spec but its ``__init__`` is not run yet; the first
access to a name it does not hold runs it, so ``import torchattacks; torchattacks.TIFGSM``
elsewhere in the same process (a user of the Python API) still gets the whole package.
If the package is already imported, its own classes are used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

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
    spec = importlib.util.find_spec("torchattacks")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return importlib.import_module("torchattacks")  # raises the usual ImportError when it is absent
    module = importlib.util.module_from_spec(spec)

    def complete(attr: str) -> Any:
        vars(module).pop("__getattr__", None)  # once: the package's own __init__ fills the namespace
        spec.loader.exec_module(module)
        try:
            return vars(module)[attr]
        except KeyError:
            raise AttributeError(f"module 'torchattacks' has no attribute {attr!r}") from None

    module.__getattr__ = complete  # type: ignore[attr-defined]  # PEP 562
    sys.modules["torchattacks"] = module
    return module


__all__ = ["MODULES", "attack_class"]
