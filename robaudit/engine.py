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

    @property
    def uses_data(self) -> list[str]:
        """Analyses that run without data but do more with it (layers: lower bound, certified radii).

        They get the default data (the embedded sample) when it fits the model, as ``--help`` says.
        """
        # an option that only applies to data marks such an analysis (radii: certified accuracy)
        return [a.name for a, _ in self.steps
                if not a.needs_data and any(f.name == "radii" for f in a.option_fields())]


#: Default --limit for a named standard dataset (``--data mnist``): the standard profile's sample count.
NAMED_DATA_LIMIT = 1000
#: A --limit meaning "every sample" (the full profile), so the named-dataset default does not apply.
ALL_SAMPLES = 2**62


def load_model_for(settings: Settings, device: Any, *, data_shape: tuple[int, ...] | None = None):
    """The adapted model; a file that does not say its input shape takes the data's (``data_shape``)."""
    from robaudit.errors import ModelLoadError
    from robaudit.models import load_model

    def load(shape):
        return load_model(settings.model, arch=settings.arch, mean=settings.mean, std=settings.std,
                          input_shape=shape, select=settings.select,
                          unsafe_load=settings.unsafe_load, device=device, sources=settings.sources)

    if settings.input_shape is not None or data_shape is None:
        return load(settings.input_shape)
    try:
        return load(None)
    except ModelLoadError as exc:
        if "input shape" not in str(exc) or "does not say" not in str(exc):
            raise
    model = load(data_shape)
    model.meta["input_shape_source"] = "data"
    return model


def _named(spec: str | None) -> bool:
    """``--data`` names a standard dataset (not the embedded sample, not a path)."""
    import os

    from robaudit.data.load import EMBEDDED, valid_names

    return spec is not None and spec in valid_names() and spec != EMBEDDED and not os.path.exists(spec)


def read_data(settings: Settings, note: Callable[[str], None] = lambda m: None):
    """The dataset as the settings ask, before any model check.

    A named standard dataset without --limit/--indices takes :data:`NAMED_DATA_LIMIT` samples
    (a whole split takes minutes per analysis); the note says how many were used.
    """
    from robaudit.data import load_data

    limit = settings.limit
    if limit is not None and limit >= ALL_SAMPLES:
        limit = None
    default = limit is None and settings.indices is None and _named(settings.data)
    data = load_data(settings.data, root=settings.data_root, split=settings.split,
                     limit=NAMED_DATA_LIMIT if default else limit, indices=settings.indices,
                     download=settings.download)
    if default:
        total = data.source.get("dataset_size", len(data))
        note(f"data: {data.name} ({data.split}): the first {len(data):,} of {total:,} samples "
             f"(default for named datasets; pass --limit N to change)")
    return data


def load_data_for(settings: Settings, model, *, needed: bool, data=None,
                  note: Callable[[str], None] = lambda m: None, optional: bool = False):
    """The run's dataset, or None when no analysis needs it and none was asked for.

    Without --data, the embedded Fashion-MNIST sample is used when its shape
    fits the model (also when the data is ``optional``: analyses that do more with
    data); otherwise analyses that need data ask for --data.
    """
    from robaudit.data import check_compatible

    if not settings.data_explicit and not needed and not optional:
        return None
    if data is None:
        data = read_data(settings, note)
    try:
        check_compatible(data, model.input_shape, num_classes=model.num_classes)
    except DataError:
        if settings.data_explicit or needed:
            raise
        return None
    return data


def check_fit(model, data, *, warn: Callable[[str], None], device: Any = "cpu", dtype: Any = None,
              batch_size: int = 256) -> float | None:
    """Warn when the model does not look like it belongs to the data; returns the clean accuracy.

    Two checks, both cheap: the checkpoint's ``meta.dataset`` against the data's name, and the
    clean accuracy (one forward pass) against chance. A model on the wrong dataset otherwise
    reports numbers without a word (an MNIST model on Fashion-MNIST scores ~18 %).
    """
    import torch

    from robaudit.data.datasets import norm_name
    from robaudit.data.load import EMBEDDED, valid_names
    from robaudit.models.guard import preserved

    # the embedded sample is the Fashion-MNIST test set
    data_name = "fashionmnist" if data.name == EMBEDDED else norm_name(str(data.name))
    if model.dataset and data.name in valid_names() and norm_name(str(model.dataset)) != data_name:
        warn(f"the checkpoint says it was trained on {model.dataset!r} but the data is {data.name!r}; "
             "the numbers describe the model on data it was not trained for")
    labelled = data.y >= 0
    n = int(labelled.sum())
    if n < 20:  # too few labels to tell chance from a bad fit
        return None
    correct = 0
    dtype = dtype or torch.float32
    with torch.no_grad(), preserved(model.module, eval=True):
        for _, x, y in data.batches(batch_size, device=device, dtype=dtype):
            keep = y >= 0
            if keep.any():
                correct += int((model.module(x[keep]).argmax(dim=1) == y[keep]).sum())
    acc = correct / n
    chance = 1.0 / model.num_classes
    # "near chance": within a tenth of the way from chance to perfect
    if acc <= chance + 0.1 * (1.0 - chance):
        warn(f"clean accuracy is {acc:.1%} on {n:,} labelled samples, near chance ({chance:.1%} for "
             f"{model.num_classes} classes): is this the data the model was trained for (and its normalisation)?")
    return acc


def build_context(settings: Settings, plan: Plan, *, progress=null_progress,
                  warn: Callable[[str], None] = lambda m: None,
                  note: Callable[[str], None] = lambda m: None) -> AuditContext:
    """Load the model and the data once, check that they fit each other, and build the context.

    With ``--data`` given and no ``--input-shape``, a model file that does not say its input
    shape takes the data's sample shape.
    """
    import torch

    from robaudit.device import resolve_device

    device = resolve_device(settings.device)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    data = read_data(settings, note) if settings.data_explicit else None
    model = load_model_for(settings, device, data_shape=data.sample_shape if data is not None else None)
    if dtype == torch.float64:
        model.module.double()
    data = load_data_for(settings, model, needed=plan.needs_data, data=data, note=note,
                         optional=bool(plan.uses_data))
    if data is None and plan.uses_data:
        warn(f"{', '.join(plan.uses_data)}: no data (the embedded sample does not fit a "
             f"{'×'.join(map(str, model.input_shape))} model): the data-based parts (lower bound, certified radii) "
             "are skipped; pass --data")
    ctx = AuditContext(model=model, data=data, device=device, dtype=dtype, seed=settings.seed,
                       batch_size=settings.batch_size, progress=progress, warn=warn)
    if data is not None:
        ctx.cache["clean_accuracy"] = check_fit(model, data, warn=warn, device=device, dtype=dtype,
                                                batch_size=settings.batch_size)
    return ctx


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


__all__ = ["Plan", "build_context", "run_plan", "load_model_for", "load_data_for", "read_data", "check_fit",
           "NAMED_DATA_LIMIT", "ALL_SAMPLES"]
