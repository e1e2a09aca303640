"""Registry of analyses: name → module that defines ``ANALYSIS``.

Import is lazy so the CLI can list commands without loading numerical code.
Order here is the order of sections in reports and in ``robaudit audit``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.analyses.base import Analysis

REGISTRY: dict[str, str] = {
    "norms": "robaudit.analyses.norms",
    "spectrum": "robaudit.analyses.spectrum",
    "layers": "robaudit.analyses.layers",
    "attacks": "robaudit.analyses.attacks",
    "linearity": "robaudit.analyses.linearity",
    "cells": "robaudit.analyses.cells",
    "cross_section": "robaudit.analyses.cross_section",
    "curvature": "robaudit.analyses.curvature",
}


def available() -> list[str]:
    """Names of analyses whose module is present in this install."""
    names = []
    for name, module in REGISTRY.items():
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def get(name: str) -> "Analysis":
    """The registered analysis ``name``; ConfigError naming the nearest one."""
    from robaudit.errors import ConfigError

    if name not in available():
        from difflib import get_close_matches

        near = get_close_matches(name, available(), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown analysis '{name}'{hint}; expected one of: {', '.join(available())}")
    return importlib.import_module(REGISTRY[name]).ANALYSIS
