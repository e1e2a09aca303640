"""robaudit: robustness auditor for trained image classifiers.

The public API is small on purpose: load a model, load data, run analyses
(see :mod:`robaudit.api`). Heavy modules (torch) are imported lazily, on first
use of an API name, so that ``robaudit --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("load_model", "load_data", "audit", "jacobian_norms", "layer_bounds", "lipschitz_bracket",
        "Report", "Data", "Bracket", "NormsResult")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # PEP 562: import robaudit.api (and torch) only when an API name is used
    if name in _API:
        from robaudit import api

        return getattr(api, name)
    raise AttributeError(f"module 'robaudit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
