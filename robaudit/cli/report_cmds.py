"""``audit``, ``gate``, ``show`` and ``compare``: commands around the report."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, List, Optional

import typer

AUDIT_HELP = ("Run several analyses into one report, then evaluate the gate "
              "(exit 1 when a threshold is violated). With no arguments: the embedded default.")
GATE_HELP = "Evaluate gate thresholds on an existing report, without recomputing (exit 1 on failure)."
SHOW_HELP = "Render a JSON report exactly as the run that wrote it printed it."
COMPARE_HELP = "Compare the metrics of two reports side by side, with deltas."

PROFILES: dict[str, dict[str, Any]] = {
    # Common settings a profile implies (below config and CLI in precedence).
    "quick": {"limit": 256},
    "standard": {"limit": 1000},
    "full": {},
}

AUDIT_PARAMS = [
    inspect.Parameter("profile", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--profile", "-p", help="quick (CI, 256 samples), standard (default, 1,000 samples) or full (all samples, all analyses).", rich_help_panel="Audit")]),
    inspect.Parameter("analyses", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--analyses", "-a", help="Comma-separated analyses to run (default: those in the config, else the profile's).", rich_help_panel="Audit")]),
]


def audit(typed: dict[str, Any]) -> int:
    """Body of ``robaudit audit`` (``typed`` = the values the user gave)."""
    from robaudit import analyses
    from robaudit.cli.run import execute
    from robaudit.config import load_config
    from robaudit.errors import UsageError
    from robaudit.gate import ABOVE, BELOW, parse_threshold, thresholds_from

    cfg = load_config(typed.get("config"))
    profile = typed.pop("profile", None) or cfg.profile or "standard"
    if profile not in PROFILES:
        raise UsageError(f"--profile: expected one of {', '.join(PROFILES)}, got {profile!r}")
    requested = typed.pop("analyses", None)
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
    elif cfg.analyses:
        names = list(cfg.analyses)
    else:
        names = [n for n in analyses.available() if profile in analyses.get(n).profiles]
    for name in names:
        analyses.get(name)  # unknown names fail (exit 2) before any work
    order = list(analyses.REGISTRY)
    names = sorted(set(names), key=order.index)
    profile_options = {n: dict(analyses.get(n).profiles.get(profile, {})) for n in names}
    thresholds = thresholds_from(cfg.gate)
    thresholds += [parse_threshold(t, ABOVE) for t in typed.pop("fail_above", None) or []]
    thresholds += [parse_threshold(t, BELOW) for t in typed.pop("fail_below", None) or []]
    file_settings = {**PROFILES[profile], **cfg.settings}
    from dataclasses import replace

    cfg = replace(cfg, settings=file_settings)
    return execute(command="audit", names=names, cli_settings=typed, cli_options={},
                   thresholds=thresholds, profile_options=profile_options, cfg=cfg)


def gate(
    report: Annotated[str, typer.Argument(help="A JSON report written by robaudit (-o).")],
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML config whose gate: section holds thresholds.")] = None,
    fail_above: Annotated[Optional[List[str]], typer.Option("--fail-above", help="Fail when METRIC > VALUE (repeatable).")] = None,
    fail_below: Annotated[Optional[List[str]], typer.Option("--fail-below", help="Fail when METRIC < VALUE (repeatable).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the gate result as JSON.")] = False,
    list_metrics: Annotated[bool, typer.Option("--list-metrics", help="List the metrics the report declares (name, value, which way is better) and exit.")] = False,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Gate a report marked incomplete (interrupted) instead of failing it.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> int:
    import json as _json

    from rich.text import Text

    from robaudit.cli.console import stdout_console
    from robaudit.config import load_config
    from robaudit.errors import UsageError
    from robaudit.gate import ABOVE, BELOW, evaluate, parse_threshold, thresholds_from
    from robaudit.numfmt import fmt
    from robaudit.report import metrics
    from robaudit.report.io import read_report
    from robaudit.report.terminal import gate_table

    data = read_report(report)
    console = stdout_console()
    declared = metrics.declared(data)
    if list_metrics:
        width = max((len(n) for n in declared), default=0)
        for name, metric in declared.items():
            better = getattr(metric.better, "value", metric.better)
            console.print(Text(f"{name:<{width}}  {fmt(metric.value):>10}  ({better} is better)"
                               if better != "neutral" else f"{name:<{width}}  {fmt(metric.value):>10}  (neutral)"),
                          soft_wrap=True)
        return 0
    cfg = load_config(config)
    thresholds = thresholds_from(cfg.gate)
    thresholds += [parse_threshold(t, ABOVE) for t in fail_above or []]
    thresholds += [parse_threshold(t, BELOW) for t in fail_below or []]
    if not thresholds:
        raise UsageError("gate: no thresholds: pass --fail-above/--fail-below or a --config with a gate: section")
    result = evaluate(data, thresholds, declared=declared, aliases=metrics.aliases(data),
                      allow_incomplete=allow_incomplete)
    if json:
        console.file.write(_json.dumps(result, indent=2) + "\n")
    else:
        console.print(gate_table(result))
    return 0 if result["passed"] else 1


def show(
    report: Annotated[str, typer.Argument(help="A JSON report written by robaudit (-o).")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the Markdown summary instead of tables.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> int:
    from robaudit.cli.console import stdout_console
    from robaudit.cli.run import print_report
    from robaudit.report.io import read_report

    data = read_report(report)
    if markdown:
        from robaudit.report.markdown import to_markdown

        stdout_console().file.write(to_markdown(data))
    else:
        print_report(data)
    return 0


def compare(
    a: Annotated[str, typer.Argument(help="Baseline report (e.g. the last release).")],
    b: Annotated[str, typer.Argument(help="New report.")],
    fail_on_regression: Annotated[Optional[float], typer.Option("--fail-on-regression", metavar="PCT", help="Exit 1 when a robustness metric got worse by more than PCT percent.")] = None,
    all_metrics: Annotated[bool, typer.Option("--all", help="Show every shared metric, not only the headline ones.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> int:
    import json as _json

    from robaudit.cli.console import stdout_console
    from robaudit.errors import UsageError
    from robaudit.report.compare import compare_reports, render_comparison
    from robaudit.report.io import read_report

    if fail_on_regression is not None and fail_on_regression < 0:
        raise UsageError(f"--fail-on-regression: expected a percentage >= 0, got {fail_on_regression}")
    result = compare_reports(read_report(a), read_report(b), fail_on_regression=fail_on_regression,
                             headline_only=not all_metrics)
    console = stdout_console()
    if json:
        console.file.write(_json.dumps(result, indent=2) + "\n")
    else:
        for renderable in render_comparison(result):
            console.print(renderable)
    return 1 if result.get("regressions") else 0
