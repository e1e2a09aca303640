"""Checks that a loaded model can be audited at all, with one-line errors (exit 3).

Every analysis differentiates the logits with respect to the input. A model with
``argmax``, ``detach``, ``round`` or a ``no_grad`` block inside ``forward`` runs fine and
then fails deep inside an analysis with a framework error; :func:`check_differentiable`
finds that once, on a tiny batch, and says what is wrong.
"""

from __future__ import annotations

import torch
from torch import nn

from robaudit.errors import ModelLoadError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def check_differentiable(model: nn.Module, x: torch.Tensor, *, seed: int = 0) -> None:
    """Raise ModelLoadError unless ``model``'s logits have a usable gradient with respect to ``x``.

    One forward and one backward pass of a fixed random projection of the logits
    (a plain sum would be constant for a softmax output). The model's mode, ``requires_grad``
    flags and parameter ``.grad`` are left untouched: only ``x`` gets a gradient.

    Args:
        model: maps (N, *input_shape) → (N, C) logits.
        x: a small input batch (e.g. 2 samples) on the model's device and dtype.

    Raises:
        ModelLoadError: forward raises; the output is not float; it does not depend on ``x``
            through autograd (argmax/detach/no_grad inside); or the gradient is zero for
            every input (a piecewise-constant model: round, sign, one-hot of argmax).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        try:
            out = model(x)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"the model's forward pass failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        if not isinstance(out, torch.Tensor):
            raise ModelLoadError(f"the model returned a {type(out).__name__}, not a logits tensor")
        if not out.is_floating_point():
            raise ModelLoadError(f"the model returns {out.dtype} outputs, not float logits (argmax inside forward?); "
                                 "robaudit needs the logits")
        if not out.requires_grad:
            raise ModelLoadError("the model's logits do not depend on its input through autograd (detach, argmax, "
                                 ".numpy() or torch.no_grad inside forward?); robaudit needs a differentiable model")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        weights = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        try:
            (grad,) = torch.autograd.grad((out * weights).sum(), x, allow_unused=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"the model is not differentiable with respect to its input: {_first_line(exc)}") from None
    if grad is None:
        raise ModelLoadError("the model's logits do not depend on its input through autograd (detach or argmax inside "
                             "forward?); robaudit needs a differentiable model")
    if not torch.isfinite(grad).all():
        raise ModelLoadError("the model's input gradient is NaN or Inf on a random input; robaudit needs finite gradients")
    if not bool(grad.abs().sum() > 0):
        raise ModelLoadError("the model's input gradient is zero on random inputs: its output is piecewise constant "
                             "(round, sign or a one-hot of argmax inside forward?); gradient-based analyses need logits")


__all__ = ["check_differentiable"]
