"""The attack engine: torchattacks attacks behind a registry, a runner that
re-checks every adversarial example, and the Gaussian-noise baseline.

Public API::

    from robaudit.attacks import REGISTRY, Norm, attack_batch
    x_adv, check = attack_batch(model, x, y, "pgd", norm="linf", eps=8/255, steps=20)
    check.success, check.dist_linf   # verified success, distances (B,)
"""

from __future__ import annotations

from robaudit.attacks.registry import BATTERIES, REGISTRY, AttackParams, AttackSpec, Kind
from robaudit.attacks.run import (AttackOutcome, Budget, Check, attack_batch, clean_pass, model_guard,
                                  resolve_params, run_attack, seed_for, verify)
from robaudit.attacks.threat import Eps, Norm, parse_eps_grid

__all__ = ["BATTERIES", "REGISTRY", "AttackParams", "AttackSpec", "Kind", "AttackOutcome", "Budget", "Check",
           "attack_batch", "clean_pass", "model_guard", "resolve_params", "run_attack", "seed_for", "verify",
           "Eps", "Norm", "parse_eps_grid"]
