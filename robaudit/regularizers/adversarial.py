"""PGD adversarial training on torchattacks (Madry et al. 2018; Roth et al. 2019, eq. 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robaudit.regularizers.base import Regularizer


class AdversarialTraining(Regularizer):
    """Penalty = cross-entropy at the ℓ∞ PGD example x* of each sample (Roth et al. 2019, eq. 10).

    The loss is ce(x) + λ·ce(x*); λ = 1 weighs clean and adversarial equally
    (Goodfellow et al. 2015, α = ½, up to a factor 2). x* is found by torchattacks'
    PGD with a random start (eps 8/255, step 2/255, 7 steps, Madry et al.'s step
    count), with the model in eval mode during the search. Cost: ``steps``
    forward+backward passes for the search plus one more F + B.
    """

    name = "pgd_adversarial"
    default_lam = 1.0
    reference = "Madry et al. 2018; Roth et al. 2019 eq. 10"

    def __init__(self, *, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 7) -> None:
        if not eps > 0 or not alpha > 0 or int(steps) != steps or steps < 1:
            raise ValueError(f"pgd_adversarial: expected eps > 0, alpha > 0, steps ≥ 1; got {eps}, {alpha}, {steps}")
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)

    def options(self) -> dict[str, object]:
        return {"eps": self.eps, "alpha": self.alpha, "steps": self.steps}

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x* (B, *input), detached, with ‖x* − x‖∞ ≤ eps and x* ∈ [0,1]."""
        from robaudit.attacks.library import attack_class

        attack = attack_class("PGD")(model, eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True)
        x_adv = attack(x.detach(), y).detach()
        # never trust what an attack library returns (see attacks/run.py: verify)
        if not bool(((x_adv - x).abs() <= self.eps + 1e-6).all()) or x_adv.min() < 0 or x_adv.max() > 1:
            raise RuntimeError("torchattacks PGD returned a point outside the eps-ball or [0,1]")
        return x_adv

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(self.adversarial(model, x, y)), y)
