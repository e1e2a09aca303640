"""Compare two reports metric by metric; flag robustness regressions.

Directions come from the metrics the analyses declare (never from names). A
metric that is missing, null or NaN in B but has a value in A is a regression:
a run that lost a number must not pass as an unchanged one.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

IDENTITY = (("model", ("model", "path")), ("model sha256", ("model", "sha256")), ("data", ("data", "name")),
            ("split", ("data", "split")), ("n", ("data", "n")), ("profile", ("profile",)))


def _get(report: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def identity(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a report is of: model, data, n and profile (for the comparison header)."""
    out = {label: _get(report, path) for label, path in IDENTITY}
    if out["model"] is None and (report.get("model") or {}).get("embedded"):
        out["model"] = "(embedded sample)"
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def compare_reports(a: Mapping[str, Any], b: Mapping[str, Any], *, fail_on_regression: float | None = None,
                    headline_only: bool = True) -> dict[str, Any]:
    """Rows {metric, a, b, delta, relative_pct, direction, regression} for the metrics of A.

    A regression is a change in the less-robust direction by more than
    ``fail_on_regression`` percent of |a| (when given), or a value of A that B
    lacks (missing, null or NaN). ``headline_only=False`` also lists every
    numeric report path both share (neutral, never a regression).
    """
    from robaudit.report.metrics import declared

    if fail_on_regression is not None and not (isinstance(fail_on_regression, (int, float))
                                               and math.isfinite(fail_on_regression) and fail_on_regression >= 0):
        from robaudit.errors import UsageError

        raise UsageError(f"--fail-on-regression: expected a finite percentage >= 0, got {fail_on_regression!r}")
    ma, mb = declared(a), declared(b)
    rows = []
    for metric, ea in ma.items():
        eb = mb.get(metric)
        va, vb = _number(ea.value), _number(eb.value) if eb is not None else None
        better = getattr(ea.better, "value", ea.better)
        if va is None:
            continue  # nothing to regress from
        if vb is None:
            rows.append({"metric": metric, "a": va, "b": None, "delta": None, "relative_pct": None,
                         "direction": better, "regression": fail_on_regression is not None and better != "neutral",
                         "missing_in_b": True})
            continue
        delta = vb - va
        rel = (delta / abs(va) * 100.0) if va != 0 else (0.0 if delta == 0 else math.copysign(math.inf, delta))
        worse_pct = -rel if better == "higher" else rel if better == "lower" else None
        regression = fail_on_regression is not None and worse_pct is not None and worse_pct > fail_on_regression
        rows.append({"metric": metric, "a": va, "b": vb, "delta": delta,
                     "relative_pct": rel if math.isfinite(rel) else None,
                     "direction": better, "regression": bool(regression)})
    if not headline_only:
        from robaudit.gate import metrics_of

        pa, pb = metrics_of(a), metrics_of(b)
        for path in pa:
            if path in ma or not path.startswith("analyses.") or path not in pb:
                continue
            va, vb = _number(pa[path]), _number(pb[path])
            if va is None or vb is None:
                continue
            rel = ((vb - va) / abs(va) * 100.0) if va != 0 else None
            rows.append({"metric": path, "a": va, "b": vb, "delta": vb - va, "relative_pct": rel,
                         "direction": "neutral", "regression": False})
    ida, idb = identity(a), identity(b)
    differs = [label for label in ida if label != "model sha256" and ida[label] != idb[label]]
    if ida["model sha256"] and idb["model sha256"] and ida["model sha256"] != idb["model sha256"] \
            and "model" not in differs:
        differs.append("model sha256")
    return {"a": ida["model"], "b": idb["model"], "identity": {"a": ida, "b": idb}, "differs": differs,
            "rows": rows, "only_in_a": [m for m in ma if m not in mb], "only_in_b": [m for m in mb if m not in ma],
            "fail_on_regression": fail_on_regression,
            "regressions": [r["metric"] for r in rows if r["regression"]]}


def render_comparison(result: Mapping[str, Any]) -> list:
    from rich.table import Table
    from rich.text import Text

    from robaudit.numfmt import fmt

    out: list = []
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_column()
    ida, idb = (result.get("identity") or {}).get("a") or {}, (result.get("identity") or {}).get("b") or {}
    head.add_row("", Text("A", style="bold"), Text("B", style="bold"))
    for label in ("model", "data", "split", "n", "profile"):
        style = "bold yellow" if label in result.get("differs", []) else ""
        head.add_row(Text(label), Text(str(ida.get(label, "–")), style=style), Text(str(idb.get(label, "–")), style=style))
    out.append(head)
    if result.get("differs"):
        out.append(Text(f"warning: A and B differ in {', '.join(result['differs'])}: the deltas compare "
                        "different things", style="bold yellow"))
    table = Table(title="compare", title_justify="left")
    table.add_column("metric", no_wrap=True, overflow="fold")
    for col in ("A", "B", "Δ", "Δ %"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("better")
    for r in result["rows"]:
        rel = "–" if r["relative_pct"] is None else f"{r['relative_pct']:+.2f}%"
        if r.get("missing_in_b"):
            rel = "missing in B"
        style = "bold red" if r["regression"] else ""
        table.add_row(Text(r["metric"], style=style), fmt(r["a"]), fmt(r["b"]), fmt(r["delta"]),
                      Text(rel, style=style), r["direction"] or "–")
    out.append(table)
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
