"""Common settings of a run, merged with precedence CLI > config file > defaults.

Parsing of user text (lists of floats, shapes, index ranges) happens here, once,
at the edge; everything downstream gets typed values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from robaudit.errors import UsageError
from robaudit.kinds import echo, eval_fraction, parse_fractions  # noqa: F401  (eval_fraction re-exported)

# Defaults of the common settings: the one place they live (the CLI and the config read them).
DEFAULTS: dict[str, Any] = {
    "model": None, "arch": None, "mean": None, "std": None, "input_shape": None, "select": None,
    "unsafe_load": False, "data": None, "data_root": None, "split": "test", "limit": None,
    "indices": None, "batch_size": 128, "download": False, "device": "auto", "seed": 0,
    "dtype": "float32", "config": None, "output": None, "json": False, "markdown": None,
    "plots": None, "quiet": False, "debug": False, "html": None, "wide": False,
    "dist_backend": None, "checkpoint_dir": None, "checkpoint_every": 1,
}

# Keys of the common settings that may also be set in the YAML config.
CONFIG_KEYS = ("model", "arch", "mean", "std", "input_shape", "select", "data", "data_root",
               "split", "limit", "indices", "batch_size", "device", "seed", "dtype",
               "output", "markdown", "plots", "html", "dist_backend", "checkpoint_dir", "checkpoint_every")


def parse_floats(text: Any, flag: str) -> tuple[float, ...] | None:
    """'0.5,0.25' or [0.5, 0.25] → (0.5, 0.25); finite numbers only (fractions allowed)."""
    if text is None:
        return None
    return parse_fractions(text, flag)


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


def parse_indices(text: Any, flag: str = "--indices"):
    """'0,5,10:20' → Indices (ranges, expanded only after the dataset's size is checked)."""
    from robaudit.data.indices import parse_indices as _parse

    return _parse(text, flag)


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
    indices: Any = None  # robaudit.data.indices.Indices
    batch_size: int = 128
    download: bool = False
    device: str = "auto"
    seed: int = 0
    dtype: str = "float32"
    output: str | None = None
    json: bool = False
    markdown: str | None = None
    plots: str | None = None
    html: str | None = None
    wide: bool = False
    quiet: bool = False
    config: str | None = None
    dist_backend: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    # where each value came from when not the default: "--std" or "robaudit.yaml: std" (for messages)
    sources: dict = field(default_factory=dict, compare=False)


def build_settings(cli: Mapping[str, Any], file_settings: Mapping[str, Any],
                   config_path: str | None = None) -> Settings:
    """Merge CLI values (only those the user typed) over config over defaults.

    Errors name where the bad value came from: the flag, or the config file's key.
    """
    raw = dict(DEFAULTS)
    where: dict[str, str] = {}
    for k, v in file_settings.items():
        if v is not None:
            raw[k] = v
            where[k] = f"{config_path or 'config'}: {k}"
    for k, v in cli.items():
        raw[k] = v
        where[k] = "--" + k.replace("_", "-")

    def src(key: str) -> str:
        return where.get(key, "--" + key.replace("_", "-"))

    mean, std = parse_floats(raw["mean"], src("mean")), parse_floats(raw["std"], src("std"))
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together: pass both or neither")
    if mean is not None and len(mean) != len(std):
        raise UsageError(f"{src('mean')} has {len(mean)} values but {src('std')} has {len(std)}")
    if std is not None and any(s <= 0 for s in std):
        raise UsageError(f"{src('std')}: expected positive values, got {echo(raw['std'])}")
    limit = _positive_int(raw["limit"], src("limit")) if raw["limit"] is not None else None
    batch_size = _positive_int(raw["batch_size"], src("batch_size"))
    dtype = str(raw["dtype"])
    if dtype not in ("float32", "float64"):
        raise UsageError(f"{src('dtype')}: expected float32 or float64, got {echo(dtype)}")
    split = str(raw["split"])
    if split not in ("test", "train"):
        raise UsageError(f"{src('split')}: expected test or train, got {echo(split)}")
    try:
        seed = int(raw["seed"])
    except (TypeError, ValueError):
        raise UsageError(f"{src('seed')}: expected an integer, got {echo(raw['seed'])}") from None
    for key in ("output", "markdown", "plots", "html"):
        if raw[key] is not None and str(raw[key]).strip() == "":
            raise UsageError(f"{src(key)}: expected a path, got an empty string")
    indices = parse_indices(raw["indices"], src("indices"))
    backend = raw["dist_backend"]
    if backend is not None and str(backend) not in ("gloo", "nccl", "mpi"):
        raise UsageError(f"{src('dist_backend')}: expected gloo, nccl or mpi, got {echo(backend)}")
    if raw["checkpoint_dir"] is not None and str(raw["checkpoint_dir"]).strip() == "":
        raise UsageError(f"{src('checkpoint_dir')}: expected a directory, got an empty string")
    every = _positive_int(raw["checkpoint_every"], src("checkpoint_every"))
    return Settings(
        model=raw["model"], arch=raw["arch"], mean=mean, std=std,
        input_shape=parse_shape(raw["input_shape"], src("input_shape")), select=raw["select"],
        unsafe_load=bool(raw["unsafe_load"]), data=raw["data"],
        data_explicit=raw["data"] is not None, data_root=raw["data_root"], split=split,
        limit=limit, indices=indices, batch_size=batch_size,
        download=bool(raw["download"]), device=str(raw["device"]), seed=seed, dtype=dtype,
        output=raw["output"], json=bool(raw["json"]), markdown=raw["markdown"], plots=raw["plots"],
        html=raw["html"], wide=bool(raw["wide"]),
        quiet=bool(raw["quiet"]), config=raw["config"],
        dist_backend=None if backend is None else str(backend),
        checkpoint_dir=None if raw["checkpoint_dir"] is None else str(raw["checkpoint_dir"]),
        checkpoint_every=every,
        sources=dict(where),
    )


def _positive_int(value: Any, where: str) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where}: expected a positive integer, got {echo(value)}") from None
    if out <= 0:
        raise UsageError(f"{where}: expected a positive integer, got {out}")
    return out
