"""YAML configuration: loading, validation, and precedence CLI > file > defaults.

A config file has the common settings at the top level (the same names as the
CLI flags, with ``-`` or ``_``), an ``analyses:`` mapping of analysis name →
options, an optional ``profile:`` and a ``gate:`` section::

    model: sample_models/lenet_fmnist.pt
    data: embedded
    limit: 256
    analyses:
      norms: {method: exact, top-k: 3}
      attacks: {pgd: true, eps: "2/255,8/255"}
    gate:
      fail_above: {lipschitz_upper: 5000}
      fail_below: {"attacks.worst_case@8/255": 0.05}

Unknown keys are errors naming the key and the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import os
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from robaudit.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.analyses.base import Analysis

TOP_LEVEL_EXTRA = ("analyses", "gate", "profile")
GATE_KEYS = ("fail_above", "fail_below", "fail_on_regression")


def _key(name: str) -> str:
    return str(name).replace("-", "_")


def _nearest(name: str, valid: list[str]) -> str:
    near = get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" (did you mean '{near[0]}'?)" if near else ""


def unknown_key_error(where: str, key: str, valid: list[str]) -> ConfigError:
    return ConfigError(f"{where}: unknown key '{key}'{_nearest(key, valid)}; valid keys: {', '.join(valid)}")


def field_kind(f: dataclasses.Field) -> type:
    """The scalar type of an option field: bool, int, float or str."""
    if f.default is not dataclasses.MISSING and f.default is not None:
        return type(f.default)
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if name in text:
            return typ
    return str


def coerce(value: Any, kind: type, where: str) -> Any:
    """Convert a YAML/CLI value to ``kind`` or raise ConfigError naming ``where``."""
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "on", "1"):
                return True
            if str(value).lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None


def validate_options(analysis: "Analysis", values: Mapping[str, Any], where: str | None = None) -> Any:
    """Options dataclass for ``analysis`` from ``values`` (names with - or _)."""
    where = where or f"analyses.{analysis.name}"
    fields = {f.name: f for f in analysis.option_fields()}
    kwargs = {}
    for raw_key, value in values.items():
        key = _key(raw_key)
        if key not in fields:
            raise unknown_key_error(where, str(raw_key), [k.replace("_", "-") for k in fields])
        f = fields[key]
        flag = f"{where}.{raw_key}"
        value = coerce(value, field_kind(f), flag)
        meta = f.metadata
        if value is not None and meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{flag}: expected one of {', '.join(meta['choices'])}, got {value!r}")
        if value is not None and meta.get("min") is not None and value < meta["min"]:
            raise ConfigError(f"{flag}: expected >= {meta['min']}, got {value!r}")
        if value is not None and meta.get("max") is not None and value > meta["max"]:
            raise ConfigError(f"{flag}: expected <= {meta['max']}, got {value!r}")
        kwargs[key] = value
    return analysis.options(**kwargs)


@dataclasses.dataclass(frozen=True)
class FileConfig:
    """A parsed, validated-at-the-top-level config file."""

    path: str | None
    settings: dict[str, Any]            # common settings (underscore names)
    analyses: dict[str, dict[str, Any]]  # analysis name → raw options (validated later)
    gate: dict[str, dict[str, float]]
    profile: str | None


EMPTY = FileConfig(None, {}, {}, {}, None)


def load_config(path: str | None, *, auto: bool = True) -> FileConfig:
    """Read ``path`` (or ./robaudit.yaml when ``auto`` and present)."""
    from robaudit.cli.options import CONFIG_KEYS

    if path is None:
        if not auto or not os.path.isfile("robaudit.yaml"):
            return EMPTY
        path = "robaudit.yaml"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: no such file: {path}")
    import yaml

    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    valid = list(CONFIG_KEYS) + list(TOP_LEVEL_EXTRA)
    settings: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = _key(raw_key)
        if key not in valid:
            raise unknown_key_error(path, str(raw_key), [k.replace("_", "-") for k in valid])
        if key not in TOP_LEVEL_EXTRA:
            settings[key] = value
    if settings.get("model") is not None and not os.path.isabs(str(settings["model"])):
        # Paths in a config file are relative to the file, as users expect.
        candidate = p.parent / str(settings["model"])
        settings["model"] = str(candidate)
    analyses = raw.get("analyses") or {}
    if not isinstance(analyses, dict):
        raise ConfigError(f"{path}: 'analyses' must map analysis names to options")
    analyses = {str(k): (v if v is not None else {}) for k, v in analyses.items()}
    for name, opts in analyses.items():
        if not isinstance(opts, dict):
            raise ConfigError(f"{path}: analyses.{name} must be a mapping of options (or empty)")
    gate = raw.get("gate") or {}
    if not isinstance(gate, dict):
        raise ConfigError(f"{path}: 'gate' must be a mapping")
    parsed_gate: dict[str, Any] = {}
    for raw_key, value in gate.items():
        key = _key(raw_key)
        if key not in GATE_KEYS:
            raise unknown_key_error(f"{path}: gate", str(raw_key), list(GATE_KEYS))
        if key == "fail_on_regression":
            parsed_gate[key] = coerce(value, float, f"{path}: gate.fail_on_regression")
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: gate.{raw_key} must map metric names to numbers")
        parsed_gate[key] = {str(m): coerce(v, float, f"{path}: gate.{raw_key}.{m}") for m, v in value.items()}
    profile = raw.get("profile")
    return FileConfig(str(p), settings, analyses, parsed_gate, None if profile is None else str(profile))
