"""Run analyses from CLI values: config → settings → plan → context → report → outputs."""

from __future__ import annotations

import os
from typing import Any, Mapping

from robaudit.cli.console import Diagnostics, stdout_console
from robaudit.config import FileConfig, load_config
from robaudit.errors import UsageError


def make_plan(names: list[str], cfg: FileConfig, cli_options: Mapping[str, Mapping[str, Any]],
              base: Mapping[str, Mapping[str, Any]] | None = None):
    """Validated plan: options = base (profile) ← config ← CLI, for each analysis."""
    from robaudit import analyses
    from robaudit.engine import Plan

    for name in cfg.analyses:  # unknown names in the config fail before any work
        analyses.get(name)
    plan = Plan()
    for name in names:
        analysis = analyses.get(name)
        fields = {f.name: f for f in analysis.option_fields()}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, value in (base or {}).get(name, {}).items():
            values[key] = value
            sources[key] = f"profile default analyses.{name}.{key}"
        for key, value in cfg.analyses.get(name, {}).items():
            values[key.replace("-", "_")] = value
            sources[key.replace("-", "_")] = f"{cfg.path}: analyses.{name}.{key}"
        for key, value in cli_options.get(name, {}).items():
            values[key] = value
            f = fields.get(key)
            flag = (f.metadata.get("flag") if f is not None else None) or "--" + key.replace("_", "-")
            sources[key] = flag
        plan.steps.append((analysis, analysis.make_options(values, sources=sources)))
    return plan


def execute(*, command: str, names: list[str], cli_settings: Mapping[str, Any],
            cli_options: Mapping[str, Mapping[str, Any]], thresholds: list | None = None,
            profile_options: Mapping[str, Mapping[str, Any]] | None = None,
            cfg: FileConfig | None = None, profile: str | None = None) -> int:
    """The whole run for ``names``; returns the exit code (0, or 1 on a failed gate)."""
    from robaudit.settings import build_settings

    cfg = cfg if cfg is not None else load_config(cli_settings.get("config"))
    settings = build_settings(cli_settings, cfg.settings, cfg.path)
    plan = make_plan(names, cfg, cli_options, profile_options)
    if not plan.steps:
        raise UsageError("no analyses selected")
    if thresholds:
        from robaudit.gate import check_known

        check_known(thresholds, [analysis for analysis, _ in plan.steps])
    check_output_paths(settings, plan)
    from robaudit import dist

    shard = dist.detect()
    # ranks other than 0 are silent apart from errors (which name their rank)
    diag = Diagnostics(quiet=settings.quiet or not shard.leader)
    if settings.unsafe_load:
        diag.warn("--unsafe-load: unpickling a full module runs code from the file; use only files you trust")

    from robaudit.engine import build_context, run_plan
    from robaudit.report.build import make_report

    settings = _rank_device(settings, shard)
    dist.init(shard, backend=settings.dist_backend, device_kind=settings.device.split(":")[0])
    try:
        return _execute(command, settings, plan, thresholds, diag, shard, build_context, run_plan, make_report,
                        profile)
    finally:
        dist.shutdown()


def _rank_device(settings, shard):
    """Under torchrun each rank uses cuda:LOCAL_RANK when CUDA is there and the device allows it."""
    import dataclasses

    if not shard.active or settings.device not in ("auto", "cuda"):
        return settings
    import torch

    if torch.cuda.is_available():
        return dataclasses.replace(settings, device=f"cuda:{shard.local_rank}")
    return settings


def check_model(ctx) -> None:
    """Once, before any analysis: labels fit the model, logits are finite, and the input gradient is usable.

    One forward and one backward pass on the first two samples (random inputs without data);
    a model that fails here fails with one line and exit 3 instead of deep inside an analysis.
    """
    import torch

    from robaudit.errors import ModelLoadError
    from robaudit.models.checks import check_differentiable

    if ctx.data is not None:
        from robaudit.data import check_labels

        check_labels(ctx.data, int(ctx.model.num_classes))
        x = ctx.data.images(slice(0, 2), device=ctx.device, dtype=ctx.dtype)
    else:
        gen = torch.Generator().manual_seed(ctx.seed)
        x = torch.rand(2, *ctx.model.input_shape, generator=gen).to(device=ctx.device, dtype=ctx.dtype)
    from robaudit.models.guard import preserved

    with preserved(ctx.model.module, eval=True):
        with torch.no_grad():
            logits = ctx.model.module(x)
        if isinstance(logits, torch.Tensor) and logits.is_floating_point() and not torch.isfinite(logits).all():
            where = "the first samples of the data" if ctx.data is not None else "random inputs"
            raise ModelLoadError(f"the model's logits are non-finite (NaN/Inf) on {where}; nothing can be measured "
                                 "on a model that outputs NaN or Inf")
        check_differentiable(ctx.model.module, x, seed=ctx.seed)


def fingerprint(settings, plan, model_sha: str | None) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint."""
    import dataclasses
    import json

    keep = ("model", "arch", "mean", "std", "input_shape", "select", "data", "data_root", "split", "limit",
            "indices", "batch_size", "device", "seed", "dtype")
    out: dict[str, Any] = {k: getattr(settings, k) for k in keep}
    out["model_sha256"] = model_sha
    for analysis, options in plan.steps:
        out[f"analyses.{analysis.name}"] = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return json.loads(json.dumps(out, default=lambda v: getattr(v, "value", str(v))))


def _execute(command, settings, plan, thresholds, diag, shard, build_context, run_plan, make_report,
             profile: str | None = None) -> int:
    from robaudit import dist

    ctx = build_context(settings, plan, progress=diag.progress, warn=diag.warn, note=diag.note)
    check_model(ctx)
    ctx.shard = shard
    if settings.checkpoint_dir:
        ctx.checkpoint = dist.Checkpoint(settings.checkpoint_dir, fingerprint(settings, plan, ctx.model.sha256),
                                         every=settings.checkpoint_every)
        if shard.leader:
            ctx.checkpoint.open()
        dist.all_gather(shard, None)  # the others wait until rank 0 has checked the directory
        if not shard.leader:
            ctx.checkpoint.open()
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
    if not shard.leader:  # rank 0 alone writes, prints and gates
        return 130 if interrupted else 0
    report = make_report(command=command, ctx=ctx, settings=settings, sections=sections, timings=timings,
                         warnings=diag.warnings, complete=complete)
    report["environment"]["world_size"] = shard.world_size
    if profile is not None:
        report["profile"] = profile
    if thresholds:
        report["gate"] = gate_of(report, thresholds, interrupted=interrupted)
    emit(report, settings, plan, diag)
    if interrupted:
        return 130
    if report.get("gate") and not report["gate"]["passed"]:
        return 1
    return 0


def gate_of(report: dict[str, Any], thresholds: list, *, interrupted: bool = False) -> dict[str, Any]:
    """The gate of a finished run; an interrupted run's gate always fails (metrics may be missing)."""
    from robaudit.gate import MetricError, evaluate
    from robaudit.report import metrics

    try:
        return evaluate(report, thresholds, declared=metrics.declared(report), aliases=metrics.aliases(report))
    except MetricError:
        if not interrupted:
            raise
        return {"passed": False, "checks": [{"metric": "report.complete", "op": "==", "threshold": 1, "value": 0,
                                             "passed": False, "note": "interrupted before every metric was computed"}]}


def check_output_paths(settings, plan) -> None:
    """Refuse unusable output paths before any computation (nothing finished is lost later)."""
    files = [("--output", settings.output), ("--markdown", settings.markdown), ("--html", getattr(settings, "html", None))]
    for analysis, options in plan.steps:
        if getattr(options, "plot", None):
            files.append((f"{analysis.name} --plot", options.plot))
    for flag, path in files:
        if path is None:
            continue
        if os.path.isdir(path):
            raise UsageError(f"{flag}: {path!r} is a directory; expected a file path")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"{flag}: the directory {parent!r} does not exist")
        if not os.access(parent, os.W_OK) and not (os.path.exists(path) and os.access(path, os.W_OK)):
            raise UsageError(f"{flag}: cannot write to {parent!r} (permission denied)")
    if settings.plots is not None:
        if os.path.exists(settings.plots) and not os.path.isdir(settings.plots):
            raise UsageError(f"--plots: {settings.plots!r} exists and is not a directory")
        parent = os.path.dirname(os.path.abspath(settings.plots))
        if not os.path.isdir(parent):
            raise UsageError(f"--plots: the directory {parent!r} does not exist")


def emit(report: dict[str, Any], settings, plan, diag: Diagnostics) -> None:
    """Write the report's outputs: JSON file, stdout (table or JSON), Markdown, plots."""
    from robaudit.report.io import dumps, write_report, write_text_atomic

    if settings.output:
        write_report(settings.output, report)
        diag.note(f"report written to {settings.output}")
    if settings.json:
        stdout_console().file.write(dumps(report))
    else:
        print_report(report, wide=getattr(settings, "wide", False))
    if settings.markdown:
        from robaudit.report.markdown import to_markdown

        write_text_atomic(settings.markdown, to_markdown(report), "--markdown")
        diag.note(f"Markdown summary written to {settings.markdown}")
    for analysis, options in plan.steps:
        section = report["analyses"].get(analysis.name)
        if section is None:
            continue
        if analysis.plot is None:
            if settings.plots:  # --plots promises a plot per analysis: say why there is none
                diag.note(f"--plots: {analysis.name} has nothing to plot")
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
    if getattr(settings, "html", None):
        from robaudit.report.html import to_html

        write_text_atomic(settings.html, to_html(report), "--html")
        diag.note(f"HTML report written to {settings.html}")


def print_report(report: dict[str, Any], *, wide: bool = False) -> None:
    """The report's tables on stdout: never cut (compact at a narrow terminal unless ``wide``)."""
    from robaudit.report.terminal import print_renderables, render_report

    print_renderables(render_report(report), stdout_console(), wide=wide)
