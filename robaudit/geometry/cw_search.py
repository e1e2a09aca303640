"""Carlini–Wagner ℓ2 with the binary search over c that torchattacks leaves out.

torchattacks 3.5.1 runs CW at one fixed c ("binary search for c is NOT IMPLEMENTED"). With a
large c the first steps jump across whichever boundary the margin gradient points to and the
ℓ2 term then settles on *that* boundary, which on a multi-class model can be the second-nearest
one; with a small c the attack does not succeed at all. Carlini & Wagner (2017, Sec. V) search c
per sample: halve towards the last failure after a success, ×10 while it has never succeeded.

Per-sample c through one torchattacks.CW call: CW minimises ‖δ‖² + c·Σᵢ fᵢ with
fᵢ = max(z_y − max_{j≠y} z_j, −κ). At κ = 0, fᵢ is positively homogeneous in the logits, so
multiplying sample i's logits by cᵢ (which changes no argmax) is exactly CW at c = cᵢ. The
logits are also shifted to be ≥ 1 first (see ``robaudit.attacks.registry._positive_logits``:
torchattacks masks the true class with 0 when it looks for the best other class).

Caveat: torchattacks stops CW early when the batch's *summed* cost rises at a checkpoint, so a
sample's CW result can depend on which samples share its batch (the other attacks cannot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# Carlini & Wagner's schedule: ×10 until the first success, then bisection between failure and success.
C_GROWTH = 10.0


class ScaledLogits(nn.Module):
    """z ↦ cᵢ · (z − min_j z_j + 1) per sample i: CW at a per-sample c (see the module docstring)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.scale: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        z = z - z.detach().amin(dim=1, keepdim=True) + 1
        if self.scale is None or self.scale.shape[0] != z.shape[0]:
            raise RuntimeError(f"CW search: a batch of {z.shape[0]} rows for {self.scale_len()} scales")
        return z * self.scale.to(z.dtype)[:, None]

    def scale_len(self) -> int:
        return -1 if self.scale is None else int(self.scale.shape[0])


@dataclass(frozen=True)
class CWSearch:
    """Result of :func:`cw_search` (tensors over the batch).

    Attributes:
        x_adv: (B, *input) the closest verified adversarial example (x itself where none).
        success: (B,) a verified adversarial example was found at some c.
        distance: (B,) float64 ℓ2 distance of x_adv (NaN where not successful).
        c: (B,) float64 the c that gave x_adv (NaN where not successful).
        runs: CW calls made (search steps × targets).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    c: torch.Tensor
    runs: int


def candidate_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The k classes j ≠ y with the smallest first-order boundary distance (z_y − z_j) / ‖∇ₓ(z_y − z_j)‖
    (DeepFool's linearisation; exact on a linear model); (B, k) long, nearest first.

    One backward pass per class (the batch shares it: samples do not interact in eval mode).
    """
    from robaudit.models.guard import preserved

    with preserved(model, eval=True, freeze=True), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        z = model(xg)
        c = z.shape[1]
        own = z.gather(1, y[:, None]).squeeze(1)
        est = torch.full((x.shape[0], c), math.inf, dtype=torch.float64, device=x.device)
        for j in range(c):
            gap = own - z[:, j]
            (g,) = torch.autograd.grad(gap.sum(), xg, retain_graph=j < c - 1)
            norm = g.flatten(1).to(torch.float64).norm(dim=1)
            est[:, j] = gap.detach().to(torch.float64).abs() / norm.clamp_min(1e-300)
    est.scatter_(1, y[:, None], math.inf)
    return est.topk(min(k, c - 1), dim=1, largest=False).indices


def cw_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 100, search_steps: int = 6,
              targets: int = 1, c_init: float = 1.0, lr: float = 0.01, seed: int = 0) -> CWSearch:
    """CW-ℓ2 (torchattacks.CW, κ = 0) inside a per-sample binary search over c, once per target class.

    Untargeted CW in torchattacks follows the class with the highest other logit, and settles on
    that class's boundary even when another class's boundary is nearer (a search over c does not
    change which class it follows). So the search runs *targeted* CW towards each of the
    ``targets`` classes of :func:`candidate_targets` and keeps the closest verified example
    (any misclassification counts, whichever class it lands in).

    Raises:
        AttackError: torchattacks raised.

    Every returned example is re-checked by :func:`robaudit.attacks.run.verify` (finite, in
    [0,1], class changed); the smallest verified one over all targets and c is kept.

    Shapes: x (B, *input) in [0,1]; y (B,) the class to move away from.
    """
    from robaudit.attacks.library import attack_class

    from robaudit.attacks.run import Budget, call_attack, seed_for, seeded, verify
    from robaudit.models.guard import preserved

    b = x.shape[0]
    dev = x.device
    best = x.clone()
    best_d = torch.full((b,), math.inf, dtype=torch.float64, device=dev)
    best_c = torch.full((b,), math.nan, dtype=torch.float64, device=dev)
    cand = candidate_targets(model, x, y, targets)
    wrapped = ScaledLogits(model).eval()
    holder: list[torch.Tensor] = []
    with preserved(model, eval=True, freeze=True), seeded(seed_for(seed, "cw-search"), dev):
        atk = attack_class("CW")(wrapped, c=1.0, kappa=0.0, steps=steps, lr=lr)
        atk.set_device(dev)
        atk.set_mode_targeted_by_function(lambda images, labels: holder[0], quiet=True)
        for t in range(cand.shape[1]):
            holder[:] = [cand[:, t]]
            c = torch.full((b,), float(c_init), dtype=torch.float64, device=dev)
            lo = torch.zeros(b, dtype=torch.float64, device=dev)
            hi = torch.full((b,), math.inf, dtype=torch.float64, device=dev)
            for _ in range(search_steps):
                wrapped.scale = c.to(x.dtype)
                adv = call_attack(atk, x, y, "cw (search over c)").detach()
                chk = verify(model, x, y, adv, Budget(None, None))
                ok = chk.success
                closer = ok & (chk.dist_l2 < best_d)
                best[closer] = adv[closer]
                best_d = torch.where(closer, chk.dist_l2, best_d)
                best_c = torch.where(closer, c, best_c)
                hi = torch.where(ok, torch.minimum(hi, c), hi)
                lo = torch.where(ok, lo, torch.maximum(lo, c))
                c = torch.where(torch.isinf(hi), c * C_GROWTH, (lo + hi) / 2)
    success = torch.isfinite(best_d)
    nan = torch.full_like(best_d, math.nan)
    return CWSearch(x_adv=best, success=success, distance=torch.where(success, best_d, nan), c=best_c,
                    runs=search_steps * cand.shape[1])
