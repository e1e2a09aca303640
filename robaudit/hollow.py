"""Packages registered without running their ``__init__``, so one submodule can be imported alone.

Some dependencies import everything they have from their package ``__init__``:
``import torchattacks`` loads all 40 attacks (and scipy.stats, 1.4 s, for one of them), and
``import torchvision`` loads its datasets, io, ops and torch._dynamo (2.2 of its 2.8 s) before
a model builder can be reached. robaudit needs one class or one builder from each.

:func:`hollow` registers the package object made from its real spec with its ``__init__``
deferred: submodules import normally underneath it, and the first access to a name the
package does not hold runs the ``__init__`` in place (PEP 562 ``__getattr__``), so
``import torchvision; torchvision.datasets`` elsewhere in the same process still gets the
whole package. A package already imported is returned as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any


def hollow(name: str) -> ModuleType:
    """``name`` (a package) from ``sys.modules``, or registered there with its ``__init__`` deferred.

    Its parent package, if any, is made hollow first. Raises the usual ImportError when it is absent.
    """
    if name in sys.modules:
        return sys.modules[name]
    parent, _, child = name.rpartition(".")
    if parent:
        hollow(parent)
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return importlib.import_module(name)  # a plain module, or absent: the usual import (or ImportError)
    module = importlib.util.module_from_spec(spec)

    def complete(attr: str) -> Any:
        vars(module).pop("__getattr__", None)  # once: the package's own __init__ fills the namespace
        spec.loader.exec_module(module)
        try:
            return vars(module)[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    module.__getattr__ = complete  # type: ignore[attr-defined]
    sys.modules[name] = module
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


__all__ = ["hollow"]
