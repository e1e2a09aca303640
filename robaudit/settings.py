"""Common settings of a run, merged with precedence CLI > config file > defaults.

Parsing of user text (lists of floats, shapes, index ranges) happens here, once,
at the edge; everything downstream gets typed values.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

from robaudit.errors import UsageError


def parse_floats(text: Any, flag: str) -> tuple[float, ...] | None:
    """'0.5,0.25' or [0.5, 0.25] → (0.5, 0.25)."""
    if text is None:
        return None
    items = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    try:
        values = tuple(float(eval_fraction(str(v))) for v in items if str(v) != "")
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag}: expected at least one number, got {text!r}")
    return values


def eval_fraction(text: str) -> float:
    """'8/255' → 0.0313..., '0.1' → 0.1 (no eval of arbitrary text)."""
    text = text.strip()
    if "/" in text:
        num, _, den = text.partition("/")
        d = float(den)
        if d == 0:
            raise ValueError(text)
        return float(num) / d
    return float(text)


def parse_shape(text: Any, flag: str = "--input-shape") -> tuple[int, ...] | None:
    if text is None:
        return None
    items = text if isinstance(text, (list, tuple)) else re.split(r"[,x×]", str(text).lower().replace(" ", ""))
    try:
        shape = tuple(int(v) for v in items)
    except ValueError:
        raise UsageError(f"{flag}: expected C,H,W such as 3,32,32, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"{flag}: expected positive sizes such as 3,32,32, got {text!r}")
    return shape


def parse_indices(text: Any, flag: str = "--indices") -> list[int] | None:
    """'0,5,10:20' → [0, 5, 10, ..., 19]."""
    if text is None:
        return None
    items = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    out: list[int] = []
    try:
        for item in items:
            item = str(item)
            if not item:
                continue
            if ":" in item:
                a, _, b = item.partition(":")
                start, stop = int(a or 0), int(b)
                if stop <= start:
                    raise ValueError
                out.extend(range(start, stop))
            else:
                out.append(int(item))
    except ValueError:
        raise UsageError(f"{flag}: expected indices like 0,5,10:20, got {text!r}") from None
    if any(i < 0 for i in out):
        raise UsageError(f"{flag}: indices must be >= 0, got {text!r}")
    if not out:
        raise UsageError(f"{flag}: no indices in {text!r}")
    return out


@dataclass(frozen=True)
class Settings:
    """Typed common settings of one run."""

    model: str | None = None
    arch: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    select: str | None = None
    unsafe_load: bool = False
    data: str | None = None
    data_explicit: bool = False
    data_root: str | None = None
    split: str = "test"
    limit: int | None = None
    indices: tuple[int, ...] | None = None
    batch_size: int = 128
    download: bool = False
    device: str = "auto"
    seed: int = 0
    dtype: str = "float32"
    output: str | None = None
    json: bool = False
    markdown: str | None = None
    plots: str | None = None
    quiet: bool = False
    debug: bool = False
    config: str | None = None


def build_settings(cli: Mapping[str, Any], file_settings: Mapping[str, Any]) -> Settings:
    """Merge CLI values (only those the user typed) over config over defaults."""
    from robaudit.cli.options import DEFAULTS

    raw = dict(DEFAULTS)
    raw.update({k: v for k, v in file_settings.items() if v is not None})
    raw.update({k: v for k, v in cli.items()})
    mean, std = parse_floats(raw["mean"], "--mean"), parse_floats(raw["std"], "--std")
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together: pass both or neither")
    if mean is not None and len(mean) != len(std):
        raise UsageError(f"--mean has {len(mean)} values but --std has {len(std)}")
    if std is not None and any(s <= 0 for s in std):
        raise UsageError(f"--std: expected positive values, got {raw['std']!r}")
    limit = raw["limit"]
    if limit is not None:
        try:
            limit = int(limit)
        except (TypeError, ValueError):
            raise UsageError(f"--limit: expected a positive integer, got {limit!r}") from None
        if limit <= 0:
            raise UsageError(f"--limit: expected a positive integer, got {limit}")
    batch_size = raw["batch_size"]
    try:
        batch_size = int(batch_size)
    except (TypeError, ValueError):
        raise UsageError(f"--batch-size: expected a positive integer, got {batch_size!r}") from None
    if batch_size <= 0:
        raise UsageError(f"--batch-size: expected a positive integer, got {batch_size}")
    dtype = str(raw["dtype"])
    if dtype not in ("float32", "float64"):
        raise UsageError(f"--dtype: expected float32 or float64, got {dtype!r}")
    split = str(raw["split"])
    if split not in ("test", "train"):
        raise UsageError(f"--split: expected test or train, got {split!r}")
    try:
        seed = int(raw["seed"])
    except (TypeError, ValueError):
        raise UsageError(f"--seed: expected an integer, got {raw['seed']!r}") from None
    indices = parse_indices(raw["indices"])
    return Settings(
        model=raw["model"], arch=raw["arch"], mean=mean, std=std,
        input_shape=parse_shape(raw["input_shape"]), select=raw["select"],
        unsafe_load=bool(raw["unsafe_load"]), data=raw["data"],
        data_explicit=raw["data"] is not None, data_root=raw["data_root"], split=split,
        limit=limit, indices=tuple(indices) if indices else None, batch_size=batch_size,
        download=bool(raw["download"]), device=str(raw["device"]), seed=seed, dtype=dtype,
        output=raw["output"], json=bool(raw["json"]), markdown=raw["markdown"], plots=raw["plots"],
        quiet=bool(raw["quiet"]), debug=bool(raw["debug"]), config=raw["config"],
    )


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
