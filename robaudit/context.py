"""What every analysis receives: the adapted model, the data, and shared state.

``AuditContext`` is built once per run (one model load, one data load) and
passed to each analysis in turn. ``cache`` lets one analysis reuse what another
computed (e.g. ``lipschitz_upper`` for certified radii, per-sample σ_max).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from robaudit.data import AuditData
    from robaudit.models import LoadedModel


class ProgressTask(Protocol):
    def advance(self, n: int = 1) -> None: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def null_progress(description: str, total: int | None = None) -> Iterator[ProgressTask]:
    """Progress factory that shows nothing (library use, ``--quiet``)."""
    yield _NullTask()


ProgressFactory = Callable[[str, "int | None"], "contextlib.AbstractContextManager[ProgressTask]"]


@dataclass
class AuditContext:
    """Shared inputs of one run.

    Attributes:
        model: the loaded, adapted model (``model.module`` maps pixels in
            [0,1] of shape (N, *input_shape) to logits (N, C)).
        data: the dataset, or None for analyses that need none.
        device: where computation runs.
        dtype: computation dtype (float32 by default; float64 for tests).
        seed: base seed; each analysis reseeds from it so results do not
            depend on which analyses ran before.
        batch_size: samples per batch for per-sample analyses.
        progress: ``progress(description, total)`` → context manager with ``advance(n)``.
        warn: ``warn(message)`` for diagnostics (stderr in the CLI).
        cache: results shared between analyses within one run.
        shard: this process' rank and world size under torchrun (a single process by default).
        checkpoint: where finished rows are kept for a resumable run (``--checkpoint-dir``), or None.
    """

    model: "LoadedModel"
    data: "AuditData | None"
    device: "torch.device"
    dtype: "torch.dtype"
    seed: int = 0
    batch_size: int = 128
    progress: ProgressFactory = null_progress
    warn: Callable[[str], None] = lambda message: None
    cache: dict[str, Any] = field(default_factory=dict)
    shard: Any = None
    checkpoint: Any = None

    def require_data(self, analysis: str) -> "AuditData":
        from robaudit.errors import UsageError

        if self.data is None:
            raise UsageError(f"{analysis} needs data: pass --data NAME|PATH")
        return self.data
