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
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from robaudit.kinds import Better, Fraction, Fractions  # noqa: F401  (re-exported for analyses)

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.context import AuditContext


def finite_or_none(value: Any) -> float | None:
    """``float(value)``, or None for None/NaN/Inf (JSON has no NaN; the gate treats None as failing)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Metric:
    """One gateable number of a section, with the direction in which it is more robust.

    ``value`` None means missing or not finite: the gate fails it and ``compare``
    counts it as a regression when the other report has a number.
    """

    value: float | None
    better: Better
    unit: str = ""


def opt(
    default: Any,
    help: str,
    *,
    kind: Any = None,
    choices: Sequence[str] | None = None,
    flag: str | None = None,
    short: str | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Any:
    """Declare one analysis option: a dataclass field that is also a CLI flag and a YAML key.

    Args:
        default: the default value, already typed (an Enum member, a float, a tuple of floats).
        help: the ``--help`` text.
        kind: the value kind when the default does not say it: ``bool``, ``int``, ``float``,
            ``str``, :class:`~robaudit.kinds.Fraction`, :class:`~robaudit.kinds.Fractions` or an Enum class.
            Inferred from ``default`` otherwise (an Enum default gives its Enum's choices).
        choices: allowed string values for a ``str`` option.
        flag: the flag name if it differs from ``--field-name``.
        short: an optional one-letter alias such as ``-k``.
        min, max: numeric range (for lists: of every element), checked once when options are made.
    """
    if kind is None and default is not None:
        kind = _infer_kind(default)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = tuple(m.value for m in kind)
    meta = {"help": help, "kind": kind, "choices": tuple(choices) if choices else None,
            "flag": flag, "short": short, "min": min, "max": max}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _infer_kind(default: Any) -> Any:
    if isinstance(default, enum.Enum):
        return type(default)
    if isinstance(default, bool):
        return bool
    if isinstance(default, tuple):
        return Fractions
    if default is None:
        raise TypeError("opt(None, ...) needs kind=...")
    return type(default)


def option_kind(f: dataclasses.Field) -> Any:
    """The declared value kind of an option field (from ``kind=``, the default, or the annotation)."""
    if f.metadata.get("kind") is not None:
        return f.metadata["kind"]
    if f.default is not dataclasses.MISSING and f.default is not None:
        return _infer_kind(f.default)
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if name in text:
            return typ
    return str


@dataclass(frozen=True)
class Analysis:
    """One registered analysis.

    Attributes:
        name: the command name and the key under ``analyses`` in the report.
        help: one line for ``--help``.
        options: a frozen dataclass type; its fields are the options.
        run: ``run(ctx, options) -> dict`` (JSON-safe section).
        render: ``render(section) -> list`` of Rich renderables (from JSON only).
        metrics: ``metrics(section) -> {name: Metric}``: canonical names, each with its direction;
            the gate, ``compare``, Markdown and HTML all read these declarations.
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
        aliases: optional ``aliases(section) -> {alias: canonical name}``: other names the
            gate accepts for a metric (never shown in tables).
        row: the frozen dataclass of one ``per_sample`` entry; the report schema of the
            section is generated from it (:mod:`robaudit.report.schema`).
        required: keys every section of this analysis has (also in the generated schema).
        sharded: ``run`` streams its samples through :mod:`robaudit.analyses.runner`, so
            under torchrun each rank computes a share; otherwise rank 0 runs it alone
            and broadcasts the section.
    """

    name: str
    help: str
    options: type
    run: Callable[["AuditContext", Any], dict]
    render: Callable[[Mapping[str, Any]], list]
    metrics: Callable[[Mapping[str, Any]], dict[str, Metric]]
    plot: Callable[[Mapping[str, Any], str], None] | None = None
    needs_data: bool = True
    command: str | None = None
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metric_patterns: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    aliases: Callable[[Mapping[str, Any]], dict[str, str]] | None = None
    row: type | None = None
    required: tuple[str, ...] = ()
    sharded: bool = False

    @property
    def command_name(self) -> str:
        """CLI command name (``attack`` for the ``attacks`` analysis)."""
        return self.command or self.name

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options))

    def make_options(self, values: Mapping[str, Any] | None = None,
                     sources: Mapping[str, str] | None = None) -> Any:
        """Typed, validated options from raw values (unknown keys → ConfigError).

        ``sources`` maps a field name to where its value came from (``--eps``,
        ``robaudit.yaml: analyses.attacks.eps``), so errors name the real source.
        """
        from robaudit.config import validate_options

        options = validate_options(self, dict(values or {}), sources=sources)
        if self.check is not None:
            self.check(options)
        return options
