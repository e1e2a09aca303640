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

from robaudit.engine import ALL_SAMPLES  # noqa: E402  (torch-free)

PROFILES: dict[str, dict[str, Any]] = {
    # Common settings a profile implies (below config and CLI in precedence).
    "quick": {"limit": 256},
    "standard": {"limit": 1000},
    "full": {"limit": ALL_SAMPLES},  # every sample, also of a named dataset
}

AUDIT_PARAMS = [
    inspect.Parameter("profile", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--profile", "-p", metavar="quick|standard|full", help="quick (CI, 256 samples), standard (default, 1,000 samples) or full (all samples, all analyses).", rich_help_panel="Audit")]),
    inspect.Parameter("analyses", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--analyses", "-a", metavar="LIST", help="Comma-separated analyses to run (default: those in the config, else the profile's).", rich_help_panel="Audit")]),
    inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[List[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override one config value, validated like the YAML: analyses.NAME.OPTION=VALUE (e.g. analyses.attacks.eps=2/255) or a setting (limit=500). Repeatable; wins over the config and the profile.", rich_help_panel="Audit")]),
]


def parse_sets(items: list[str], names: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--set KEY=VALUE`` items → (settings, {analysis: {option: value}}), each value read as YAML.

    Every item is validated here, with errors that name the ``--set`` item: unknown keys,
    analyses that are not run, and values the option refuses.
    """
    import yaml

    from robaudit import analyses
    from robaudit.config import unknown_key_error
    from robaudit.errors import UsageError
    from robaudit.settings import CONFIG_KEYS

    settings: dict[str, Any] = {}
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set: expected KEY=VALUE such as analyses.attacks.eps=2/255, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UsageError(f"--set {key}: the value {text!r} is not valid YAML") from None
        if isinstance(value, dict):
            raise UsageError(f"--set {key}: expected a single value or a list, got a mapping")
        parts = key.split(".")
        if parts[0] == "analyses":
            if len(parts) != 3:
                raise UsageError(f"--set {key}: expected analyses.NAME.OPTION=VALUE")
            name, opt = parts[1], parts[2].replace("-", "_")
            analysis = analyses.get(name)
            if name not in names:
                raise UsageError(f"--set {key}: {name} is not among the analyses run ({', '.join(names)}); "
                                 f"add it with --analyses")
            fields = [f.name for f in analysis.option_fields()]
            if opt not in fields:
                raise unknown_key_error(f"--set analyses.{name}", parts[2], [f.replace("_", "-") for f in fields])
            # validated now so the error names the --set item, not a flag `audit` does not have
            typed = analysis.make_options({opt: value}, sources={opt: f"--set {key}"})
            options.setdefault(name, {})[opt] = getattr(typed, opt)
        else:
            name = key.replace("-", "_")
            if name not in CONFIG_KEYS:
                raise unknown_key_error("--set", key, ["analyses.NAME.OPTION", *CONFIG_KEYS])
            settings[name] = value
    return settings, options


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
    set_settings, set_options = parse_sets(typed.pop("set_", None) or [], names)
    typed.update(set_settings)
    thresholds = thresholds_from(cfg.gate)
    thresholds += [parse_threshold(t, ABOVE) for t in typed.pop("fail_above", None) or []]
    thresholds += [parse_threshold(t, BELOW) for t in typed.pop("fail_below", None) or []]
    file_settings = {**PROFILES[profile], **cfg.settings}
    from dataclasses import replace

    cfg = replace(cfg, settings=file_settings)
    return execute(command="audit", names=names, cli_settings=typed, cli_options=set_options,
                   thresholds=thresholds, profile_options=profile_options, cfg=cfg, profile=profile)


def gate(
    report: Annotated[str, typer.Argument(metavar="REPORT", help="A JSON report written by robaudit (-o).")],
    config: Annotated[Optional[str], typer.Option("--config", "-c", metavar="PATH", help="YAML config whose gate: section holds thresholds.")] = None,
    fail_above: Annotated[Optional[List[str]], typer.Option("--fail-above", metavar="METRIC=VALUE", help="Fail when METRIC > VALUE (repeatable).")] = None,
    fail_below: Annotated[Optional[List[str]], typer.Option("--fail-below", metavar="METRIC=VALUE", help="Fail when METRIC < VALUE (repeatable).")] = None,
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
        console.print(gate_table(result, metrics.aliases(data)))
    return 0 if result["passed"] else 1


def show(
    report: Annotated[str, typer.Argument(metavar="REPORT", help="A JSON report written by robaudit (-o).")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the Markdown summary instead of tables.")] = False,
    html: Annotated[Optional[str], typer.Option("--html", metavar="FILE", help="Write the report as one self-contained HTML file (tables, gate, embedded plots) to FILE.")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Show every table column even when the terminal is narrower.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> int:
    from robaudit.cli.console import Diagnostics, stdout_console
    from robaudit.cli.run import print_report
    from robaudit.report.io import read_report

    data = read_report(report)
    if html is not None:
        from robaudit.report.html import to_html
        from robaudit.report.io import resolve_output, write_text_atomic

        resolve_output(html, "--html")  # refuse an unusable path before rendering plots
        write_text_atomic(html, to_html(data), "--html")
        Diagnostics().note(f"HTML report written to {html}")
    if markdown:
        from robaudit.report.markdown import to_markdown

        stdout_console().file.write(to_markdown(data))
    else:
        print_report(data, wide=wide)
    return 0


def compare(
    a: Annotated[str, typer.Argument(metavar="A", help="Baseline report (e.g. the last release).")],
    b: Annotated[str, typer.Argument(metavar="B", help="New report.")],
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
        from robaudit.report.terminal import print_renderables

        print_renderables(render_comparison(result), console)  # never cut: metric names are what gates use
    return 1 if result.get("regressions") else 0
