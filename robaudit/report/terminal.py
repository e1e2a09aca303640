"""Rich rendering of a report, from the JSON alone.

``robaudit show report.json`` and the run that wrote it call the same
``render_report``, so they print the same thing.
"""

from __future__ import annotations

from typing import Any, Mapping

from rich.table import Table
from rich.text import Text


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for humans: 4 significant digits, '–' for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def header(report: Mapping[str, Any]) -> Table:
    model, data, env = report.get("model") or {}, report.get("data") or {}, report.get("environment") or {}
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    shape = "×".join(str(s) for s in model.get("input_shape") or [])
    table.add_row("model", f"{model.get('path') or ('(embedded sample)' if model.get('embedded') else '(in memory)')}  [{model.get('format')}]  "
                  f"{model.get('num_classes')} classes, input {shape}")
    if data:
        table.add_row("data", f"{data.get('name')} ({data.get('split')}), n={data.get('n')}")
    table.add_row("run", f"robaudit {report.get('tool', {}).get('version')} · torch {env.get('torch')} · "
                  f"{env.get('device')} · {env.get('dtype')} · seed {env.get('seed')}")
    if not report.get("complete", True):
        table.add_row("status", Text("INCOMPLETE (interrupted): sections below are what finished", style="bold red"))
    return table


def gate_table(gate: Mapping[str, Any]) -> Table:
    passed = gate.get("passed")
    title = Text("gate: PASS", style="bold green") if passed else Text("gate: FAIL", style="bold red")
    table = Table(title=title, title_justify="left")
    for col in ("metric", "value", "op", "threshold", "result"):
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for check in gate.get("checks", []):
        ok = check.get("passed")
        table.add_row(check.get("metric"), fmt(check.get("value")), check.get("op"), fmt(check.get("threshold")),
                      Text("pass", style="green") if ok else Text("FAIL", style="bold red"))
    return table


def render_report(report: Mapping[str, Any]) -> list:
    """All renderables of a report, in order: header, each analysis, gate."""
    from robaudit import analyses

    out: list = [header(report)]
    for name, section in (report.get("analyses") or {}).items():
        try:
            analysis = analyses.get(name)
        except Exception:
            out.append(Text(f"[{name}: no renderer in this robaudit version]", style="dim"))
            continue
        out.extend(analysis.render(section))
    for warning in report.get("warnings") or []:
        out.append(Text(f"warning: {warning}", style="yellow"))
    if report.get("gate"):
        out.append(gate_table(report["gate"]))
    return out
