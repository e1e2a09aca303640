"""Training-time remedies for what robaudit measures: torch losses with paper references.

Usage::

    from robaudit.regularizers import make

    reg = make("jacobian_spectral")              # or make("jacobian_frobenius", n_proj=1)
    step = reg.loss(model, x, y, lam=0.01)       # step.total = ce + λ·penalty
    step.total.backward()

``REGULARIZERS`` maps each ``--regularizer`` name to its class; every class
states its paper, its default λ and its cost per step in passes.
"""

from __future__ import annotations

from typing import Any

from robaudit.errors import UsageError
from robaudit.regularizers.adversarial import AdversarialTraining
from robaudit.regularizers.base import (JacobianRegularizer, Regularizer, StepLoss, mode_free,
                                        pseudo_inference)
from robaudit.regularizers.jacobian import (DataDependentSpectral, JacobianFrobenius, JacobianSpectral,
                                            JacobianSpectralLanczos)
from robaudit.regularizers.weights import ConvSpectralBound, GlobalSpectralNorm, WeightDecay


class NoRegularizer(Regularizer):
    """Plain cross-entropy training (penalty 0). Cost: one plain step."""

    name = "none"
    default_lam = 0.0
    reference = ""

    def penalty(self, model, x, y):  # noqa: ANN001 - same signature as the base
        import torch

        return torch.zeros((), dtype=x.dtype, device=x.device)


REGULARIZERS: dict[str, type[Regularizer]] = {cls.name: cls for cls in (
    NoRegularizer, WeightDecay, JacobianFrobenius, JacobianSpectral, JacobianSpectralLanczos,
    ConvSpectralBound, GlobalSpectralNorm, DataDependentSpectral, AdversarialTraining)}


def make(name: str, **options: Any) -> Regularizer:
    """The regularizer registered as ``name``, built with keyword ``options``.

    Raises:
        UsageError: unknown name or bad option (exit 2).
    """
    key = name.strip().lower().replace("-", "_")
    if key not in REGULARIZERS:
        raise UsageError(f"--regularizer: expected one of {', '.join(REGULARIZERS)}, got {name!r}")
    try:
        return REGULARIZERS[key](**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--regularizer {key}: {exc}") from None


__all__ = [
    "Regularizer", "JacobianRegularizer", "StepLoss", "mode_free", "pseudo_inference", "REGULARIZERS", "make",
    "NoRegularizer", "WeightDecay", "JacobianFrobenius", "JacobianSpectral", "JacobianSpectralLanczos",
    "ConvSpectralBound", "GlobalSpectralNorm", "DataDependentSpectral", "AdversarialTraining",
]
