"""Compare two reports metric by metric; flag robustness regressions."""

from __future__ import annotations

import math
from typing import Any, Mapping

# Which way is "more robust", by the metric name's last component.
_HIGHER = ("accuracy", "radius", "distance", "margin")
_LOWER = ("lipschitz", "spectral", "frobenius", "stable_rank", "norm", "success_rate", "gap")


def direction(metric: str) -> str | None:
    """'higher' or 'lower' is better for ``metric``; None when neutral (times, counts)."""
    name = metric.lower()
    if any(w in name for w in ("seconds", "time", "iterations", ".n", "violations")):
        return None
    if any(w in name for w in _HIGHER):
        return "higher"
    if any(w in name for w in _LOWER):
        return "lower"
    return None


def _headline(report: Mapping[str, Any]) -> dict[str, Any]:
    from robaudit import analyses
    from robaudit.errors import UsageError

    out: dict[str, Any] = {}
    for name, section in (report.get("analyses") or {}).items():
        try:
            out.update(analyses.get(name).metrics(section))
        except UsageError:
            continue
    return out


def compare_reports(a: Mapping[str, Any], b: Mapping[str, Any], *, fail_on_regression: float | None = None,
                    headline_only: bool = True) -> dict[str, Any]:
    """Rows {metric, a, b, delta, relative_pct, direction, regression} for metrics in both reports.

    A regression is a change in the less-robust direction by more than
    ``fail_on_regression`` percent of |a| (when given).
    """
    from robaudit.gate import metrics_of

    ma, mb = (_headline(a), _headline(b)) if headline_only else (metrics_of(a), metrics_of(b))
    rows = []
    for metric in [m for m in ma if m in mb]:
        va, vb = ma[metric], mb[metric]
        if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
            continue
        delta = vb - va
        rel = (delta / abs(va) * 100.0) if va not in (0, 0.0) else (0.0 if delta == 0 else math.inf)
        better = direction(metric)
        worse_pct = None
        if better == "higher":
            worse_pct = -rel
        elif better == "lower":
            worse_pct = rel
        regression = (fail_on_regression is not None and worse_pct is not None and worse_pct > fail_on_regression)
        rows.append({"metric": metric, "a": va, "b": vb, "delta": delta,
                     "relative_pct": rel if math.isfinite(rel) else None,
                     "direction": better, "regression": bool(regression)})
    only_a = [m for m in ma if m not in mb]
    only_b = [m for m in mb if m not in ma]
    return {"a": (a.get("model") or {}).get("path"), "b": (b.get("model") or {}).get("path"),
            "rows": rows, "only_in_a": only_a, "only_in_b": only_b,
            "fail_on_regression": fail_on_regression,
            "regressions": [r["metric"] for r in rows if r["regression"]]}


def render_comparison(result: Mapping[str, Any]) -> list:
    from rich.table import Table
    from rich.text import Text

    from robaudit.report.terminal import fmt

    table = Table(title="compare", title_justify="left")
    for col in ("metric", "A", "B", "Δ", "Δ %", "better"):
        table.add_column(col, justify="left" if col in ("metric", "better") else "right")
    for r in result["rows"]:
        rel = "–" if r["relative_pct"] is None else f"{r['relative_pct']:+.2f}%"
        style = "bold red" if r["regression"] else None
        table.add_row(Text(r["metric"], style=style or ""), fmt(r["a"]), fmt(r["b"]), fmt(r["delta"]),
                      Text(rel, style=style or ""), r["direction"] or "–")
    out: list = [table]
    if result["only_in_a"] or result["only_in_b"]:
        out.append(Text(f"only in A: {', '.join(result['only_in_a']) or '–'}; only in B: "
                        f"{', '.join(result['only_in_b']) or '–'}", style="dim"))
    if result.get("fail_on_regression") is not None:
        if result["regressions"]:
            out.append(Text(f"REGRESSION (> {result['fail_on_regression']}%): {', '.join(result['regressions'])}",
                            style="bold red"))
        else:
            out.append(Text(f"no regression beyond {result['fail_on_regression']}%", style="green"))
    return out
