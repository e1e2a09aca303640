"""The attack engine: torchattacks attacks behind a registry, a checked call that
re-verifies every adversarial example, and the pruned battery.

Public API::

    from robaudit.attacks import REGISTRY, Norm, attack_batch
    x_adv, check = attack_batch(model, x, y, "pgd", norm="linf", eps=8/255, steps=20)
    check.success, check.dist_linf   # verified success, distances (B,)
"""

from __future__ import annotations

from robaudit.attacks.registry import BATTERIES, REGISTRY, AttackParams, AttackSpec, Kind
from robaudit.attacks.run import Budget, Check, attack_batch, resolve_params, seed_for, verify
from robaudit.attacks.threat import Eps, Norm

__all__ = ["BATTERIES", "REGISTRY", "AttackParams", "AttackSpec", "Kind", "Budget", "Check", "attack_batch",
           "resolve_params", "seed_for", "verify", "Eps", "Norm"]
