"""Sharded runs on torch.distributed, and runs that resume where they stopped.

Under ``torchrun`` every rank loads the same model and data; the per-sample
runner (:mod:`robaudit.analyses.runner`) gives batch *b* to rank ``b % world``
and gathers the rows to every rank in dataset order, so each rank ends with the
same sections a single process computes. Only rank 0 writes, prints and gates.
Whole-model analyses (``layers``) run on rank 0 and are broadcast.

Batches are the unit of work on purpose: an attack seeds each batch from its
first dataset index, so a batch computes the same rows on any rank.

Resumable runs (``--checkpoint-dir``) keep, per analysis and rank, the rows of
finished batches in a JSON shard file rewritten atomically every K batches. A
run started again with the same arguments skips those batches; arguments that
differ are refused, naming the difference.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Callable, Iterable, Mapping

from robaudit.errors import RobauditError, UsageError

#: Seconds a collective may wait for the slowest rank before the run fails (exit 3).
DEFAULT_TIMEOUT = 1800.0


class DistributedError(RobauditError):
    """Another rank failed or stopped answering: exit 3."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process' place in a sharded run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def owns(self, batch_ordinal: int) -> bool:
        return batch_ordinal % self.world_size == self.rank


SINGLE = Shard()


def detect(env: Mapping[str, str] | None = None) -> Shard:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError("RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return Shard(rank=rank, world_size=world, local_rank=local)


def init(shard: Shard, *, backend: str | None, device_kind: str, timeout: float | None = None) -> None:
    """Initialise the default process group for ``shard`` (no-op for a single process)."""
    if not shard.active:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = backend or ("nccl" if device_kind == "cuda" else "gloo")
    if backend not in ("gloo", "nccl", "mpi"):
        raise UsageError(f"--dist-backend: expected gloo, nccl or mpi, got {backend!r}")
    seconds = timeout if timeout is not None else float(os.environ.get("ROBAUDIT_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
    except Exception as exc:  # rendezvous failures come as several exception types
        raise DistributedError(f"could not join the process group ({backend}): {str(exc).splitlines()[0]}") from None


def _collective(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RobauditError:
        raise
    except Exception as exc:  # a dead or failed peer: timeouts and connection resets
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if len(first) > 160:
            first = first[:159] + "…"
        raise DistributedError(f"another rank stopped or failed (see its own error); the collective ended with: "
                               f"{first}") from None


class _Failure:
    """What a failed rank contributes to a collective, so the others stop instead of waiting."""

    def __init__(self, rank: int, message: str, exit_code: int) -> None:
        self.rank, self.message, self.exit_code = rank, message, exit_code


def failure(shard: Shard, exc: BaseException) -> _Failure:
    code = exc.exit_code if isinstance(exc, RobauditError) else 3
    return _Failure(shard.rank, f"{type(exc).__name__}: {exc}", code)


def all_gather(shard: Shard, payload: Any) -> list[Any]:
    """Every rank's ``payload``, in rank order; raises if any rank sent a failure."""
    if not shard.active:
        return [payload]
    import torch.distributed as dist

    out: list[Any] = [None] * shard.world_size
    _collective(lambda: dist.all_gather_object(out, payload))
    for item in out:
        if isinstance(item, _Failure):
            if item.rank != shard.rank:
                raise DistributedError(f"rank {item.rank} failed: {item.message.splitlines()[0]}")
    return out


def broadcast(shard: Shard, payload: Any) -> Any:
    """Rank 0's ``payload`` on every rank; raises if rank 0 sent a failure."""
    if not shard.active:
        return payload
    import torch.distributed as dist

    box = [payload if shard.leader else None]
    _collective(lambda: dist.broadcast_object_list(box, src=0))
    if isinstance(box[0], _Failure) and not shard.leader:
        raise DistributedError(f"rank 0 failed: {box[0].message.splitlines()[0]}")
    return box[0]


def shutdown() -> None:
    """Leave the process group, if one is up; never imports anything.

    It runs in a ``finally`` that an interrupt can reach while a C extension is half-imported;
    importing torch.distributed then (re-registering its pybind types) aborts the interpreter
    (seen as exit -6 or -2 instead of 130). A group can only exist if the module is loaded.
    """
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # best effort at exit
        pass


# ---------------------------------------------------------------- resume


@dataclasses.dataclass
class Checkpoint:
    """Finished rows of one run, per analysis and rank, under ``directory``."""

    directory: str
    fingerprint: dict[str, Any]
    every: int = 1

    def open(self) -> None:
        """Create the directory, or check that it belongs to a run with the same arguments."""
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, "run.json")
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    saved = json.load(fh)
            except (OSError, ValueError):
                raise UsageError(f"--checkpoint-dir: {path} is not a robaudit checkpoint") from None
            diff = [k for k in sorted(set(saved) | set(self.fingerprint)) if saved.get(k) != self.fingerprint.get(k)]
            if diff:
                k = diff[0]
                raise UsageError(f"--checkpoint-dir {self.directory} holds a run with different arguments: {k} was "
                                 f"{_short(saved.get(k))}, now {_short(self.fingerprint.get(k))}; use a new directory")
        else:
            _write_json(path, self.fingerprint)

    def _shard_path(self, label: str, rank: int) -> str:
        return os.path.join(self.directory, f"{label}.rank{rank}.json")

    def load(self, label: str, row_type: type | None) -> dict[int, list]:
        """Finished batches of ``label`` from every rank's shard file: ordinal → rows."""
        done: dict[int, list] = {}
        if row_type is None or not os.path.isdir(self.directory):
            return done
        prefix = f"{label}.rank"
        for name in sorted(os.listdir(self.directory)):
            if not (name.startswith(prefix) and name.endswith(".json")):
                continue
            try:
                with open(os.path.join(self.directory, name)) as fh:
                    batches = json.load(fh)["batches"]
                for ordinal, rows in batches.items():
                    done[int(ordinal)] = [row_type(**row) for row in rows]
            except (OSError, ValueError, KeyError, TypeError):
                raise UsageError(f"--checkpoint-dir: {name} is damaged; remove it to recompute its batches") from None
        return done

    def save(self, label: str, rank: int, batches: Mapping[int, Iterable[Any]]) -> None:
        """Rewrite this rank's shard file atomically with ``batches`` (ordinal → rows)."""
        from robaudit.rows import row_dict

        body = {"batches": {str(k): [row_dict(r) for r in rows] for k, rows in sorted(batches.items())}}
        _write_json(self._shard_path(label, rank), body)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def _write_json(path: str, body: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(body, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
