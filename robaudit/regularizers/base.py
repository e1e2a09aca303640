"""What every regularizer shares: the training-loss contract and BatchNorm's pseudo-inference mode.

A :class:`Regularizer` turns a batch into ``ce + λ·penalty``. ``penalty`` is the
paper's quantity (a batch mean, so λ means the same at any batch size);
:meth:`Regularizer.loss` may share the forward pass between the cross-entropy
and the penalty, which is where most of a Jacobian regularizer's speed comes from.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robaudit.linalg.products import JacobianOperator

# Layers whose output for one sample depends on the batch or on the module's mode.
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Dropout)
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class StepLoss:
    """One training step's loss and its parts.

    Attributes:
        total: ce + λ·penalty (what is backpropagated).
        ce: the cross-entropy on the clean batch (detached, for logging).
        penalty: the regularizer's value (detached, for logging).
        logits: the clean batch's logits (detached), for training accuracy.
    """

    total: torch.Tensor
    ce: torch.Tensor
    penalty: torch.Tensor
    logits: torch.Tensor


class Regularizer:
    """Base class. Subclasses set ``name``, ``default_lam``, ``reference`` and implement :meth:`penalty`.

    Attributes:
        name: registry name (``--regularizer``).
        default_lam: λ from the paper (used when ``--lam`` is not given).
        reference: the paper and equation, for metadata and ``--help``.
    """

    name: ClassVar[str] = ""
    default_lam: ClassVar[float] = 0.0
    reference: ClassVar[str] = ""

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The regularised quantity for the batch (scalar, differentiable w.r.t. the parameters)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float) -> StepLoss:
        """``cross_entropy(model(x), y) + lam · penalty``; ``model`` is in train mode."""
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        pen = self.penalty(model, x, y) if lam != 0 else torch.zeros((), dtype=ce.dtype)
        return StepLoss(total=ce + lam * pen, ce=ce.detach(), penalty=pen.detach(), logits=logits.detach())

    def options(self) -> dict[str, object]:
        """The constructor options (recorded in checkpoint metadata)."""
        return {}


def mode_free(model: nn.Module) -> bool:
    """True if no layer depends on the batch or on train/eval mode (no BatchNorm, no dropout)."""
    return not any(isinstance(m, _MODE_DEPENDENT) for m in model.modules())


@contextlib.contextmanager
def pseudo_inference(model: nn.Module, x: torch.Tensor) -> Iterator[nn.Module]:
    """Johansson et al. 2022, Sec. 3.2: BatchNorm fixed at the batch's own mean and variance.

    One extra no-grad forward pass in train mode with momentum 1 copies the batch
    statistics into the running buffers; the model then runs in eval mode, so the
    samples no longer interact and the Jacobian is per sample (block diagonal).
    The original buffers, momenta and every submodule's mode are restored on exit, also on error.
    (The running variance uses the unbiased estimate, n/(n−1) times the batch's;
    n = batch × spatial size, so the difference is negligible.)
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [(m, m.training) for m in model.modules()]
    # The original buffers are swapped out, never written: a train-mode forward of the same
    # step may have saved them for its backward, so an in-place update would break it.
    saved = [(m, m.momentum, {k: m._buffers[k] for k in _BN_BUFFERS if m._buffers.get(k) is not None}) for m in bns]
    try:
        if bns:
            for m, _, buffers in saved:
                m.momentum = 1.0
                for key, buf in buffers.items():
                    m._buffers[key] = buf.clone()
            model.train()
            with torch.no_grad():
                model(x)
        model.eval()
        yield model
    finally:
        for m, momentum, buffers in saved:
            m.momentum = momentum
            m._buffers.update(buffers)
        for m, training in modes:
            m.training = training


class JacobianRegularizer(Regularizer):
    """A penalty on the input–logit Jacobian J(xᵢ), computed on a graph-keeping :class:`JacobianOperator`.

    When the model has no mode-dependent layers, the operator's forward pass also
    gives the logits for the cross-entropy (one forward pass per step, as in
    Johansson et al. Alg. 1). Otherwise the cross-entropy uses a train-mode forward
    and the Jacobian is taken in :func:`pseudo_inference` mode.
    """

    def jacobian_penalty(self, op: JacobianOperator, y: torch.Tensor) -> torch.Tensor:
        """The penalty from the batch's operator (built with ``create_graph=True``)."""
        raise NotImplementedError

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with pseudo_inference(model, x):
            return self.jacobian_penalty(JacobianOperator(model, x, create_graph=True), y)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float) -> StepLoss:
        if lam == 0 or not mode_free(model):
            return super().loss(model, x, y, lam)
        op = JacobianOperator(model, x, create_graph=True)
        logits = op.output_with_graph
        ce = F.cross_entropy(logits, y)
        pen = self.jacobian_penalty(op, y)
        return StepLoss(total=ce + lam * pen, ce=ce.detach(), penalty=pen.detach(), logits=logits.detach())
