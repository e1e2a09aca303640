"""Markdown summary of a report (for CI job summaries such as $GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

from typing import Any, Mapping

from robaudit.numfmt import fmt


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def to_markdown(report: Mapping[str, Any]) -> str:
    """Headline metrics of each analysis, then the gate, as GitHub-flavoured Markdown."""
    from robaudit import analyses
    from robaudit.errors import UsageError

    model, data = report.get("model") or {}, report.get("data") or {}
    gate = report.get("gate")
    status = "" if not gate else (" — gate **PASS**" if gate.get("passed") else " — gate **FAIL**")
    lines = [f"## robaudit report{status}", ""]
    shape = "×".join(str(s) for s in model.get("input_shape") or [])
    lines.append(f"- **model**: `{model.get('path') or ('(embedded sample)' if model.get('embedded') else '(in memory)')}` ({model.get('format')}, "
                 f"{model.get('num_classes')} classes, input {shape})")
    if data:
        lines.append(f"- **data**: {data.get('name')} ({data.get('split')}), n = {data.get('n')}")
    env = report.get("environment") or {}
    lines.append(f"- **run**: robaudit {report.get('tool', {}).get('version')}, torch {env.get('torch')}, "
                 f"{env.get('device')}, seed {env.get('seed')}")
    if not report.get("complete", True):
        lines.append("- **status**: INCOMPLETE (interrupted)")
    timings = (report.get("timings") or {}).get("analyses") or {}
    for name, section in (report.get("analyses") or {}).items():
        lines += ["", f"### {name}" + (f" ({timings[name]:.1f} s)" if name in timings else ""), ""]
        try:
            metrics = analyses.get(name).metrics(section)
        except UsageError:
            metrics = {}
        if not metrics:
            lines.append("_no headline metrics_")
            continue
        lines += [_row(["metric", "value", "better"]), _row(["---", "---:", "---"])]
        lines += [_row([f"`{k}`", fmt(getattr(v, "value", v)), str(getattr(getattr(v, "better", None), "value", "–"))])
                  for k, v in metrics.items()]
    if gate:
        lines += ["", "### gate", "", _row(["metric", "value", "condition", "result"]), _row(["---", "---:", "---", "---"])]
        from robaudit.report.terminal import canonical_names

        canonical = canonical_names(report)
        for c in gate.get("checks", []):
            lines.append(_row([f"`{canonical.get(c['metric'], c['metric'])}`", fmt(c.get("value")), f"{c['op']} {fmt(c['threshold'])}",
                               "pass" if c.get("passed") else "**FAIL**"]))
    for warning in report.get("warnings") or []:
        lines.append(f"\n> warning: {warning}")
    return "\n".join(lines) + "\n"
