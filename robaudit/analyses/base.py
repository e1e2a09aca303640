"""The analysis plug-in protocol (torch-free; imported by the CLI at start-up).

An analysis is one module under ``robaudit.analyses`` that defines a module
level ``ANALYSIS = Analysis(...)``. Everything else picks it up from there:

* the CLI builds ``robaudit <name>`` from ``Options`` (one flag per field);
* the YAML config validates ``analyses.<name>`` against the same fields;
* the report stores ``run(ctx, options)`` under ``analyses.<name>``;
* the terminal renderer calls ``render(section)`` on the stored JSON, so
  ``robaudit show`` prints exactly what the run printed;
* the gate resolves metric aliases through ``metrics(section)``.

Analysis modules must not import torch at module level: they import their
numerical engine inside ``run``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext


def finite_or_none(value: Any) -> float | None:
    """``float(value)``, or None for None/NaN/Inf (JSON has no NaN; the gate treats None as failing)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def opt(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    flag: str | None = None,
    short: str | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Any:
    """Declare one analysis option: a dataclass field that is also a CLI flag.

    Args:
        default: the default value (its type sets the flag's type; use
            ``None`` with a typed annotation for "unset").
        help: the ``--help`` text.
        choices: allowed string values (validated at the CLI edge and in YAML).
        flag: the flag name if it differs from ``--field-name``.
        short: an optional one-letter alias such as ``-k``.
        min, max: numeric range checked at the CLI edge and in YAML.
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None,
            "flag": flag, "short": short, "min": min, "max": max}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Analysis:
    """One registered analysis.

    Attributes:
        name: the command name and the key under ``analyses`` in the report.
        help: one line for ``--help``.
        options: a frozen dataclass type; its fields are the options.
        run: ``run(ctx, options) -> dict`` (JSON-safe section).
        render: ``render(section) -> list`` of Rich renderables (from JSON only).
        metrics: ``metrics(section) -> {alias: float}`` for the gate and compare.
        plot: optional ``plot(section, path)`` writing one PNG.
        needs_data: whether the analysis needs a dataset.
        command: the CLI command name when it differs from ``name``.
        profiles: audit profile name (quick/standard/full) → option overrides;
            an analysis runs in the profiles it lists.
        metric_patterns: regular expressions (full match) of the aliases
            ``metrics`` can return, so the gate can reject an unknown metric
            before any computation. Empty: any ``<name>.…`` alias is accepted.
        check: optional ``check(options)`` raising UsageError for option
            combinations that are invalid whatever the model (run before any work).
    """

    name: str
    help: str
    options: type
    run: Callable[["AuditContext", Any], dict]
    render: Callable[[Mapping[str, Any]], list]
    metrics: Callable[[Mapping[str, Any]], dict[str, float]]
    plot: Callable[[Mapping[str, Any], str], None] | None = None
    needs_data: bool = True
    command: str | None = None
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metric_patterns: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None

    @property
    def command_name(self) -> str:
        """CLI command name (``attack`` for the ``attacks`` analysis)."""
        return self.command or self.name

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options))

    def make_options(self, values: Mapping[str, Any] | None = None) -> Any:
        """Build validated options from a mapping of field names (unknown keys → ConfigError)."""
        from robaudit.config import validate_options

        options = validate_options(self, dict(values or {}))
        if self.check is not None:
            self.check(options)
        return options
