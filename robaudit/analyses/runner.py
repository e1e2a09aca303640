"""The one batch loop every per-sample analysis shares.

An analysis hands ``run_rows`` a ``compute(batch) -> rows`` function and a pure
``summarise(rows) -> section``. The loop streams the data, shows progress with
a real total, keeps the model's state intact, and on Ctrl-C turns the rows
finished so far into a partial section. Rows are frozen dataclasses with JSON
fields, so the same rows can later be gathered across ranks or saved to resume.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from robaudit.context import AuditContext

Row = TypeVar("Row")


class Batch(NamedTuple):
    """One batch: dataset indices (B,), inputs (B, *shape) on the run's device and dtype, labels (B,)."""

    index: "torch.Tensor"
    x: "torch.Tensor"
    y: "torch.Tensor"


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def row_dict(row: Any) -> dict[str, Any]:
    """A row dataclass as a JSON-safe dict (NaN/Inf → None)."""
    return {f.name: _json_value(getattr(row, f.name)) for f in dataclasses.fields(row)}


def batches(ctx: "AuditContext", label: str, *, batch_size: int | None = None,
            limit: int | None = None) -> Iterator[Batch]:
    """The run's data (its first ``limit`` samples) as :class:`Batch` es, in dataset order."""
    data = ctx.require_data(label)
    seen = 0
    total = len(data) if limit is None else min(limit, len(data))
    for idx, x, y in data.batches(batch_size or ctx.batch_size, device=ctx.device, dtype=ctx.dtype):
        if seen >= total:
            break
        take = min(int(idx.shape[0]), total - seen)
        seen += take
        yield Batch(idx[:take], x[:take], y[:take])


def collect_rows(ctx: "AuditContext", label: str, compute: Callable[[Batch], Sequence[Row]], *,
                 batch_size: int | None = None, limit: int | None = None,
                 description: str | None = None) -> list[Row]:
    """``compute`` over every batch, with progress; rows in dataset order.

    On Ctrl-C the rows finished so far ride on the exception as ``partial_rows``.
    """
    from robaudit.models.guard import preserved

    data = ctx.require_data(label)
    rows: list[Row] = []
    total = len(data) if limit is None else min(limit, len(data))
    with preserved(ctx.model.module, eval=True), ctx.progress(description or label, total) as task:
        try:
            for batch in batches(ctx, label, batch_size=batch_size, limit=limit):
                out = list(compute(batch))
                if len(out) != batch.index.shape[0]:
                    raise RuntimeError(f"{label}: compute returned {len(out)} rows for a batch of "
                                       f"{batch.index.shape[0]}")
                rows.extend(out)
                task.advance(len(out))
        except KeyboardInterrupt as exc:
            exc.partial_rows = rows  # type: ignore[attr-defined]
            raise
    return rows


def run_rows(ctx: "AuditContext", label: str, compute: Callable[[Batch], Sequence[Row]],
             summarise: Callable[[list[Row]], dict[str, Any]], *, batch_size: int | None = None,
             limit: int | None = None, description: str | None = None) -> dict[str, Any]:
    """``summarise(collect_rows(...))``; on Ctrl-C the summary of the finished rows is the partial section."""
    try:
        rows = collect_rows(ctx, label, compute, batch_size=batch_size, limit=limit, description=description)
    except KeyboardInterrupt as exc:
        partial = getattr(exc, "partial_rows", None)
        if partial:
            exc.partial_section = summarise(partial)  # type: ignore[attr-defined]
        raise
    return summarise(rows)
