"""The declared metrics of a report: each analysis says what its numbers are and which way is better.

The gate, ``compare``, Markdown, HTML and ``gate --list-metrics`` read metrics
only through here, so a metric's name and direction live in one place: next to
the analysis that computes it.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from robaudit.analyses.base import Analysis, Metric


def _known_sections(report: Mapping[str, Any]) -> Iterator[tuple[Analysis, Mapping[str, Any]]]:
    """(analysis, section) for every section of ``report`` this version knows how to read."""
    from robaudit import analyses
    from robaudit.errors import UsageError

    for name, section in (report.get("analyses") or {}).items():
        try:
            analysis = analyses.get(name)
        except UsageError:
            continue
        if isinstance(section, Mapping):
            yield analysis, section


def declared(report: Mapping[str, Any]) -> dict[str, Metric]:
    """Canonical name → :class:`Metric` for every analysis section of ``report``."""
    out: dict[str, Metric] = {}
    for analysis, section in _known_sections(report):
        out.update(analysis.metrics(section))
    return out


def aliases(report: Mapping[str, Any]) -> dict[str, str]:
    """Alias → canonical name (e.g. decimal spellings of an eps), accepted by the gate only."""
    out: dict[str, str] = {}
    for analysis, section in _known_sections(report):
        if analysis.aliases is not None:
            out.update(analysis.aliases(section))
    return out
