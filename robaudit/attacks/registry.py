"""The attack registry: name → torchattacks constructor and what it takes.

Every attack is torchattacks' own implementation; robaudit only chooses the
arguments (norm, eps, step size, steps, classes, seeds) and checks the output
(:mod:`robaudit.attacks.run`). Two kinds:

* ``BUDGET`` attacks search inside an eps-ball and run once per eps
  (FGSM, PGD, PGD-L2, TPGD, Square, APGD, APGD-T, AutoAttack);
* ``MINIMAL`` attacks look for the closest adversarial example and run once;
  robust accuracy at each eps is read off their distances (CW, DeepFool, and
  FAB, whose eps only caps the accepted distance).

Settings follow Johansson et al. 2022, Sec. 4.2.2 (PGD/TPGD/Square via
torchattacks) and Hoffman et al. 2019, Sec. 3.2 / App. F (FGSM, PGD, CW).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, Mapping

from robaudit.attacks.library import attack_class
from robaudit.attacks.threat import TORCHATTACKS_NORM, Norm

if TYPE_CHECKING:  # pragma: no cover
    import torchattacks
    from torch import nn


class Kind(str, Enum):
    BUDGET = "budget"
    MINIMAL = "minimal"


# Parameter names an attack can take (the option fields of the same name).
EPS, ALPHA, STEPS, RESTARTS, QUERIES, N_CLASSES, TARGETED = (
    "eps", "alpha", "steps", "restarts", "queries", "n_classes", "targeted")


@dataclass(frozen=True, kw_only=True)
class AttackParams:
    """Resolved arguments of one attack run (pixel units).

    Attributes:
        norm: threat-model norm (the budget's norm for BUDGET attacks).
        eps: the budget (BUDGET), the accepted-distance cap (FAB), or None.
        alpha: step size (PGD family).
        steps: iterations (Square: see ``queries``).
        restarts: random restarts.
        queries: Square's query budget per sample.
        n_classes: number of classes of the model (FAB, APGD-T, AutoAttack).
        seed: seed handed to attacks that reseed torch themselves.
        targeted: run in targeted mode (random target ≠ label per sample).
        random_start: PGD-family random start (off for pure gradient directions, e.g. spectrum alignment).
    """

    norm: Norm
    eps: float | None = None
    alpha: float | None = None
    steps: int | None = None
    restarts: int = 1
    queries: int | None = None
    n_classes: int = 10
    seed: int = 0
    targeted: bool = False
    random_start: bool = True


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """One registered attack.

    Attributes:
        name: CLI flag / report name (``pgd``).
        title: human name with the paper.
        kind: BUDGET or MINIMAL.
        norms: threat-model norms it supports (MINIMAL attacks: distances are
            measured in any norm, ``norms`` is where their search runs).
        own_norm: the norm a MINIMAL attack minimises when fixed (CW, DeepFool: ℓ2).
        takes: parameter names it accepts (see constants above).
        white_box: uses gradients (the Square sanity check compares against these).
        outer_restarts: restarts are done by the runner (torchattacks has none),
            keeping for each sample the first verified success.
        targeted: how --targeted is handled: "mode" (torchattacks targeted mode),
            "multi" (FAB-T: multi_targeted), "always" (APGD-T), or None.
        default_steps: iterations when --steps is not given.
        float32_only: the library implementation mixes dtypes in float64 (refused at plan time).
        build: ``build(model, params) -> torchattacks.Attack``.
    """

    name: str
    title: str
    kind: Kind
    norms: frozenset[Norm]
    takes: frozenset[str]
    build: Callable[["nn.Module", AttackParams], "torchattacks.Attack"]
    own_norm: Norm | None = None
    white_box: bool = True
    outer_restarts: bool = False
    targeted: str | None = None
    default_steps: int | None = None
    float32_only: bool = False

    def steps_of(self, params: AttackParams) -> int | None:
        """The iteration count reported for this attack (1 for FGSM, queries for Square)."""
        if QUERIES in self.takes:
            return params.queries
        if STEPS not in self.takes:
            return 1 if self.name == "fgsm" else None
        return params.steps


def _fgsm(model, p: AttackParams):
    return attack_class("FGSM")(model, eps=p.eps)


def _pgd(model, p: AttackParams):
    return attack_class("PGD")(model, eps=p.eps, alpha=p.alpha, steps=p.steps, random_start=p.random_start)


def _pgdl2(model, p: AttackParams):
    return attack_class("PGDL2")(model, eps=p.eps, alpha=p.alpha, steps=p.steps, random_start=p.random_start)


def _tpgd(model, p: AttackParams):
    return attack_class("TPGD")(model, eps=p.eps, alpha=p.alpha, steps=p.steps)


def _square(model, p: AttackParams):
    return attack_class("Square")(model, norm=TORCHATTACKS_NORM[p.norm], eps=p.eps, n_queries=p.queries,
                        n_restarts=p.restarts, seed=p.seed, verbose=False)


def _positive_logits(model):
    """``model`` with each sample's logits shifted to be >= 1.

    torchattacks 3.5.1's CW picks the best other class as max((1 − onehot)·z), which is
    wrong when logits are negative (Harry24k/adversarial-attacks-pytorch#184): the
    masked 0 wins and the attack stalls on the decision boundary. A per-sample constant
    shift changes neither the argmax nor any logit difference, so CW's objective
    max(z_y − max_{j≠y} z_j, −κ) is unchanged; it only makes the mask harmless.
    """
    import torch
    from torch import nn

    class PositiveLogits(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.inner(x)
            return z - z.detach().amin(dim=1, keepdim=True) + 1

    # eval(): torchattacks restores the mode it found on the module it was given, so a fresh
    # (training-mode) wrapper would switch the user's model to train mode after each call.
    return PositiveLogits(model).eval()


KAPPA = 0.0  # confidence margin (logits); 0 as in torchattacks


def _cw(model, p: AttackParams):
    # c = 1 as torchattacks recommends (small c rarely succeeds without the binary search on c,
    # which torchattacks does not implement); Adam lr 0.005 as in Hoffman et al. 2019, App. F.
    # torchattacks stops early when the loss rises at a checkpoint (every steps/10), so few steps
    # stop far from the boundary: 1000 steps gives distances within ~1.5 % of the closed form on
    # linear models (tests/test_attacks_linear.py). CW distances are upper bounds.
    return attack_class("CW")(_positive_logits(model), c=1.0, kappa=KAPPA, steps=p.steps, lr=0.005)


def _deepfool(model, p: AttackParams):
    return attack_class("DeepFool")(model, steps=p.steps, overshoot=0.02)


def _apgd(model, p: AttackParams):
    return attack_class("APGD")(model, norm=TORCHATTACKS_NORM[p.norm], eps=p.eps, steps=p.steps, n_restarts=p.restarts,
                      seed=p.seed, loss="ce", verbose=False)


def _apgdt(model, p: AttackParams):
    return attack_class("APGDT")(model, norm=TORCHATTACKS_NORM[p.norm], eps=p.eps, steps=p.steps, n_restarts=p.restarts,
                       seed=p.seed, verbose=False, n_classes=p.n_classes)


def _fab(model, p: AttackParams):
    # float64 is refused when the plan is made (FAB casts to float32 inside torchattacks).
    atk = attack_class("FAB")(model, norm=TORCHATTACKS_NORM[p.norm], eps=p.eps, steps=p.steps, n_restarts=p.restarts,
                              seed=p.seed, verbose=False, multi_targeted=p.targeted, n_classes=p.n_classes)
    atk.get_diff_logits_grads_batch = types.MethodType(_fab_class_gradients, atk)
    return atk


def _fab_class_gradients(atk, imgs: "torch.Tensor", la: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """What untargeted FAB linearises at each step: the logit differences f_c − f_label and their input gradients.

    torchattacks gets the gradient of logit c as ``y.backward(mask)`` with a one-hot column mask; a
    ``backward`` given a gradient tensor imports torch's symbolic-shape machinery (sympy, 0.4 s) to compare
    shapes. :func:`robaudit.linalg.products.pullback` takes the same vector-Jacobian product with the same
    constant mask without it (the same numbers, tested).
    """
    import torch

    from robaudit.linalg.products import pullback

    im = imgs.clone().requires_grad_()
    with torch.enable_grad():
        logits = atk.get_logits(im)
        classes = logits.shape[1]
        grads = []
        for c in range(classes):
            mask = torch.zeros_like(logits)
            mask[:, c] = 1.0
            grads.append(pullback(logits, im, mask, retain_graph=c + 1 < classes)[0])
    rows = torch.arange(imgs.shape[0], device=imgs.device)
    values = logits.detach()
    jac = torch.stack(grads, dim=1)  # (B, classes, *input)
    df = values - values[rows, la].unsqueeze(1)
    dg = jac - jac[rows, la].unsqueeze(1)
    df[rows, la] = 1e10  # the label's own "difference" is never the closest boundary
    return df, dg


def _autoattack(model, p: AttackParams):
    # seed must be explicit: torchattacks' default (None) seeds from time.time().
    return attack_class("AutoAttack")(model, norm=TORCHATTACKS_NORM[p.norm], eps=p.eps, version="standard",
                            n_classes=p.n_classes, seed=p.seed, verbose=False)


_BOTH = frozenset({Norm.LINF, Norm.L2})
_LINF = frozenset({Norm.LINF})
_L2 = frozenset({Norm.L2})

REGISTRY: dict[str, AttackSpec] = {spec.name: spec for spec in (
    AttackSpec(name="fgsm", title="FGSM (Goodfellow et al. 2014)", kind=Kind.BUDGET, norms=_LINF,
               takes=frozenset({EPS, TARGETED}), targeted="mode", build=_fgsm),
    AttackSpec(name="pgd", title="PGD (Madry et al. 2018)", kind=Kind.BUDGET, norms=_LINF,
               takes=frozenset({EPS, ALPHA, STEPS, RESTARTS, TARGETED}), outer_restarts=True,
               targeted="mode", default_steps=10, build=_pgd),
    AttackSpec(name="pgdl2", title="PGD-ℓ2 (Madry et al. 2018)", kind=Kind.BUDGET, norms=_L2,
               takes=frozenset({EPS, ALPHA, STEPS, RESTARTS, TARGETED}), outer_restarts=True,
               targeted="mode", default_steps=10, build=_pgdl2),
    AttackSpec(name="tpgd", title="TPGD, KL loss (Zhang et al. 2019)", kind=Kind.BUDGET, norms=_LINF,
               takes=frozenset({EPS, ALPHA, STEPS, RESTARTS}), outer_restarts=True,
               default_steps=10, build=_tpgd),
    AttackSpec(name="square", title="Square, black-box (Andriushchenko et al. 2020)", kind=Kind.BUDGET,
               norms=_BOTH, takes=frozenset({EPS, QUERIES, RESTARTS, TARGETED}), white_box=False,
               targeted="mode", build=_square),
    AttackSpec(name="cw", title="CW-ℓ2 (Carlini & Wagner 2017)", kind=Kind.MINIMAL, norms=_BOTH,
               own_norm=Norm.L2, takes=frozenset({STEPS, TARGETED}), targeted="mode",
               default_steps=1000, build=_cw),
    AttackSpec(name="deepfool", title="DeepFool (Moosavi-Dezfooli et al. 2016)", kind=Kind.MINIMAL,
               norms=_BOTH, own_norm=Norm.L2, takes=frozenset({STEPS}), default_steps=50, build=_deepfool),
    AttackSpec(name="apgd", title="APGD-CE (Croce & Hein 2020)", kind=Kind.BUDGET, norms=_BOTH,
               takes=frozenset({EPS, STEPS, RESTARTS}), default_steps=10, build=_apgd),
    AttackSpec(name="apgdt", title="APGD-T (Croce & Hein 2020)", kind=Kind.BUDGET, norms=_BOTH,
               takes=frozenset({EPS, STEPS, RESTARTS, N_CLASSES, TARGETED}), targeted="always",
               default_steps=10, build=_apgdt),
    AttackSpec(name="fab", title="FAB (Croce & Hein 2020)", kind=Kind.MINIMAL, norms=_BOTH,
               takes=frozenset({EPS, STEPS, RESTARTS, N_CLASSES, TARGETED}), targeted="multi",
               default_steps=10, float32_only=True, build=_fab),
    AttackSpec(name="autoattack", title="AutoAttack standard (Croce & Hein 2020)", kind=Kind.BUDGET,
               norms=_BOTH, takes=frozenset({EPS, N_CLASSES}), build=_autoattack),
)}

# Square's query budget when --queries is not given (torchattacks' default).
DEFAULT_QUERIES = 5000


@dataclass(frozen=True)
class Battery:
    """A preset: attacks per norm, their steps, and the eps grid used when --eps is absent."""

    attacks: Mapping[Norm, tuple[str, ...]]
    eps: Mapping[Norm, tuple[float, ...]]
    steps: Mapping[str, int]
    queries: int | None = None
    noise: bool = False


BATTERIES: dict[str, Battery] = {
    # quick: cheap enough for the 60 s quick audit (FGSM + PGD-10 at two budgets).
    "quick": Battery(attacks={Norm.LINF: ("fgsm", "pgd"), Norm.L2: ("pgdl2",)},
                     eps={Norm.LINF: (2 / 255, 8 / 255), Norm.L2: (0.25, 0.5)},
                     steps={"pgd": 10, "pgdl2": 10}),
    "standard": Battery(attacks={Norm.LINF: ("fgsm", "pgd", "tpgd", "apgd"), Norm.L2: ("pgdl2", "apgd")},
                        eps={Norm.LINF: (1 / 255, 2 / 255, 4 / 255, 8 / 255), Norm.L2: (0.25, 0.5, 1.0)},
                        steps={"pgd": 20, "pgdl2": 20, "tpgd": 20, "apgd": 20}, noise=True),
    "full": Battery(attacks={Norm.LINF: ("fgsm", "pgd", "tpgd", "square", "cw", "deepfool", "apgd", "apgdt",
                                         "fab", "autoattack"),
                             Norm.L2: ("pgdl2", "square", "cw", "deepfool", "apgd", "apgdt", "fab", "autoattack")},
                    eps={Norm.LINF: (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255),
                         Norm.L2: (0.0, 0.25, 0.5, 1.0, 2.0)},
                    steps={"pgd": 50, "pgdl2": 50, "tpgd": 50, "apgd": 100, "apgdt": 100, "fab": 100},
                    queries=5000, noise=True),
}


def get(name: str) -> AttackSpec:
    """The spec of ``name``; UsageError naming the valid attacks otherwise."""
    from robaudit.errors import UsageError

    try:
        return REGISTRY[name]
    except KeyError:
        from difflib import get_close_matches

        near = get_close_matches(name, list(REGISTRY), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UsageError(f"unknown attack '{name}'{hint}; expected one of: {', '.join(REGISTRY)}, noise") from None
