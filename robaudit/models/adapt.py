"""Adapting a user's network into an ``AuditModel``: pixels in [0,1] → logits (N, C).

Normalisation lives inside the adapted model, so every analysis and attack
works in pixel space and epsilons are in pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from robaudit.errors import ModelLoadError


class Normalize(nn.Module):
    """(x − mean) / std per channel. Lipschitz constant: 1 / min(std)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ModelLoadError(f"--mean has {len(mean)} values but --std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ModelLoadError(f"--std: expected positive values, got {list(std)}")
        self._values = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # A cast to float64 rebuilds the buffers from the exact values, not from their float32 rounding,
        # so --dtype float64 is float64 end to end.
        out = super()._apply(fn, recurse)
        if self.mean.dtype == torch.float64:
            mean, std = self._values
            self.mean = torch.tensor(mean, dtype=torch.float64, device=self.mean.device).view(1, -1, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float64, device=self.std.device).view(1, -1, 1, 1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class SelectOutput(nn.Module):
    """Pick the logits out of a tuple/list (by index) or dict (by key) output."""

    def __init__(self, key: str | int | None) -> None:
        super().__init__()
        self.key = key

    def forward(self, out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        if self.key is None:
            kind = type(out).__name__
            raise ModelLoadError(f"model returns a {kind}, not a logits tensor: pass --select INDEX|KEY to pick the logits")
        try:
            if isinstance(out, dict):
                return out[self.key if self.key in out else str(self.key)]
            return out[int(self.key)]
        except (KeyError, IndexError, ValueError):
            raise ModelLoadError(f"--select {self.key!r} does not name an output of the model") from None


class AuditModel(nn.Module):
    """``net(normalize(x))`` with the logits selected: (N, *input_shape) → (N, C).

    Attributes:
        normalize: a :class:`Normalize` or ``nn.Identity``.
        net: the user's network, unchanged.
        select: a :class:`SelectOutput`.
    """

    def __init__(self, net: nn.Module, normalize: nn.Module | None = None, select: str | int | None = None) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.net = net
        self.select = SelectOutput(select)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.select(self.net(self.normalize(x)))


@dataclass
class LoadedModel:
    """A model ready for auditing, plus what is known about it.

    Attributes:
        module: the :class:`AuditModel` in eval mode on its device.
        format: robaudit-checkpoint | state_dict | torchscript | pickle | onnx.
        path: the file it came from (None for in-memory models).
        sha256: hex digest of the file.
        num_classes: C, from one forward pass.
        input_shape: (C, H, W) of one sample.
        mean, std: normalisation inside ``module`` (None if none).
        class_names: optional class labels.
        dataset: dataset name recorded in the checkpoint meta, if any.
        arch: architecture name, if known.
    """

    module: AuditModel
    format: str
    path: str | None
    sha256: str | None
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: list[str] | None = None
    dataset: str | None = None
    arch: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.module.net.parameters())

    def describe(self) -> dict[str, Any]:
        """JSON-safe description for the report's ``model`` key."""
        return {
            "path": self.path, "sha256": self.sha256, "format": self.format,
            "arch": self.arch, "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "parameters": self.param_count, "dataset": self.dataset,
            "embedded": bool(self.meta.get("embedded", False)),
        }


def adapt(net: nn.Module, *, input_shape: Sequence[int], mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None, select: str | int | None = None,
          device: torch.device | str = "cpu", format: str = "module", path: str | None = None,
          sha256: str | None = None, **info: Any) -> LoadedModel:
    """Wrap ``net`` in an AuditModel, move it to ``device`` in eval mode and check its output.

    Raises:
        ModelLoadError: the output is not (N, C) logits for a (2, *input_shape) input.
    """
    normalize = Normalize(mean, std) if mean is not None and std is not None else None
    module = AuditModel(net, normalize, select).to(device).eval()
    probe = torch.rand(2, *input_shape, device=device)
    try:
        with torch.no_grad():
            out = module(probe)
    except ModelLoadError:
        raise
    except Exception as exc:  # the user's network failed on its declared input shape
        shape = "x".join(str(s) for s in input_shape)
        raise ModelLoadError(f"forward pass on a {shape} input failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if out.dim() != 2 or out.shape[0] != 2:
        raise ModelLoadError(f"model output must be logits of shape (N, C); got shape {tuple(out.shape)} for N=2")
    return LoadedModel(module=module, format=format, path=path, sha256=sha256, num_classes=int(out.shape[1]),
                       input_shape=tuple(int(s) for s in input_shape),
                       mean=tuple(float(m) for m in mean) if mean is not None else None,
                       std=tuple(float(s) for s in std) if std is not None else None, **info)
