"""Per-sample rows as JSON: the one conversion the runner, reports and checkpoints share (torch-free)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def row_dict(row: Any) -> dict[str, Any]:
    """A row dataclass as a JSON-safe dict (NaN/Inf → None)."""
    return {f.name: _json_value(getattr(row, f.name)) for f in dataclasses.fields(row)}
