"""The one batch loop every per-sample analysis shares.

An analysis hands ``run_rows`` a ``compute(batch) -> rows`` function and a pure
``summarise(rows) -> section``. The loop streams the data, shows progress with
a real total, keeps the model's state intact, and on Ctrl-C turns the rows
finished so far into a partial section. Rows are frozen dataclasses with JSON
fields, so the same rows can later be gathered across ranks or saved to resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence, TypeVar

from robaudit.rows import row_dict  # noqa: F401  (re-exported: analyses import it from here)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from robaudit.context import AuditContext

Row = TypeVar("Row")


class Batch(NamedTuple):
    """One batch: dataset indices (B,), inputs (B, *shape) on the run's device and dtype, labels (B,)."""

    index: "torch.Tensor"
    x: "torch.Tensor"
    y: "torch.Tensor"


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
                 description: str | None = None, work_per_sample: int = 1, freeze: bool = False,
                 parallel: bool = False) -> list[Row]:
    """``compute`` over every batch, with progress; rows in dataset order.

    Under torchrun this rank computes the batches it owns (``ordinal % world``)
    and every rank receives all rows. With a checkpoint, finished batches are
    loaded instead of computed, and this rank's rows are saved every K batches.
    On Ctrl-C the rows finished so far ride on the exception as ``partial_rows``.
    ``work_per_sample`` scales the progress total (an attack battery runs several attacks per
    sample); ``freeze`` sets ``requires_grad=False`` on the parameters inside (attacks).

    ``parallel``: ``compute`` is a pure function of its batch (its randomness keyed by the batch, never
    drawn from torch's global generator), so on a CPU with T torch threads T batches are computed side
    by side, on one intra-op thread each: a small model's forward and backward passes do not fill two
    cores, two batches do. The rows are those of one batch at a time, in dataset order.
    """
    from robaudit.dist import SINGLE, all_gather, failure
    from robaudit.models.guard import preserved

    data = ctx.require_data(label)
    shard = ctx.shard or SINGLE
    ckpt = ctx.checkpoint
    done = ckpt.load(label, _row_type(label)) if ckpt is not None else {}
    total = len(data) if limit is None else min(limit, len(data))
    size = batch_size or ctx.batch_size
    mine_total = sum(min(size, total - start) for k, start in enumerate(range(0, total, size)) if shard.owns(k))
    mine: dict[int, list[Row]] = {}
    unsaved = 0
    workers = _workers(ctx) if parallel and mine_total > size else 1

    with preserved(ctx.model.module, eval=True, freeze=freeze), \
            ctx.progress(description or label, mine_total * work_per_sample) as task:

        def todo() -> Iterator[tuple[int, Batch]]:
            """This rank's batches still to compute (finished ones from a checkpoint are taken as they are)."""
            for ordinal, batch in enumerate(batches(ctx, label, batch_size=size, limit=limit)):
                if not shard.owns(ordinal):
                    continue
                n = int(batch.index.shape[0])
                if ordinal in done and len(done[ordinal]) == n:
                    mine[ordinal] = done[ordinal]
                    task.advance(n * work_per_sample)
                    continue
                yield ordinal, batch

        def finish(ordinal: int, n: int, out: list[Row]) -> None:
            nonlocal unsaved
            if len(out) != n:
                raise RuntimeError(f"{label}: compute returned {len(out)} rows for a batch of {n}")
            mine[ordinal] = out
            task.advance(n * work_per_sample)
            unsaved += 1
            if ckpt is not None and unsaved >= ckpt.every:
                ckpt.save(label, shard.rank, mine)
                unsaved = 0

        try:
            if workers > 1:
                _side_by_side(todo(), compute, finish, workers)
            else:
                for ordinal, batch in todo():
                    finish(ordinal, int(batch.index.shape[0]), list(compute(batch)))
        except KeyboardInterrupt as exc:
            if ckpt is not None and unsaved:
                ckpt.save(label, shard.rank, mine)
            exc.partial_rows = [r for k in sorted(mine) for r in mine[k]]  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            if ckpt is not None and unsaved:
                ckpt.save(label, shard.rank, mine)
            if shard.active:  # tell the other ranks, so they stop instead of waiting for our rows
                all_gather(shard, failure(shard, exc))
            raise
    if ckpt is not None and unsaved:
        ckpt.save(label, shard.rank, mine)
    merged: dict[int, list[Row]] = {}
    for part in all_gather(shard, mine):
        merged.update(part)
    return [r for k in sorted(merged) for r in merged[k]]


def _workers(ctx: "AuditContext") -> int:
    """Batches computed side by side: torch's thread count on a CPU, one elsewhere (one device queue)."""
    import torch

    return torch.get_num_threads() if torch.device(ctx.device).type == "cpu" else 1


def _side_by_side(todo: Iterator[tuple[int, Batch]], compute: Callable[[Batch], Sequence[Row]],
                  finish: Callable[[int, int, list[Row]], None], workers: int) -> None:
    """``finish(ordinal, n, compute(batch))`` for every batch, ``workers`` batches at a time on threads.

    Each thread runs torch on one core; results are finished on the calling thread as they come
    (progress, checkpoints, errors). The caller's torch threads and global random state come back
    whatever happens; after an error or Ctrl-C the batches not started are dropped.
    """
    import torch
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="robaudit-batch")
    inflight: dict = {}
    interrupted = False
    try:
        with torch.random.fork_rng(devices=[]):
            torch.set_num_threads(1)  # read by each worker thread at its first op

            def submit() -> None:
                for ordinal, batch in todo:
                    inflight[pool.submit(lambda b=batch: list(compute(b)))] = (ordinal, int(batch.index.shape[0]))
                    return

            for _ in range(workers):
                submit()
            while inflight:
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: inflight[f][0]):
                    ordinal, n = inflight.pop(fut)
                    finish(ordinal, n, fut.result())
                    submit()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # after a failure the batches still running finish first (nothing is left working behind the caller);
        # after Ctrl-C they are left behind, so the partial report comes at once
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        torch.set_num_threads(threads)


def _row_type(label: str) -> type | None:
    from robaudit import analyses
    from robaudit.errors import UsageError

    try:
        return analyses.get(label).row
    except UsageError:
        return None


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
