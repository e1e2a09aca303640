"""The engine behind every command: load once, run analyses, assemble one report.

``robaudit norms`` is ``run_plan`` with one analysis; ``robaudit audit`` is the
same with several. So a single command's report section and the audit's are
produced by the same code from the same seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from robaudit.analyses.base import Analysis
from robaudit.context import AuditContext, null_progress
from robaudit.errors import DataError
from robaudit.settings import Settings


@dataclass
class Plan:
    """Which analyses to run, with validated options, in report order."""

    steps: list[tuple[Analysis, Any]] = field(default_factory=list)

    @property
    def needs_data(self) -> bool:
        return any(a.needs_data for a, _ in self.steps)


def load_model_for(settings: Settings, device: Any):
    from robaudit.models import load_model

    return load_model(settings.model, arch=settings.arch, mean=settings.mean, std=settings.std,
                      input_shape=settings.input_shape, select=settings.select,
                      unsafe_load=settings.unsafe_load, device=device)


def load_data_for(settings: Settings, model, *, needed: bool):
    """The run's dataset, or None when no analysis needs it and none was asked for.

    Without --data, the embedded Fashion-MNIST sample is used when its shape
    fits the model; otherwise analyses that need data ask for --data.
    """
    from robaudit.data import check_compatible, load_data

    if not settings.data_explicit and not needed:
        return None
    data = load_data(settings.data, root=settings.data_root, split=settings.split,
                     limit=settings.limit, indices=settings.indices,
                     download=settings.download)
    try:
        check_compatible(data, model.input_shape, num_classes=model.num_classes)
    except DataError:
        if settings.data_explicit or needed:
            raise
        return None
    return data


def build_context(settings: Settings, plan: Plan, *, progress=null_progress,
                  warn: Callable[[str], None] = lambda m: None) -> AuditContext:
    import torch

    from robaudit.device import resolve_device

    device = resolve_device(settings.device)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    model = load_model_for(settings, device)
    if dtype == torch.float64:
        model.module.double()
    data = load_data_for(settings, model, needed=plan.needs_data)
    return AuditContext(model=model, data=data, device=device, dtype=dtype, seed=settings.seed,
                        batch_size=settings.batch_size, progress=progress, warn=warn)


def run_plan(ctx: AuditContext, plan: Plan) -> tuple[dict[str, Any], dict[str, float]]:
    """Run each analysis in order; return (sections, seconds per analysis).

    An analysis that raises stops the run (exit 3 in the CLI); KeyboardInterrupt
    propagates with what finished so far attached as ``partial``.
    """
    sections: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for analysis, options in plan.steps:
        start = time.perf_counter()
        try:
            sections[analysis.name] = _run_one(ctx, analysis, options)
        except KeyboardInterrupt as exc:
            # Keep what finished; an analysis may attach its own partial section.
            partial = getattr(exc, "partial_section", None)
            if partial is not None:
                sections[analysis.name] = {**partial, "complete": False}
                timings[analysis.name] = round(time.perf_counter() - start, 4)
            exc.partial = (sections, timings)  # type: ignore[attr-defined]
            raise
        timings[analysis.name] = round(time.perf_counter() - start, 4)
    return sections, timings


def _run_one(ctx: AuditContext, analysis: Analysis, options: Any) -> dict[str, Any]:
    """One analysis; under torchrun a whole-model analysis runs on rank 0 and is broadcast."""
    shard = ctx.shard
    if shard is None or not shard.active or analysis.sharded:
        return analysis.run(ctx, options)
    from robaudit import dist

    if shard.leader:
        before = dict(ctx.cache)
        try:
            section = analysis.run(ctx, options)
        except Exception as exc:
            dist.broadcast(shard, dist.failure(shard, exc))
            raise
        new_cache = {k: v for k, v in ctx.cache.items() if k not in before or before[k] is not v}
        dist.broadcast(shard, (section, new_cache))
        return section
    section, new_cache = dist.broadcast(shard, None)
    ctx.cache.update(new_cache)
    return section


__all__ = ["Plan", "build_context", "run_plan", "load_model_for", "load_data_for"]
