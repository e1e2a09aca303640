"""Assemble the versioned, JSON-safe report dict (keys in DESIGN.md §3)."""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone
from typing import Any, Mapping

from robaudit import __version__
from robaudit.report import SCHEMA_VERSION


def json_safe(value: Any) -> Any:
    """Recursively convert tensors/numpy/tuples to JSON types; NaN/Inf become None."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # torch / numpy scalars and arrays
        return json_safe(value.tolist())
    return str(value)


def make_report(*, command: str, ctx, settings, sections: Mapping[str, Any], timings: Mapping[str, float],
                warnings: list[str] | None = None, complete: bool = True) -> dict[str, Any]:
    """The report of one run. ``ctx`` is the AuditContext, ``settings`` the Settings."""
    import torch

    model = ctx.model.describe()  # the loader hashed the file it read (None for an in-memory module)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "robaudit", "version": __version__},
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(),
            "device": str(ctx.device), "seed": ctx.seed,
            "dtype": str(ctx.dtype).replace("torch.", ""),
        },
        "model": model,
        "data": ctx.data.describe() if ctx.data is not None else None,
        "analyses": dict(sections),
        "timings": {"analyses": dict(timings), "total": round(sum(timings.values()), 4)},
        "warnings": list(warnings or []),
    }
    return json_safe(report)
