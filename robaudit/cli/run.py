"""Run analyses from CLI values: config → settings → plan → context → report → outputs."""

from __future__ import annotations

import os
from typing import Any, Mapping

from robaudit.cli.console import Diagnostics, stdout_console
from robaudit.config import FileConfig, load_config


def make_plan(names: list[str], cfg: FileConfig, cli_options: Mapping[str, Mapping[str, Any]],
              base: Mapping[str, Mapping[str, Any]] | None = None):
    """Validated plan: options = base (profile) ← config ← CLI, for each analysis."""
    from robaudit import analyses
    from robaudit.audit import Plan

    for name in cfg.analyses:  # unknown names in the config fail before any work
        analyses.get(name)
    plan = Plan()
    for name in names:
        analysis = analyses.get(name)
        values: dict[str, Any] = {}
        values.update((base or {}).get(name, {}))
        values.update({k.replace("-", "_"): v for k, v in cfg.analyses.get(name, {}).items()})
        cli = cli_options.get(name, {})
        if cli:  # CLI values are checked with flag names in messages
            values.update(cli)
        plan.steps.append((analysis, analysis.make_options(values)))
    return plan


def execute(*, command: str, names: list[str], cli_settings: Mapping[str, Any],
            cli_options: Mapping[str, Mapping[str, Any]], thresholds: list | None = None,
            profile_options: Mapping[str, Mapping[str, Any]] | None = None,
            cfg: FileConfig | None = None) -> int:
    """The whole run for ``names``; returns the exit code (0, or 1 on a failed gate)."""
    from robaudit.settings import build_settings

    cfg = cfg if cfg is not None else load_config(cli_settings.get("config"))
    settings = build_settings(cli_settings, cfg.settings)
    plan = make_plan(names, cfg, cli_options, profile_options)
    if thresholds:
        from robaudit.gate import check_known

        check_known(thresholds, [analysis for analysis, _ in plan.steps])
    diag = Diagnostics(quiet=settings.quiet)
    if settings.unsafe_load:
        diag.warn("--unsafe-load: unpickling a full module runs code from the file; use only files you trust")

    from robaudit.audit import build_context, run_plan
    from robaudit.report.build import make_report

    ctx = build_context(settings, plan, progress=diag.progress, warn=diag.warn)
    complete, interrupted = True, False
    try:
        sections, timings = run_plan(ctx, plan)
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "partial", None)
        if partial is None:
            raise
        sections, timings = partial
        complete, interrupted = False, True
        diag.warn("interrupted: writing the finished part of the report, marked incomplete")
    report = make_report(command=command, ctx=ctx, settings=settings, sections=sections, timings=timings,
                         warnings=diag.warnings, complete=complete)
    if thresholds:
        from robaudit.gate import evaluate

        report["gate"] = evaluate(report, thresholds)
    emit(report, settings, plan, diag)
    if interrupted:
        return 130
    if report.get("gate") and not report["gate"]["passed"]:
        return 1
    return 0


def emit(report: dict[str, Any], settings, plan, diag: Diagnostics) -> None:
    """Write the report's outputs: JSON file, stdout (table or JSON), Markdown, plots."""
    from robaudit.report.io import dumps, write_report, write_text_atomic

    if settings.output:
        write_report(settings.output, report)
        diag.note(f"report written to {settings.output}")
    if settings.json:
        stdout_console().file.write(dumps(report))
    else:
        print_report(report)
    if settings.markdown:
        from robaudit.report.markdown import to_markdown

        write_text_atomic(settings.markdown, to_markdown(report))
        diag.note(f"Markdown summary written to {settings.markdown}")
    for analysis, options in plan.steps:
        section = report["analyses"].get(analysis.name)
        if analysis.plot is None or section is None:
            continue
        targets = []
        if getattr(options, "plot", None):
            targets.append(options.plot)
        if settings.plots:
            os.makedirs(settings.plots, exist_ok=True)
            targets.append(os.path.join(settings.plots, f"{analysis.name}.png"))
        for path in targets:
            analysis.plot(section, path)
            diag.note(f"plot written to {path}")


def print_report(report: dict[str, Any]) -> None:
    from robaudit.report.terminal import render_report

    console = stdout_console()
    for renderable in render_report(report):
        console.print(renderable)
