"""A small real analysis used to test the plug-in machinery independently of the big ones.

It computes clean accuracy and the mean top logit; tests check both against a
direct computation on the same model and data.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from robaudit.analyses.base import Analysis, opt


@dataclass(frozen=True)
class Options:
    scale: float = opt(1.0, "Multiply the mean top logit by this (tests option plumbing).", min=0.0)
    mode: str = opt("mean", "Reduction.", choices=("mean", "max"))
    verbose: bool = opt(False, "A boolean flag.")
    count: int | None = opt(None, "An optional integer.")


def run(ctx, options: Options) -> dict:
    import torch

    data = ctx.require_data("probe")
    correct, tops = 0, []
    with torch.no_grad():
        for _, x, y in data.batches(ctx.batch_size, device=ctx.device, dtype=ctx.dtype):
            logits = ctx.model.module(x)
            correct += int((logits.argmax(1) == y).sum())
            tops.append(logits.max(1).values)
    top = torch.cat(tops)
    reduced = top.mean() if options.mode == "mean" else top.max()
    return {"accuracy": correct / len(data), "top_logit": float(reduced) * options.scale,
            "verbose": options.verbose, "count": options.count}


def render(section) -> list:
    table = Table(title="probe")
    table.add_column("accuracy")
    table.add_column("top logit")
    table.add_row(f"{section['accuracy']:.4f}", f"{section['top_logit']:.4f}")
    return [table]


def metrics(section) -> dict:
    return {"probe.accuracy": section["accuracy"], "probe.top_logit": section["top_logit"]}


ANALYSIS = Analysis(name="probe", help="Test analysis: accuracy and top logit.", options=Options, run=run,
                    render=render, metrics=metrics, profiles={"quick": {}, "standard": {"scale": 2.0}})
