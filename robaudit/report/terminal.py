"""Rich rendering of a report, from the JSON alone.

``robaudit show report.json`` and the run that wrote it call the same
``render_report``, so they print the same thing.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from rich.console import Console
from rich.table import Table
from rich.text import Text

from robaudit.numfmt import fmt  # noqa: F401  (re-exported: the one number formatter)

#: Narrowest layout a terminal gets; below it Rich wraps whatever it must.
MIN_WIDTH = 40
_UNBOUNDED = 1_000_000


def natural_width(console: Console, renderable: Any) -> int:
    """Columns ``renderable`` needs so that no cell is wrapped or cut."""
    from rich.measure import Measurement

    options = console.options.update_width(_UNBOUNDED)
    return Measurement.get(console, options, renderable).maximum


def compact_table(console: Console, table: Table, width: int) -> list[str]:
    """Drop columns of ``table`` until it fits ``width``; returns the dropped headers.

    A table fits when every cell can be shown whole: numbers (right-aligned columns) and
    ``no_wrap`` columns at full width, text columns wrapped at spaces. A column goes whole.
    The first column (the row's name) stays; among the others the sparsest goes first (most
    empty cells: optional detail such as bounds that exist for some layers only), ties from the right.
    """
    dropped: list[str] = []
    while len(table.columns) > 2 and min_width(console, table) > width:
        filled = [(sum(1 for c in table.columns[i]._cells if _plain(console, c).strip()), -i)
                  for i in range(1, len(table.columns))]  # rich keeps a table's cells on its columns
        _, neg = min(filled)
        dropped.append(_plain(console, table.columns[-neg].header))
        del table.columns[-neg]
    return dropped


def min_width(console: Console, table: Table) -> int:
    """Narrowest width at which no cell of ``table`` is cut (text columns may wrap at spaces)."""
    from rich.cells import cell_len

    natural, narrow = 0, 0
    for column in table.columns:
        texts = [_plain(console, c) for c in column._cells]
        if table.show_header:
            texts.append(_plain(console, column.header))
        lines = [line for t in texts for line in t.splitlines()] or [""]
        full = max(cell_len(t) for t in lines)
        natural += full
        if column.no_wrap or column.justify == "right":
            narrow += full
        else:
            narrow += max(cell_len(w) for t in lines for w in (t.split() or [""]))
    return natural_width(console, table) - natural + narrow


def _plain(console: Console, cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return console.render_str(cell).plain
    return str(cell)


def layout(renderables: Iterable[Any], console: Console, *, wide: bool = False) -> list:
    """Renderables arranged for ``console``: wide enough or compact, never cut.

    * no terminal and no ``$COLUMNS`` (CI logs, pipes, files), or ``wide``: the console
      is widened to the widest renderable, so no cell is cut;
    * a terminal or ``$COLUMNS``: tables wider than the console lose whole columns
      (named in a note pointing to ``--wide``) instead of cut numbers.
    """
    items = list(renderables)
    fixed = console.is_terminal or bool(os.environ.get("COLUMNS", "").isdigit())
    if wide or not fixed:
        need = max((natural_width(console, r) for r in items), default=0)
        console.width = max(console.width if fixed else 80, need)
        return items
    width = max(console.width, MIN_WIDTH)
    out: list = []
    for r in items:
        out.append(r)
        if isinstance(r, Table):
            dropped = compact_table(console, r, width)
            if dropped:
                out.append(Text(f"({len(dropped)} column(s) hidden at {width} columns: {', '.join(dropped)}; "
                                "pass --wide to show them)", style="dim"))
    return out


def print_renderables(renderables: Iterable[Any], console: Console, *, wide: bool = False) -> None:
    """Print ``renderables`` on ``console`` with :func:`layout`."""
    for r in layout(renderables, console, wide=wide):
        console.print(r)


def header(report: Mapping[str, Any]) -> Table:
    model, data, env = report.get("model") or {}, report.get("data") or {}, report.get("environment") or {}
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    shape = "×".join(str(s) for s in model.get("input_shape") or [])
    # Text, not markup: paths and names come from the user (a '[/bold]' in a path is just text)
    table.add_row("model", Text(f"{model.get('path') or ('(embedded sample)' if model.get('embedded') else '(in memory)')}  "
                                f"[{model.get('format')}]  {model.get('num_classes')} classes, input {shape}"))
    if data:
        table.add_row("data", Text(f"{data.get('name')} ({data.get('split')}), n={data.get('n')}"))
    table.add_row("run", Text(f"robaudit {report.get('tool', {}).get('version')} · torch {env.get('torch')} · "
                              f"{env.get('device')} · {env.get('dtype')} · seed {env.get('seed')}"))
    if not report.get("complete", True):
        table.add_row("status", Text("INCOMPLETE (interrupted): sections below are what finished", style="bold red"))
    return table


def canonical_names(report: Mapping[str, Any]) -> dict[str, str]:
    """Alias → canonical metric name, so displays show each metric by one name (the gate accepts both)."""
    from robaudit.report.metrics import aliases

    try:
        return aliases(report)
    except Exception:  # a report from another version: show names as written
        return {}


def gate_table(gate: Mapping[str, Any], canonical: Mapping[str, str] | None = None) -> Table:
    passed = gate.get("passed")
    title = Text("gate: PASS", style="bold green") if passed else Text("gate: FAIL", style="bold red")
    table = Table(title=title, title_justify="left")
    for col in ("metric", "value", "op", "threshold", "result"):
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for check in gate.get("checks", []):
        ok = check.get("passed")
        name = (canonical or {}).get(check.get("metric"), check.get("metric"))
        table.add_row(Text(str(name)), fmt(check.get("value")), Text(str(check.get("op"))), fmt(check.get("threshold")),
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
        out.append(gate_table(report["gate"], canonical_names(report)))
    return out
