"""The declared metrics of a report: each analysis says what its numbers are and which way is better.

The gate, ``compare``, Markdown, HTML and ``gate --list-metrics`` read metrics
only through here, so a metric's name and direction live in one place: next to
the analysis that computes it.
"""

from __future__ import annotations

from typing import Any, Mapping

from robaudit.analyses.base import Metric


def declared(report: Mapping[str, Any]) -> dict[str, Metric]:
    """Canonical name → :class:`Metric` for every analysis section of ``report`` this version knows."""
    from robaudit import analyses
    from robaudit.errors import UsageError

    out: dict[str, Metric] = {}
    for name, section in (report.get("analyses") or {}).items():
        try:
            analysis = analyses.get(name)
        except UsageError:
            continue
        if isinstance(section, Mapping):
            out.update(analysis.metrics(section))
    return out


def aliases(report: Mapping[str, Any]) -> dict[str, str]:
    """Alias → canonical name (e.g. decimal spellings of an eps), accepted by the gate only."""
    from robaudit import analyses
    from robaudit.errors import UsageError

    out: dict[str, str] = {}
    for name, section in (report.get("analyses") or {}).items():
        try:
            analysis = analyses.get(name)
        except UsageError:
            continue
        if analysis.aliases is not None and isinstance(section, Mapping):
            out.update(analysis.aliases(section))
    return out
