"""Small pieces shared by the local-geometry engines (linearity, cross-sections, decision cells).

* :func:`resolve_layer` / :class:`LayerOutput`: φ = the output of a named submodule, as a plain
  (B, *input) → (B, K) map that :class:`robaudit.linalg.JacobianOperator` accepts;
* :func:`unit_rows`: flattened rows scaled to unit ℓ2 norm;
* :func:`predict` / :func:`forward_chunks`: model outputs over many points, chunk by chunk;
* :func:`attack_labels`: the label an untargeted attack pushes away from.

Everything is keyed by dataset index where randomness enters (``robaudit.linalg.rng``), so
results do not depend on the batch size.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robaudit.errors import UsageError

# How many valid names an unknown --layer error lists.
LAYER_HINTS = 8


def layer_names(model: nn.Module) -> list[str]:
    """Names of the submodules (as ``model.named_modules()`` gives them), root excluded."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> str:
    """The full submodule name for ``name``; UsageError listing valid names otherwise.

    ``name`` is a name from ``model.named_modules()`` (``net.fc2`` on an adapted model) or the
    same name inside the user's network (``fc2``, looked up as ``net.fc2``).
    """
    modules = dict(model.named_modules())
    for candidate in (name, f"net.{name}"):
        if candidate and candidate in modules:
            return candidate
    names = layer_names(model)
    shown = ", ".join(names[:LAYER_HINTS]) + (", …" if len(names) > LAYER_HINTS else "")
    raise UsageError(f"--layer: no submodule named {name!r}; expected one of: {shown} "
                     "(robaudit info lists the layers)")


class LayerOutput(nn.Module):
    """φ(x) = the flattened output of submodule ``layer`` of ``model``: (B, *input) → (B, K).

    The forward hook lives only for the duration of one call (removed in ``finally``), so the
    user's model is never left with a hook, also when forward mode (``torch.func.jvp``) fails.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = resolve_layer(model, layer)
        self._target = dict(model.named_modules())[self.layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list = []

        def hook(module: nn.Module, args: tuple, out: object) -> None:
            seen.append(out)

        handle = self._target.register_forward_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        if not seen:
            raise UsageError(f"--layer {self.layer}: the layer is not called in the model's forward pass")
        out = seen[-1]  # a module called twice (weight sharing): its last call feeds the logits
        if not isinstance(out, torch.Tensor):
            raise UsageError(f"--layer {self.layer}: the layer returns a {type(out).__name__}, not a tensor")
        return out.reshape(out.shape[0], -1)


def feature_map(model: nn.Module, layer: str | None) -> nn.Module:
    """φ: the logits (``model`` itself) when ``layer`` is None, else :class:`LayerOutput`."""
    return model if layer is None else LayerOutput(model, layer)


def unit_rows(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of v flattened and scaled to unit ℓ2 norm, their norms); zero rows stay zero.

    Shapes: v (B, ...) → ((B, D), (B,)).
    """
    flat = v.reshape(v.shape[0], -1)
    norm = flat.norm(dim=1)
    return flat / norm.clamp_min(torch.finfo(flat.dtype).tiny)[:, None], norm


@torch.no_grad()
def forward_chunks(f: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, chunk: int) -> torch.Tensor:
    """``f`` over ``points`` (N, *input) in chunks of ``chunk`` rows, concatenated (N, K)."""
    outs = [f(points[start: start + chunk]) for start in range(0, points.shape[0], chunk)]
    return torch.cat(outs) if outs else points.new_zeros((0, 0))


def attack_labels(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The true label where known (y ≥ 0), else the prediction: what an untargeted attack moves away from."""
    return torch.where(y >= 0, y.to(pred.device), pred)
