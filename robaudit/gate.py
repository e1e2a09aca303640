"""CI gate: thresholds on report metrics → pass/fail. Pure functions, no I/O.

Metrics are named by readable aliases that analyses publish (e.g.
``lipschitz_upper``, ``norms.spectral.p95``, ``attacks.pgd@8/255.robust_accuracy``)
or by any dotted path into the report (``analyses.norms.summary.spectral.max``).

Semantics, pinned by a boundary table in the tests:
* ``fail_above M=V`` fails when value > V (equal passes);
* ``fail_below M=V`` fails when value < V (equal passes);
* a NaN or null value fails, never passes silently;
* a metric that is not in the report is an error (exit 2), not a pass;
* a report marked incomplete fails (a ``report.complete`` check) unless
  ``allow_incomplete`` is given.

The gate is a pure function of the report, the thresholds and the metrics the
analyses declared (:mod:`robaudit.report.metrics` collects those); it does not
import the analyses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Iterable, Mapping

from robaudit.errors import UsageError

ABOVE, BELOW = "fail_above", "fail_below"
_OPS = {ABOVE: "<=", BELOW: ">="}


class MetricError(UsageError):
    """A threshold names a metric the report does not have (exit 2)."""


@dataclass(frozen=True)
class Threshold:
    metric: str
    kind: str  # fail_above | fail_below
    value: float

    @property
    def op(self) -> str:
        """The condition that must hold to pass."""
        return _OPS[self.kind]


def parse_threshold(text: str, kind: str) -> Threshold:
    """'METRIC=VALUE' (VALUE may be a fraction such as 8/255) → Threshold."""
    from robaudit.kinds import eval_fraction

    flag = "--" + kind.replace("_", "-")
    metric, sep, raw = str(text).rpartition("=")
    if not sep or not metric.strip():
        raise UsageError(f"{flag}: expected METRIC=VALUE, got {text!r}")
    try:
        value = eval_fraction(raw)
    except ValueError:
        raise UsageError(f"{flag}: expected a number after '=', got {raw!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag}: threshold for {metric} must be a finite number, got {raw!r}")
    return Threshold(metric.strip(), kind, value)


def thresholds_from(mapping: Mapping[str, Mapping[str, float]]) -> list[Threshold]:
    """Thresholds from a config's ``gate:`` section."""
    out = []
    for kind in (ABOVE, BELOW):
        for metric, value in (mapping.get(kind) or {}).items():
            value = float(value)
            if not math.isfinite(value):
                raise UsageError(f"gate.{kind}.{metric}: threshold must be a finite number, got {value!r}")
            out.append(Threshold(str(metric), kind, value))
    return out


def passes(value: float | None, kind: str, threshold: float) -> bool:
    """Whether ``value`` passes a ``kind`` threshold (NaN/None never pass)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if kind == ABOVE:
        return value <= threshold
    if kind == BELOW:
        return value >= threshold
    raise ValueError(f"unknown threshold kind {kind!r}")


def _flatten(prefix: str, node: Any, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    elif isinstance(node, (int, float)) and not isinstance(node, bool) or node is None:
        out[prefix] = node


def metrics_of(report: Mapping[str, Any], declared: Mapping[str, Any] | None = None,
               aliases: Mapping[str, str] | None = None) -> dict[str, float | None]:
    """Every value the gate can see: declared metrics, their aliases, then dotted report paths.

    ``declared`` maps canonical names to :class:`~robaudit.analyses.base.Metric` (or plain values).
    """
    out: dict[str, Any] = {}
    _flatten("", {k: v for k, v in report.items() if k != "gate"}, out)
    for name, metric in (declared or {}).items():
        out[name] = getattr(metric, "value", metric)
    for alias, canonical in (aliases or {}).items():
        if canonical in out and alias not in out:
            out[alias] = out[canonical]
    return out


REPORT_ROOTS = ("analyses.", "model.", "data.", "environment.", "timings.")


def check_known(thresholds: Iterable[Threshold], selected: Iterable[Any]) -> None:
    """Reject, before any computation, metrics no selected analysis can produce.

    A metric is known when it is a dotted path into the report
    (``analyses.norms.summary.spectral.max``) or matches an alias pattern of a
    selected analysis (``norms.spectral.p95``, ``lipschitz_upper``).
    """
    import re

    selected = list(selected)
    examples: list[str] = []
    for t in thresholds:
        if t.metric.startswith(REPORT_ROOTS):
            continue
        ok = False
        for analysis in selected:
            patterns = analysis.metric_patterns or (re.escape(analysis.name) + r"\..+",)
            if any(re.fullmatch(p, t.metric) for p in patterns):
                ok = True
                break
        if not ok:
            for analysis in selected:
                examples += [p.replace("\\", "") for p in analysis.metric_patterns[:3]]
            names = ", ".join(a.name for a in selected) or "none"
            hint = f"; aliases look like: {', '.join(examples[:6])}" if examples else ""
            raise MetricError(f"gate: metric '{t.metric}' is not produced by the selected analyses ({names}){hint}; "
                              "dotted report paths start with 'analyses.'")


def resolve(metrics: Mapping[str, Any], metric: str) -> float | None:
    if metric in metrics:
        value = metrics[metric]
        return None if value is None else float(value)
    near = get_close_matches(metric, list(metrics), n=1, cutoff=0.6)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    raise MetricError(f"gate: metric '{metric}' is not in the report{hint}")


def evaluate(report: Mapping[str, Any], thresholds: Iterable[Threshold], *,
             declared: Mapping[str, Any] | None = None, aliases: Mapping[str, str] | None = None,
             allow_incomplete: bool = False) -> dict[str, Any]:
    """Evaluate ``thresholds``; every metric is resolved before any is judged.

    An incomplete report (interrupted, or an analysis that did not finish) adds a
    failing ``report.complete`` check unless ``allow_incomplete``.
    """
    thresholds = list(thresholds)
    metrics = metrics_of(report, declared, aliases)
    values = [resolve(metrics, t.metric) for t in thresholds]
    checks = []
    complete = bool(report.get("complete", True)) and all(
        (s or {}).get("complete", True) is not False for s in (report.get("analyses") or {}).values()
        if isinstance(s, Mapping))
    if not complete:
        checks.append({"metric": "report.complete", "op": "==", "threshold": 1, "value": 0,
                       "passed": bool(allow_incomplete),
                       "note": "allowed by --allow-incomplete" if allow_incomplete else
                               "the report is incomplete; pass --allow-incomplete to gate it anyway"})
    for t, value in zip(thresholds, values):
        checks.append({"metric": t.metric, "op": t.op, "threshold": t.value,
                       "value": value, "passed": passes(value, t.kind, t.value)})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
