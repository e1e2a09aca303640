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
import enum
import math
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


def field_kind(f: dataclasses.Field) -> Any:
    """The declared kind of an option field (see :func:`robaudit.analyses.base.opt`)."""
    from robaudit.analyses.base import option_kind

    return option_kind(f)


def coerce(value: Any, kind: Any, where: str) -> Any:
    """Convert a YAML/CLI value to ``kind`` (typed, once) or raise ConfigError naming ``where``."""
    from robaudit.kinds import (Fraction, Fractions, Ints, LabelledFractions, echo, parse_fraction, parse_fractions,
                                parse_ints, parse_labelled_fractions)

    if value is None:
        return None
    if kind is Fraction:
        return parse_fraction(value, where)
    if kind is Fractions:
        return parse_fractions(value, where)
    if kind is Ints:
        return parse_ints(value, where)
    if kind is LabelledFractions:
        return parse_labelled_fractions(value, where)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        if isinstance(value, kind):
            return value
        try:
            return kind(str(value).strip().lower() if not isinstance(value, bool) else value)
        except ValueError:
            valid = ", ".join(m.value for m in kind)
            raise ConfigError(f"{where}: expected one of {valid}, got {echo(value)}{_nearest(str(value), [m.value for m in kind])}") from None
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
            out = float(value)
            if not math.isfinite(out):
                raise ConfigError(f"{where}: expected a finite number, got {echo(value)}")
            return out
        if isinstance(value, (list, tuple, dict)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {echo(value)}") from None


def validate_options(analysis: "Analysis", values: Mapping[str, Any], where: str | None = None,
                     sources: Mapping[str, str] | None = None) -> Any:
    """Options dataclass for ``analysis`` from ``values`` (names with - or _), typed once.

    ``sources`` names where each value came from (a flag or a config key); by default
    ``analyses.<name>.<key>``.
    """
    where = where or f"analyses.{analysis.name}"
    sources = sources or {}
    fields = {f.name: f for f in analysis.option_fields()}
    kwargs = {}
    for raw_key, value in values.items():
        key = _key(raw_key)
        if key not in fields:
            raise unknown_key_error(where, str(raw_key), [k.replace("_", "-") for k in fields])
        f = fields[key]
        flag = sources.get(key) or f"{where}.{raw_key}"
        value = coerce(value, field_kind(f), flag)
        meta = f.metadata
        if isinstance(value, str) and meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{flag}: expected one of {', '.join(meta['choices'])}, got {value!r}")
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if meta.get("min") is not None and item < meta["min"]:
                raise ConfigError(f"{flag}: expected >= {meta['min']}, got {item!r}")
            if meta.get("max") is not None and item > meta["max"]:
                raise ConfigError(f"{flag}: expected <= {meta['max']}, got {item!r}")
        kwargs[key] = value
    return analysis.options(**kwargs)


@dataclasses.dataclass(frozen=True)
class FileConfig:
    """A parsed, validated-at-the-top-level config file.

    ``from_file`` holds the setting keys (underscore names) the file set, so messages can
    name "robaudit.yaml: std" instead of "--std" for a value the user did not type.
    """

    path: str | None
    settings: dict[str, Any]            # common settings (underscore names)
    analyses: dict[str, dict[str, Any]]  # analysis name → raw options (validated later)
    gate: dict[str, dict[str, float]]
    profile: str | None
    from_file: frozenset[str] = frozenset()

    def source(self, key: str, flag: str | None = None) -> str:
        """Where setting ``key`` came from: ``<file>: <key>`` if the file set it, else the flag."""
        if key in self.from_file:
            return f"{self.path}: {key.replace('_', '-')}"
        return flag or "--" + key.replace("_", "-")


EMPTY = FileConfig(None, {}, {}, {}, None)

#: Limits for reading a config file: a YAML "billion laughs" file of 351 bytes once
#: expanded to 3.4 GB. Real configs are a few hundred bytes with no or few aliases.
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 64
MAX_NODES = 20_000
#: Settings that may hold a list (of numbers); every other setting must be a single value.
LIST_SETTINGS = ("mean", "std", "input_shape", "indices")


def load_config(path: str | None, *, auto: bool = True) -> FileConfig:
    """Read ``path`` (or ./robaudit.yaml when ``auto`` and present).

    The file is data, never code: ``arch: package.module:factory`` is refused (a factory is
    imported only when typed on the command line), YAML aliases are capped (no alias bombs),
    and settings must be plain values or lists of numbers.

    Raises:
        ConfigError: exit 2, naming the file and key; echoed values are cut to ~200 characters.
    """
    from robaudit.text import clip
    from robaudit.settings import CONFIG_KEYS

    if path is None:
        if not auto or not os.path.isfile("robaudit.yaml"):
            return EMPTY
        path = "robaudit.yaml"
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--config: no such file: {path}")
    if not p.is_file():
        raise ConfigError(f"--config: {path} is not a regular file")
    raw = _read_yaml(p, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    valid = list(CONFIG_KEYS) + list(TOP_LEVEL_EXTRA)
    settings: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = _key(raw_key)
        if key not in valid:
            raise unknown_key_error(path, _cut(str(raw_key)), [k.replace("_", "-") for k in valid])
        if key in TOP_LEVEL_EXTRA:
            continue
        _check_setting(path, str(raw_key), key, value, clip)
        settings[key] = value
    arch = settings.get("arch")
    if isinstance(arch, str) and ":" in arch:
        # Security: a file must never make robaudit import and call code (issue 10 §1).
        raise ConfigError(f"{path}: arch {clip(arch, 80)}: a config file cannot name code to import "
                          f"(package.module:factory); pass it on the command line instead: --arch {clip(arch, 80)}")
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
            raise ConfigError(f"{path}: analyses.{clip(name, 60)} must be a mapping of options (or empty)")
    gate = raw.get("gate") or {}
    if not isinstance(gate, dict):
        raise ConfigError(f"{path}: 'gate' must be a mapping")
    parsed_gate: dict[str, Any] = {}
    for raw_key, value in gate.items():
        key = _key(raw_key)
        if key not in GATE_KEYS:
            raise unknown_key_error(f"{path}: gate", _cut(str(raw_key)), list(GATE_KEYS))
        if key == "fail_on_regression":
            parsed_gate[key] = coerce(value, float, f"{path}: gate.fail_on_regression")
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: gate.{raw_key} must map metric names to numbers")
        parsed_gate[key] = {str(m): coerce(v, float, f"{path}: gate.{raw_key}.{clip(str(m), 80)}") for m, v in value.items()}
    profile = raw.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise ConfigError(f"{path}: profile: expected a name, got {clip(profile)}")
    return FileConfig(str(p), settings, analyses, parsed_gate, profile, frozenset(settings))


def _cut(text: str, limit: int = 60) -> str:
    """A key from the file, cut for a message (control characters are escaped when printed)."""
    return text if len(text) <= limit else text[:limit] + "…"


def _check_setting(path: str, raw_key: str, key: str, value: Any, clip: Any) -> None:
    """A top-level setting is a scalar, or (for LIST_SETTINGS) a flat list of scalars."""
    scalar = (str, int, float, bool, type(None))
    if isinstance(value, scalar):
        return
    if key in LIST_SETTINGS and isinstance(value, list) and all(isinstance(v, scalar) and not isinstance(v, bool)
                                                                for v in value):
        return
    what = "a single value or a list of numbers" if key in LIST_SETTINGS else "a single value"
    raise ConfigError(f"{path}: {raw_key}: expected {what}, got {type(value).__name__} {clip(value)}")


def _read_yaml(p: Path, label: str) -> Any:
    """Parse a YAML file with safe types only, bounded size, and bounded alias expansion."""
    import yaml

    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{label}: {size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,}")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or type(exc).__name__}") from None

    class Loader(yaml.SafeLoader):
        """SafeLoader that counts aliases while composing (before anything is expanded)."""

        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise ConfigError(f"{label}: more than {MAX_ALIASES} YAML aliases (*name); "
                                      "refusing a file that may expand without bound")
            return super().compose_node(parent, index)

    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        expanded = _expanded_size(node)
        if expanded > MAX_NODES:
            raise ConfigError(f"{label}: the YAML expands to more than {MAX_NODES:,} values through aliases; "
                              "refusing it (a config file holds a few dozen)")
        return loader.construct_document(node) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{label}: not valid YAML{at}") from None
    except RecursionError:
        raise ConfigError(f"{label}: nested too deeply to be a config file") from None
    finally:
        loader.dispose()


def _expanded_size(root: Any) -> int:
    """How many nodes the YAML graph has once aliases are expanded (stops early past MAX_NODES).

    Aliases make the graph a DAG (or a cycle: ``&a [*a]``); sizes are memoised per node, a
    cycle counts as unbounded.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            children = _children(node)
            sizes[key] = min(MAX_NODES + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        if key in sizes:
            continue
        if key in active:
            return MAX_NODES + 1  # an alias to its own ancestor: infinite expansion
        active.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in active:
                return MAX_NODES + 1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
