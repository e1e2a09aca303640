"""The dataset every analysis consumes: images in [0,1], labels, dataset indices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch


@dataclass
class AuditData:
    """An in-memory dataset in pixel space.

    Attributes:
        name: dataset name or path.
        split: "train" / "test" (or "-" for files without splits).
        x: (N, C, H, W) uint8 (scaled by 1/255 on the fly) or float in [0,1].
        y: (N,) int64 labels (-1 where unknown).
        indices: (N,) int64 dataset indices of the rows (for joining reports).
        class_names: optional class labels.
        source: where it was read from (JSON-safe).
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    class_names: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def images(self, rows: slice | torch.Tensor, *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows of ``x`` as ``dtype`` in [0,1] on ``device``."""
        x = self.x[rows]
        if x.dtype == torch.uint8:
            return x.to(device=device, dtype=dtype) / 255.0
        return x.to(device=device, dtype=dtype)

    def batches(self, batch_size: int, *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(indices, x, y)`` batches in order; x on ``device`` as ``dtype``."""
        for start in range(0, len(self), batch_size):
            rows = slice(start, start + batch_size)
            yield self.indices[rows], self.images(rows, device=device, dtype=dtype), self.y[rows].to(device)

    def describe(self) -> dict[str, Any]:
        """JSON-safe description for the report's ``data`` key."""
        return {"name": self.name, "split": self.split, "n": len(self), "shape": list(self.sample_shape), **self.source}
