"""One self-contained HTML file per report: header, gate, every analysis's tables and plots.

Built from the JSON report alone (like ``render_report``), so ``robaudit show
report.json --html FILE`` writes the same page as the run. The tables are the
analyses' own Rich tables turned into ``<table>`` elements; plots are the
analyses' own ``plot`` PNGs, embedded as base64. Nothing is fetched: no scripts,
fonts or stylesheets from the network, so the file opens from a CI artifact.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from typing import Any, Iterable, Mapping

from robaudit.numfmt import fmt

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
     color:#1d2330;padding:0 1rem;line-height:1.4}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:2px solid #dde3ec;
     padding-bottom:.2rem} h3{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #dde3ec;padding:.2rem .55rem;white-space:nowrap}
th{background:#f2f5f9;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;padding:.2rem 0}
caption.note{caption-side:bottom;font-weight:normal;color:#5b6578;white-space:normal;max-width:60rem}
dl.head{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem;margin:.5rem 0}
dl.head dt{font-weight:600} dl.head dd{margin:0}
.pass{color:#137333;font-weight:700} .fail{color:#b3261e;font-weight:700}
.dim{color:#5b6578} .warn{color:#8a5a00} .bad{color:#b3261e} .good{color:#137333} .bold{font-weight:600}
.status{display:inline-block;padding:.1rem .6rem;border-radius:.3rem;color:#fff}
.status.pass{background:#137333} .status.fail{background:#b3261e}
img{max-width:100%;border:1px solid #dde3ec;margin:.5rem 0}
p{margin:.3rem 0} code{font-size:.85rem}
nav.toc{margin:.6rem 0 0;font-size:.9rem} nav.toc a{color:#1a56b3;text-decoration:none}
details{margin:.4rem 0} summary{cursor:pointer;color:#5b6578;font-size:.85rem}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _css_class(style: Any) -> str:
    """A class for a Rich style: the few colours robaudit's renderers use, by meaning."""
    text = str(style or "")
    out = []
    if "red" in text:
        out.append("bad")
    elif "green" in text:
        out.append("good")
    elif "yellow" in text:
        out.append("warn")
    if "dim" in text:
        out.append("dim")
    if "bold" in text:
        out.append("bold")
    return " ".join(out)


def _text_of(console, cell: Any):
    """A cell or line as rich Text (strings in Rich tables are markup)."""
    from rich.text import Text

    if isinstance(cell, Text):
        return cell
    if isinstance(cell, str):
        return console.render_str(cell)
    return None


def _span(text) -> str:
    """Text with its spans' colours as classes."""
    plain = text.plain
    if not text.spans and not text.style:
        return _e(plain)
    base = _css_class(text.style)
    parts, pos = [], 0
    for span in sorted(text.spans, key=lambda s: s.start):
        if span.start < pos:
            continue
        parts.append(_e(plain[pos:span.start]))
        cls = _css_class(span.style)
        chunk = _e(plain[span.start:span.end])
        parts.append(f'<span class="{cls}">{chunk}</span>' if cls else chunk)
        pos = span.end
    parts.append(_e(plain[pos:]))
    inner = "".join(parts)
    return f'<span class="{base}">{inner}</span>' if base else inner


def _table(console, table) -> str:
    """A Rich Table as an HTML table (every column, nothing cut)."""
    out = ["<table>"]
    if table.title:
        title = _text_of(console, table.title)
        out.append(f"<caption>{_span(title) if title is not None else _e(table.title)}</caption>")
    if table.show_header:
        heads = "".join(f"<th>{_e(_plain(console, c.header))}</th>" for c in table.columns)
        out.append(f"<thead><tr>{heads}</tr></thead>")
    out.append("<tbody>")
    cells = [list(c._cells) for c in table.columns]  # rich keeps a table's cells on its columns
    for i, row in enumerate(table.rows):
        row_cls = _css_class(row.style)
        tds = []
        for column, col_cells in zip(table.columns, cells):
            cell = col_cells[i] if i < len(col_cells) else ""
            text = _text_of(console, cell)
            inner = _span(text) if text is not None else _e(_plain(console, cell))
            num = ' class="num"' if column.justify == "right" else ""
            tds.append(f"<td{num}>{inner}</td>")
        out.append(f'<tr class="{row_cls}">' + "".join(tds) + "</tr>" if row_cls else "<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody>")
    if table.caption:
        out.append(f'<caption class="note">{_e(_plain(console, table.caption))}</caption>')
    out.append("</table>")
    return "".join(out)


def _plain(console, renderable: Any) -> str:
    text = _text_of(console, renderable)
    if text is not None:
        return text.plain
    return _export_text(console, renderable)


def _export_text(console, renderable: Any) -> str:
    from rich.console import Console

    rec = Console(record=True, width=200, file=io.StringIO(), emoji=False)
    rec.print(renderable)
    return rec.export_text()


def renderables_html(renderables: Iterable[Any]) -> str:
    """Rich renderables (an analysis's ``render`` output) as HTML: tables as tables, lines as paragraphs."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200, file=io.StringIO(), emoji=False)
    parts = []
    for r in renderables:
        if isinstance(r, Table):
            if r.columns and not r.show_header and r.box is None:  # a grid: key/value lines
                parts.append(f"<pre>{_e(_export_text(console, r))}</pre>")
            else:
                parts.append(_table(console, r))
            continue
        text = _text_of(console, r)
        if text is not None:
            parts.append(f"<p>{_span(text)}</p>")
        else:
            parts.append(f"<pre>{_e(_export_text(console, r))}</pre>")
    return "\n".join(parts)


def _header(report: Mapping[str, Any]) -> str:
    model, data, env = report.get("model") or {}, report.get("data") or {}, report.get("environment") or {}
    shape = "×".join(str(s) for s in model.get("input_shape") or [])
    where = model.get("path") or ("(embedded sample)" if model.get("embedded") else "(in memory)")
    rows = [("model", f"{where} [{model.get('format')}], {model.get('num_classes')} classes, input {shape}")]
    if data:
        rows.append(("data", f"{data.get('name')} ({data.get('split')}), n={data.get('n')}"))
    rows.append(("run", f"robaudit {(report.get('tool') or {}).get('version')} · torch {env.get('torch')} · "
                        f"{env.get('device')} · {env.get('dtype')} · seed {env.get('seed')}"))
    if report.get("created"):
        rows.append(("created", report["created"]))
    if report.get("command"):
        rows.append(("command", report["command"]))
    out = ['<dl class="head">'] + [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows] + ["</dl>"]
    if not report.get("complete", True):
        out.append('<p class="bad bold">INCOMPLETE (interrupted): the sections below are what finished</p>')
    return "\n".join(out)


def _gate(gate: Mapping[str, Any], canonical: Mapping[str, str]) -> str:
    passed = gate.get("passed")
    out = [f'<h2 id="gate">gate <span class="status {"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span></h2>',
           "<table><thead><tr><th>metric</th><th>value</th><th>condition</th><th>result</th></tr></thead><tbody>"]
    for c in gate.get("checks") or []:
        ok = c.get("passed")
        out.append(f"<tr><td><code>{_e(canonical.get(c.get('metric'), c.get('metric')))}</code></td><td class=\"num\">{_e(fmt(c.get('value')))}</td>"
                   f"<td>{_e(c.get('op'))} {_e(fmt(c.get('threshold')))}</td>"
                   f"<td class=\"{'pass' if ok else 'fail'}\">{'pass' if ok else 'FAIL'}</td></tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return '<p class="dim">no headline metrics</p>'
    # folded: the analysis's own tables come first; the metric names are what the gate reads
    out = [f"<details><summary>{len(metrics)} metrics (the names <code>gate</code> and <code>compare</code> use)"
           '</summary><table class="metrics"><thead><tr><th>metric</th><th>value</th>'
           "<th>better</th></tr></thead><tbody>"]
    for name, m in metrics.items():
        better = getattr(m.better, "value", m.better)
        unit = f" {m.unit}" if getattr(m, "unit", "") else ""
        out.append(f"<tr><td><code>{_e(name)}</code></td><td class=\"num\">{_e(fmt(m.value))}{_e(unit)}</td>"
                   f"<td>{_e(better)}</td></tr>")
    out.append("</tbody></table></details>")
    return "\n".join(out)


def plot_png(analysis: Any, section: Mapping[str, Any]) -> bytes | None:
    """The analysis's plot as PNG bytes (None when it has no plot)."""
    if analysis.plot is None:
        return None
    fd, path = tempfile.mkstemp(suffix=".png", prefix="robaudit-")
    os.close(fd)
    try:
        analysis.plot(section, path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def to_html(report: Mapping[str, Any], *, plots: bool = True) -> str:
    """The whole report as one HTML document (UTF-8 text, no external resources)."""
    from robaudit import analyses
    from robaudit.errors import UsageError

    gate = report.get("gate")
    status = "" if not gate else (" — gate PASS" if gate.get("passed") else " — gate FAIL")
    body = [f"<h1>robaudit report{_e(status)}</h1>", _header(report)]
    links = ([("gate", "gate")] if gate else []) + [(n, n) for n in report.get("analyses") or {}]
    if report.get("warnings"):
        links.append(("warnings", f"warnings ({len(report['warnings'])})"))
    body.append('<nav class="toc">' + " · ".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t in links) + "</nav>")
    if gate:
        from robaudit.report.terminal import canonical_names

        body.append(_gate(gate, canonical_names(report)))
    timings = (report.get("timings") or {}).get("analyses") or {}
    for name, section in (report.get("analyses") or {}).items():
        took = f' <span class="dim">({timings[name]:.1f} s)</span>' if isinstance(timings.get(name), (int, float)) else ""
        body.append(f'<h2 id="{_e(name)}">{_e(name)}{took}</h2>')
        try:
            analysis = analyses.get(name)
        except UsageError:
            body.append(f'<p class="dim">{_e(name)}: no renderer in this robaudit version</p>')
            continue
        body.append(_metrics_table(analysis.metrics(section) if isinstance(section, Mapping) else {}))
        body.append(renderables_html(analysis.render(section)))
        png = plot_png(analysis, section) if plots else None
        if png is not None:
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<img alt="{_e(name)} plot" src="data:image/png;base64,{data}">')
        elif plots:
            body.append(f'<p class="dim">{_e(name)} has nothing to plot.</p>')
    warnings = report.get("warnings") or []
    if warnings:
        body.append('<h2 id="warnings">warnings</h2><ul>' + "".join(f'<li class="warn">{_e(w)}</li>' for w in warnings)
                    + "</ul>")
    title = f"robaudit report{status}"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")
