"""Gaussian white noise: the natural-corruption baseline of both papers.

x̃ = clip(x + ε, 0, 1) with εᵢ ~ N(0, σ²) per pixel (Hoffman et al. 2019,
Sec. 3.2 eq. 9; Johansson et al. 2022, Sec. 4.2.1 eq. 9), drawn by
torchattacks' ``GN`` attack. Accuracy is reported per σ of the grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from robaudit.attacks.run import Budget, model_guard, seeded, verify

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.data.types import AuditData

# Seeds for noise are offset from attack seeds so that σ grids and attacks never share draws.
NOISE_SEED_OFFSET = 7919


@dataclass
class NoiseOutcome:
    """Result of one σ over the data.

    Attributes:
        sigma: the standard deviation.
        correct: (N,) bool, prediction on the noisy input equals the label.
        dist_linf, dist_l2: (N,) float64 size of the clipped noise.
        violations: noisy inputs outside [0,1] or not finite (should be 0).
        seconds: wall time.
    """

    sigma: float
    correct: torch.Tensor
    dist_linf: torch.Tensor
    dist_l2: torch.Tensor
    violations: int
    seconds: float


def run_noise(model: torch.nn.Module, data: "AuditData", sigma: float, *, seed: int, batch_size: int,
              device: torch.device, dtype: torch.dtype, advance: Callable[[int], None] = lambda n: None) -> NoiseOutcome:
    """Accuracy of ``model`` under Gaussian noise of std ``sigma`` (clipped to [0,1]).

    Shapes: data.x (N, C, H, W); outputs (N,).
    """
    import torchattacks

    start = time.perf_counter()
    correct, linf, l2 = [], [], []
    violations = 0
    with model_guard(model), seeded(seed + NOISE_SEED_OFFSET, device):
        gn = torchattacks.GN(model, std=sigma)
        gn.set_device(device)
        for _, x, y in data.batches(batch_size, device=device, dtype=dtype):
            x_noisy = gn(x, y)
            check = verify(model, x, y, x_noisy, Budget(None, None))
            correct.append(~check.misclassified.cpu())
            linf.append(check.dist_linf.cpu())
            l2.append(check.dist_l2.cpu())
            violations += int(check.violation.sum())
            advance(len(y))
    return NoiseOutcome(sigma=sigma, correct=torch.cat(correct), dist_linf=torch.cat(linf), dist_l2=torch.cat(l2),
                        violations=violations, seconds=time.perf_counter() - start)
